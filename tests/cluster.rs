//! Multi-region: three gateways (regions eu, us, ap) on loopback ports
//! sharing the real PostgreSQL and Redis (a key prefix per test). Encoders
//! are real ffmpeg processes; the global election is checked through each
//! node's streams API (`elected`), so every test asserts that all nodes
//! agree.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{agree_on, shared_redis_url, wait_until, PrivateRedis, TestCluster};
use common::media::{self, Fixture, Player};
use serde_json::json;

const STREAM: &str = "match1";

/// Primary at eu (100), backup at us (50): every node elects eu's feed;
/// the eu encoder dies → every node elects us's; it comes back → failback
/// after the hold; reprioritizing the eu token to 10 through the ap API
/// disconnects the eu encoder (reported with node and region) and every
/// node ends on us.
#[test]
fn global_election_failover_failback_and_cross_node_reprioritize() {
    let tc = TestCluster::new(&shared_redis_url());
    let eu = tc.node("eu-1", "eu");
    let us = tc.node("us-1", "us");
    let ap = tc.node("ap-1", "ap");
    let all = [&eu, &us, &ap];
    wait_until(
        "three nodes know each other",
        Duration::from_secs(10),
        || {
            all.iter().all(|n| {
                n.get("/api/v1/cluster/nodes")["nodes"]
                    .as_array()
                    .unwrap()
                    .len()
                    == 3
            })
        },
    );
    let (eu_token, eu_secret) = tc.token(&ap, &[STREAM], 100);
    let (_, us_secret) = tc.token(&ap, &[STREAM], 50);

    let mut eu_enc = media::publish(Fixture::A, &eu.rtmp(&format!("{STREAM}?token={eu_secret}")));
    let _us_enc = media::publish(Fixture::B, &us.rtmp(&format!("{STREAM}?token={us_secret}")));
    let t = wait_until(
        "all nodes elect the eu feed",
        Duration::from_secs(20),
        || {
            agree_on(&all, STREAM, "eu-1").is_some()
                && all.iter().all(|n| {
                    n.source(STREAM)["feeds"]
                        .as_array()
                        .is_some_and(|f| f.len() == 2)
                })
        },
    );
    println!("agreement on the eu feed after {t:?}");
    // Region and node per feed, as every node sees them.
    let feeds = ap.source(STREAM)["feeds"].clone();
    let regions: Vec<(&str, &str)> = feeds
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["node"].as_str().unwrap(), f["region"].as_str().unwrap()))
        .collect();
    assert_eq!(regions, vec![("eu-1", "eu"), ("us-1", "us")], "{feeds}");

    // The eu encoder dies: every node fails over to us.
    let killed = Instant::now();
    eu_enc.kill();
    let t = wait_until(
        "all nodes elect the us feed",
        Duration::from_secs(10),
        || agree_on(&all, STREAM, "us-1").is_some(),
    );
    println!(
        "cross-node failover (election) on every node {:?} after the encoder died",
        killed.elapsed()
    );
    assert!(t < Duration::from_secs(5));

    // It comes back: failback to eu after the hold, on every node.
    let back = Instant::now();
    let mut eu_enc = media::publish(Fixture::A, &eu.rtmp(&format!("{STREAM}?token={eu_secret}")));
    wait_until("all nodes fail back to eu", Duration::from_secs(20), || {
        agree_on(&all, STREAM, "eu-1").is_some()
    });
    let failback = back.elapsed();
    println!("failback on every node after {failback:?} (hold 1 s)");
    assert!(
        failback >= Duration::from_secs(1),
        "failback before the hold: {failback:?}"
    );

    // Reprioritize the eu token to 10 through the ap node.
    let body = json!({"priority": 10, "disconnect": true}).to_string();
    let called = Instant::now();
    let (st, v) = ap.call(
        "POST",
        &format!("/api/v1/tokens/{eu_token}/reprioritize"),
        Some(&tc.key),
        Some(&body),
    );
    let answered = called.elapsed();
    assert_eq!(st, 200, "{v}");
    let affected = v["affected"].as_array().unwrap();
    assert_eq!(affected.len(), 1, "{v}");
    assert_eq!(affected[0]["node"], "eu-1", "{v}");
    assert_eq!(affected[0]["region"], "eu", "{v}");
    assert_eq!(
        affected[0]["was_primary"],
        true,
        "{v}\neu: {}",
        eu.source(STREAM)
    );
    assert_eq!(v["unanswered"], json!([]), "{v}");
    println!("reprioritize answered in {answered:?}");
    // The eu encoder is disconnected (ffmpeg exits) and every node is on us.
    assert!(
        eu_enc.wait_timeout(Duration::from_secs(10)).is_some(),
        "the eu encoder was not disconnected"
    );
    let t = wait_until(
        "all nodes elect the us feed after reprioritize",
        Duration::from_secs(10),
        || agree_on(&all, STREAM, "us-1").is_some(),
    );
    println!(
        "reprioritize → us elected everywhere after {:?}",
        answered + t
    );
    // Reconnecting at the new priority (10) it stays below us (50).
    let _eu_enc = media::publish(Fixture::A, &eu.rtmp(&format!("{STREAM}?token={eu_secret}")));
    wait_until(
        "the eu encoder is back at priority 10",
        Duration::from_secs(20),
        || {
            ap.source(STREAM)["feeds"].as_array().is_some_and(|f| {
                f.iter()
                    .any(|f| f["node"] == "eu-1" && f["priority"] == 10 && f["eligible"] == true)
            })
        },
    );
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(
        agree_on(&all, STREAM, "us-1").is_some(),
        "{}",
        ap.source(STREAM)
    );
}

