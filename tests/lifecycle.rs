//! The real `primacy serve` process through a crash and a drain: SIGKILL
//! with encoders and a player on air, then a restart on the same ports and
//! database; SIGTERM with a player watching; a second signal; the drain
//! endpoint. Real ffmpeg encoders and ffprobe players.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::cluster::{shared_redis_url, wait_until, TestCluster, CLUSTER_SECRET};
use common::gateway::wait_feeds;
use common::media::{
    keyframe_spacing, publish, publish_expect_refusal, publish_srt, Fixture, Player,
};
use common::process::{GatewayProcess, Ports};
use common::TestDb;
use diesel::{Connection, RunQueryDsl};
use primacy::auth::api_keys::Scope;

/// Every start-up step is logged, in order, with its duration.
fn assert_steps_logged(log: &str) {
    let mut at = 0;
    for (n, name) in [
        "database",
        "migrations",
        "load definitions",
        "bind listeners",
        "start pull inputs and push outputs",
        "join cluster",
        "ready",
    ]
    .iter()
    .enumerate()
    {
        let needle = format!("start-up {}/7 {name}:", n + 1);
        let found = log[at..]
            .find(&needle)
            .unwrap_or_else(|| panic!("no {needle:?} after byte {at} in the log:\n{log}"));
        at += found;
        let line = log[at..].lines().next().unwrap_or_default();
        assert!(line.contains("elapsed_ms="), "no duration in {line:?}");
    }
}

#[test]
fn sigkill_then_restart_restores_tokens_and_elects_the_higher_priority_encoder() {
    let db = TestDb::migrated();
    let key = db.api_key(&[Scope::Admin]);
    let ports = Ports::free();
    let env = [("PRIMACY_ELECTION__FAILBACK_HOLD_MS", "1000")];
    let mut g = GatewayProcess::spawn(&db, ports, &env);
    let first = g.wait_ready(Duration::from_secs(30));
    println!(
        "first start: spawn to ready {:.1} ms",
        first.as_secs_f64() * 1e3
    );
    assert_steps_logged(&g.log());

    let (hi, hi_secret) = g.token(&key, &["match1"], 100);
    let (lo, lo_secret) = g.token(&key, &["match1"], 50);
    let hi_url = g.rtmp(&format!("match1?token={hi_secret}"));
    let lo_url = g.rtmp(&format!("match1?token={lo_secret}"));
    let mut enc_hi = publish(Fixture::A, &hi_url);
    let mut enc_lo = publish(Fixture::B, &lo_url);
    wait_feeds(&g.http, &key, "match1", 2, Some(&hi));
    let player = Player::start(&g.rtmp("match1"));
    player.wait_packets(30, Duration::from_secs(20));

    // Crash: only in-flight media is lost.
    g.signal("KILL");
    let status = g.wait_exit(Duration::from_secs(10)).expect("killed");
    assert!(!status.success(), "SIGKILL must not look like a clean exit");
    drop(player);
    // ffmpeg does not reconnect by itself: the encoders are restarted below.
    enc_hi.kill();
    enc_lo.kill();

    let mut g = GatewayProcess::spawn(&db, ports, &env);
    let restart = g.wait_ready(Duration::from_secs(30));
    println!(
        "restart after SIGKILL: spawn to ready {:.1} ms",
        restart.as_secs_f64() * 1e3
    );
    let log = g.log();
    assert_steps_logged(&log);
    if let Some(line) = log.lines().find(|l| l.contains("start-up 7/7 ready")) {
        println!("gateway: {line}");
    }

    // Tokens are in PostgreSQL: listed and admitted again.
    let (st, v) = g
        .http
        .call("GET", "/api/v1/tokens?stream=match1", Some(&key), None);
    assert_eq!(st, 200, "{v}");
    let mut ids: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    ids.sort_unstable();
    let mut want = vec![hi.as_str(), lo.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want, "{v}");

    // Reconnecting encoders are on air again; the player gets the
    // higher-priority one (fixture A: a keyframe every second).
    let _enc_lo = publish(Fixture::B, &lo_url);
    let _enc_hi = publish(Fixture::A, &hi_url);
    wait_feeds(&g.http, &key, "match1", 2, Some(&hi));
    let player = Player::start(&g.rtmp("match1"));
    player.wait_packets(100, Duration::from_secs(20));
    let spacing = keyframe_spacing(&player.snapshot()).expect("keyframes");
    assert!(
        (spacing - 1.0).abs() < 0.2,
        "player should get the priority-100 encoder (1 s GOP), keyframes every {spacing:.2} s"
    );
}

