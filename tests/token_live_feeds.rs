//! A token means what its row says, for feeds that are already live: a
//! `priority=` above the token's priority is clamped (unless the token
//! allows raising), Reprioritize caps pinned feeds, and refresh, expiry,
//! stream removal, allow-list changes and changes made behind the API's
//! back disconnect the feeds they no longer allow, on this node and on the
//! other nodes of a cluster. Encoders are real ffmpeg processes; what the
//! gateway did is read from its streams API and from the encoders' exits.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{shared_redis_url, wait_until, TestCluster};
use common::gateway::Gateway;
use common::media::{publish, publish_srt, Fixture, Proc};
use diesel::RunQueryDsl;
use serde_json::{json, Value};

/// The feeds of `stream`'s default source (empty when it is not live).
fn feeds(g: &Gateway, stream: &str) -> Vec<Value> {
    g.stream(stream)["sources"][0]["feeds"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The feed of `token` on `stream`, if one is live.
fn feed_of(g: &Gateway, stream: &str, token: &str) -> Option<Value> {
    feeds(g, stream)
        .into_iter()
        .find(|f| f["token_id"] == token)
}

/// The token on air on `stream`, if any.
fn on_air_token(g: &Gateway, stream: &str) -> Option<String> {
    feeds(g, stream)
        .into_iter()
        .find(|f| f["state"] == "on_air")
        .and_then(|f| f["token_id"].as_str().map(str::to_owned))
}

/// Create a token with extra fields; (id, secret).
fn token_with(g: &Gateway, body: Value) -> (String, String) {
    let (st, v) = g.api("POST", "/api/v1/tokens", Some(&body));
    assert_eq!(st, 201, "{v}");
    (
        v["token"]["id"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

fn patch(g: &Gateway, id: &str, body: Value) -> Value {
    let (st, v) = g.api("PATCH", &format!("/api/v1/tokens/{id}"), Some(&body));
    assert_eq!(st, 200, "{v}");
    v
}

/// Wait until the ffmpeg encoder has exited (the gateway closed it);
/// returns when it was seen gone.
fn wait_exit(p: &mut Proc, what: &str, timeout: Duration) -> Instant {
    assert!(
        p.wait_timeout(timeout).is_some(),
        "{what}: the encoder was not disconnected within {timeout:?}"
    );
    Instant::now()
}

/// Hold for `d` and check `f` at every look (a window in which something
/// must *not* happen, not a synchronisation).
fn holds_for(d: Duration, mut f: impl FnMut() -> Result<(), String>) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if let Err(e) = f() {
            panic!("{e}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A backup token (50) asking for `priority=2147483647` is clamped to its
/// token's priority over RTMP and SRT: the primary (100) keeps the air.
/// A token created with `allow_priority_override` may raise.
#[test]
fn priority_above_the_token_is_clamped_unless_the_token_allows_raising() {
    let g = Gateway::start();
    let (primary_id, primary) = g.token(&["match1"], 100);
    let (backup_id, backup) = g.token(&["match1"], 50);
    let _p = publish(Fixture::A, &g.rtmp(&format!("match1?token={primary}")));
    g.wait_feeds("match1", 1, Some(&primary_id));
    let _b = publish(
        Fixture::B,
        &g.rtmp(&format!("match1?token={backup}&priority=2147483647")),
    );
    let _s = publish_srt(
        Fixture::B,
        &g.srt_ff(&format!(
            "#!::r=match1,m=publish,s={backup},user_priority=2147483647"
        )),
    );
    g.wait_for(
        "both backup feeds eligible",
        Duration::from_secs(20),
        || {
            let f = feeds(&g, "match1");
            (f.len() == 3
                && f.iter()
                    .filter(|f| f["token_id"] == backup_id.as_str())
                    .all(|f| f["eligible"] == true))
            .then_some(())
        },
    );
    // failback_hold is 1 s: a raised backup would have taken the air.
    holds_for(Duration::from_millis(2_500), || {
        match on_air_token(&g, "match1") {
            Some(t) if t == primary_id => Ok(()),
            other => Err(format!(
                "the backup took the air ({other:?}): {}",
                g.stream("match1")
            )),
        }
    });
    for f in feeds(&g, "match1")
        .iter()
        .filter(|f| f["token_id"] == backup_id.as_str())
    {
        assert_eq!(f["priority"], 50, "clamped to the token's priority: {f}");
        assert_eq!(f["pinned"], true, "{f}");
        assert_eq!(f["requested_priority"], 2147483647, "{f}");
    }

    // Lowering is always allowed, and stays pinned.
    let (low_id, low) = g.token(&["match2"], 50);
    let _l = publish(
        Fixture::A,
        &g.rtmp(&format!("match2?token={low}&priority=20")),
    );
    g.wait_feeds("match2", 1, Some(&low_id));
    let f = feed_of(&g, "match2", &low_id).unwrap();
    assert_eq!(
        (f["priority"].clone(), f["pinned"].clone()),
        (json!(20), json!(true))
    );

    // With the flag, priority= may raise: the raised feed takes the air.
    let (raise_id, raise) = token_with(
        &g,
        json!({"label": "raise", "streams": [{"name": "match1"}], "priority": 50,
               "allow_priority_override": true}),
    );
    let _r = publish(
        Fixture::A,
        &g.rtmp(&format!("match1?token={raise}&priority=200")),
    );
    g.wait_for("the raised feed on air", Duration::from_secs(20), || {
        (on_air_token(&g, "match1").as_deref() == Some(raise_id.as_str())).then_some(())
    });
    assert_eq!(feed_of(&g, "match1", &raise_id).unwrap()["priority"], 200);
    let (_, v) = g.api("GET", &format!("/api/v1/tokens/{raise_id}"), None);
    assert_eq!(v["allow_priority_override"], true, "{v}");
    let (_, v) = g.api("GET", &format!("/api/v1/tokens/{backup_id}"), None);
    assert_eq!(v["allow_priority_override"], false, "{v}");
}

/// A pinned feed keeps its pinned priority and is not disconnected by
/// Reprioritize, but its effective priority is min(pinned, token's
/// priority): lowering the token below it takes the air from it.
#[test]
fn reprioritize_takes_the_air_from_a_pinned_feed() {
    let g = Gateway::start();
    let (pin_id, pin) = g.token(&["match1"], 100);
    let (other_id, other) = g.token(&["match1"], 50);
    let mut p = publish(
        Fixture::A,
        &g.rtmp(&format!("match1?token={pin}&priority=90")),
    );
    g.wait_feeds("match1", 1, Some(&pin_id));
    let _o = publish(Fixture::B, &g.rtmp(&format!("match1?token={other}")));
    g.wait_feeds("match1", 2, Some(&pin_id));

    let (st, v) = g.api(
        "POST",
        &format!("/api/v1/tokens/{pin_id}/reprioritize"),
        Some(&json!({"priority": 10, "disconnect": true})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["affected"], json!([]), "{v}");
    assert_eq!(v["pinned"].as_array().unwrap().len(), 1, "{v}");
    g.wait_for("the other token on air", Duration::from_secs(10), || {
        (on_air_token(&g, "match1").as_deref() == Some(other_id.as_str())).then_some(())
    });
    let f = feed_of(&g, "match1", &pin_id).expect("the pinned feed stays connected");
    assert_eq!(f["priority"], 10, "{f}");
    assert_eq!(f["pinned"], true, "{f}");
    assert!(p.wait_timeout(Duration::from_millis(100)).is_none());

    // Raising the token again gives the pinned feed back its own value.
    let (st, v) = g.api(
        "POST",
        &format!("/api/v1/tokens/{pin_id}/reprioritize"),
        Some(&json!({"priority": 95, "disconnect": false})),
    );
    assert_eq!(st, 200, "{v}");
    g.wait_for(
        "the pinned feed back on air",
        Duration::from_secs(10),
        || (on_air_token(&g, "match1").as_deref() == Some(pin_id.as_str())).then_some(()),
    );
    assert_eq!(feed_of(&g, "match1", &pin_id).unwrap()["priority"], 90);
}

/// Refreshing a token disconnects the feeds publishing with the old secret
/// (RTMP and SRT) within a second; a plain priority update does not
/// disconnect (it applies at the next connection).
#[test]
fn refresh_disconnects_feeds_of_the_old_secret() {
    let g = Gateway::start();
    let (id, secret) = g.token(&["match1", "match2"], 10);
    let mut rtmp = publish(Fixture::A, &g.rtmp(&format!("match1?token={secret}")));
    let _srt = publish_srt(
        Fixture::B,
        &g.srt_ff(&format!("#!::r=match2,m=publish,s={secret}")),
    );
    g.wait_feeds("match1", 1, Some(&id));
    g.wait_feeds("match2", 1, Some(&id));

    patch(&g, &id, json!({"priority": 20}));
    holds_for(Duration::from_millis(1_000), || {
        match feed_of(&g, "match1", &id) {
            Some(f) if f["priority"] == 10 => Ok(()),
            other => Err(format!("a plain update touched the live feed: {other:?}")),
        }
    });

    let t0 = Instant::now();
    let (st, v) = g.api("POST", &format!("/api/v1/tokens/{id}/refresh"), None);
    assert_eq!(st, 200, "{v}");
    let gone = wait_until("both feeds gone", Duration::from_secs(5), || {
        feed_of(&g, "match1", &id).is_none() && feed_of(&g, "match2", &id).is_none()
    });
    let exited = wait_exit(&mut rtmp, "refresh", Duration::from_secs(5));
    println!(
        "refresh → feeds gone from the API (polled) after {gone:?}, RTMP encoder exited after {:?}",
        exited - t0
    );
    assert!(
        exited - t0 < Duration::from_secs(1),
        "the encoder outlived the refresh by {:?}",
        exited - t0
    );
    // The new secret publishes, at the updated priority.
    let fresh = v["secret"].as_str().unwrap();
    let _again = publish(Fixture::A, &g.rtmp(&format!("match1?token={fresh}")));
    g.wait_feeds("match1", 1, Some(&id));
    assert_eq!(feed_of(&g, "match1", &id).unwrap()["priority"], 20);
}

/// A token's expiry disconnects its feeds at that instant (a timer, not
/// the next connection); moving the expiry later keeps them, moving it
/// earlier disconnects them at the new instant.
#[test]
fn expiry_disconnects_at_the_instant() {
    let g = Gateway::start();
    let (st, v) = g.api(
        "POST",
        "/api/v1/tokens",
        Some(&json!({"label": "short", "streams": [{"name": "match1"}], "expires_in_seconds": 4})),
    );
    assert_eq!(st, 201, "{v}");
    let id = v["token"]["id"].as_str().unwrap().to_owned();
    let secret = v["secret"].as_str().unwrap().to_owned();
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(v["token"]["expires_at"].clone()).unwrap();
    let mut enc = publish(Fixture::A, &g.rtmp(&format!("match1?token={secret}")));
    g.wait_feeds("match1", 1, Some(&id));
    assert!(
        chrono::Utc::now() < expires,
        "the feed must be live before the expiry for this test to mean anything"
    );
    wait_exit(&mut enc, "expiry", Duration::from_secs(15));
    let late = chrono::Utc::now() - expires;
    println!(
        "expiry → encoder gone {} ms after expires_at",
        late.num_milliseconds()
    );
    assert!(
        late < chrono::Duration::milliseconds(1_000),
        "disconnected {late} after the expiry"
    );
    assert!(feed_of(&g, "match1", &id).is_none());

    // Extended before it expires: the feed stays past the old instant.
    let (st, v) = g.api(
        "POST",
        "/api/v1/tokens",
        Some(
            &json!({"label": "extended", "streams": [{"name": "match2"}], "expires_in_seconds": 3}),
        ),
    );
    assert_eq!(st, 201, "{v}");
    let (id2, s2) = (
        v["token"]["id"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    );
    let old: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(v["token"]["expires_at"].clone()).unwrap();
    let mut enc2 = publish(Fixture::A, &g.rtmp(&format!("match2?token={s2}")));
    g.wait_feeds("match2", 1, Some(&id2));
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    patch(&g, &id2, json!({"expires_at": later}));
    while chrono::Utc::now() < old + chrono::Duration::milliseconds(1_500) {
        assert!(
            feed_of(&g, "match2", &id2).is_some(),
            "an extended token's feed was disconnected"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Shortened: disconnected at the new instant.
    let soon = chrono::Utc::now() + chrono::Duration::seconds(2);
    patch(&g, &id2, json!({"expires_at": soon}));
    wait_exit(&mut enc2, "shortened expiry", Duration::from_secs(10));
    let late = chrono::Utc::now() - soon;
    assert!(
        late >= chrono::Duration::zero() - chrono::Duration::milliseconds(50)
            && late < chrono::Duration::milliseconds(1_000),
        "disconnected {late} after the shortened expiry"
    );
}

/// Removing a stream from a token disconnects its feed on that stream only;
/// an allow-list that no longer contains the encoder's address disconnects
/// it; an allow-list entry written as IPv4-mapped IPv6 matches the IPv4
/// peer.
#[test]
fn stream_removal_and_allow_list_changes_disconnect_what_they_no_longer_allow() {
    let g = Gateway::start();
    let (id, secret) = g.token(&["match1", "match2"], 10);
    let mut one = publish(Fixture::A, &g.rtmp(&format!("match1?token={secret}")));
    let mut two = publish(Fixture::B, &g.rtmp(&format!("match2?token={secret}")));
    g.wait_feeds("match1", 1, Some(&id));
    g.wait_feeds("match2", 1, Some(&id));

    patch(&g, &id, json!({"remove_streams": [{"name": "match2"}]}));
    wait_exit(&mut two, "stream removed", Duration::from_secs(5));
    assert!(feed_of(&g, "match2", &id).is_none());
    assert!(
        feed_of(&g, "match1", &id).is_some(),
        "match1 is still allowed"
    );

    // Still allowed (loopback is in 127.0.0.0/8): stays.
    patch(&g, &id, json!({"allowed_ips": ["127.0.0.0/8"]}));
    holds_for(Duration::from_millis(1_000), || {
        feed_of(&g, "match1", &id)
            .map(|_| ())
            .ok_or_else(|| "an allowed feed was disconnected".to_owned())
    });
    assert!(one.wait_timeout(Duration::from_millis(10)).is_none());
    // No longer allowed: disconnected.
    patch(&g, &id, json!({"allowed_ips": ["10.0.0.0/8"]}));
    wait_exit(
        &mut one,
        "address no longer allowed",
        Duration::from_secs(5),
    );

    // IPv4-mapped entries match the IPv4 encoder.
    for entry in ["::ffff:127.0.0.1", "::ffff:127.0.0.0/104"] {
        patch(&g, &id, json!({"allowed_ips": [entry]}));
        let mut enc = publish(Fixture::A, &g.rtmp(&format!("match1?token={secret}")));
        g.wait_feeds("match1", 1, Some(&id));
        // And the live feed stays when the list is rewritten the other way.
        patch(&g, &id, json!({"allowed_ips": ["127.0.0.1"]}));
        holds_for(Duration::from_millis(500), || {
            feed_of(&g, "match1", &id)
                .map(|_| ())
                .ok_or_else(|| format!("{entry}: the feed was disconnected"))
        });
        enc.kill();
        g.wait_for("feed gone", Duration::from_secs(10), || {
            feed_of(&g, "match1", &id).is_none().then_some(())
        });
    }
}

/// A change written to PostgreSQL without any message (a node that missed
/// it) is applied by the periodic re-check within its period.
#[test]
fn changes_behind_the_apis_back_are_applied_by_the_periodic_recheck() {
    let g = Gateway::start();
    let (id, secret) = g.token(&["match1"], 10);
    let mut enc = publish(Fixture::A, &g.rtmp(&format!("match1?token={secret}")));
    g.wait_feeds("match1", 1, Some(&id));
    let mut conn = g.s.db.connect();
    let t0 = Instant::now();
    diesel::sql_query(format!(
        "UPDATE publish_tokens SET enabled = false WHERE id = '{id}'"
    ))
    .execute(&mut conn)
    .expect("update the row directly");
    wait_exit(
        &mut enc,
        "disabled in the database",
        Duration::from_secs(10),
    );
    println!(
        "row changed directly → encoder gone after {:?}",
        t0.elapsed()
    );
}

/// Two nodes: a refresh through node a disconnects the old secret's feed
/// on node b within a second; a change node b never hears about (written
/// to the database directly) reaches it within the re-check period.
#[test]
fn token_changes_reach_the_other_node() {
    let tc = TestCluster::new(&shared_redis_url());
    let a = tc.node("a-1", "eu");
    let b = tc.node("b-1", "us");
    wait_until("two nodes know each other", Duration::from_secs(10), || {
        [&a, &b].iter().all(|n| {
            n.get("/api/v1/cluster/nodes")["nodes"]
                .as_array()
                .is_some_and(|x| x.len() == 2)
        })
    });
    let (id, secret) = tc.token(&a, &["match1"], 10);
    let mut enc = publish(Fixture::A, &b.rtmp(&format!("match1?token={secret}")));
    let on_b = |id: &str| {
        b.source("match1")["feeds"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["token_id"] == id && f["node"] == "b-1"))
    };
    wait_until("the feed is live on b", Duration::from_secs(20), || {
        on_b(&id)
    });

    let t0 = Instant::now();
    let (st, v) = a.call(
        "POST",
        &format!("/api/v1/tokens/{id}/refresh"),
        Some(&tc.key),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let exited = wait_exit(
        &mut enc,
        "refresh on the other node",
        Duration::from_secs(5),
    );
    println!("refresh via a → encoder on b gone after {:?}", exited - t0);
    assert!(
        exited - t0 < Duration::from_secs(1),
        "the feed on b outlived the refresh by {:?}",
        exited - t0
    );

    // Missed message: change the row in the database only.
    let (id2, secret2) = tc.token(&a, &["match1"], 10);
    let mut enc2 = publish(Fixture::B, &b.rtmp(&format!("match1?token={secret2}")));
    wait_until(
        "the second feed is live on b",
        Duration::from_secs(20),
        || on_b(&id2),
    );
    let mut conn = tc.db.connect();
    let t0 = Instant::now();
    diesel::sql_query(format!(
        "UPDATE publish_tokens SET secret_id = gen_random_uuid() WHERE id = '{id2}'"
    ))
    .execute(&mut conn)
    .expect("update the row directly");
    let exited = wait_exit(&mut enc2, "missed message", Duration::from_secs(15));
    println!(
        "row changed without a message → encoder on b gone after {:?}",
        exited - t0
    );
}