/// A kick on any node reaches the node that has the feed; its ban holds on
/// every node.
#[test]
fn cross_node_kick_with_ban() {
    let tc = TestCluster::new(&shared_redis_url());
    let eu = tc.node("eu-1", "eu");
    let ap = tc.node("ap-1", "ap");
    let (_, secret) = tc.token(&ap, &["kick1"], 100);
    let mut enc = media::publish(Fixture::A, &eu.rtmp(&format!("kick1?token={secret}")));
    wait_until("ap sees the eu feed", Duration::from_secs(20), || {
        agree_on(&[&eu, &ap], "kick1", "eu-1").is_some()
    });
    let (feed, _) = ap.elected("kick1").unwrap();
    let (st, v) = ap.call(
        "DELETE",
        &format!("/api/v1/feeds/{feed}?ban_seconds=60"),
        Some(&tc.key),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["node"], "eu-1", "{v}");
    assert!(
        enc.wait_timeout(Duration::from_secs(10)).is_some(),
        "not disconnected"
    );
    // Banned on its node and on the others.
    for n in [&eu, &ap] {
        let (code, err) = media::publish_expect_refusal(
            Fixture::A,
            &n.rtmp(&format!("kick1?token={secret}")),
            Duration::from_secs(15),
        );
        assert_ne!(code, Some(0), "publish on {} after a ban: {err}", n.name);
    }
    // An unknown feed is 404 on every node.
    let (st, _) = ap.call(
        "DELETE",
        &format!("/api/v1/feeds/{}", uuid::Uuid::new_v4()),
        Some(&tc.key),
        None,
    );
    assert_eq!(st, 404);
}

/// SIGKILL the eu gateway (a child process): within the lease TTL the
/// others drop its feeds and fail over to us.
#[test]
fn killed_node_feeds_leave_within_the_lease_ttl() {
    let tc = TestCluster::new(&shared_redis_url());
    let mut eu = tc.child_node("eu-1", "eu");
    let us = tc.node("us-1", "us");
    let ap = tc.node("ap-1", "ap");
    let (_, eu_secret) = tc.token(&ap, &[STREAM], 100);
    let (_, us_secret) = tc.token(&ap, &[STREAM], 50);
    let _eu_enc = media::publish(Fixture::A, &eu.rtmp(&format!("{STREAM}?token={eu_secret}")));
    let _us_enc = media::publish(Fixture::B, &us.rtmp(&format!("{STREAM}?token={us_secret}")));
    wait_until(
        "all nodes elect the eu feed",
        Duration::from_secs(20),
        || agree_on(&[&eu, &us, &ap], STREAM, "eu-1").is_some(),
    );
    let killed = Instant::now();
    eu.kill();
    wait_until(
        "us and ap drop eu's feed and elect us",
        Duration::from_secs(10),
        || {
            agree_on(&[&us, &ap], STREAM, "us-1").is_some()
                && [&us, &ap].iter().all(|n| {
                    n.source(STREAM)["feeds"]
                        .as_array()
                        .is_some_and(|f| f.iter().all(|f| f["node"] != "eu-1"))
                })
        },
    );
    let gone = killed.elapsed();
    println!("eu's feeds dropped everywhere {gone:?} after SIGKILL (lease TTL 5 s)");
    assert!(gone <= Duration::from_millis(5_500), "took {gone:?}");
    let nodes = ap.get("/api/v1/cluster/nodes");
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 2, "{nodes}");
}