#[test]
fn sigterm_refuses_new_sessions_keeps_existing_until_max_wait_then_exits_zero() {
    const MAX_WAIT: Duration = Duration::from_secs(6);
    let db = TestDb::migrated();
    let key = db.api_key(&[Scope::Admin]);
    let max_wait = MAX_WAIT.as_millis().to_string();
    let mut g = GatewayProcess::spawn(
        &db,
        Ports::free(),
        &[("PRIMACY_SHUTDOWN__MAX_WAIT_MS", &max_wait)],
    );
    g.wait_ready(Duration::from_secs(30));
    let (id, secret) = g.token(&key, &["live1", "late"], 10);
    let _enc = publish(Fixture::A, &g.rtmp(&format!("live1?token={secret}")));
    wait_feeds(&g.http, &key, "live1", 1, Some(&id));
    let mut player = Player::start(&g.rtmp("live1"));
    let mut srt_player = Player::start(&g.srt_ff("#!::r=live1,m=request"));
    player.wait_packets(30, Duration::from_secs(20));
    srt_player.wait_packets(30, Duration::from_secs(20));

    g.signal("TERM");
    let signalled = Instant::now();
    while g.ready_status() != Some(503) {
        assert!(
            signalled.elapsed() < Duration::from_secs(2),
            "ready still {:?} after SIGTERM",
            g.ready_status()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "SIGTERM to /api/ready 503: {:.1} ms",
        signalled.elapsed().as_secs_f64() * 1e3
    );
    let (st, health) = g.http.call("GET", "/api/health", None, None);
    assert_eq!(st, 200, "{health}");
    assert_eq!(health["state"], "draining", "{health}");
    assert_eq!(health["ready"], false, "{health}");
    assert!(health["sessions"].as_u64().unwrap() >= 3, "{health}");
    assert_eq!(health["players"], 2, "{health}");
    assert_eq!(health["drain"]["max_wait_ms"], MAX_WAIT.as_millis() as u64);

    // New publishes are refused, naming the reason.
    let (code, err) = publish_expect_refusal(
        Fixture::B,
        &g.rtmp(&format!("late?token={secret}")),
        Duration::from_secs(10),
    );
    assert!(code.is_some_and(|c| c != 0), "publish must fail: {err}");
    assert!(err.contains("SHUTTING_DOWN"), "ffmpeg said: {err}");
    let mut late_player = Player::start(&g.rtmp("live1"));
    let st = late_player.proc.wait_timeout(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| !s.success()) && late_player.count() == 0,
        "a new play must be refused: {}",
        late_player.proc.stderr_text()
    );
    assert!(
        late_player.proc.stderr_text().contains("SHUTTING_DOWN"),
        "ffprobe said: {}",
        late_player.proc.stderr_text()
    );
    let mut srt = publish_srt(
        Fixture::B,
        &g.srt_ff(&format!("#!::r=late,m=publish,s={secret}")),
    );
    let srt_status = srt.wait_timeout(Duration::from_secs(10));
    assert!(
        srt_status.is_some_and(|s| !s.success()),
        "SRT publish must fail: {}",
        srt.stderr_text()
    );
    assert!(
        g.log()
            .lines()
            .any(|l| l.contains("SRT connection refused") && l.contains("code=1503")),
        "no 1503 refusal in the log:\n{}",
        g.log()
    );

    // The existing player keeps receiving until max_wait, then the process
    // closes it and exits 0.
    let status = g
        .wait_exit(MAX_WAIT + Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit after the drain:\n{}", g.log()));
    let exited = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "log:\n{}", g.log());
    assert!(
        exited >= MAX_WAIT - Duration::from_millis(200),
        "sessions were closed before max_wait: exit {exited:?} after SIGTERM"
    );
    println!("exit {:.2} s after SIGTERM", exited.as_secs_f64());
    for (what, p) in [("RTMP", &mut player), ("SRT", &mut srt_player)] {
        let last = p.snapshot().last().expect("packets").arrived;
        let received_for = last.saturating_duration_since(signalled);
        println!(
            "{what} player received for {:.2} s after SIGTERM",
            received_for.as_secs_f64()
        );
        assert!(
            received_for >= MAX_WAIT - Duration::from_secs(2),
            "the {what} player stopped receiving {received_for:?} after SIGTERM"
        );
        assert!(
            p.proc.wait_timeout(Duration::from_secs(15)).is_some(),
            "the {what} player's connection should be closed"
        );
    }
    let log = g.log();
    for line in [
        "shutdown requested: draining",
        "drain: waiting for sessions to end",
        "drain: shutdown.max_wait_ms reached",
        "drained and stopped",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{log}");
    }
}

