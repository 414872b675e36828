//! Hostile RTMP clients before authentication: a `connect` nested deep
//! enough to overflow a stack, a slow loris that never asks to publish or
//! play, partial messages that would hold memory, and the memory of the
//! process while twenty of them are connected.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::media::{publish, Fixture, Player};
use common::process::{GatewayProcess, Ports};
use common::rtmp_raw::{self, chunks, closed_within, handshake, PublishOutcome};
use common::{TestDb, TestServer};
use primacy::auth::api_keys::Scope;

fn metric(s: &TestServer, needle: &str) -> f64 {
    let (_, text) = s.get_text("/metrics");
    text.lines()
        .filter(|l| l.starts_with(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// Bytes the kernel holds on loopback TCP connections to or from `port`
/// (receive and send queues of established sockets in `/proc/net/tcp`).
fn kernel_queued(port: u16) -> u64 {
    let want = format!(":{port:04X}");
    let text = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let ours = cols.get(1)?.ends_with(&want) || cols.get(2)?.ends_with(&want);
            let established = *cols.get(3)? == "01";
            let (tx, rx) = cols.get(4)?.split_once(':')?;
            (ours && established).then(|| {
                u64::from_str_radix(tx, 16).unwrap_or(0) + u64::from_str_radix(rx, 16).unwrap_or(0)
            })
        })
        .sum()
}

/// One unauthenticated `connect` whose command object nests 10,000
/// objects (40 KB) overflowed the stack of the worker thread inside
/// rml_amf0 and aborted the process. Now it closes that connection only:
/// the process lives, the player keeps playing, health and ready say 200.
#[test]
fn nested_amf_connect_cannot_crash_the_gateway() {
    let db = TestDb::migrated();
    let key = db.api_key(&[Scope::Admin]);
    let mut g = GatewayProcess::spawn(&db, Ports::free(), &[]);
    g.wait_ready(Duration::from_secs(30));
    let (_, secret) = g.token(&key, &["live1"], 10);
    let _enc = publish(Fixture::A, &g.rtmp(&format!("live1?token={secret}")));
    let player = Player::start(&g.rtmp("live1"));
    player.wait_packets(30, Duration::from_secs(30));

    let mut evil = handshake(g.rtmp_addr());
    let _ = evil.write_all(&rtmp_raw::nested_connect(10_000));
    assert!(
        closed_within(&mut evil, Duration::from_secs(10)),
        "the nested connect was not closed"
    );
    std::thread::sleep(Duration::from_millis(500));
    if let Ok(Some(status)) = g.proc.child.try_wait() {
        panic!("the gateway died ({status}):\n{}", g.log());
    }
    let n = player.count();
    player.wait_packets(n + 30, Duration::from_secs(15));
    for path in ["/api/health", "/api/ready"] {
        let (st, v) = g.http.call("GET", path, None, None);
        assert_eq!(st, 200, "{path}: {v}");
    }
    assert!(!g.log().contains("overflowed"), "{}", g.log());
}

/// After the handshake a client that sends a byte now and then but never
/// publishes or plays is closed at `rtmp.request_timeout_ms` (10 s by
/// default): reads do not extend it, unlike the idle timeout (30 s).
#[test]
fn slow_loris_is_closed_at_the_request_deadline() {
    let s = TestServer::start();
    let addr = s.running().rtmp_addr;
    let mut loris = handshake(addr);
    let began = Instant::now();
    // A message header declaring 100 bytes, then one byte every 500 ms.
    let header = &chunks(0x14, 0, &[0u8; 100], 128)[..12];
    loris.write_all(header).unwrap();
    loris
        .set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    let closed_at = loop {
        if loris.write_all(&[0x05]).is_err()
            || closed_within(&mut loris, Duration::from_millis(500))
        {
            break began.elapsed();
        }
        assert!(
            began.elapsed() < Duration::from_secs(16),
            "a slow loris was still connected after {:?}",
            began.elapsed()
        );
    };
    println!("slow loris closed after {closed_at:?}");
    assert!(
        closed_at >= Duration::from_secs(9),
        "closed too early: {closed_at:?}"
    );
    assert!(
        metric(
            &s,
            "primacy_session_errors_total{kind=\"request_timeout\",protocol=\"rtmp\""
        ) >= 1.0
    );
}

/// Before a connection publishes or plays it may send 64 KiB in all
/// (`rtmp.max_request_bytes`), so a partial message beyond that closes
/// it; a player keeps that limit for any one message it sends.
#[test]
fn partial_messages_beyond_the_request_budget_close_the_connection() {
    let s = TestServer::start();
    let addr = s.running().rtmp_addr;

    // Unauthenticated: a 1 MiB video message, 200 KiB of it sent.
    let mut c = handshake(addr);
    let msg = chunks(0x09, 1, &vec![0x17; 1 << 20], 128);
    let _ = c.write_all(&msg[..200 * 1024]);
    assert!(
        closed_within(&mut c, Duration::from_secs(3)),
        "200 KiB of a partial message before publish or play was not refused"
    );

    // A player (accepted without a token) sending a 1 MiB message.
    let local = "127.0.0.1".parse().unwrap();
    let (outcome, mut p) = rtmp_raw::play_attempt(local, addr, "live1", Duration::from_secs(10));
    assert_eq!(outcome, PublishOutcome::Accepted);
    let msg = chunks(0x12, 1, &vec![0x00; 1 << 20], 4096);
    let _ = p.write_all(&msg[..200 * 1024]);
    assert!(
        closed_within(&mut p, Duration::from_secs(3)),
        "a player sending 200 KiB of one message was not refused"
    );
    assert!(
        metric(
            &s,
            "primacy_session_errors_total{kind=\"too_large\",protocol=\"rtmp\""
        ) >= 2.0
    );
}

/// Twenty connections that each stream a 7.5 MiB partial message (under
/// the old 8 MiB message limit) without ever publishing: the gateway's
/// resident memory stays small, because each is closed at 64 KiB.
#[test]
fn rss_stays_small_with_twenty_partial_messages() {
    let db = TestDb::migrated();
    let mut g = GatewayProcess::spawn(&db, Ports::free(), &[]);
    g.wait_ready(Duration::from_secs(30));
    let addr = g.rtmp_addr();
    // Warm up (allocator arenas, the first connection) before measuring.
    drop(handshake(addr));
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(g.pid());
    let payload = vec![0x17u8; 7 * 1024 * 1024 + 512 * 1024];
    let msg = chunks(0x09, 1, &payload, 128);
    let conns: Vec<TcpStream> = (0..20).map(|_| handshake(addr)).collect();
    let writers: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let msg = msg.clone();
            std::thread::spawn(move || {
                let sent = msg
                    .chunks(64 * 1024)
                    .take_while(|piece| c.write_all(piece).is_ok())
                    .count();
                (c, sent)
            })
        })
        .collect();
    let mut conns = Vec::new();
    for w in writers {
        conns.push(w.join().expect("writer"));
    }
    // The kernel holds what the gateway has not read yet: wait until it
    // has read (or refused) everything, at most 60 s.
    // Its memory is sampled meanwhile; the largest sample counts.
    let began = Instant::now();
    let mut during = rss_kib(g.pid());
    while kernel_queued(addr.port()) > 0 && began.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
        during = during.max(rss_kib(g.pid()));
    }
    during = during.max(rss_kib(g.pid()));
    println!(
        "the gateway read or refused everything in {:?}",
        began.elapsed()
    );
    let mut still_open = 0;
    for (c, _) in &mut conns {
        if !closed_within(c, Duration::from_millis(300)) {
            still_open += 1;
        }
    }
    println!(
        "gateway RSS: {before} KiB before, {during} KiB with 20 connections each sending \
         a 7.5 MiB partial message (+{} KiB); {still_open} of them still open",
        during.saturating_sub(before)
    );
    assert_eq!(
        still_open, 0,
        "connections over the request budget stayed open"
    );
    assert!(
        during.saturating_sub(before) < 16 * 1024,
        "RSS grew by {} KiB",
        during - before
    );
}

