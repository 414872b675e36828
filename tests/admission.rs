//! Publish admission end to end: tokens made through the REST API, checked
//! by the running gateway's `Admission` against the real database, and
//! changed through the API between checks (so the cache invalidation is
//! exercised, not bypassed).

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::TestServer;
use primacy::auth::api_keys::Scope;
use primacy::auth::jwt::KeySet;
use primacy::auth::publish::{AdmitError, Admitted, Refusal};
use primacy::domain::{Priority, SourceId, StreamName, TokenId};
use serde_json::{json, Value};
use uuid::Uuid;

struct Ctx {
    s: TestServer,
    key: String,
}

const LOCAL: &str = "127.0.0.1";

impl Ctx {
    fn new() -> Self {
        let s = TestServer::start();
        let key = s.db.api_key(&[Scope::Admin]);
        Self { s, key }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        self.s.call(method, path, Some(&self.key), body.as_deref())
    }

    /// Create a token through the API; returns (id, secret).
    fn create(&self, body: Value) -> (Uuid, String) {
        let (st, v) = self.call("POST", "/api/v1/tokens", Some(body));
        assert_eq!(st, 201, "{v}");
        (
            v["token"]["id"].as_str().unwrap().parse().unwrap(),
            v["secret"].as_str().unwrap().to_owned(),
        )
    }

    fn patch(&self, id: Uuid, body: Value) -> Value {
        let (st, v) = self.call("PATCH", &format!("/api/v1/tokens/{id}"), Some(body));
        assert_eq!(st, 200, "{v}");
        v
    }

    fn check_full(
        &self,
        secret: &str,
        stream: &str,
        source: &str,
        ip: &str,
        now: DateTime<Utc>,
    ) -> Result<Admitted, AdmitError> {
        let stream: StreamName = stream.parse().expect("stream name");
        let source: SourceId = source.parse().expect("source id");
        let ip: IpAddr = ip.parse().expect("ip");
        let admission = self.s.running().admission.clone();
        self.s.runtime().block_on(async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                admission.check(secret, &stream, &source, ip, now),
            )
            .await
            .expect("admission answered within 10 s")
        })
    }

    fn check(&self, secret: &str, stream: &str) -> Result<Admitted, AdmitError> {
        self.check_full(secret, stream, "", LOCAL, Utc::now())
    }

    /// The row's current secret id, straight from the database.
    fn secret_id(&self, id: Uuid) -> Uuid {
        let mut conn = self.s.db.connect();
        primacy::store::tokens::find(&mut conn, id)
            .expect("token row")
            .secret_id
    }
}

