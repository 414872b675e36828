//! Hostile SRT callers: a handshake asking for encryption, datagrams and
//! control packets that crashed srt-protocol, connection floods from one
//! address, garbage. The listener keeps serving real ffmpeg publishers
//! and players throughout, and nothing panics.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::gateway::Gateway as Env;
use common::media::{publish_srt, Fixture, Player};
use common::process::{GatewayProcess, Ports};
use common::srt_raw::{self, call, control, extension, handshake_cif, hsreq, le_words};
use common::TestDb;
use primacy::auth::api_keys::Scope;

fn metric(text: &str, needle: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// ffmpeg publishing with a passphrase (SRT encryption, which the gateway
/// does not offer yet) is refused with an SRT rejection; the SRT feed
/// already on air keeps its player fed and a new publisher is accepted.
#[test]
fn passphrase_is_refused_and_the_listener_keeps_serving() {
    let e = Env::start();
    let (_, t) = e.token(&["live1", "live2", "secret"], 10);
    let _enc = publish_srt(
        Fixture::A,
        &e.srt_ff(&format!("#!::r=live1,m=publish,s={t}")),
    );
    e.wait_feeds("live1", 1, None);
    let player = Player::start(&e.srt_ff("#!::r=live1,m=request"));
    player.wait_packets(30, Duration::from_secs(20));

    for streamid in [
        format!("#!::r=secret,m=publish,s={t}"),
        "#!::r=live1,m=request".to_owned(),
    ] {
        let url = format!("{}&passphrase=0123456789abcdef", e.srt_ff(&streamid));
        let mut p = publish_srt(Fixture::B, &url);
        let status = p.wait_timeout(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| !s.success()),
            "{streamid} with a passphrase should be refused; ffmpeg said {}",
            p.stderr_text()
        );
        println!(
            "ffmpeg with a passphrase ({streamid}) said: {}",
            p.stderr_text().replace(&t, "TOKEN").trim()
        );
    }
    let v = e.stream("secret");
    assert!(
        v["sources"][0]["feeds"]
            .as_array()
            .is_none_or(|f| f.is_empty()),
        "a refused publisher must not stay registered: {v}"
    );

    // The feed on air never stopped, and the listener accepts new work.
    let n = player.count();
    player.wait_packets(n + 60, Duration::from_secs(15));
    let _enc2 = publish_srt(
        Fixture::B,
        &e.srt_ff(&format!("#!::r=live2,m=publish,s={t}")),
    );
    e.wait_feeds("live2", 1, None);
    let (_, m) = e.s.get_text("/metrics");
    assert!(
        metric(&m, "primacy_admission_refusals_total{reason=\"encryption\"") >= 2.0,
        "{m}"
    );
}

/// CPU time (user + system) the process used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may contain spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// A listener-level attack: one datagram (no handshake needed).
fn listener_kills() -> Vec<(&'static str, Vec<u8>)> {
    let conclusion_with = |ext: Vec<u8>| {
        let mut body = handshake_cif(5, 0, 0x1 | 0x4, srt_raw::CONCLUSION, 7, 0);
        body.extend(extension(1, &hsreq()));
        body.extend(ext);
        control(0, 0, 0, 0, &body)
    };
    vec![
        (
            "SRT control packet, stream-id subtype, no body",
            control(0x7FFF, 5, 0, 0, &[]),
        ),
        (
            "SRT control packet, group subtype, no body",
            control(0x7FFF, 8, 0, 0, &[]),
        ),
        (
            "SRT control packet, filter subtype, no body",
            control(0x7FFF, 7, 0, 0, &[]),
        ),
        (
            "handshake with a congestion-control extension",
            conclusion_with(extension(6, &le_words("live"))),
        ),
        (
            "handshake with a group extension",
            conclusion_with(extension(8, &[1, 0, 0, 0])),
        ),
        (
            "handshake with an empty stream-id extension",
            conclusion_with([extension(5, &[]), vec![0; 4]].concat()),
        ),
    ]
}