/// Redis (a private redis-server) is killed for 10 s under load: no
/// on-air stream stops, local commands keep working, health reports it
/// without failing. An encoder dies during the outage (only its node can
/// know); after Redis's restart every node agrees again.
#[test]
fn redis_outage_keeps_streams_on_air_and_nodes_converge() {
    let mut redis = PrivateRedis::start();
    let tc = TestCluster::new(&redis.url());
    let eu = tc.node("eu-1", "eu");
    let us = tc.node("us-1", "us");
    let ap = tc.node("ap-1", "ap");
    let all = [&eu, &us, &ap];
    let (_, eu_secret) = tc.token(&ap, &[STREAM, "s2", "s3"], 100);
    let (us_token, us_secret) = tc.token(&ap, &[STREAM, "s2", "s3"], 50);
    let mut e3 = media::publish(Fixture::A, &eu.rtmp(&format!("s3?token={eu_secret}")));
    let _u3 = media::publish(Fixture::B, &us.rtmp(&format!("s3?token={us_secret}")));
    let _e1 = media::publish(Fixture::A, &eu.rtmp(&format!("{STREAM}?token={eu_secret}")));
    let _u1 = media::publish(Fixture::B, &us.rtmp(&format!("{STREAM}?token={us_secret}")));
    let _u2 = media::publish(Fixture::B, &us.rtmp(&format!("s2?token={us_secret}")));
    wait_until(
        "agreement before the outage",
        Duration::from_secs(20),
        || {
            agree_on(&all, STREAM, "eu-1").is_some()
                && agree_on(&all, "s2", "us-1").is_some()
                && agree_on(&all, "s3", "eu-1").is_some()
        },
    );
    // Players on the nodes that have the primaries.
    let p1 = Player::start(&eu.rtmp(STREAM));
    let p2 = Player::start(&us.rtmp("s2"));
    p1.wait_packets(30, Duration::from_secs(15));
    p2.wait_packets(30, Duration::from_secs(15));

    redis.kill();
    let down = Instant::now();
    wait_until(
        "health reports redis unavailable",
        Duration::from_secs(5),
        || {
            let (st, v) = eu.call("GET", "/api/health", None, None);
            st == 200 && v["redis"]["status"] == "unavailable"
        },
    );
    let (c1, c2) = (p1.count(), p2.count());
    // Only eu can know that its s3 encoder died.
    e3.kill();
    wait_until(
        "eu elects us's s3 feed on its own",
        Duration::from_secs(5),
        || eu.elected("s3").is_some_and(|(_, node)| node == "us-1"),
    );
    assert!(us.elected("s3").is_some_and(|(_, node)| node == "eu-1"));
    while down.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(500));
        // Every node keeps the view it had: the same election everywhere.
        assert!(agree_on(&all, STREAM, "eu-1").is_some());
        assert_eq!(eu.source(STREAM)["state"], "on_air");
        assert_eq!(us.source("s2")["state"], "on_air");
    }
    // Players kept receiving during the whole outage.
    assert!(
        p1.count() > c1 + 200,
        "eu player stalled: {} → {}",
        c1,
        p1.count()
    );
    assert!(
        p2.count() > c2 + 200,
        "us player stalled: {} → {}",
        c2,
        p2.count()
    );
    // A local command works without Redis; the others are named as unanswered.
    let (st, v) = us.call(
        "POST",
        &format!("/api/v1/tokens/{us_token}/reprioritize"),
        Some(&tc.key),
        Some(&json!({"priority": 50, "disconnect": false}).to_string()),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["affected"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["unanswered"].as_array().unwrap().len(), 2, "{v}");

    redis.restart();
    let back = Instant::now();
    let t = wait_until(
        "agreement after redis returns",
        Duration::from_secs(20),
        || {
            all.iter()
                .all(|n| n.call("GET", "/api/health", None, None).1["redis"]["status"] == "ok")
                && agree_on(&all, STREAM, "eu-1").is_some()
                && agree_on(&all, "s2", "us-1").is_some()
                && agree_on(&all, "s3", "us-1").is_some()
                && all.iter().all(|n| {
                    n.get("/api/v1/cluster/nodes")["nodes"]
                        .as_array()
                        .unwrap()
                        .len()
                        == 3
                })
        },
    );
    println!(
        "all nodes agree again {t:?} after redis restarted ({:?} after it went down)",
        down.elapsed()
    );
    let _ = back;
    for p in [&p1, &p2] {
        // Monotonic timestamps (asserted inside) and no stop: the longest
        // silence a player saw over the whole outage.
        let (gap, _) = media::check_monotonic(&p.snapshot());
        println!("longest gap a player saw across the outage: {gap:?}");
        assert!(gap < Duration::from_secs(2), "a stream stopped for {gap:?}");
    }
}