/// `rtmp.max_buffered_bytes` bounds partial-message input buffered by all
/// connections that are not publishing: the connection that would exceed
/// it is closed, the others stay.
#[test]
fn the_global_buffer_budget_closes_the_connection_that_exceeds_it() {
    let s = TestServer::start_with(|c| c.rtmp.max_buffered_bytes = 200 * 1024);
    let addr: SocketAddr = s.running().rtmp_addr;
    // Each sends 60 KiB of a 1 MiB message: under its own 64 KiB budget.
    let msg = chunks(0x09, 1, &vec![0x17; 1 << 20], 128);
    let mut conns: Vec<TcpStream> = Vec::new();
    for _ in 0..3 {
        let mut c = handshake(addr);
        c.write_all(&msg[..60 * 1024]).unwrap();
        conns.push(c);
    }
    // Let the server read them all.
    std::thread::sleep(Duration::from_millis(500));
    let mut fourth = handshake(addr);
    let _ = fourth.write_all(&msg[..60 * 1024]);
    assert!(
        closed_within(&mut fourth, Duration::from_secs(3)),
        "the connection over the global budget was not closed"
    );
    for (i, c) in conns.iter_mut().enumerate() {
        assert!(
            !closed_within(c, Duration::from_millis(200)),
            "connection {i} within the budget was closed"
        );
    }
    assert!(
        metric(
            &s,
            "primacy_session_errors_total{kind=\"buffer_budget\",protocol=\"rtmp\""
        ) >= 1.0
    );
}