/// A connection-level attack: packets on an accepted (player, so
/// unauthenticated) connection whose listener-side socket id is `peer`.
fn connection_kills(peer: u32) -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let c = |ty: u16, subtype: u16, info: u32, body: &[u8]| control(ty, subtype, info, peer, body);
    // Data packets from the player (a connection is duplex), the first
    // with the initial sequence number of its handshake.
    let data: Vec<Vec<u8>> = (0..20u32)
        .map(|i| {
            let mut p = (srt_raw::INITIAL_SEQ + i).to_be_bytes().to_vec();
            p.extend_from_slice(&(0xC000_0000u32 | (i + 1)).to_be_bytes());
            p.extend_from_slice(&0u32.to_be_bytes());
            p.extend_from_slice(&peer.to_be_bytes());
            p.extend_from_slice(&[0x47; 188]);
            p
        })
        .collect();
    let reversed_drop = c(
        0x7,
        0,
        0,
        &[
            (srt_raw::INITIAL_SEQ + 15).to_be_bytes(),
            (srt_raw::INITIAL_SEQ + 2).to_be_bytes(),
        ]
        .concat(),
    );
    vec![
        ("congestion warning", vec![c(0x4, 0, 0, &[0; 4])]),
        ("peer error", vec![c(0x8, 0, 4000, &[0; 4])]),
        (
            "SRT congestion-control packet",
            vec![c(0x7FFF, 6, 0, &le_words("live"))],
        ),
        ("SRT reject packet", vec![c(0x7FFF, 0, 0, &[])]),
        (
            "SRT stream-id packet",
            vec![c(0x7FFF, 5, 0, &le_words("abcd"))],
        ),
        (
            "NAK with an unterminated range",
            vec![c(0x3, 0, 0, &0x8000_0005u32.to_be_bytes())],
        ),
        (
            "NAK with a descending range",
            vec![c(
                0x3,
                0,
                0,
                &[0x8000_0100u32.to_be_bytes(), 5u32.to_be_bytes()].concat(),
            )],
        ),
        (
            "data, then a drop request with a reversed range",
            [data, vec![reversed_drop]].concat(),
        ),
    ]
}

/// Every datagram that crashed the listener task of srt-protocol 0.4.4,
/// and every control packet that crashed a connection task, sent to a
/// real gateway: the listener answers after each one, nothing panics,
/// and an ffmpeg publisher and player work at the end. A listener that
/// dies is noted and the gateway restarted, so one run names every
/// packet that is still fatal.
#[test]
fn kill_packets_do_not_stop_the_srt_listener() {
    let db = TestDb::migrated();
    let key = db.api_key(&[Scope::Admin]);
    let ports = Ports::free();
    let spawn = || {
        let mut g = GatewayProcess::spawn(&db, ports, &[]);
        g.wait_ready(Duration::from_secs(30));
        g
    };
    let mut g = spawn();
    let server = SocketAddr::from(([127, 0, 0, 1], ports.srt));
    assert!(srt_raw::listener_answers(server, Duration::from_secs(5)));
    let mut fatal = Vec::new();
    let mut panicked = Vec::new();
    let mut spinning = Vec::new();
    let mut logs = String::new();
    for (what, packet) in listener_kills() {
        srt_raw::udp().send_to(&packet, server).unwrap();
        let alive = srt_raw::listener_answers(server, Duration::from_secs(3));
        if !alive {
            fatal.push(what);
        }
        if g.log().contains("panicked") {
            panicked.push(what);
        }
        if !alive || g.log().contains("panicked") {
            logs.push_str(&g.log());
            drop(g);
            g = spawn();
        }
    }
    for i in 0..connection_kills(0).len() {
        let before = g.log().matches("panicked").count();
        let c = call(server, "#!::r=k,m=request", &[]).expect("a player is accepted");
        let (what, packets) = connection_kills(c.peer_id).swap_remove(i);
        let cpu = cpu_seconds(g.pid());
        for p in packets {
            c.sock.send_to(&p, server).unwrap();
        }
        // Give the connection task time to process it; it must not spin.
        std::thread::sleep(Duration::from_millis(1500));
        let used = cpu_seconds(g.pid()) - cpu;
        if used > 1.0 {
            spinning.push(what);
        }
        let alive = srt_raw::listener_answers(server, Duration::from_secs(3));
        if !alive {
            fatal.push(what);
        }
        if g.log().matches("panicked").count() > before {
            panicked.push(what);
        }
        if !alive {
            logs.push_str(&g.log());
            drop(g);
            g = spawn();
        }
    }
    logs.push_str(&g.log());
    let panics: Vec<&str> = logs.lines().filter(|l| l.contains("panicked")).collect();
    assert!(
        fatal.is_empty() && panicked.is_empty() && spinning.is_empty(),
        "the SRT listener died on: {fatal:?}\npanics on: {panicked:?}\nspinning (over 1 CPU-s in 1.5 s) on: {spinning:?}\n{}",
        panics.join("\n")
    );

    // A real publisher and player still work.
    let (_, t) = g.token(&key, &["after"], 10);
    let _enc = publish_srt(
        Fixture::A,
        &g.srt_ff(&format!("#!::r=after,m=publish,s={t}")),
    );
    let player = Player::start(&g.srt_ff("#!::r=after,m=request"));
    player.wait_packets(60, Duration::from_secs(30));
}

