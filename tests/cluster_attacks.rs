//! Attacks on a real cluster through Redis, as someone who can write to
//! Redis (but does not know `cluster.secret`) would make them: a fake node
//! with a top-priority feed, forged and replayed commands, tampered leases
//! and feed records. Also the relay credential (reuse, far expiry) and the
//! kick's audit record. Every test starts real nodes against the real
//! PostgreSQL and the shared Redis (a key prefix per test) and publishes
//! with real ffmpeg encoders.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{agree_on, shared_redis_url, wait_until, Node, TestCluster};
use common::media::{self, Fixture, Player};
use serde_json::{json, Value};

/// A connection to the test's Redis, as the attacker has one.
struct Attacker {
    con: redis::Connection,
    prefix: String,
}

impl Attacker {
    fn new(tc: &TestCluster) -> Self {
        let client = redis::Client::open(tc.redis_url.as_str()).expect("redis url");
        let con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to redis");
        con.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        Self {
            con,
            prefix: tc.prefix.clone(),
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.prefix)
    }

    fn cmd<T: redis::FromRedisValue>(&mut self, c: &mut redis::Cmd) -> T {
        c.query(&mut self.con).expect("redis command")
    }

    fn publish(&mut self, channel: &str, payload: &str) {
        let ch = self.key(channel);
        let _: i64 = self.cmd(redis::cmd("PUBLISH").arg(ch).arg(payload));
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `primacy_cluster_rejected_total` on a node, summed over the lines whose
/// labels contain every `label="value"` pair given.
fn rejected(node: &Node, labels: &[(&str, &str)]) -> u64 {
    let (_, text) = node.http.get_text("/metrics");
    text.lines()
        .filter(|l| l.starts_with("primacy_cluster_rejected_total{"))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The ids and nodes of the feeds a node lists for a stream.
fn feeds_of(node: &Node, stream: &str) -> Vec<(String, String, Value)> {
    node.source(stream)["feeds"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["feed_id"].as_str().unwrap_or_default().to_owned(),
                        f["node"].as_str().unwrap_or_default().to_owned(),
                        f["priority"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn node_names(node: &Node) -> Vec<String> {
    node.get("/api/v1/cluster/nodes")["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap().to_owned())
        .collect()
}

fn two_nodes(tc: &TestCluster) -> (Node, Node) {
    let eu = tc.node("eu-1", "eu");
    let ap = tc.node("ap-1", "ap");
    wait_until("two nodes know each other", Duration::from_secs(15), || {
        node_names(&eu).len() == 2 && node_names(&ap).len() == 2
    });
    (eu, ap)
}

/// A lease and a feed record in the shapes the gateway reads them, made
/// up by the attacker for a node `evil-1`.
fn fake_lease(now: i64) -> Value {
    json!({"node": "evil-1", "region": "eu", "http": "127.0.0.1:9", "rtmp": "127.0.0.1:9",
        "srt": "127.0.0.1:9", "draining": false, "started_at": "2024-01-01T00:00:00Z",
        "renewed_ms": now, "feeds": 1, "players": 0})
}

fn fake_record(feed: &str, stream: &str, now: i64) -> Value {
    json!({"feed_id": feed, "token_id": uuid::Uuid::new_v4(), "label": "evil", "stream": stream,
        "source_id": "", "priority": 2147483647, "pinned": false, "protocol": "rtmp",
        "peer": "127.0.0.1:9", "node": "evil-1", "region": "eu",
        "connected_at": "2024-01-01T00:00:00Z", "eligible_since_ms": now - 60_000,
        "healthy": true, "draining": false, "on_air": true})
}

/// A node registered by the attacker (lease in the node set, a feed record
/// at priority 2147483647, heartbeats and upserts on the events channel)
/// never enters the election: the player stays on the genuine feed, no
/// node lists the fake node or its feed, and the rejections are counted.
#[test]
fn fake_node_with_a_top_priority_feed_does_not_take_the_air() {
    const S: &str = "hostile1";
    let tc = TestCluster::new(&shared_redis_url());
    let (eu, ap) = two_nodes(&tc);
    let (_, secret) = tc.token(&ap, &[S], 100);
    let _enc = media::publish(Fixture::A, &eu.rtmp(&format!("{S}?token={secret}")));
    wait_until(
        "both nodes elect the eu feed",
        Duration::from_secs(20),
        || agree_on(&[&eu, &ap], S, "eu-1").is_some(),
    );
    let player = Player::start(&ap.rtmp(S));
    player.wait_packets(30, Duration::from_secs(20));

    let mut a = Attacker::new(&tc);
    let evil_feed = uuid::Uuid::new_v4().to_string();
    let start = Instant::now();
    let mut rounds = 0;
    // Longer than the lease TTL and two resyncs; the attacker keeps its
    // node fresh the whole time.
    while start.elapsed() < Duration::from_secs(7) {
        let now = now_ms();
        let lease = fake_lease(now);
        let record = fake_record(&evil_feed, S, now);
        let nodes = a.key("nodes");
        let _: i64 = a.cmd(redis::cmd("SADD").arg(nodes).arg("evil-1"));
        let lease_key = a.key("node:evil-1");
        let _: () = a.cmd(
            redis::cmd("SET")
                .arg(lease_key)
                .arg(lease.to_string())
                .arg("PX")
                .arg(5_000),
        );
        let feeds_key = a.key("feeds:evil-1");
        let _: i64 = a.cmd(
            redis::cmd("HSET")
                .arg(feeds_key)
                .arg(&evil_feed)
                .arg(record.to_string()),
        );
        a.publish(
            "events",
            &json!({"kind": "heartbeat", "lease": lease}).to_string(),
        );
        a.publish(
            "events",
            &json!({"kind": "upsert", "record": record}).to_string(),
        );
        for n in [&eu, &ap] {
            assert_eq!(
                n.elected(S).map(|(_, node)| node).as_deref(),
                Some("eu-1"),
                "{} switched: {}",
                n.name,
                n.source(S)
            );
            let feeds = feeds_of(n, S);
            assert!(
                feeds
                    .iter()
                    .all(|(id, node, _)| *id != evil_feed && node != "evil-1"),
                "{} lists the attacker's feed: {feeds:?}",
                n.name
            );
            assert!(
                !node_names(n).contains(&"evil-1".to_owned()),
                "{} lists the fake node",
                n.name
            );
        }
        rounds += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(rounds > 10);
    // The player kept receiving the genuine feed (fixture A's 1 s GOP).
    let from = player.count();
    player.wait_packets(from + 100, Duration::from_secs(10));
    let spacing = media::keyframe_spacing(&player.snapshot()[from..]);
    assert!(spacing.is_some_and(|s| s > 0.8), "{spacing:?}");
    // Each kind of forgery is counted where it was read. The fake lease
    // is read by whichever node resyncs first after the attacker adds it to
    // the node set: that node drops the fake node from the set, so the
    // other may never see it (the two resync timers can run in step).
    let lease_rejects: u64 = [&eu, &ap]
        .iter()
        .map(|n| rejected(n, &[("kind", "lease"), ("reason", "unsigned")]))
        .sum();
    assert!(lease_rejects > 0, "fake lease not counted on any node");
    for n in [&eu, &ap] {
        assert!(
            rejected(n, &[("kind", "event"), ("reason", "unsigned")]) >= 2,
            "{}: fake events not counted",
            n.name
        );
    }
}

/// Commands published on the control channel by the attacker — a kick of
/// a live feed, a drain of its node, in the old unsigned shape and as an
/// envelope with a made-up MAC — are dropped: the feed stays, the node
/// stays ready and undrained, and the node counts each rejection.
#[test]
fn forged_kick_and_drain_commands_are_ignored() {
    const S: &str = "hostile2";
    let tc = TestCluster::new(&shared_redis_url());
    let (eu, ap) = two_nodes(&tc);
    let (_, secret) = tc.token(&ap, &[S], 100);
    let mut enc = media::publish(Fixture::A, &eu.rtmp(&format!("{S}?token={secret}")));
    let feed = wait_until_some("both nodes elect the eu feed", || {
        agree_on(&[&eu, &ap], S, "eu-1")
    });
    let mut a = Attacker::new(&tc);
    let kick = json!({"cmd": "kick", "feed": feed});
    let drain = json!({"cmd": "drain", "node": "eu-1"});
    for command in [&kick, &drain] {
        // The shape the gateway used to accept after a JSON parse.
        a.publish(
            "control",
            &json!({"id": uuid::Uuid::new_v4(), "from": "ap-1", "command": command}).to_string(),
        );
        // A signed-looking envelope with a MAC the attacker cannot compute.
        let body =
            json!({"id": uuid::Uuid::new_v4(), "from": "ap-1", "command": command}).to_string();
        a.publish(
            "control",
            &json!({"v": 1, "kind": "command", "node": "ap-1", "ts": now_ms(),
                "nonce": "00112233445566778899aabbccddeeff", "body": body,
                "mac": "00".repeat(32)})
            .to_string(),
        );
    }
    // The four commands were read and dropped on eu (the node they aim at).
    wait_until(
        "eu counts four rejected commands",
        Duration::from_secs(10),
        || rejected(&eu, &[("kind", "command")]) >= 4,
    );
    assert!(rejected(&eu, &[("kind", "command"), ("reason", "unsigned")]) >= 2);
    assert!(rejected(&eu, &[("kind", "command"), ("reason", "bad_mac")]) >= 2);
    // Give a command that was (wrongly) accepted time to act, then check
    // that none did: the encoder publishes, the feed is live, eu is ready
    // and not draining as ap sees it.
    wait_until(
        "a lease renewal after the forgeries",
        Duration::from_secs(5),
        || {
            ap.get("/api/v1/cluster/nodes")["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["node"] == "eu-1" && n["lease_age_ms"].as_u64().is_some_and(|a| a < 500))
        },
    );
    assert!(
        enc.wait_timeout(Duration::from_millis(200)).is_none(),
        "the encoder was kicked"
    );
    assert_eq!(
        agree_on(&[&eu, &ap], S, "eu-1").as_deref(),
        Some(feed.as_str())
    );
    assert_eq!(eu.call("GET", "/api/ready", None, None).0, 200);
    let nodes = ap.get("/api/v1/cluster/nodes");
    let eu_view = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "eu-1")
        .cloned()
        .unwrap_or_default();
    assert_eq!(eu_view["draining"], false, "{nodes}");
}

fn wait_until_some<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let mut out = None;
    wait_until(what, Duration::from_secs(20), || {
        out = f();
        out.is_some()
    });
    out.expect("checked")
}

/// Commands signed with the cluster secret — as a bug, a node that left,
/// or someone holding the secret and old captures could make them — but
/// stale, from the future, from a node without a lease, or signed by one
/// node while claiming another as sender: all dropped, each for its
/// reason. The same command fresh and from a live node is obeyed (so the
/// refusals are not the test's own signing going wrong).
#[test]
fn signed_commands_that_are_stale_unknown_or_misattributed_are_ignored() {
    use primacy::cluster::envelope::{Kind, Signer};
    const S: &str = "hostile7";
    let tc = TestCluster::new(&shared_redis_url());
    let (eu, ap) = two_nodes(&tc);
    let (_, secret) = tc.token(&ap, &[S], 100);
    let mut enc = media::publish(Fixture::A, &eu.rtmp(&format!("{S}?token={secret}")));
    let feed = wait_until_some("both nodes elect the eu feed", || {
        agree_on(&[&eu, &ap], S, "eu-1")
    });
    let signer = Signer::new(common::cluster::CLUSTER_SECRET.as_bytes());
    let control = format!("{}:control", tc.prefix);
    let kick = |from: &str| {
        json!({"id": uuid::Uuid::new_v4(), "from": from, "actor": "api-key:test",
            "command": {"cmd": "kick", "feed": feed}})
    };
    let sealed = |signed_by: &str, ts: i64, body: &Value| {
        let nonce = *uuid::Uuid::new_v4().as_bytes();
        signer.seal(Kind::Command, &control, signed_by, ts, nonce, body)
    };
    let mut a = Attacker::new(&tc);
    let now = now_ms();
    a.publish("control", &sealed("ap-1", now - 60_000, &kick("ap-1")));
    a.publish("control", &sealed("ap-1", now + 60_000, &kick("ap-1")));
    a.publish("control", &sealed("ghost-1", now, &kick("ghost-1")));
    a.publish("control", &sealed("ap-1", now, &kick("us-1")));
    // Signed for the events channel, published on the control channel.
    let nonce = *uuid::Uuid::new_v4().as_bytes();
    let events = format!("{}:events", tc.prefix);
    a.publish(
        "control",
        &signer.seal(Kind::Command, &events, "ap-1", now, nonce, &kick("ap-1")),
    );
    let count = |reason| rejected(&eu, &[("kind", "command"), ("reason", reason)]);
    wait_until(
        "eu drops each forgery for its reason",
        Duration::from_secs(10),
        || {
            count("stale") >= 2
                && count("unknown_sender") >= 1
                && count("sender_mismatch") >= 1
                && count("bad_mac") >= 1
        },
    );
    assert!(
        enc.wait_timeout(Duration::from_millis(500)).is_none(),
        "kicked"
    );
    assert_eq!(
        agree_on(&[&eu, &ap], S, "eu-1").as_deref(),
        Some(feed.as_str())
    );
    // The control: fresh, signed by the live node it names.
    a.publish("control", &sealed("ap-1", now_ms(), &kick("ap-1")));
    assert!(
        enc.wait_timeout(Duration::from_secs(10)).is_some(),
        "a correctly signed command was not obeyed"
    );
}

/// A genuine command captured on the control channel (the reprioritize,
/// with disconnect, that an operator sends through another node) and
/// published again once the encoder is back: dropped as a replay; the feed
/// stays. (Replayed, it would disconnect the encoder again.)
#[test]
fn replayed_genuine_command_is_ignored() {
    const S: &str = "hostile3";
    let tc = TestCluster::new(&shared_redis_url());
    let (eu, ap) = two_nodes(&tc);
    let (token, secret) = tc.token(&ap, &[S], 100);
    let url = eu.rtmp(&format!("{S}?token={secret}"));
    let mut enc = media::publish(Fixture::A, &url);
    wait_until_some("both nodes elect the eu feed", || {
        agree_on(&[&eu, &ap], S, "eu-1")
    });

    // The attacker listens on the control channel.
    let client = redis::Client::open(tc.redis_url.as_str()).expect("redis url");
    let mut sub_con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect");
    sub_con
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut sub = sub_con.as_pubsub();
    sub.subscribe(format!("{}:control", tc.prefix))
        .expect("subscribe");

    let (st, v) = ap.call(
        "POST",
        &format!("/api/v1/tokens/{token}/reprioritize"),
        Some(&tc.key),
        Some(&json!({ "priority": 90, "disconnect": true }).to_string()),
    );
    assert_eq!(st, 200, "{v}");
    assert!(
        enc.wait_timeout(Duration::from_secs(10)).is_some(),
        "the reprioritize did not disconnect the encoder"
    );
    let end = Instant::now() + Duration::from_secs(10);
    let captured = loop {
        assert!(Instant::now() < end, "no disconnect command captured");
        let Ok(msg) = sub.get_message() else {
            continue;
        };
        let payload: String = msg.get_payload().expect("payload");
        if payload.contains("reprioritize") {
            break payload;
        }
    };
    drop(sub);

    let mut enc = media::publish(Fixture::A, &url);
    let feed = wait_until_some("the encoder is back on eu", || {
        agree_on(&[&eu, &ap], S, "eu-1")
    });
    let before = rejected(&eu, &[("kind", "command")]);
    let mut a = Attacker::new(&tc);
    a.publish("control", &captured);
    wait_until(
        "eu drops the replayed command",
        Duration::from_secs(10),
        || rejected(&eu, &[("kind", "command")]) > before,
    );
    assert!(
        rejected(&eu, &[("kind", "command"), ("reason", "replay")])
            + rejected(&eu, &[("kind", "command"), ("reason", "stale")])
            > 0
    );
    assert!(
        enc.wait_timeout(Duration::from_millis(500)).is_none(),
        "the replayed disconnect reached the encoder"
    );
    assert_eq!(
        agree_on(&[&eu, &ap], S, "eu-1").as_deref(),
        Some(feed.as_str())
    );
}

/// The attacker rewrites a genuine node's lease (its RTMP address, where
/// the other nodes pull its feeds from) and its feed record (priority
/// 50 → 2147483647) over and over: the other node keeps the genuine
/// address and priority, keeps electing the right feed, and counts the
/// bad MACs.
#[test]
fn tampered_lease_and_feed_record_are_rejected() {
    const S: &str = "hostile4";
    let tc = TestCluster::new(&shared_redis_url());
    let (eu, ap) = two_nodes(&tc);
    let (_, low) = tc.token(&ap, &[S], 50);
    let (_, high) = tc.token(&ap, &[S], 100);
    let _e = media::publish(Fixture::A, &eu.rtmp(&format!("{S}?token={low}")));
    let _a = media::publish(Fixture::B, &ap.rtmp(&format!("{S}?token={high}")));
    wait_until(
        "both elect ap's feed, both feeds listed",
        Duration::from_secs(20),
        || agree_on(&[&eu, &ap], S, "ap-1").is_some() && feeds_of(&ap, S).len() == 2,
    );
    let genuine_rtmp = eu.rtmp_addr();
    let mut a = Attacker::new(&tc);
    let lease_key = a.key("node:eu-1");
    let feeds_key = a.key("feeds:eu-1");
    let start = Instant::now();
    let mut tampered = 0;
    while start.elapsed() < Duration::from_secs(7) {
        let lease: Option<String> = a.cmd(redis::cmd("GET").arg(&lease_key));
        if let Some(lease) = lease {
            let bad = lease.replace(&genuine_rtmp, "127.0.0.1:9");
            if bad != lease {
                let _: () = a.cmd(
                    redis::cmd("SET")
                        .arg(&lease_key)
                        .arg(bad)
                        .arg("PX")
                        .arg(5_000),
                );
                tampered += 1;
            }
        }
        let records: std::collections::HashMap<String, String> =
            a.cmd(redis::cmd("HGETALL").arg(&feeds_key));
        for (field, rec) in records {
            let bad = rec
                .replace("\"priority\":50", "\"priority\":2147483647")
                .replace("\\\"priority\\\":50", "\\\"priority\\\":2147483647");
            if bad != rec {
                let _: i64 = a.cmd(redis::cmd("HSET").arg(&feeds_key).arg(field).arg(bad));
                tampered += 1;
            }
        }
        let nodes = ap.get("/api/v1/cluster/nodes");
        let eu_view = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == "eu-1")
            .cloned();
        if let Some(v) = eu_view {
            assert_eq!(
                v["rtmp"],
                genuine_rtmp.as_str(),
                "ap took the tampered lease: {nodes}"
            );
        }
        assert_eq!(
            ap.elected(S).map(|(_, n)| n).as_deref(),
            Some("ap-1"),
            "ap elected the tampered record: {}",
            ap.source(S)
        );
        for (_, node, priority) in feeds_of(&ap, S) {
            if node == "eu-1" {
                assert_eq!(priority, 50, "ap took the tampered priority");
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        tampered > 3,
        "the attacker found nothing to tamper with: {tampered}"
    );
    assert!(rejected(&ap, &[("kind", "lease"), ("reason", "bad_mac")]) > 0);
    assert!(rejected(&ap, &[("kind", "feed"), ("reason", "bad_mac")]) > 0);
    // eu noticed its own records were changed (and rewrote them).
    assert!(rejected(&eu, &[("kind", "feed"), ("reason", "bad_mac")]) > 0);
    // The genuine node stayed a member, and its feed (dropped on ap while
    // its record did not verify) is back as it really is.
    assert!(node_names(&ap).contains(&"eu-1".to_owned()));
    wait_until(
        "ap lists eu's genuine feed again",
        Duration::from_secs(15),
        || {
            feeds_of(&ap, S)
                .iter()
                .any(|(_, n, p)| n == "eu-1" && *p == 50)
        },
    );
}

/// A node leaves gracefully; the attacker writes its last lease and feed
/// records (captured a moment before, genuine and still young) back into
/// Redis and the node set: the other node does not bring it back.
#[test]
fn a_departed_nodes_replayed_lease_does_not_bring_it_back() {
    const S: &str = "hostile8";
    let tc = TestCluster::new(&shared_redis_url());
    let (eu, ap) = two_nodes(&tc);
    let (_, secret) = tc.token(&eu, &[S], 100);
    let _enc = media::publish(Fixture::A, &ap.rtmp(&format!("{S}?token={secret}")));
    wait_until_some("both nodes elect ap's feed", || {
        agree_on(&[&eu, &ap], S, "ap-1")
    });
    let mut a = Attacker::new(&tc);
    let lease_key = a.key("node:ap-1");
    let feeds_key = a.key("feeds:ap-1");
    let lease: String = a.cmd(redis::cmd("GET").arg(&lease_key));
    let records: std::collections::HashMap<String, String> =
        a.cmd(redis::cmd("HGETALL").arg(&feeds_key));
    assert!(!records.is_empty());
    let captured = Instant::now();
    ap.shutdown();
    wait_until("eu sees ap leave", Duration::from_secs(10), || {
        node_names(&eu) == vec!["eu-1".to_owned()]
    });
    // Written back while the captured lease is still within its TTL.
    while captured.elapsed() < Duration::from_secs(7) {
        let nodes = a.key("nodes");
        let _: i64 = a.cmd(redis::cmd("SADD").arg(nodes).arg("ap-1"));
        let _: () = a.cmd(
            redis::cmd("SET")
                .arg(&lease_key)
                .arg(&lease)
                .arg("PX")
                .arg(5_000),
        );
        for (field, rec) in &records {
            let _: i64 = a.cmd(redis::cmd("HSET").arg(&feeds_key).arg(field).arg(rec));
        }
        assert_eq!(node_names(&eu), vec!["eu-1".to_owned()], "ap came back");
        assert!(feeds_of(&eu, S).is_empty(), "ap's feed came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rejected(&eu, &[("kind", "lease"), ("reason", "replay")]) > 0);
}

/// Resident anonymous memory of a process (heap and stacks: what it
/// holds), in bytes (`/proc/PID/status`). Not `VmRSS`: that also counts
/// the pages of the executable as they are first run, which a debug build
/// has tens of MiB of and a loaded machine pages in and out.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// The attacker floods the events channel with 100,000 forged 1 KiB
/// envelopes as fast as Redis takes them. The node under the flood (a
/// `primacy serve` process) keeps its memory bounded (messages it cannot
/// keep up with are dropped unread and counted), keeps its stream on air,
/// and the cluster works afterwards.
#[test]
fn a_flood_on_the_cluster_channels_does_not_grow_memory_or_take_the_air_down() {
    const S: &str = "hostile9";
    const MESSAGES: usize = 100_000;
    let tc = TestCluster::new(&shared_redis_url());
    let eu = tc.child_node("eu-1", "eu");
    let ap = tc.node("ap-1", "ap");
    wait_until("two nodes know each other", Duration::from_secs(15), || {
        node_names(&eu).len() == 2 && node_names(&ap).len() == 2
    });
    let (_, secret) = tc.token(&ap, &[S], 100);
    let mut enc = media::publish(Fixture::A, &eu.rtmp(&format!("{S}?token={secret}")));
    wait_until_some("both nodes elect the eu feed", || {
        agree_on(&[&eu, &ap], S, "eu-1")
    });
    let pid = eu.pid().expect("a child node");
    let before = rss_bytes(pid);
    let mut a = Attacker::new(&tc);
    let forged = json!({"v": 1, "kind": "event", "node": "ap-1", "ts": now_ms(),
        "nonce": "00112233445566778899aabbccddeeff", "body": "x".repeat(900),
        "mac": "00".repeat(32)})
    .to_string();
    let channel = a.key("events");
    let flood_start = Instant::now();
    let mut peak = before;
    for _ in 0..MESSAGES / 1_000 {
        let mut pipe = redis::pipe();
        for _ in 0..1_000 {
            pipe.cmd("PUBLISH").arg(&channel).arg(&forged).ignore();
        }
        let _: () = pipe.query(&mut a.con).expect("flood");
        peak = peak.max(rss_bytes(pid));
    }
    let flooded_in = flood_start.elapsed();
    // Until the node is through the flood: what it counts stops changing
    // (Redis may also cut a subscriber that falls far behind; its messages
    // are then lost in Redis, not queued in the node).
    let counted = |n: &Node| {
        rejected(n, &[("kind", "event"), ("reason", "bad_mac")])
            + rejected(n, &[("kind", "pubsub"), ("reason", "overload")])
    };
    let mut last = (counted(&eu), Instant::now());
    wait_until("eu went through the flood", Duration::from_secs(60), || {
        peak = peak.max(rss_bytes(pid));
        let now = counted(&eu);
        if now != last.0 {
            last = (now, Instant::now());
        }
        now > 0 && last.1.elapsed() > Duration::from_secs(2)
    });
    println!(
        "flood of {MESSAGES} forged 1 KiB events in {flooded_in:?}: eu anonymous RSS {} MiB before, peak {} MiB; {} bad MAC, {} dropped unread",
        before >> 20,
        peak >> 20,
        rejected(&eu, &[("kind", "event"), ("reason", "bad_mac")]),
        rejected(&eu, &[("kind", "pubsub"), ("reason", "overload")]),
    );
    // The flood is ~100 MiB of messages; a bounded queue holds a few MiB.
    assert!(
        peak < before + (48 << 20),
        "eu grew from {} to {} MiB",
        before >> 20,
        peak >> 20
    );
    assert!(
        enc.wait_timeout(Duration::from_millis(200)).is_none(),
        "the encoder was dropped"
    );
    assert_eq!(eu.call("GET", "/api/ready", None, None).0, 200);
    // The cluster still works: a kick through ap reaches eu.
    let (feed, _) = ap.elected(S).expect("elected");
    let (st, v) = ap.call(
        "DELETE",
        &format!("/api/v1/feeds/{feed}"),
        Some(&tc.key),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert!(
        enc.wait_timeout(Duration::from_secs(10)).is_some(),
        "not kicked"
    );
}

/// A relay credential (made with the cluster secret) is good once: played
/// a second time it is refused. One whose expiry lies far in the future is
/// refused too.
#[test]
fn relay_credentials_are_single_use_and_their_expiry_is_capped() {
    const S: &str = "hostile5";
    let tc = TestCluster::new(&shared_redis_url());
    let eu = tc.node("eu-1", "eu");
    let (_, secret) = tc.token(&eu, &[S], 100);
    let _enc = media::publish(Fixture::A, &eu.rtmp(&format!("{S}?token={secret}")));
    let feed = wait_until_some("the feed is elected", || agree_on(&[&eu], S, "eu-1"));
    let feed_id: primacy::domain::FeedId = feed.parse().unwrap();
    let cs = primacy::auth::cluster::ClusterSecret::new(common::cluster::CLUSTER_SECRET.as_bytes());
    let pull = |credential: &str| {
        let url = format!("{}?feed={feed}&cluster={credential}", eu.rtmp(S));
        let mut p = Player::start(&url);
        let got = {
            let end = Instant::now() + Duration::from_secs(15);
            loop {
                if p.count() >= 10 {
                    break true;
                }
                if !p.is_running() || Instant::now() > end {
                    break p.count() >= 10;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        p.proc.kill();
        got
    };
    let credential = cs.issue("ap-1", feed_id, now_ms());
    assert!(pull(&credential), "a fresh credential was refused");
    assert!(!pull(&credential), "a used credential was accepted again");
    // Expiry in the year 3000 (as a bug or a thief holding the secret
    // could make one).
    let year_3000 = 32_503_680_000_000_i64;
    let far = cs.issue("ap-1", feed_id, year_3000);
    assert!(
        !pull(&far),
        "a credential expiring in the year 3000 was accepted"
    );
}

/// The kick's audit record is written before the kick is carried out: with
/// the audit log unwritable the kick fails and the feed stays on air.
#[test]
fn kick_is_not_carried_out_without_its_audit_record() {
    const S: &str = "hostile6";
    let tc = TestCluster::new(&shared_redis_url());
    let eu = tc.node("eu-1", "eu");
    let (_, secret) = tc.token(&eu, &[S], 100);
    let mut enc = media::publish(Fixture::A, &eu.rtmp(&format!("{S}?token={secret}")));
    let feed = wait_until_some("the feed is elected", || agree_on(&[&eu], S, "eu-1"));
    {
        use diesel::RunQueryDsl;
        let mut c = tc.db.connect();
        diesel::sql_query("ALTER TABLE audit_log RENAME TO audit_log_away")
            .execute(&mut c)
            .expect("rename");
    }
    let (st, v) = eu.call(
        "DELETE",
        &format!("/api/v1/feeds/{feed}"),
        Some(&tc.key),
        None,
    );
    assert!(st >= 500, "kick without an audit record answered {st}: {v}");
    assert!(
        enc.wait_timeout(Duration::from_millis(1_500)).is_none(),
        "the feed was kicked although its audit record was not written"
    );
    assert_eq!(agree_on(&[&eu], S, "eu-1").as_deref(), Some(feed.as_str()));
    {
        use diesel::RunQueryDsl;
        let mut c = tc.db.connect();
        diesel::sql_query("ALTER TABLE audit_log_away RENAME TO audit_log")
            .execute(&mut c)
            .expect("rename back");
    }
    let (st, v) = eu.call(
        "DELETE",
        &format!("/api/v1/feeds/{feed}"),
        Some(&tc.key),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert!(
        enc.wait_timeout(Duration::from_secs(10)).is_some(),
        "not kicked"
    );
    let (st, v) = eu.call("GET", "/api/v1/audit?action=feed.kick", Some(&tc.key), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["items"][0]["target"], format!("feed:{feed}"), "{v}");
}