/// An open RTMP connection the drain waits for: connected, no handshake
/// yet (the handshake timeout is raised for it).
fn hold_connection(g: &GatewayProcess) -> TcpStream {
    let s = TcpStream::connect(g.rtmp_addr()).expect("connect RTMP");
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, h) = g.http.call("GET", "/api/health", None, None);
        if h["sessions"].as_u64() == Some(1) {
            return s;
        }
        assert!(Instant::now() < end, "connection not counted: {h}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_signal_exits_at_once() {
    let db = TestDb::migrated();
    let mut g = GatewayProcess::spawn(
        &db,
        Ports::free(),
        &[
            ("PRIMACY_SHUTDOWN__MAX_WAIT_MS", "60000"),
            ("PRIMACY_RTMP__HANDSHAKE_TIMEOUT_MS", "60000"),
        ],
    );
    g.wait_ready(Duration::from_secs(30));
    let _conn = hold_connection(&g);
    g.signal("TERM");
    let end = Instant::now() + Duration::from_secs(5);
    while g.ready_status() != Some(503) {
        assert!(Instant::now() < end, "not draining after SIGTERM");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        g.wait_exit(Duration::from_millis(500)).is_none(),
        "exited before the drain ended"
    );
    let second = Instant::now();
    g.signal("TERM");
    let status = g
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running after a second SIGTERM:\n{}", g.log()));
    println!(
        "second SIGTERM to exit: {:.1} ms, status {status}",
        second.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(status.code(), Some(143), "log:\n{}", g.log());
    assert!(
        g.log().contains("second signal: exiting now"),
        "{}",
        g.log()
    );
}

#[test]
fn drain_endpoint_needs_admin_is_audited_and_the_process_exits_zero() {
    let db = TestDb::migrated();
    let read = db.api_key(&[Scope::Read]);
    let write = db.api_key(&[Scope::Write]);
    let (admin_id, admin) = db.api_key_with_id(&[Scope::Admin]);
    let mut g = GatewayProcess::spawn(
        &db,
        Ports::free(),
        &[
            ("PRIMACY_SHUTDOWN__MAX_WAIT_MS", "60000"),
            ("PRIMACY_RTMP__HANDSHAKE_TIMEOUT_MS", "60000"),
        ],
    );
    g.wait_ready(Duration::from_secs(30));
    let conn = hold_connection(&g);

    let (st, v) = g.http.call("POST", "/api/v1/node/drain", None, None);
    common::assert_error(st, &v, 401, "unauthorized");
    for k in [&read, &write] {
        let (st, v) = g.http.call("POST", "/api/v1/node/drain", Some(k), None);
        common::assert_error(st, &v, 403, "forbidden");
    }
    assert_eq!(g.ready_status(), Some(200), "refused calls must not drain");

    let (st, v) = g
        .http
        .call("POST", "/api/v1/node/drain", Some(&admin), None);
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["state"], "draining", "{v}");
    assert_eq!(v["already_draining"], false, "{v}");
    assert_eq!(v["sessions"], 1, "{v}");
    assert_eq!(g.ready_status(), Some(503));
    let (_, h) = g.http.call("GET", "/api/health", None, None);
    assert_eq!(h["state"], "draining", "{h}");
    let (st, v) = g
        .http
        .call("POST", "/api/v1/node/drain", Some(&admin), None);
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["already_draining"], true, "{v}");

    let (st, v) = g
        .http
        .call("GET", "/api/v1/audit?action=node.drain", Some(&admin), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["total"], 1, "one audit record per drain: {v}");
    let entry = &v["items"][0];
    assert_eq!(entry["actor"], format!("api-key:{admin_id}"), "{entry}");
    assert_eq!(entry["target"], "node:test-node", "{entry}");
    assert_eq!(entry["before"]["state"], "ready", "{entry}");
    assert_eq!(entry["after"]["state"], "draining", "{entry}");

    // The drain ends when the last session does; the process exits 0.
    assert!(g.wait_exit(Duration::from_millis(300)).is_none());
    drop(conn);
    let status = g
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit after the drain:\n{}", g.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", g.log());
    assert!(
        g.log().contains("drain: every session ended"),
        "{}",
        g.log()
    );
}