#[track_caller]
fn refused(r: Result<Admitted, AdmitError>) -> Refusal {
    match r {
        Err(AdmitError::Refused(x)) => x,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[track_caller]
fn admitted(r: Result<Admitted, AdmitError>) -> Admitted {
    match r {
        Ok(a) => a,
        Err(e) => panic!("expected admission, got {e:?}"),
    }
}

#[test]
fn valid_secret_is_admitted_with_the_token_priority() {
    let c = Ctx::new();
    let (id, secret) = c.create(json!({
        "label": "cam-a",
        "priority": 100,
        "streams": [{"name": "match1"}, {"name": "ev/[a-z]+", "is_regex": true}],
    }));
    let a = admitted(c.check_full(&secret, "match1", "cam2", LOCAL, Utc::now()));
    assert_eq!(a.token_id, TokenId(id));
    assert_eq!(a.label, "cam-a");
    assert_eq!(a.priority, Priority(Some(100)));
    assert_eq!(a.stream.as_str(), "match1");
    assert_eq!(a.source.as_str(), "cam2");
    // Cached the second time, same answer.
    let b = admitted(c.check(&secret, "match1"));
    assert_eq!(b.priority, Priority(Some(100)));
    assert!(b.source.is_default());
    admitted(c.check(&secret, "ev/abc"));
    // IPv6 loopback with no allow-list: any address.
    admitted(c.check_full(&secret, "match1", "", "::1", Utc::now()));

    // A token without priority is admitted with the lowest.
    let (_, low) = c.create(json!({"label": "low", "streams": [{"name": "match1"}]}));
    assert_eq!(admitted(c.check(&low, "match1")).priority, Priority(None));

    // A priority change through the API is seen at the next check.
    c.patch(id, json!({"priority": 7}));
    assert_eq!(
        admitted(c.check(&secret, "match1")).priority,
        Priority(Some(7))
    );
    let (st, v) = c.call(
        "POST",
        &format!("/api/v1/tokens/{id}/reprioritize"),
        Some(json!({"priority": null})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        admitted(c.check(&secret, "match1")).priority,
        Priority(None)
    );

    // A secret forged with the real key and the real ids is, of course, fine:
    // the key is all that protects the secret.
    let forged = KeySet::hs256("test", common::HS256.as_bytes())
        .sign(id, c.secret_id(id), Utc::now().timestamp())
        .unwrap();
    admitted(c.check(&forged, "match1"));
}

#[test]
fn tampered_and_foreign_secrets_are_refused() {
    let c = Ctx::new();
    let (id, secret) =
        c.create(json!({"label": "t", "priority": 1, "streams": [{"name": "match1"}]}));
    admitted(c.check(&secret, "match1"));

    // Tampered payload: change one character of the claims segment.
    let parts: Vec<&str> = secret.split('.').collect();
    let mut payload = parts[1].as_bytes().to_vec();
    for i in [5, payload.len() / 2, payload.len() - 2] {
        let mut p = payload.clone();
        p[i] = if p[i] == b'A' { b'B' } else { b'A' };
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            String::from_utf8(p).unwrap(),
            parts[2]
        );
        let r = refused(c.check(&tampered, "match1"));
        assert!(
            matches!(r, Refusal::BadSignature | Refusal::Malformed),
            "tampered at {i}: {r:?}"
        );
    }
    // Tampered signature.
    payload = parts[2].as_bytes().to_vec();
    payload[3] = if payload[3] == b'x' { b'y' } else { b'x' };
    let bad_sig = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        String::from_utf8(payload).unwrap()
    );
    assert_eq!(refused(c.check(&bad_sig, "match1")), Refusal::BadSignature);
    // Signature of another secret spliced on.
    let (_, other) = c.create(json!({"label": "o", "streams": [{"name": "match1"}]}));
    let spliced = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        other.rsplit('.').next().unwrap()
    );
    assert_eq!(refused(c.check(&spliced, "match1")), Refusal::BadSignature);

    let secret_id = c.secret_id(id);
    let now = Utc::now().timestamp();
    // Right ids and kid, wrong key.
    let wrong_key = KeySet::hs256("test", b"another-key-another-key-another-k")
        .sign(id, secret_id, now)
        .unwrap();
    assert_eq!(
        refused(c.check(&wrong_key, "match1")),
        Refusal::BadSignature
    );
    // Right key material, but a kid the gateway does not know.
    let wrong_kid = KeySet::hs256("other", common::HS256.as_bytes())
        .sign(id, secret_id, now)
        .unwrap();
    assert_eq!(refused(c.check(&wrong_kid, "match1")), Refusal::UnknownKey);

    for garbage in ["abc", "", "a.b.c", "a.b", "....", &"x".repeat(5000)] {
        assert_eq!(
            refused(c.check(garbage, "match1")),
            Refusal::Malformed,
            "{garbage:?}"
        );
    }
    // `alg: none` with the real claims.
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT","kid":"test"}"#),
        parts[1]
    );
    let r = refused(c.check(&none, "match1"));
    assert!(
        matches!(r, Refusal::Malformed | Refusal::BadSignature),
        "{r:?}"
    );

    // The real secret still works after all that.
    admitted(c.check(&secret, "match1"));
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn expired_tokens_are_refused() {
    let c = Ctx::new();
    // Expiry set through PATCH, judged at a given `now`.
    let (id, secret) = c.create(json!({"label": "t", "streams": [{"name": "match1"}]}));
    let at = Utc::now() + chrono::Duration::seconds(30);
    c.patch(id, json!({"expires_at": at}));
    admitted(c.check(&secret, "match1"));
    assert_eq!(
        refused(c.check_full(&secret, "match1", "", LOCAL, at)),
        Refusal::Expired,
        "expiry is exclusive"
    );
    assert_eq!(
        refused(c.check_full(
            &secret,
            "match1",
            "",
            LOCAL,
            at + chrono::Duration::seconds(1)
        )),
        Refusal::Expired
    );
    // Clearing the expiry through the API lifts it.
    c.patch(id, json!({"expires_at": null}));
    admitted(c.check_full(
        &secret,
        "match1",
        "",
        LOCAL,
        at + chrono::Duration::days(365),
    ));

    // In real time: one second of validity, then refused.
    let (st, v) = c.call(
        "POST",
        "/api/v1/tokens",
        Some(json!({"label": "short", "streams": [{"name": "match1"}], "expires_in_seconds": 1})),
    );
    assert_eq!(st, 201, "{v}");
    let short = v["secret"].as_str().unwrap().to_owned();
    let expires: DateTime<Utc> = serde_json::from_value(v["token"]["expires_at"].clone()).unwrap();
    admitted(c.check(&short, "match1"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while Utc::now() <= expires {
        assert!(Instant::now() < deadline, "clock did not pass the expiry");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(refused(c.check(&short, "match1")), Refusal::Expired);
}

#[test]
fn disabling_through_the_api_takes_effect_at_once() {
    let c = Ctx::new();
    let (id, secret) =
        c.create(json!({"label": "t", "priority": 9, "streams": [{"name": "match1"}]}));
    // Cache the row first, then change it.
    admitted(c.check(&secret, "match1"));
    admitted(c.check(&secret, "match1"));
    c.patch(id, json!({"enabled": false}));
    assert_eq!(refused(c.check(&secret, "match1")), Refusal::Disabled);
    c.patch(id, json!({"enabled": true}));
    admitted(c.check(&secret, "match1"));

    // Created disabled.
    let (_, off) =
        c.create(json!({"label": "off", "streams": [{"name": "match1"}], "enabled": false}));
    assert_eq!(refused(c.check(&off, "match1")), Refusal::Disabled);
}

#[test]
fn refresh_revokes_the_old_secret() {
    let c = Ctx::new();
    let (id, old) = c.create(json!({"label": "t", "streams": [{"name": "match1"}]}));
    admitted(c.check(&old, "match1"));
    let (st, v) = c.call("POST", &format!("/api/v1/tokens/{id}/refresh"), None);
    assert_eq!(st, 200, "{v}");
    let new = v["secret"].as_str().unwrap().to_owned();
    assert_eq!(refused(c.check(&old, "match1")), Refusal::Revoked);
    admitted(c.check(&new, "match1"));
    assert_eq!(refused(c.check(&old, "match1")), Refusal::Revoked);
    // Refreshing again revokes the second one too.
    let (_, v) = c.call("POST", &format!("/api/v1/tokens/{id}/refresh"), None);
    let newest = v["secret"].as_str().unwrap().to_owned();
    assert_eq!(refused(c.check(&new, "match1")), Refusal::Revoked);
    admitted(c.check(&newest, "match1"));
}

#[test]
fn deleted_and_unknown_tokens_look_like_bad_secrets() {
    let c = Ctx::new();
    let (id, secret) = c.create(json!({"label": "t", "streams": [{"name": "match1"}]}));
    admitted(c.check(&secret, "match1"));
    let (st, _) = c.call("DELETE", &format!("/api/v1/tokens/{id}"), None);
    assert_eq!(st, 204);
    assert_eq!(refused(c.check(&secret, "match1")), Refusal::UnknownToken);
    // A validly signed secret for a token that never existed.
    let ghost = KeySet::hs256("test", common::HS256.as_bytes())
        .sign(Uuid::new_v4(), Uuid::new_v4(), Utc::now().timestamp())
        .unwrap();
    assert_eq!(refused(c.check(&ghost, "match1")), Refusal::UnknownToken);
    // Twice (the miss may be cached).
    assert_eq!(refused(c.check(&ghost, "match1")), Refusal::UnknownToken);

    // What the encoder is told does not reveal that the token existed.
    let public = Refusal::UnknownToken.public_message();
    assert_eq!(public, Refusal::BadSignature.public_message());
    assert_eq!(public, Refusal::Malformed.public_message());
    assert_eq!(public, Refusal::UnknownKey.public_message());
    assert_ne!(Refusal::UnknownToken.code(), Refusal::BadSignature.code());
}

#[test]
fn stream_rules_are_enforced() {
    let c = Ctx::new();
    let (id, secret) = c.create(json!({
        "label": "t",
        "streams": [{"name": "match1"}, {"name": "ev/[a-z]+", "is_regex": true}],
    }));
    admitted(c.check(&secret, "match1"));
    admitted(c.check(&secret, "ev/abc"));
    for stream in [
        "match2", "match10", "xmatch1", "ev/ABC", "ev/abc1", "xev/abc", "ev/",
    ] {
        assert_eq!(
            refused(c.check(&secret, stream)),
            Refusal::StreamNotAllowed,
            "{stream}"
        );
    }
    // Adding a stream through the API allows it at once; removing one refuses it.
    c.patch(
        id,
        json!({"add_streams": [{"name": "match2"}], "remove_streams": [{"name": "match1"}]}),
    );
    admitted(c.check(&secret, "match2"));
    assert_eq!(
        refused(c.check(&secret, "match1")),
        Refusal::StreamNotAllowed
    );
}

#[test]
fn ip_rules_are_enforced() {
    let c = Ctx::new();
    let (id, secret) = c.create(json!({
        "label": "t",
        "streams": [{"name": "match1"}],
        "allowed_ips": ["10.0.0.0/8"],
    }));
    let now = Utc::now();
    assert_eq!(
        refused(c.check_full(&secret, "match1", "", LOCAL, now)),
        Refusal::IpNotAllowed
    );
    admitted(c.check_full(&secret, "match1", "", "10.1.2.3", now));
    admitted(c.check_full(&secret, "match1", "", "::ffff:10.1.2.3", now));
    assert_eq!(
        refused(c.check_full(&secret, "match1", "", "11.0.0.1", now)),
        Refusal::IpNotAllowed
    );
    // The stream is judged before the address.
    assert_eq!(
        refused(c.check_full(&secret, "other", "", "11.0.0.1", now)),
        Refusal::StreamNotAllowed
    );
    // Clearing the allow-list through the API admits any address.
    c.patch(id, json!({"allowed_ips": []}));
    admitted(c.check_full(&secret, "match1", "", LOCAL, now));
    c.patch(id, json!({"allowed_ips": ["127.0.0.1"]}));
    admitted(c.check_full(&secret, "match1", "", LOCAL, now));
    assert_eq!(
        refused(c.check_full(&secret, "match1", "", "127.0.0.2", now)),
        Refusal::IpNotAllowed
    );
}

/// Allow-list entries written as IPv4-mapped IPv6 match the IPv4 address
/// they map, and IPv4 entries match IPv4-mapped peers.
#[test]
fn ipv4_mapped_allow_list_entries_match_their_ipv4_address() {
    let c = Ctx::new();
    let now = Utc::now();
    for (entry, inside, outside) in [
        ("::ffff:10.0.0.1", "10.0.0.1", "10.0.0.2"),
        ("::ffff:10.0.0.0/104", "10.200.0.1", "11.0.0.1"),
        ("::ffff:a00:1", "::ffff:10.0.0.1", "::ffff:10.0.0.2"),
        ("10.0.0.1", "::ffff:10.0.0.1", "::1"),
    ] {
        let (_, secret) = c.create(json!({
            "label": "t",
            "streams": [{"name": "match1"}],
            "allowed_ips": [entry],
        }));
        admitted(c.check_full(&secret, "match1", "", inside, now));
        assert_eq!(
            refused(c.check_full(&secret, "match1", "", outside, now)),
            Refusal::IpNotAllowed,
            "{entry} must not admit {outside}"
        );
    }
}

/// A regex rule stored before rules were checked (or written by hand) that
/// escapes its anchoring makes the token invalid: it is refused, never
/// allowed everywhere, and the stream listing does not list it.
#[test]
fn a_stored_escaping_regex_allows_nothing() {
    use diesel::RunQueryDsl;
    let c = Ctx::new();
    let (id, secret) = c.create(json!({
        "label": "t",
        "streams": [{"name": "teamA/[a-z0-9]+", "is_regex": true}],
    }));
    admitted(c.check(&secret, "teamA/cam1"));
    let mut conn = c.s.db.connect();
    diesel::sql_query(format!(
        r#"UPDATE publish_tokens SET streams = '[{{"name": "teamA/[a-z0-9]+)|(.*", "is_regex": true}}]' WHERE id = '{id}'"#
    ))
    .execute(&mut conn)
    .expect("store an escaping rule behind the API's back");
    // The admission cache still holds the old row until it is told; the
    // periodic re-check (or the TTL) drops it. Ask until the row is seen.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match c.check(&secret, "teamA/cam1") {
            Err(AdmitError::Refused(Refusal::InvalidDefinition)) => break,
            other => assert!(
                Instant::now() < end,
                "the stored rule was not re-read in time: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for stream in ["anything", "teamB/x", "teamA/cam1"] {
        assert_eq!(
            refused(c.check(&secret, stream)),
            Refusal::InvalidDefinition,
            "{stream}"
        );
    }
    for stream in ["anything", "teamA%2Fcam1"] {
        let (st, v) = c.call("GET", &format!("/api/v1/tokens?stream={stream}"), None);
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["total"], 0, "{stream}: {v}");
    }
}

/// The periodic re-check's comparison: for the tokens of live feeds (with
/// the revision each was judged against) and every cached row, exactly the
/// changed or deleted ones come back, and stale cached rows are dropped.
/// Prints what one comparison costs for 1,000 and 10,000 live tokens.
#[test]
fn revision_comparison_finds_exactly_the_changed_tokens() {
    use diesel::RunQueryDsl;
    let c = Ctx::new();
    let mut conn = c.s.db.connect();
    diesel::sql_query(
        "INSERT INTO publish_tokens (id, label, streams, secret_id) \
         SELECT gen_random_uuid(), 'bulk', '[{\"name\": \"s\", \"is_regex\": false}]', gen_random_uuid() \
         FROM generate_series(1, 10000)",
    )
    .execute(&mut conn)
    .expect("insert tokens");
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
    }
    let ids: Vec<Uuid> = diesel::sql_query("SELECT id FROM publish_tokens ORDER BY id")
        .load::<Id>(&mut conn)
        .expect("ids")
        .into_iter()
        .map(|r| r.id)
        .collect();
    let admission = c.s.running().admission.clone();
    let stale = |live: &[(TokenId, i64)]| {
        let t0 = Instant::now();
        let r =
            c.s.runtime()
                .block_on(admission.stale(live))
                .expect("revisions read");
        (r, t0.elapsed())
    };
    for n in [1_000, 10_000] {
        let live: Vec<(TokenId, i64)> = ids[..n].iter().map(|id| (TokenId(*id), 1)).collect();
        let mut took = Vec::new();
        for _ in 0..5 {
            let (r, t) = stale(&live);
            assert!(r.is_empty(), "nothing changed");
            took.push(t);
        }
        took.sort();
        println!(
            "revision comparison for {n} live tokens: median {:?}, max {:?}",
            took[2], took[4]
        );
    }
    // A cached row changed by hand, another deleted, a third untouched.
    let (changed, secret) = c.create(json!({"label": "t", "streams": [{"name": "match1"}]}));
    admitted(c.check(&secret, "match1"));
    let live = vec![
        (TokenId(changed), 1),
        (TokenId(ids[0]), 1),
        (TokenId(ids[1]), 1),
    ];
    diesel::sql_query(format!(
        "UPDATE publish_tokens SET secret_id = gen_random_uuid() WHERE id = '{changed}'"
    ))
    .execute(&mut conn)
    .expect("change");
    diesel::sql_query(format!(
        "DELETE FROM publish_tokens WHERE id = '{}'",
        ids[0]
    ))
    .execute(&mut conn)
    .expect("delete");
    let (mut r, _) = stale(&live);
    r.sort_by_key(|t| t.0);
    let mut want = vec![TokenId(changed), TokenId(ids[0])];
    want.sort_by_key(|t| t.0);
    assert_eq!(r, want);
    // The stale cached row was dropped: the old secret is refused now.
    assert_eq!(refused(c.check(&secret, "match1")), Refusal::Revoked);
    // Judged against the new revision, nothing is stale any more.
    let (r, _) = stale(&[(TokenId(changed), 2), (TokenId(ids[1]), 1)]);
    assert!(r.is_empty(), "{r:?}");
}
