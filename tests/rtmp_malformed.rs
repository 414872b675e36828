//! Hostile and broken RTMP clients: each one is closed and reported, and
//! the server keeps serving a real encoder and player meanwhile.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::media::{publish, Fixture, Player};
use common::rtmp_raw::{closed_within, handshake};
use common::TestServer;
use primacy::auth::api_keys::Scope;
use serde_json::json;

fn metric(s: &TestServer, needle: &str) -> f64 {
    let (_, text) = s.get_text("/metrics");
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn hostile_clients_are_closed_and_others_keep_playing() {
    let s = TestServer::start_with(|c| {
        c.rtmp.handshake_timeout_ms = 1_000;
        c.rtmp.idle_timeout_ms = 3_000;
        c.rtmp.max_message_bytes = 65_536;
    });
    let key = s.db.api_key(&[Scope::Admin]);
    let body = json!({"label": "cam", "streams": [{"name": "live1"}]}).to_string();
    let (_, v) = s.call("POST", "/api/v1/tokens", Some(&key), Some(&body));
    let secret = v["secret"].as_str().unwrap().to_owned();
    let addr = s.running().rtmp_addr;
    let _enc = publish(
        Fixture::A,
        &format!("rtmp://{addr}/live/live1?token={secret}"),
    );
    let player = Player::start(&format!("rtmp://{addr}/live/live1"));
    player.wait_packets(30, Duration::from_secs(20));

    // 1. A stalled handshake is dropped after handshake_timeout.
    let mut stalled = TcpStream::connect(addr).unwrap();
    assert!(
        closed_within(&mut stalled, Duration::from_secs(5)),
        "stalled handshake not closed"
    );

    // 2. The 28-byte `@setDataFrame` AMF0 data message that panics rml_rtmp.
    let mut evil = handshake(addr);
    let mut msg = vec![0x03, 0, 0, 0, 0, 0, 16, 0x12, 0, 0, 0, 0];
    msg.extend_from_slice(&[0x02, 0x00, 0x0d]);
    msg.extend_from_slice(b"@setDataFrame");
    assert_eq!(msg.len(), 28);
    evil.write_all(&msg).unwrap();
    assert!(
        closed_within(&mut evil, Duration::from_secs(5)),
        "panicking session not closed"
    );

    // 3. Random bytes after the handshake.
    let mut garbage = handshake(addr);
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = garbage.write_all(&bytes);
    assert!(
        closed_within(&mut garbage, Duration::from_secs(8)),
        "garbage session not closed"
    );

    // 4. An oversized message (declared 16 MiB video, streamed past the limit).
    let mut big = handshake(addr);
    let mut first = vec![0x03, 0, 0, 0, 0xff, 0xff, 0xff, 0x09, 1, 0, 0, 0];
    first.extend_from_slice(&[0x17; 128]);
    let _ = big.write_all(&first);
    for _ in 0..800 {
        let mut chunk = vec![0xC3];
        chunk.extend_from_slice(&[0x01; 128]);
        if big.write_all(&chunk).is_err() {
            break;
        }
    }
    assert!(
        closed_within(&mut big, Duration::from_secs(5)),
        "oversized message not refused"
    );

    // The real player kept playing throughout.
    let n = player.count();
    player.wait_packets(n + 30, Duration::from_secs(10));
    assert!(
        metric(
            &s,
            "primacy_session_errors_total{kind=\"handshake_timeout\""
        ) >= 1.0
    );
    assert!(metric(&s, "primacy_session_errors_total{kind=\"panic\"") >= 1.0);
    assert!(metric(&s, "primacy_session_errors_total{kind=\"too_large\"") >= 1.0);
}

#[test]
fn connection_limits_and_play_tokens() {
    let s = TestServer::start_with(|c| {
        c.rtmp.max_connections_per_ip = 3;
        c.rtmp.play_requires_token = true;
    });
    let addr = s.running().rtmp_addr;
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fourth = TcpStream::connect(addr).unwrap();
    assert!(
        closed_within(&mut fourth, Duration::from_secs(2)),
        "per-IP limit not enforced"
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(300));

    // With play_requires_token, a player without a token is refused.
    let player = Player::start(&format!("rtmp://{addr}/live/live1"));
    let mut p = player.proc;
    assert!(
        p.wait_timeout(Duration::from_secs(15)).is_some(),
        "tokenless player not refused"
    );
    assert!(
        p.stderr_text().contains("missing ?token="),
        "{}",
        p.stderr_text()
    );
}
