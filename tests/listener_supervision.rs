//! A listener that cannot accept is not ready. The real cause here: the
//! process runs out of file descriptors (its limit lowered with
//! `prlimit`), so every RTMP `accept` fails with EMFILE. `/api/ready`
//! answers 503 naming the RTMP listener and `/api/health` shows it, the
//! log says so a few times rather than once per failed accept, and once
//! the limit is raised the waiting client is served and readiness returns.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{GatewayProcess, Ports};
use common::rtmp_raw;
use common::TestDb;
use serde_json::Value;

/// One HTTP/1.1 connection kept open, so that requests need no new file
/// descriptor in the gateway.
struct KeepAlive(TcpStream);

impl KeepAlive {
    fn open(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect HTTP");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self(s)
    }

    fn get(&mut self, path: &str) -> (u16, Value) {
        write!(
            self.0,
            "GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: keep-alive\r\n\r\n"
        )
        .expect("send request");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.0.read_exact(&mut byte).expect("response head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("content-length");
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).expect("body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

/// The lowest file descriptor number `pid` does not use: with the soft
/// limit there, the process cannot open any more.
fn lowest_free_fd(pid: u32) -> u64 {
    let used: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).expect("a free fd")
}

fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let cols: Vec<&str> = line.split_whitespace().collect();
    (cols[3].to_owned(), cols[4].to_owned())
}

fn prlimit(pid: u32, soft: &str, hard: &str) {
    let status = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={soft}:{hard}"),
        ])
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit failed");
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_listener_that_cannot_accept_is_not_ready_until_it_can() {
    let db = TestDb::migrated();
    let ports = Ports::free();
    let mut g = GatewayProcess::spawn(&db, ports, &[]);
    g.wait_ready(Duration::from_secs(30));
    let pid = g.pid();
    let mut http = KeepAlive::open(ports.http);
    assert_eq!(http.get("/api/ready").0, 200);
    let log_before = g.log().lines().count();

    let (soft, hard) = nofile(pid);
    let low = lowest_free_fd(pid);
    prlimit(pid, &low.to_string(), &hard);
    // Clients the kernel queues but the gateway cannot accept.
    let waiting: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(g.rtmp_addr()).expect("connect RTMP"))
        .collect();

    let mut seen = Value::Null;
    wait_for("/api/ready to answer 503", Duration::from_secs(15), || {
        let (st, v) = http.get("/api/ready");
        seen = v;
        st == 503
    });
    println!("/api/ready with RTMP accept failing: {seen}");
    let message = seen["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("RTMP"), "{seen}");
    let (st, health) = http.get("/api/health");
    assert_eq!(st, 200, "liveness stays 200: {health}");
    let rtmp = health["listeners"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["name"] == "rtmp"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_ne!(rtmp["status"], "up", "{health}");
    println!("/api/health listener: {rtmp}");

    // A few seconds of failing accepts are a few log lines.
    std::thread::sleep(Duration::from_secs(3));
    let lines = g
        .log()
        .lines()
        .skip(log_before)
        .filter(|l| l.contains("accept"))
        .count();
    assert!(
        lines <= 6,
        "{lines} log lines about failed accepts:\n{}",
        g.log()
    );

    prlimit(pid, &soft, &hard);
    wait_for(
        "/api/ready to answer 200 again",
        Duration::from_secs(15),
        || http.get("/api/ready").0 == 200,
    );
    drop(waiting);
    // And a new client is served.
    let mut c = rtmp_raw::handshake(g.rtmp_addr());
    c.write_all(&[0xC3]).unwrap();
    let (_, health) = http.get("/api/health");
    println!("after the limit was raised: {}", health["listeners"]);
}