#[test]
fn a_signal_while_waiting_for_the_database_exits_cleanly() {
    // Nothing listens on this port: start-up stays in step 1, retrying.
    let dead = Ports::free().http;
    let db = TestDb::empty();
    let url = format!("postgres://postgres@127.0.0.1:{dead}/{}", db.name);
    let mut g = GatewayProcess::spawn(
        &db,
        Ports::free(),
        &[
            ("PRIMACY_DATABASE_URL", &url),
            ("PRIMACY_DATABASE__CONNECT_TIMEOUT_MS", "200"),
        ],
    );
    let end = Instant::now() + Duration::from_secs(20);
    while g.log().matches("database not reachable yet").count() < 2 {
        assert!(Instant::now() < end, "no retries logged:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(g.ready_status(), None, "nothing is served before step 4");
    g.signal("TERM");
    let status = g
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit after SIGTERM during start-up:\n{}", g.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", g.log());
    let log = g.log();
    assert!(log.contains("shutdown requested during start-up"), "{log}");
    assert!(!log.contains("start-up 1/7 database:"), "{log}");
}

#[test]
fn start_up_waits_for_the_database_then_migrates_and_becomes_ready() {
    // A database that does not exist yet: step 1 retries with backoff.
    let name = format!("primacy_test_{}", uuid::Uuid::new_v4().simple());
    let admin = common::admin_url();
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    let db = TestDb {
        url: format!("{base}/{name}"),
        name,
    };
    let mut g = GatewayProcess::spawn(
        &db,
        Ports::free(),
        &[("PRIMACY_DATABASE__MIGRATE_ON_START", "true")],
    );
    let end = Instant::now() + Duration::from_secs(20);
    while g.log().matches("database not reachable yet").count() < 2 {
        assert!(Instant::now() < end, "no retries logged:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(g.ready_status(), None, "nothing is served before step 4");
    let mut conn = diesel::PgConnection::establish(&admin).expect("connect");
    diesel::sql_query(format!("CREATE DATABASE {} TEMPLATE template0", db.name))
        .execute(&mut conn)
        .expect("create database");
    let since = Instant::now();
    g.wait_ready(Duration::from_secs(30));
    println!(
        "ready {:.1} ms after the database appeared",
        since.elapsed().as_secs_f64() * 1e3
    );
    let log = g.log();
    assert_steps_logged(&log);
    let migrated = log
        .lines()
        .find(|l| l.contains("start-up 2/7 migrations:"))
        .expect("migrations step");
    assert!(
        !migrated.contains("skipped") && !migrated.contains(": 0 applied"),
        "the new database must have been migrated: {migrated}"
    );
    let key = db.api_key(&[Scope::Admin]);
    let (st, v) = g.http.call("GET", "/api/v1/tokens", Some(&key), None);
    assert_eq!(st, 200, "{v}");
}

/// With Redis: the drain marks the node's lease draining at once (the
/// other nodes and the Director see it while its sessions go on), and
/// releases it last, so the other nodes drop the node at once instead of
/// waiting for the lease to expire.
#[test]
fn drain_marks_the_cluster_lease_draining_first_and_releases_it_last() {
    let c = TestCluster::new(&shared_redis_url());
    let observer = c.node("observer", "eu");
    let redis = c.redis_url.clone();
    let mut g = GatewayProcess::spawn(
        &c.db,
        Ports::free(),
        &[
            ("PRIMACY_NODE_ID", "drained"),
            ("PRIMACY_REGION", "eu"),
            ("PRIMACY_REDIS_URL", &redis),
            ("PRIMACY_REDIS_KEY_PREFIX", &c.prefix),
            ("PRIMACY_CLUSTER_SECRET", CLUSTER_SECRET),
            ("PRIMACY_SHUTDOWN__MAX_WAIT_MS", "60000"),
            ("PRIMACY_RTMP__HANDSHAKE_TIMEOUT_MS", "60000"),
        ],
    );
    g.wait_ready(Duration::from_secs(30));
    let seen = || -> Option<bool> {
        let v = observer.get("/api/v1/cluster/nodes");
        v["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["node"] == "drained")
            .map(|n| n["draining"] == true)
    };
    wait_until(
        "the observer sees the node",
        Duration::from_secs(10),
        || seen() == Some(false),
    );
    let conn = hold_connection(&g);

    g.signal("TERM");
    let took = wait_until(
        "the observer sees the node draining",
        Duration::from_secs(5),
        || seen() == Some(true),
    );
    println!("SIGTERM to draining seen by another node: {took:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        seen(),
        Some(true),
        "still listed, draining, while a session is open"
    );

    drop(conn);
    let status = g
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no exit after the drain:\n{}", g.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", g.log());
    // The lease lives 5 s after its last renewal; released, it is gone now.
    let gone = wait_until(
        "the observer drops the node",
        Duration::from_secs(3),
        || seen().is_none(),
    );
    println!("exit to node gone on another node: {gone:?}");
}
