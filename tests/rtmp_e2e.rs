//! End to end over RTMP with real ffmpeg encoders and ffprobe players:
//! publish and play, refusals, failover between redundant encoders,
//! failback, reprioritize, vacancy. Timing figures are printed, and only
//! generous correctness bounds are asserted (the targets are measured by
//! the benchmark tooling, not here).

mod common;

use std::time::{Duration, Instant};

use common::media::{
    check_monotonic, keyframe_spacing, publish, publish_expect_refusal, Fixture, Player,
};
use common::TestServer;
use primacy::auth::api_keys::Scope;
use serde_json::{json, Value};

struct Env {
    s: TestServer,
    key: String,
}

impl Env {
    fn start() -> Self {
        let s = TestServer::start_with(|c| {
            c.election.failback_hold_ms = 1_000;
            c.switch.vacant_hold_ms = 4_000;
        });
        let key = s.db.api_key(&[Scope::Admin]);
        Self { s, key }
    }

    /// Create a token; returns (id, secret).
    fn token(&self, label: &str, streams: &[&str], priority: Option<i32>) -> (String, String) {
        let streams: Vec<Value> = streams.iter().map(|n| json!({"name": n})).collect();
        let body = json!({"label": label, "streams": streams, "priority": priority}).to_string();
        let (st, v) = self
            .s
            .call("POST", "/api/v1/tokens", Some(&self.key), Some(&body));
        assert_eq!(st, 201, "{v}");
        (
            v["token"]["id"].as_str().unwrap().to_owned(),
            v["secret"].as_str().unwrap().to_owned(),
        )
    }

    fn rtmp(&self, path: &str) -> String {
        format!("rtmp://{}/live/{path}", self.s.running().rtmp_addr)
    }

    fn stream(&self, name: &str) -> Option<Value> {
        let (st, v) = self.s.call(
            "GET",
            &format!("/api/v1/streams/{name}"),
            Some(&self.key),
            None,
        );
        (st == 200).then_some(v)
    }

