//! Multi-region: three gateways (regions eu, us, ap) on loopback ports
//! sharing the real PostgreSQL and Redis (a key prefix per test). Encoders
//! are real ffmpeg processes; the global election is checked through each
//! node's streams API (`elected`), so every test asserts that all nodes
//! agree.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{agree_on, shared_redis_url, wait_until, AclUser, PrivateRedis, TestCluster};
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
    // eu, which applied it to its feed, audited it as ap's command.
    let row = wait_for_row(&ap, &tc.key, "token.reprioritize", "cluster:ap-1");
    assert_eq!(row["target"], format!("token:{eu_token}"), "{row}");
    assert_eq!(row["after"]["node"], "eu-1", "{row}");
    assert_eq!(
        row["after"]["affected"],
        json!([affected[0]["feed_id"]]),
        "{row}"
    );
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
    // Audited where it was asked for (the operator's key, before the kick)
    // and where it was carried out (the asking node, naming the operator).
    let operator = audit_rows(&ap, &tc.key, "feed.kick")
        .into_iter()
        .find(|r| {
            r["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("api-key:"))
        })
        .expect("the operator's kick row");
    assert_eq!(operator["target"], format!("feed:{feed}"), "{operator}");
    assert_eq!(operator["after"]["node"], "eu-1", "{operator}");
    let remote = wait_for_row(&ap, &tc.key, "feed.kick", "cluster:ap-1");
    assert_eq!(remote["target"], format!("feed:{feed}"), "{remote}");
    assert_eq!(remote["after"]["operator"], operator["actor"], "{remote}");
    assert_eq!(remote["after"]["node"], "eu-1", "{remote}");
    assert_eq!(remote["before"]["feed_id"], feed.as_str(), "{remote}");
    // The ban, applied on eu from ap's command, is audited there too.
    let ban = wait_for_row(&ap, &tc.key, "source.ban", "cluster:ap-1");
    assert_eq!(ban["target"], "source:kick1/", "{ban}");
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

/// SIGKILL the eu gateway (a child process): the ap player, relayed from
/// eu, continues on us at once (its relay broke); within the lease TTL the
/// others drop eu's feeds and agree on us.
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
    let player = Player::start(&ap.rtmp(STREAM));
    wait_fixture(&player, 0, true, "the ap player gets the eu feed (A)");
    let from = player.count();
    let killed = Instant::now();
    eu.kill();
    // The lease is timed on its own, polled from the kill: waiting for the
    // player first would add the player's 100-packet check to it.
    wait_until(
        "us and ap drop eu's feed and elect us",
        Duration::from_secs(15),
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
    // The TTL plus the heartbeat check's period and slack for a loaded
    // machine; without the lease they would never go.
    assert!(gone <= Duration::from_millis(7_000), "took {gone:?}");
    wait_fixture(&player, from, false, "the ap player continues on us (B)");
    let gap = largest_gap_since(&player, from.saturating_sub(1));
    println!(
        "ap player on us {:?} after SIGKILL of eu; largest gap {gap:?}",
        killed.elapsed(),
    );
    // Its relay broke at the kill: the player must not wait for the lease
    // (a gap as long as the lease means the broken relay was forgotten).
    assert!(
        gap < Duration::from_millis(2_500),
        "the ap player froze {gap:?}"
    );
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
    // A node drained through another node's API is not offered; a stopped
    // one is gone.
    let (st, v) = ap.call(
        "POST",
        "/api/v1/cluster/nodes/eu-2/drain",
        Some(&tc.key),
        None,
    );
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["answered"], true, "{v}");
    assert_eq!(v["region"], "eu", "{v}");
    assert_eq!(eu2.call("GET", "/api/ready", None, None).0, 503);
    // eu-2 audited the drain it applied, naming ap and the operator.
    let row = wait_for_row(&ap, &tc.key, "node.drain", "cluster:ap-1");
    assert_eq!(row["target"], "node:eu-2", "{row}");
    assert_eq!(row["after"]["node"], "eu-2", "{row}");
    assert!(
        row["after"]["operator"]
            .as_str()
            .is_some_and(|a| a.starts_with("api-key:")),
        "{row}"
    );
    let (st, _) = ap.call(
        "POST",
        "/api/v1/cluster/nodes/ap-1/drain",
        Some(&tc.key),
        None,
    );
    assert_eq!(st, 409);
    let (st, _) = ap.call(
        "POST",
        "/api/v1/cluster/nodes/nope/drain",
        Some(&tc.key),
        None,
    );
    assert_eq!(st, 404);
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

/// Two nodes run on the shared Redis as an ACL user that may only touch
/// the test's key prefix and channels and run the commands the gateway
/// uses (`primacy::cluster::REDIS_COMMANDS`): they find each other, elect
/// across nodes and carry a kick to the node that has the feed. The user
/// really is limited: outside its prefix it is refused.
#[test]
fn a_redis_acl_user_limited_to_the_prefix_runs_a_cluster() {
    let mut tc = TestCluster::new(&shared_redis_url());
    let acl = AclUser::create(&shared_redis_url(), &tc.prefix);
    tc.redis_url = acl.url();
    let eu = tc.node("eu-1", "eu");
    let ap = tc.node("ap-1", "ap");
    wait_until("two nodes know each other", Duration::from_secs(15), || {
        [&eu, &ap].iter().all(|n| {
            n.get("/api/v1/cluster/nodes")["nodes"]
                .as_array()
                .unwrap()
                .len()
                == 2
        })
    });
    let (_, secret) = tc.token(&ap, &["acl1"], 100);
    let mut enc = media::publish(Fixture::A, &eu.rtmp(&format!("acl1?token={secret}")));
    wait_until("ap elects the eu feed", Duration::from_secs(20), || {
        agree_on(&[&eu, &ap], "acl1", "eu-1").is_some()
    });
    let (feed, _) = ap.elected("acl1").unwrap();
    let (st, v) = ap.call(
        "DELETE",
        &format!("/api/v1/feeds/{feed}"),
        Some(&tc.key),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert!(
        enc.wait_timeout(Duration::from_secs(10)).is_some(),
        "the kick did not reach eu"
    );
    for n in [&eu, &ap] {
        assert_eq!(
            n.call("GET", "/api/health", None, None).1["redis"]["status"],
            "ok"
        );
    }
    let mut con = common::cluster::redis_connection(&acl.url());
    let outside: redis::RedisResult<()> =
        redis::cmd("SET").arg("elsewhere").arg("x").query(&mut con);
    assert!(outside.is_err(), "the ACL user wrote outside its prefix");
    let other_channel: redis::RedisResult<i64> = redis::cmd("PUBLISH")
        .arg("elsewhere")
        .arg("x")
        .query(&mut con);
    assert!(
        other_channel.is_err(),
        "the ACL user published outside its prefix"
    );
    let flush: redis::RedisResult<()> = redis::cmd("FLUSHALL").query(&mut con);
    assert!(flush.is_err(), "the ACL user may flush");
    let inside: redis::RedisResult<Vec<String>> = redis::cmd("SMEMBERS")
        .arg(format!("{}:nodes", tc.prefix))
        .query(&mut con);
    assert_eq!(inside.map(|v| v.len()).ok(), Some(2));
}

/// Nodes reach a TLS-only redis-server (its own, started here with a
/// throwaway CA) with `rediss://` and `redis.ca_file`; a node without the
/// CA does not trust the server and stays out of the cluster.
#[test]
fn nodes_join_over_tls_with_the_configured_ca() {
    let redis = PrivateRedis::start_tls();
    let tc = TestCluster::new(&redis.url());
    assert!(tc.redis_url.starts_with("rediss://"));
    let ca = redis.ca_file();
    let with_ca = |c: &mut primacy::config::Config| c.redis.ca_file = Some(ca.clone());
    let eu = tc.node_with("eu-1", "eu", with_ca);
    let ap = tc.node_with("ap-1", "ap", with_ca);
    let t = wait_until("two nodes meet over TLS", Duration::from_secs(15), || {
        [&eu, &ap].iter().all(|n| {
            n.call("GET", "/api/health", None, None).1["redis"]["status"] == "ok"
                && n.get("/api/v1/cluster/nodes")["nodes"]
                    .as_array()
                    .unwrap()
                    .len()
                    == 2
        })
    });
    println!("two nodes met over TLS after {t:?}");
    let (_, secret) = tc.token(&ap, &["tls1"], 100);
    let _enc = media::publish(Fixture::A, &eu.rtmp(&format!("tls1?token={secret}")));
    wait_until("ap elects the eu feed", Duration::from_secs(20), || {
        agree_on(&[&eu, &ap], "tls1", "eu-1").is_some()
    });
    // A CA file without a certificate (here: the server's key) is a
    // configuration error at start, naming the key, not an empty trust
    // store found out at the first connection.
    let key_file = ca.with_file_name("server.key");
    let redis_url = redis.url();
    let (code, _, err) = common::run_primacy(
        &["serve"],
        &[
            ("PRIMACY_DATABASE_URL", tc.db.url.as_str()),
            ("PRIMACY_HS256_SECRET", common::HS256),
            ("PRIMACY_HTTP_LISTEN", "127.0.0.1:0"),
            ("PRIMACY_RTMP_LISTEN", "127.0.0.1:0"),
            ("PRIMACY_SRT_LISTEN", "127.0.0.1:0"),
            ("PRIMACY_REDIS_URL", redis_url.as_str()),
            ("PRIMACY_CLUSTER_SECRET", common::cluster::CLUSTER_SECRET),
            ("PRIMACY_REDIS__CA_FILE", &key_file.to_string_lossy()),
        ],
    );
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("redis.ca_file") && err.contains("no PEM certificate"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");
    // Web PKI roots only: the throwaway CA is not among them.
    let us = tc.node("us-1", "us");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let (_, h) = us.call("GET", "/api/health", None, None);
        assert_eq!(h["redis"]["status"], "unavailable", "{h}");
        assert_eq!(
            ap.get("/api/v1/cluster/nodes")["nodes"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Audit rows with `action`, newest first.
fn audit_rows(via: &common::cluster::Node, key: &str, action: &str) -> Vec<serde_json::Value> {
    let (st, v) = via.call(
        "GET",
        &format!("/api/v1/audit?action={action}"),
        Some(key),
        None,
    );
    assert_eq!(st, 200, "{v}");
    v["items"].as_array().cloned().unwrap_or_default()
}

/// Wait for an audit row with `action` by `actor` (rows of commands applied
/// from the cluster are written just after the answer).
fn wait_for_row(
    via: &common::cluster::Node,
    key: &str,
    action: &str,
    actor: &str,
) -> serde_json::Value {
    let mut row = None;
    wait_until(
        &format!("an audit row {action} by {actor}"),
        Duration::from_secs(10),
        || {
            row = audit_rows(via, key, action)
                .into_iter()
                .find(|r| r["actor"] == actor);
            row.is_some()
        },
    );
    row.expect("checked")
}

/// Keyframe spacing (s) of what a player received after packet `from`.
fn spacing_since(p: &Player, from: usize) -> Option<f64> {
    let snap = p.snapshot();
    media::keyframe_spacing(&snap[from.min(snap.len())..])
}

/// Wait until the player receives fixture A (1 s GOP, `a == true`) or B
/// (0.5 s GOP) from packet `from` on.
fn wait_fixture(p: &Player, from: usize, a: bool, what: &str) {
    wait_until(what, Duration::from_secs(20), || {
        let n = p.count();
        n > from + 100
            && spacing_since(p, n.saturating_sub(100).max(from)).is_some_and(|s| {
                if a {
                    s > 0.8
                } else {
                    s < 0.7
                }
            })
    });
}

/// The largest wall-clock gap between packets received after `from`.
fn largest_gap_since(p: &Player, from: usize) -> Duration {
    let snap = p.snapshot();
    media::check_monotonic(&snap[from.min(snap.len())..]).0
}

/// A player at ap watches a stream published at eu (100) and us (50): it
/// gets the eu feed through the node-to-node relay; the eu encoder dies →
/// it continues on the us feed with monotonic timestamps; the eu encoder
/// returns → failback after the hold; reprioritizing the eu token to 10
/// through ap → it ends on us.
fn player_on_another_node(prefetch: bool) {
    let tc = TestCluster::new(&shared_redis_url());
    let tweak = |c: &mut primacy::config::Config| c.cluster.prefetch_runner_up = prefetch;
    let eu = tc.node_with("eu-1", "eu", tweak);
    let us = tc.node_with("us-1", "us", tweak);
    let ap = tc.node_with("ap-1", "ap", tweak);
    let all = [&eu, &us, &ap];
    let (eu_token, eu_secret) = tc.token(&ap, &[STREAM], 100);
    let (_, us_secret) = tc.token(&ap, &[STREAM], 50);
    let mut eu_enc = media::publish(Fixture::A, &eu.rtmp(&format!("{STREAM}?token={eu_secret}")));
    let _us_enc = media::publish(Fixture::B, &us.rtmp(&format!("{STREAM}?token={us_secret}")));
    wait_until(
        "all nodes elect the eu feed",
        Duration::from_secs(20),
        || agree_on(&all, STREAM, "eu-1").is_some(),
    );

    let player = Player::start(&ap.rtmp(STREAM));
    wait_fixture(&player, 0, true, "the ap player gets the eu feed (A)");
    let src = ap.source(STREAM);
    let on_air = src["feeds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["primary"] == true)
        .cloned()
        .unwrap_or_default();
    assert_eq!(on_air["node"], "eu-1", "{src}");
    assert_eq!(on_air["relay"], "live", "{src}");

    // The eu encoder dies: the player continues on us.
    let from = player.count();
    eu_enc.kill();
    wait_fixture(&player, from, false, "the ap player continues on us (B)");
    let gap = largest_gap_since(&player, from.saturating_sub(1));
    let sw = ap.source(STREAM)["last_switch"].clone();
    println!(
        "prefetch_runner_up={prefetch}: cross-node failover, largest player gap {gap:?}, switch {sw}"
    );

    // It returns: failback to eu after the hold.
    let from = player.count();
    let mut eu_enc = media::publish(Fixture::A, &eu.rtmp(&format!("{STREAM}?token={eu_secret}")));
    wait_fixture(&player, from, true, "the ap player fails back to eu (A)");
    let gap = largest_gap_since(&player, from.saturating_sub(1));
    println!("prefetch_runner_up={prefetch}: failback (planned), largest player gap {gap:?}");

    // Reprioritize the eu token to 10 through ap: the player ends on us.
    let from = player.count();
    let (st, v) = ap.call(
        "POST",
        &format!("/api/v1/tokens/{eu_token}/reprioritize"),
        Some(&tc.key),
        Some(&json!({"priority": 10, "disconnect": true}).to_string()),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["affected"][0]["node"], "eu-1", "{v}");
    assert_eq!(v["affected"][0]["region"], "eu", "{v}");
    assert!(
        eu_enc.wait_timeout(Duration::from_secs(10)).is_some(),
        "eu encoder not disconnected"
    );
    wait_fixture(&player, from, false, "the ap player ends on us (B)");
    let gap = largest_gap_since(&player, from.saturating_sub(1));
    println!("prefetch_runner_up={prefetch}: reprioritize (planned), largest player gap {gap:?}");
    // Timestamps never went backwards over the whole run.
    media::check_monotonic(&player.snapshot());
}

#[test]
fn player_on_another_node_follows_the_global_election() {
    player_on_another_node(false);
}

#[test]
fn player_on_another_node_with_prefetched_runner_up() {
    player_on_another_node(true);
}

/// Milliseconds between `t0` and an RFC 3339 instant from the API.
fn ms_after(t0: chrono::DateTime<chrono::Utc>, at: &serde_json::Value) -> f64 {
    let at: chrono::DateTime<chrono::Utc> = at.as_str().unwrap().parse().unwrap();
    (at - t0).num_microseconds().unwrap() as f64 / 1000.0
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Numbers for docs/benchmarks.md (not a pass/fail test): reprioritize
/// through ap of the eu token (on air, relayed to ap's player) → the switch
/// decided and on air at ap; 10 rounds.
#[test]
#[ignore]
fn bench_cross_node_reprioritize_to_switch() {
    let tc = TestCluster::new(&shared_redis_url());
    let tweak = |c: &mut primacy::config::Config| c.cluster.prefetch_runner_up = true;
    let eu = tc.node_with("eu-1", "eu", tweak);
    let us = tc.node_with("us-1", "us", tweak);
    let ap = tc.node_with("ap-1", "ap", tweak);
    let (eu_token, eu_secret) = tc.token(&ap, &[STREAM], 100);
    let (_, us_secret) = tc.token(&ap, &[STREAM], 50);
    let _us_enc = media::publish(Fixture::B, &us.rtmp(&format!("{STREAM}?token={us_secret}")));
    let player = Player::start(&ap.rtmp(STREAM));
    let (mut decided, mut on_air, mut answered) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..10 {
        let body = json!({"priority": 100}).to_string();
        let (st, _) = ap.call(
            "PATCH",
            &format!("/api/v1/tokens/{eu_token}"),
            Some(&tc.key),
            Some(&body),
        );
        assert_eq!(st, 200);
        let mut enc = media::publish(Fixture::A, &eu.rtmp(&format!("{STREAM}?token={eu_secret}")));
        wait_until("eu on air at ap", Duration::from_secs(20), || {
            agree_on(&[&eu, &us, &ap], STREAM, "eu-1").is_some()
                && ap.source(STREAM)["state"] == "on_air"
                && ap.source(STREAM)["last_switch"]["to"] == ap.source(STREAM)["elected"]
        });
        std::thread::sleep(Duration::from_millis(500));
        let body = json!({"priority": 10, "disconnect": true}).to_string();
        let t0 = chrono::Utc::now();
        let called = Instant::now();
        let (st, v) = ap.call(
            "POST",
            &format!("/api/v1/tokens/{eu_token}/reprioritize"),
            Some(&tc.key),
            Some(&body),
        );
        answered.push(called.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(st, 200, "{v}");
        wait_until("ap switched to us", Duration::from_secs(10), || {
            let s = ap.source(STREAM);
            s["last_switch"]["to"] == s["elected"]
                && agree_on(&[&ap], STREAM, "us-1").is_some()
                && s["state"] == "on_air"
        });
        let sw = ap.source(STREAM)["last_switch"].clone();
        decided.push(ms_after(t0, &sw["decided_at"]));
        on_air.push(ms_after(t0, &sw["at"]));
        assert!(enc.wait_timeout(Duration::from_secs(10)).is_some());
        println!(
            "round {round}: decided {:.1} ms, on air {:.1} ms",
            decided[round], on_air[round]
        );
    }
    media::check_monotonic(&player.snapshot());
    println!(
        "reprioritize via ap (cross-node): API answered p50 {:.1} / p99 {:.1} ms; switch decided at ap p50 {:.1} / p99 {:.1} ms; new primary on air at ap p50 {:.1} / p99 {:.1} ms",
        percentile(&mut answered.clone(), 0.5),
        percentile(&mut answered, 0.99),
        percentile(&mut decided.clone(), 0.5),
        percentile(&mut decided, 0.99),
        percentile(&mut on_air.clone(), 0.5),
        percentile(&mut on_air, 0.99)
    );
}

/// Numbers for docs/benchmarks.md: cross-node failover at ap's player when
/// the eu encoder dies (engine gap of each switch), with and without
/// `prefetch_runner_up`; 8 kills each.
#[test]
#[ignore]
fn bench_cross_node_failover_gap() {
    for prefetch in [false, true] {
        let tc = TestCluster::new(&shared_redis_url());
        let tweak = |c: &mut primacy::config::Config| c.cluster.prefetch_runner_up = prefetch;
        let eu = tc.node_with("eu-1", "eu", tweak);
        let us = tc.node_with("us-1", "us", tweak);
        let ap = tc.node_with("ap-1", "ap", tweak);
        let (_, eu_secret) = tc.token(&ap, &[STREAM], 100);
        let (_, us_secret) = tc.token(&ap, &[STREAM], 50);
        let _us_enc = media::publish(Fixture::B, &us.rtmp(&format!("{STREAM}?token={us_secret}")));
        let player = Player::start(&ap.rtmp(STREAM));
        let (mut gaps, mut player_gaps) = (Vec::new(), Vec::new());
        for _ in 0..8 {
            let mut enc =
                media::publish(Fixture::A, &eu.rtmp(&format!("{STREAM}?token={eu_secret}")));
            wait_until("eu on air at ap", Duration::from_secs(20), || {
                let s = ap.source(STREAM);
                agree_on(&[&ap], STREAM, "eu-1").is_some() && s["last_switch"]["to"] == s["elected"]
            });
            std::thread::sleep(Duration::from_millis(1_500));
            let from = player.count();
            enc.kill();
            wait_until("ap on us", Duration::from_secs(10), || {
                let s = ap.source(STREAM);
                agree_on(&[&ap], STREAM, "us-1").is_some() && s["last_switch"]["to"] == s["elected"]
            });
            std::thread::sleep(Duration::from_millis(1_000));
            gaps.push(ap.source(STREAM)["last_switch"]["gap_ms"].as_f64().unwrap());
            player_gaps
                .push(largest_gap_since(&player, from.saturating_sub(1)).as_secs_f64() * 1000.0);
        }
        media::check_monotonic(&player.snapshot());
        println!(
            "prefetch_runner_up={prefetch}: cross-node failover gap (engine) p50 {:.1} / max {:.1} ms; largest player inter-arrival gap p50 {:.1} / max {:.1} ms ({} kills)",
            percentile(&mut gaps.clone(), 0.5),
            percentile(&mut gaps.clone(), 1.0),
            percentile(&mut player_gaps.clone(), 0.5),
            percentile(&mut player_gaps.clone(), 1.0),
            gaps.len()
        );
    }
}

/// Numbers for docs/benchmarks.md: Redis commands per second per node at
/// rest, with 1,000 feeds registered (engine-level publishes without media:
/// at rest nothing changes) on a private redis-server, 3 nodes, 20 s.
#[test]
#[ignore]
fn bench_redis_commands_at_rest() {
    use primacy::domain::{FeedId, Priority, TokenId};
    use primacy::engine::{FeedMeta, Protocol, SourceKey};
    let redis = PrivateRedis::start();
    let tc = TestCluster::new(&redis.url());
    let eu = tc.node("eu-1", "eu");
    let _us = tc.node("us-1", "us");
    let _ap = tc.node("ap-1", "ap");
    let running = eu.running.as_ref().unwrap();
    let engine = running.engine.clone();
    let handles: Vec<_> = eu.block_on(async move {
        let mut v = Vec::new();
        for i in 0..1000 {
            let key = SourceKey {
                stream: format!("s{i}").parse().unwrap(),
                source: Default::default(),
            };
            let meta = FeedMeta {
                id: FeedId::new_random(),
                token_id: TokenId::new_random(),
                label: "bench".into(),
                priority: Priority(Some(100)),
                pinned: false,
                protocol: Protocol::Rtmp,
                peer: "127.0.0.1:1".parse().unwrap(),
                grant: None,
            };
            v.push(engine.publish(key, meta).await.unwrap().unwrap());
        }
        v
    });
    wait_until(
        "the others see 1000 remote feeds",
        Duration::from_secs(20),
        || {
            let m = _ap.http.get_text("/metrics").1;
            m.lines().any(|l| l == "primacy_cluster_remote_feeds 1000")
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let total = |r: &PrivateRedis| r.command_calls().iter().map(|(_, n)| n).sum::<u64>();
    let before = redis.command_calls();
    let t0 = total(&redis);
    let secs = 20;
    std::thread::sleep(Duration::from_secs(secs));
    let t1 = total(&redis);
    let after = redis.command_calls();
    let per_node = (t1 - t0) as f64 / 3.0 / secs as f64;
    let mut by_cmd: Vec<(String, u64)> = after
        .iter()
        .map(|(c, n)| {
            (
                c.clone(),
                n - before.iter().find(|(b, _)| b == c).map_or(0, |(_, m)| *m),
            )
        })
        .filter(|(_, d)| *d > 0)
        .collect();
    by_cmd.sort_by_key(|c| std::cmp::Reverse(c.1));
    println!("redis commands at rest, 3 nodes, 1000 feeds on one: {per_node:.1} per node per second over {secs} s; by command: {by_cmd:?}");
    // What the signatures cost in size: each stored item as written (a
    // signed envelope) against its body alone (what used to be written).
    let mut con = common::cluster::redis_connection(&redis.url());
    let lease: String = redis::cmd("GET")
        .arg(format!("{}:node:eu-1", tc.prefix))
        .query(&mut con)
        .unwrap();
    let records: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{}:feeds:eu-1", tc.prefix))
        .query(&mut con)
        .unwrap();
    let body_len = |envelope: &str| {
        serde_json::from_str::<serde_json::Value>(envelope).unwrap()["body"]
            .as_str()
            .unwrap()
            .len()
    };
    let (sealed, bodies) = records
        .values()
        .fold((0, 0), |(a, b), r| (a + r.len(), b + body_len(r)));
    println!(
        "stored sizes: lease {} bytes signed ({} body); feed record {} bytes signed ({} body), mean of {}",
        lease.len(),
        body_len(&lease),
        sealed / records.len(),
        bodies / records.len(),
        records.len()
    );
    drop(handles);
}

/// The messages published on the test's control channel while `act` runs
/// and for `settle` after it (each node reads the channel; a message
/// published twice for one action would show here).
fn control_messages(tc: &TestCluster, settle: Duration, act: impl FnOnce()) -> Vec<String> {
    let client = redis::Client::open(tc.redis_url.as_str()).expect("redis url");
    let mut con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect");
    con.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut sub = con.as_pubsub();
    sub.subscribe(format!("{}:control", tc.prefix))
        .expect("subscribe");
    act();
    let end = Instant::now() + settle;
    let mut seen = Vec::new();
    while Instant::now() < end {
        if let Ok(msg) = sub.get_message() {
            seen.push(msg.get_payload::<String>().expect("payload"));
        }
    }
    seen
}

/// One operator action, one cluster message: a reprioritize through ap
/// sends a single command on the control channel, and eu, receiving it,
/// both drops the token's cached row and disconnects the token's encoder.
/// A token disable is one message too.
#[test]
fn a_reprioritize_publishes_exactly_one_cluster_message() {
    const S: &str = "onemsg";
    let tc = TestCluster::new(&shared_redis_url());
    let eu = tc.node("eu-1", "eu");
    let ap = tc.node("ap-1", "ap");
    wait_until("two nodes know each other", Duration::from_secs(15), || {
        [&eu, &ap].iter().all(|n| {
            n.get("/api/v1/cluster/nodes")["nodes"]
                .as_array()
                .is_some_and(|a| a.len() == 2)
        })
    });
    let (token, secret) = tc.token(&ap, &[S], 100);
    let mut enc = media::publish(Fixture::A, &eu.rtmp(&format!("{S}?token={secret}")));
    wait_until(
        "both nodes elect the eu feed",
        Duration::from_secs(20),
        || agree_on(&[&eu, &ap], S, "eu-1").is_some(),
    );

    let seen = control_messages(&tc, Duration::from_secs(2), || {
        let (st, v) = ap.call(
            "POST",
            &format!("/api/v1/tokens/{token}/reprioritize"),
            Some(&tc.key),
            Some(&json!({ "priority": 90, "disconnect": true }).to_string()),
        );
        assert_eq!(st, 200, "{v}");
        let affected = v["affected"].as_array().expect("affected");
        assert_eq!(affected.len(), 1, "{v}");
        assert_eq!(affected[0]["node"], "eu-1", "{v}");
        assert!(
            v["unanswered"].as_array().is_some_and(|u| u.is_empty()),
            "{v}"
        );
    });
    assert_eq!(seen.len(), 1, "one message for one reprioritize: {seen:?}");
    assert!(seen[0].contains("reprioritize"), "{}", seen[0]);
    assert!(
        enc.wait_timeout(Duration::from_secs(10)).is_some(),
        "the node that received the reprioritize did not disconnect the encoder"
    );

    let seen = control_messages(&tc, Duration::from_secs(2), || {
        let (st, v) = ap.call(
            "PATCH",
            &format!("/api/v1/tokens/{token}"),
            Some(&tc.key),
            Some(&json!({ "enabled": false }).to_string()),
        );
        assert_eq!(st, 200, "{v}");
    });
    assert_eq!(seen.len(), 1, "one message for one token change: {seen:?}");
    assert!(seen[0].contains("token_changed"), "{}", seen[0]);
}