/// The SRT per-IP limit refuses the connection beyond it (1402, "overload")
/// and admits again once one closes.
#[test]
fn srt_per_ip_limit_refuses_the_next_connection() {
    let e = Env::start_with(|c| c.srt.max_connections_per_ip = 3);
    let server = e.s.running().srt_addr;
    let held: Vec<_> = (0..3)
        .map(|i| {
            call(server, &format!("#!::r=p{i},m=request"), &[])
                .unwrap_or_else(|code| panic!("player {i} refused with {code}"))
        })
        .collect();
    let refused = call(server, "#!::r=p3,m=request", &[]);
    assert_eq!(
        refused.as_ref().err(),
        Some(&2402),
        "the 4th connection from one address must be refused with 1402 (wire 2402)"
    );
    // One closes (SRT shutdown); a new one is admitted.
    held[0].send_control(0x5, 0, 0, &[0; 4]);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match call(server, "#!::r=p4,m=request", &[]) {
            Ok(_) => break,
            Err(code) => assert!(
                Instant::now() < end,
                "still refused ({code}) after a connection closed"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, m) = e.s.get_text("/metrics");
    assert!(
        metric(
            &m,
            "primacy_connections_refused_total{limit=\"per_ip\",protocol=\"srt\""
        ) >= 1.0,
        "{m}"
    );
}

/// A flood of garbage datagrams is counted in a metric; the log holds a
/// few lines about it, not one per datagram.
#[test]
fn garbage_datagrams_are_counted_not_logged_one_by_one() {
    let db = TestDb::migrated();
    let ports = Ports::free();
    let mut g = GatewayProcess::spawn(&db, ports, &[]);
    g.wait_ready(Duration::from_secs(30));
    let server = SocketAddr::from(([127, 0, 0, 1], ports.srt));
    let s = srt_raw::udp();
    let before = g.log().lines().count();
    for i in 0..2_000u32 {
        // Control type 0x7ABC does not exist: a parse error per datagram.
        let p = control(0x7ABC, 0, i, 0, &[0; 8]);
        s.send_to(&p, server).unwrap();
        if i % 200 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let end = Instant::now() + Duration::from_secs(10);
    let counted = loop {
        let (_, m) = g
            .http
            .try_call("GET", "/metrics", None, None, "text/plain")
            .expect("metrics");
        let n = metric(&m, "primacy_srt_garbage_packets_total");
        if n >= 1_900.0 || Instant::now() > end {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(srt_raw::listener_answers(server, Duration::from_secs(3)));
    let log = g.log();
    let lines: Vec<&str> = log.lines().skip(before).collect();
    println!(
        "2000 garbage datagrams: metric {counted}, {} log lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(counted >= 1_900.0, "garbage datagrams counted: {counted}");
    assert!(
        lines.len() <= 10,
        "{} log lines for 2000 garbage datagrams",
        lines.len()
    );
    g.signal("KILL");
}