    /// Wait until the stream's default source has a primary with `feeds` feeds.
    fn wait_on_air(&self, name: &str, feeds: usize, timeout: Duration) -> Value {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = self.stream(name) {
                let src = &v["sources"][0];
                if !src["primary"].is_null() && src["feeds"].as_array().map(Vec::len) == Some(feeds)
                {
                    return v;
                }
            }
            assert!(
                Instant::now() < end,
                "stream {name} not on air with {feeds} feed(s): {:?}",
                self.stream(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Env {
    /// Wait until the feed on air in the default source has token `token`.
    fn wait_primary_token(&self, name: &str, token: &str, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = self.stream(name) {
                let src = &v["sources"][0];
                let on_air = src["feeds"]
                    .as_array()
                    .and_then(|f| f.iter().find(|f| f["state"] == "on_air"))
                    .map(|f| f["token_id"].as_str() == Some(token));
                if on_air == Some(true) {
                    return;
                }
            }
            assert!(
                Instant::now() < end,
                "token {token} not on air on {name}: {:?}",
                self.stream(name)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn spacing_since(p: &Player, from: usize) -> Option<f64> {
    let snap = p.snapshot();
    keyframe_spacing(&snap[from.min(snap.len())..])
}

#[test]
fn publish_and_play() {
    let e = Env::start();
    let (_, secret) = e.token("cam", &["match1"], Some(100));
    let _enc = publish(Fixture::A, &e.rtmp(&format!("match1?token={secret}")));
    e.wait_on_air("match1", 1, Duration::from_secs(15));
    let player = Player::start(&e.rtmp("match1"));
    player.wait_packets(90, Duration::from_secs(20));
    let packets = player.snapshot();
    assert!(
        packets[0].keyframe,
        "playback must start on a keyframe: {:?}",
        &packets[..3]
    );
    let (gap, _) = check_monotonic(&packets);
    println!(
        "publish_and_play: {} packets, largest inter-arrival gap {gap:?}",
        packets.len()
    );
    let v = e.stream("match1").unwrap();
    let feed = &v["sources"][0]["feeds"][0];
    assert_eq!(feed["state"], "on_air");
    assert_eq!(feed["protocol"], "rtmp");
    assert_eq!(feed["priority"], 100);
    assert_eq!(feed["pinned"], false);
    assert!(feed["video_kbps"].as_f64().unwrap() > 0.0 || feed["frames"].as_u64().unwrap() > 0);
    let (st, metrics) = e.s.get_text("/metrics");
    assert_eq!(st, 200);
    assert!(metrics.contains("primacy_feeds 1"), "{metrics}");
}

#[test]
fn refusals_name_the_reason() {
    let e = Env::start();
    let (id, secret) = e.token("cam", &["match1"], Some(1));
    let t = Duration::from_secs(20);
    let (code, err) = publish_expect_refusal(Fixture::A, &e.rtmp("match1?token=garbage"), t);
    assert!(
        code.is_some_and(|c| c != 0),
        "garbage token must be refused: {err}"
    );
    assert!(err.contains("invalid token"), "{err}");
    let (_, err) = publish_expect_refusal(Fixture::A, &e.rtmp(&format!("other?token={secret}")), t);
    assert!(err.contains("may not publish this stream"), "{err}");
    let (_, err) = publish_expect_refusal(Fixture::A, &e.rtmp("match1"), t);
    assert!(err.contains("missing ?token="), "{err}");
    let (st, _) = e.s.call(
        "PATCH",
        &format!("/api/v1/tokens/{id}"),
        Some(&e.key),
        Some(r#"{"enabled": false}"#),
    );
    assert_eq!(st, 200);
    let (_, err) =
        publish_expect_refusal(Fixture::A, &e.rtmp(&format!("match1?token={secret}")), t);
    assert!(err.contains("token is disabled"), "{err}");
    let (_, secret2) = {
        let body =
            json!({"label": "short", "streams": [{"name": "match1"}], "expires_in_seconds": 1})
                .to_string();
        let (st, v) =
            e.s.call("POST", "/api/v1/tokens", Some(&e.key), Some(&body));
        assert_eq!(st, 201);
        (
            v["token"]["id"].clone(),
            v["secret"].as_str().unwrap().to_owned(),
        )
    };
    std::thread::sleep(Duration::from_millis(1_500));
    let (_, err) =
        publish_expect_refusal(Fixture::A, &e.rtmp(&format!("match1?token={secret2}")), t);
    assert!(err.contains("token has expired"), "{err}");
    let (_, m) = e.s.get_text("/metrics");
    assert!(m.contains("reason=\"expired\""), "{m}");
}

#[test]
fn failover_and_failback() {
    let e = Env::start();
    let (hi_id, hi) = e.token("primary", &["match1"], Some(100));
    let (_, lo) = e.token("backup", &["match1"], Some(50));
    let mut a = publish(Fixture::A, &e.rtmp(&format!("match1?token={hi}")));
    let _b = publish(Fixture::B, &e.rtmp(&format!("match1?token={lo}")));
    e.wait_on_air("match1", 2, Duration::from_secs(15));
    e.wait_primary_token("match1", &hi_id, Duration::from_secs(15));
    let player = Player::start(&e.rtmp("match1"));
    player.wait_packets(120, Duration::from_secs(20));
    let sp = spacing_since(&player, 0).expect("keyframes");
    assert!(
        (sp - 1.0).abs() < 0.2,
        "player should receive the priority-100 feed (1 s GOP), spacing {sp}"
    );

    // Kill the primary: the player stays connected and continues on the backup.
    let before_kill = player.count();
    let killed_at = Instant::now();
    a.kill();
    player.wait_packets(before_kill + 150, Duration::from_secs(20));
    let packets = player.snapshot();
    let (gap, at) = check_monotonic(&packets);
    println!(
        "failover: largest wall-clock gap between video packets {:.1} ms at packet {at} (kill at packet {before_kill}, {:?} after the kill)",
        gap.as_secs_f64() * 1000.0,
        packets[at].arrived.duration_since(killed_at)
    );
    assert!(
        gap < Duration::from_secs(1),
        "failover gap {gap:?} is over the 1 s correctness bound"
    );
    let sp = spacing_since(&player, before_kill + 30).expect("keyframes after failover");
    assert!(
        (sp - 0.5).abs() < 0.15,
        "player should now receive the backup (0.5 s GOP), spacing {sp}"
    );
    let v = e.stream("match1").unwrap();
    assert_eq!(v["sources"][0]["last_switch"]["reason"], "primary_lost");
    assert_eq!(v["sources"][0]["last_switch"]["planned"], false);

    // Restart the primary: after failback_hold the player is back on it, no regression.
    let before_back = player.count();
    let _a2 = publish(Fixture::A, &e.rtmp(&format!("match1?token={hi}")));
    player.wait_packets(before_back + 240, Duration::from_secs(30));
    let packets = player.snapshot();
    check_monotonic(&packets);
    let sp = spacing_since(&player, player.count() - 100).expect("keyframes after failback");
    assert!(
        (sp - 1.0).abs() < 0.2,
        "player should be back on the primary, spacing {sp}"
    );
    let v = e.stream("match1").unwrap();
    assert_eq!(v["sources"][0]["last_switch"]["reason"], "better");
    assert_eq!(v["sources"][0]["last_switch"]["planned"], true);
    // Planned cut: no frame lost — dts steps stay at one frame interval.
    let big_steps = packets[before_back..]
        .windows(2)
        .filter(|w| w[1].dts - w[0].dts > 0.1)
        .count();
    assert_eq!(big_steps, 0, "planned switch lost frames");
}

/// The feed id of the feed with `token` on the default source.
fn feed_of(e: &Env, stream: &str, token: &str) -> String {
    let v = e.stream(stream).expect("stream");
    v["sources"][0]["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["token_id"] == token)
        .map(|f| f["feed_id"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("no feed of token {token}: {v}"))
}

#[test]
fn reprioritize_with_disconnect_switches_first_then_disconnects() {
    let e = Env::start();
    let (hi_id, hi) = e.token("primary", &["match1"], Some(100));
    let (lo_id, lo) = e.token("backup", &["match1"], Some(50));
    let mut a = publish(Fixture::A, &e.rtmp(&format!("match1?token={hi}")));
    let _b = publish(Fixture::B, &e.rtmp(&format!("match1?token={lo}")));
    e.wait_on_air("match1", 2, Duration::from_secs(15));
    e.wait_primary_token("match1", &hi_id, Duration::from_secs(15));
    let player = Player::start(&e.rtmp("match1"));
    player.wait_packets(60, Duration::from_secs(20));
    let a_feed = feed_of(&e, "match1", &hi_id);

    let before = player.count();
    let t0 = Instant::now();
    let (st, v) = e.s.call(
        "POST",
        &format!("/api/v1/tokens/{hi_id}/reprioritize"),
        Some(&e.key),
        Some(r#"{"priority": 10, "disconnect": true}"#),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["previous_priority"], 100);
    assert_eq!(v["token"]["priority"], 10);
    let affected = v["affected"].as_array().unwrap();
    assert_eq!(affected.len(), 1, "{v}");
    assert_eq!(affected[0]["feed_id"], a_feed.as_str());
    assert_eq!(affected[0]["was_primary"], true);
    assert_eq!(affected[0]["node"], "test-node");
    assert!(v["pinned"].as_array().unwrap().is_empty());

    // Planned: the backup takes the air, then the old primary is disconnected.
    e.wait_primary_token("match1", &lo_id, Duration::from_secs(5));
    println!(
        "reprioritize (disconnect): backup on air {:?} after the call",
        t0.elapsed()
    );
    assert!(
        a.wait_timeout(Duration::from_secs(5)).is_some(),
        "the old primary's encoder was not disconnected"
    );
    player.wait_packets(before + 60, Duration::from_secs(10));
    let packets = player.snapshot();
    check_monotonic(&packets);
    let lost = packets[before..]
        .windows(2)
        .filter(|w| w[1].dts - w[0].dts > 0.1)
        .count();
    assert_eq!(lost, 0, "planned switch lost frames");
    let ls = &e.stream("match1").unwrap()["sources"][0]["last_switch"];
    assert_eq!(ls["reason"], "draining");
    assert_eq!(ls["planned"], true);

    // The encoder reconnects and is admitted with the new, lower priority.
    let _a2 = publish(Fixture::A, &e.rtmp(&format!("match1?token={hi}")));
    e.wait_on_air("match1", 2, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1_500));
    let v = e.stream("match1").unwrap();
    let a_again = v["sources"][0]["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["token_id"] == hi_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(a_again["priority"], 10);
    assert_ne!(a_again["state"], "on_air");
}

#[test]
fn reprioritize_in_place_and_pinned_feeds() {
    let e = Env::start();
    let (hi_id, hi) = e.token("primary", &["match1"], Some(100));
    let (lo_id, lo) = e.token("backup", &["match1"], Some(50));
    // priority= may only lower the token's priority (token 1000, feed 500).
    let (pin_id, pin) = e.token("pinned", &["match2"], Some(1000));
    let a = publish(Fixture::A, &e.rtmp(&format!("match1?token={hi}")));
    let _b = publish(Fixture::B, &e.rtmp(&format!("match1?token={lo}")));
    let _p = publish(
        Fixture::A,
        &e.rtmp(&format!("match2?token={pin}&priority=500")),
    );
    e.wait_on_air("match1", 2, Duration::from_secs(15));
    e.wait_primary_token("match1", &hi_id, Duration::from_secs(15));
    e.wait_on_air("match2", 1, Duration::from_secs(15));

    let (st, v) = e.s.call(
        "POST",
        &format!("/api/v1/tokens/{hi_id}/reprioritize"),
        Some(&e.key),
        Some(r#"{"priority": 10, "disconnect": false}"#),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["affected"].as_array().unwrap().len(), 1);
    e.wait_primary_token("match1", &lo_id, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1_000));
    let mut a = a;
    assert!(
        a.wait_timeout(Duration::from_millis(100)).is_none(),
        "in-place reprioritize must not disconnect"
    );
    let v = e.stream("match1").unwrap();
    let feeds = v["sources"][0]["feeds"].as_array().unwrap();
    assert_eq!(
        feeds
            .iter()
            .find(|f| f["token_id"] == hi_id.as_str())
            .unwrap()["priority"],
        10
    );

    // A feed with priority= in its URL is pinned: reported and not
    // disconnected; above its pinned value the token's priority leaves it
    // as it is (below, it would cap it: tests/token_live_feeds.rs).
    let (st, v) = e.s.call(
        "POST",
        &format!("/api/v1/tokens/{pin_id}/reprioritize"),
        Some(&e.key),
        Some(r#"{"priority": 600, "disconnect": true}"#),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["affected"].as_array().unwrap().is_empty(), "{v}");
    let pinned = v["pinned"].as_array().unwrap();
    assert_eq!(pinned.len(), 1, "{v}");
    std::thread::sleep(Duration::from_millis(1_000));
    let m2 = e.stream("match2").unwrap();
    let f = &m2["sources"][0]["feeds"][0];
    assert_eq!(f["pinned"], true);
    assert_eq!(f["priority"], 500);
    assert_eq!(f["state"], "on_air");
}

#[test]
fn vacant_source_keeps_players_then_lets_them_go() {
    let e = Env::start();
    let (_, t) = e.token("cam", &["match1"], Some(1));
    let mut a = publish(Fixture::A, &e.rtmp(&format!("match1?token={t}")));
    e.wait_on_air("match1", 1, Duration::from_secs(15));
    let mut player = Player::start(&e.rtmp("match1"));
    player.wait_packets(60, Duration::from_secs(20));
    a.kill();
    std::thread::sleep(Duration::from_millis(2_000));
    assert!(
        player.is_running(),
        "player must stay connected while the source is vacant"
    );
    let before = player.count();
    let mut a2 = publish(Fixture::A, &e.rtmp(&format!("match1?token={t}")));
    player.wait_packets(before + 60, Duration::from_secs(20));
    check_monotonic(&player.snapshot());

    // Vacant for longer than vacant_hold (4 s here): the player is let go.
    a2.kill();
    let end = Instant::now() + Duration::from_secs(15);
    while player.is_running() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !player.is_running(),
        "player still connected after vacant_hold"
    );
}

#[test]
fn kick_with_ban_and_disable_delete_disconnect() {
    let e = Env::start();
    let (id, t) = e.token("cam", &["match1"], Some(1));
    let mut a = publish(Fixture::A, &e.rtmp(&format!("match1?token={t}")));
    e.wait_on_air("match1", 1, Duration::from_secs(15));
    let feed = feed_of(&e, "match1", &id);
    let (st, v) = e.s.call(
        "DELETE",
        &format!("/api/v1/feeds/{feed}?ban_seconds=60"),
        Some(&e.key),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert!(
        a.wait_timeout(Duration::from_secs(5)).is_some(),
        "kicked encoder not disconnected"
    );
    let (_, err) = publish_expect_refusal(
        Fixture::A,
        &e.rtmp(&format!("match1?token={t}")),
        Duration::from_secs(20),
    );
    assert!(err.contains("banned"), "{err}");
    let (st, _) = e.s.call(
        "DELETE",
        &format!("/api/v1/feeds/{feed}"),
        Some(&e.key),
        None,
    );
    assert_eq!(st, 404);
    let (_, audit) = e.s.call(
        "GET",
        &format!("/api/v1/audit?target=feed:{feed}"),
        Some(&e.key),
        None,
    );
    assert_eq!(audit["items"][0]["action"], "feed.kick");

    // Disabling a token disconnects its feed at once; reconnects are refused.
    let (id2, t2) = e.token("cam2", &["match2"], Some(1));
    let mut b = publish(Fixture::B, &e.rtmp(&format!("match2?token={t2}")));
    e.wait_on_air("match2", 1, Duration::from_secs(15));
    let (st, _) = e.s.call(
        "PATCH",
        &format!("/api/v1/tokens/{id2}"),
        Some(&e.key),
        Some(r#"{"enabled": false}"#),
    );
    assert_eq!(st, 200);
    assert!(
        b.wait_timeout(Duration::from_secs(5)).is_some(),
        "disabled token's encoder not disconnected"
    );

    // Deleting does the same.
    let (id3, t3) = e.token("cam3", &["match3"], Some(1));
    let mut c = publish(Fixture::B, &e.rtmp(&format!("match3?token={t3}")));
    e.wait_on_air("match3", 1, Duration::from_secs(15));
    let (st, _) = e.s.call(
        "DELETE",
        &format!("/api/v1/tokens/{id3}"),
        Some(&e.key),
        None,
    );
    assert_eq!(st, 204);
    assert!(
        c.wait_timeout(Duration::from_secs(5)).is_some(),
        "deleted token's encoder not disconnected"
    );
    let (_, err) = publish_expect_refusal(
        Fixture::B,
        &e.rtmp(&format!("match3?token={t3}")),
        Duration::from_secs(20),
    );
    assert!(err.contains("invalid token"), "{err}");
}
