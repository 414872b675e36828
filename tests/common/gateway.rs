//! A running test gateway with an admin API key, and the small calls the
//! end-to-end tests make on it: tokens, publish/play URLs, waiting for feeds.

// Each test crate compiles these helpers and uses a different part of
// them: an `expect` would be unfulfilled in the crates that use it all.
#![allow(
    dead_code,
    reason = "each test crate uses a part of the shared helpers"
)]

use std::time::{Duration, Instant};

use primacy::auth::api_keys::Scope;
use serde_json::{json, Value};

use super::{Http, TestServer};

pub struct Gateway {
    pub s: TestServer,
    pub key: String,
}

impl Gateway {
    /// A gateway with `failback_hold` = 1 s.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// A gateway with `failback_hold` = 1 s, then `tweak` applied.
    pub fn start_with(tweak: impl FnOnce(&mut primacy::config::Config)) -> Self {
        let s = TestServer::start_with(|c| {
            c.election.failback_hold_ms = 1_000;
            tweak(c);
        });
        let key = s.db.api_key(&[Scope::Admin]);
        Self { s, key }
    }

    /// `method path` with the admin key and a JSON body; (status, body).
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string);
        self.s.call(method, path, Some(&self.key), body.as_deref())
    }

    /// Wait (at most `timeout`) until `f` returns `Some`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Option<T>,
    ) -> T {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < end,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A token for `streams` at `priority`: (token id, secret).
    pub fn token(&self, streams: &[&str], priority: i32) -> (String, String) {
        let streams: Vec<Value> = streams.iter().map(|n| json!({"name": n})).collect();
        let body = json!({"label": "t", "streams": streams, "priority": priority}).to_string();
        let (st, v) = self
            .s
            .call("POST", "/api/v1/tokens", Some(&self.key), Some(&body));
        assert_eq!(st, 201, "{v}");
        (
            v["token"]["id"].as_str().unwrap().to_owned(),
            v["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// An SRT URL for ffmpeg/ffprobe (`latency` in microseconds).
    pub fn srt_ff(&self, streamid: &str) -> String {
        format!(
            "srt://{}?streamid={streamid}&latency=120000",
            self.s.running().srt_addr
        )
    }

    /// An SRT URL for srt-live-transmit (default 120 ms latency).
    pub fn srt_slt(&self, streamid: &str) -> String {
        format!("srt://{}?streamid={streamid}", self.s.running().srt_addr)
    }

    pub fn rtmp(&self, path: &str) -> String {
        format!("rtmp://{}/live/{path}", self.s.running().rtmp_addr)
    }

    /// The stream's view (a 404 body when it is not live).
    pub fn stream(&self, name: &str) -> Value {
        stream(self.s.http(), &self.key, name)
    }

    /// Wait until `name` has `n` feeds, one on air (that of `on_air_token`
    /// when given).
    pub fn wait_feeds(&self, name: &str, n: usize, on_air_token: Option<&str>) -> Value {
        wait_feeds(self.s.http(), &self.key, name, n, on_air_token)
    }
}

/// The stream's view on the gateway at `http` (a 404 body when it is not live).
pub fn stream(http: &Http, key: &str, name: &str) -> Value {
    let (st, v) = http.call("GET", &format!("/api/v1/streams/{name}"), Some(key), None);
    assert!(st == 200 || st == 404, "GET stream {name}: {st} {v}");
    v
}

/// Wait until `name` has `n` feeds, one on air (that of `on_air_token` when
/// given), on the gateway at `http`.
pub fn wait_feeds(
    http: &Http,
    key: &str,
    name: &str,
    n: usize,
    on_air_token: Option<&str>,
) -> Value {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let v = stream(http, key, name);
        let feeds = v["sources"][0]["feeds"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let on_air = feeds
            .iter()
            .any(|f| f["state"] == "on_air" && on_air_token.is_none_or(|t| f["token_id"] == t));
        if feeds.len() == n && on_air {
            return v;
        }
        assert!(Instant::now() < end, "stream {name}: wanted {n} feeds: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
