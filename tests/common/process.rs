//! The real `primacy serve` binary as a child process, for what an
//! in-process server cannot show: SIGKILL and restart, signals, exit codes.
//!
//! Each process gets its own [`TestDb`] and free loopback ports
//! ([`Ports::free`]); a restart reuses the same ports and database. The
//! process is killed (by its PID) when the handle drops.

// Each test crate compiles these helpers and uses a different part of
// them: an `expect` would be unfulfilled in the crates that use it all.
#![allow(
    dead_code,
    reason = "each test crate uses a part of the shared helpers"
)]

use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::media::{free_tcp_port, free_udp_port, spawn_logged, Proc};
use super::{Http, TestDb, HS256};

/// HTTP, RTMP and SRT ports on 127.0.0.1, each free when chosen.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub http: u16,
    pub rtmp: u16,
    pub srt: u16,
}

impl Ports {
    /// Three ports free right now, below the ephemeral range so that no
    /// outgoing connection takes one before (or between) the gateway's runs.
    pub fn free() -> Self {
        Self {
            http: free_tcp_port(),
            rtmp: free_tcp_port(),
            srt: free_udp_port(),
        }
    }
}

/// A `primacy serve` child process.
pub struct GatewayProcess {
    pub proc: Proc,
    pub ports: Ports,
    pub http: Http,
    /// When the process was spawned.
    pub spawned: Instant,
}

impl GatewayProcess {
    /// Spawn `primacy serve` on `ports` against `db`, with only the
    /// variables it needs (plus `env`, which may override them).
    pub fn spawn(db: &TestDb, ports: Ports, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_primacy"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NO_COLOR", "1")
            .env("PRIMACY_LOG", "info,actix_web::middleware::logger=warn")
            .env("PRIMACY_DATABASE_URL", &db.url)
            .env("PRIMACY_HTTP_LISTEN", format!("127.0.0.1:{}", ports.http))
            .env("PRIMACY_RTMP_LISTEN", format!("127.0.0.1:{}", ports.rtmp))
            .env("PRIMACY_SRT_LISTEN", format!("127.0.0.1:{}", ports.srt))
            .env("PRIMACY_HS256_SECRET", HS256)
            .env("PRIMACY_HS256_KID", "test")
            .env("PRIMACY_NODE_ID", "test-node")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let spawned = Instant::now();
        let proc = spawn_logged(&mut cmd, "primacy serve");
        Self {
            proc,
            ports,
            http: Http::new(&format!("http://127.0.0.1:{}", ports.http)),
            spawned,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// `GET /api/ready`'s status, or None when nothing answers.
    pub fn ready_status(&self) -> Option<u16> {
        self.http
            .try_call("GET", "/api/ready", None, None, "application/json")
            .ok()
            .map(|(status, _)| status)
    }

    /// Poll `/api/ready` every 5 ms until it answers 200; returns the time
    /// since the process was spawned. Panics after `timeout` or if the
    /// process exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Duration {
        let end = Instant::now() + timeout;
        loop {
            if self.ready_status() == Some(200) {
                return self.spawned.elapsed();
            }
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                panic!("primacy exited with {status} before ready:\n{}", self.log());
            }
            assert!(
                Instant::now() < end,
                "primacy not ready within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Send `signal` (`TERM`, `INT`, `KILL`) to this process, by its PID.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} {} failed", self.pid());
    }

    /// Wait for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_timeout(timeout)
    }

    /// Everything the process logged so far (stderr).
    pub fn log(&self) -> String {
        self.proc.stderr_text()
    }

    pub fn rtmp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.rtmp))
    }

    pub fn rtmp(&self, path: &str) -> String {
        format!("rtmp://127.0.0.1:{}/live/{path}", self.ports.rtmp)
    }

    /// An SRT URL for ffmpeg/ffprobe (`latency` in microseconds).
    pub fn srt_ff(&self, streamid: &str) -> String {
        format!(
            "srt://127.0.0.1:{}?streamid={streamid}&latency=120000",
            self.ports.srt
        )
    }

    /// A publish token for `streams` at `priority`: (token id, secret).
    pub fn token(&self, key: &str, streams: &[&str], priority: i32) -> (String, String) {
        let streams: Vec<Value> = streams.iter().map(|n| json!({"name": n})).collect();
        let body = json!({"label": "t", "streams": streams, "priority": priority}).to_string();
        let (st, v) = self
            .http
            .call("POST", "/api/v1/tokens", Some(key), Some(&body));
        assert_eq!(st, 201, "{v}");
        (
            v["token"]["id"].as_str().unwrap().to_owned(),
            v["secret"].as_str().unwrap().to_owned(),
        )
    }
}