/// The Director: ingest URLs of live, non-draining nodes, the caller's
/// region first; a stopped node disappears.
#[test]
fn director_orders_regions_and_lists_only_live_nodes() {
    let tc = TestCluster::new(&shared_redis_url());
    let eu = tc.node("eu-1", "eu");
    let eu2 = tc.node("eu-2", "eu");
    let us = tc.node("us-1", "us");
    let ap = tc.node("ap-1", "ap");
    let (_, secret) = tc.token(&ap, &["dir1"], 100);
    let (_, other) = tc.token(&ap, &["elsewhere"], 100);
    wait_until("four nodes", Duration::from_secs(10), || {
        ap.get("/api/v1/cluster/nodes")["nodes"]
            .as_array()
            .unwrap()
            .len()
            == 4
    });
    let direct = |region: &str, secret: &str| {
        ap.call(
            "GET",
            &format!("/api/v1/director/publish?stream=dir1&region={region}"),
            Some(secret),
            None,
        )
    };
    let (st, v) = direct("us", &secret);
    assert_eq!(st, 200, "{v}");
    let regions: Vec<Vec<&str>> = v["rtmp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            g.as_array()
                .unwrap()
                .iter()
                .map(|t| t["node"].as_str().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(regions[0], vec!["us-1"], "{v}");
    assert_eq!(regions[1].len(), 1, "{v}");
    assert_eq!(regions.iter().flatten().count(), 4, "{v}");
    assert!(v["rtmp"][0][0]["url"]
        .as_str()
        .unwrap()
        .starts_with("rtmp://127.0.0.1:"));
    assert!(v["srt"][0][0]["url"]
        .as_str()
        .unwrap()
        .contains("streamid=#!::r=dir1,m=publish"));
    let eu_group = v["rtmp"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g[0]["region"] == "eu")
        .unwrap();
    assert_eq!(eu_group.as_array().unwrap().len(), 2, "{v}");
    // Without a region: this node's (ap) first.
    let (_, v) = ap.call(
        "GET",
        "/api/v1/director/publish?stream=dir1",
        Some(&secret),
        None,
    );
    assert_eq!(v["rtmp"][0][0]["node"], "ap-1", "{v}");
    // A token for another stream, or none: refused.
    assert_eq!(direct("us", &other).0, 403);
    assert_eq!(direct("us", "garbage").0, 401);
    assert_eq!(
        ap.call("GET", "/api/v1/director/publish?stream=dir1", None, None)
            .0,
        401
    );
    // A draining node is not offered; a stopped one is gone.
    eu2.running
        .as_ref()
        .unwrap()
        .cluster
        .as_ref()
        .unwrap()
        .set_draining();
    us.shutdown();
    wait_until(
        "only live non-draining nodes",
        Duration::from_secs(10),
        || {
            let (_, v) = direct("eu", &secret);
            let nodes: Vec<&str> = v["rtmp"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|g| {
                    g.as_array()
                        .unwrap()
                        .iter()
                        .map(|t| t["node"].as_str().unwrap())
                })
                .collect();
            nodes == vec!["eu-1", "ap-1"]
        },
    );
    let _ = eu;
}
