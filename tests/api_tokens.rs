//! `/api/v1/tokens` end to end: every endpoint, its validation, its errors,
//! its audit records, and that no publish secret leaks outside create and
//! refresh.

mod common;

use common::{assert_error, TestServer};
use primacy::auth::api_keys::Scope;
use serde_json::{json, Value};
use uuid::Uuid;

/// A server, an admin key (with its id, for the audit actor) and every
/// publish secret issued so far (to prove none of them leaks).
struct Ctx {
    s: TestServer,
    key: String,
    key_id: Uuid,
    secrets: std::cell::RefCell<Vec<String>>,
}

impl Ctx {
    fn new() -> Self {
        let s = TestServer::start();
        let (key_id, key) = s.db.api_key_with_id(&[Scope::Admin]);
        Self {
            s,
            key,
            key_id,
            secrets: Default::default(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let (st, v) = self.s.call(method, path, Some(&self.key), body.as_deref());
        self.remember(&v);
        (st, v)
    }

    fn raw(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        self.s.call(method, path, Some(&self.key), Some(body))
    }

    fn remember(&self, v: &Value) {
        if let Some(secret) = v["secret"].as_str() {
            self.secrets.borrow_mut().push(secret.to_owned());
        }
    }

    /// Create a token; returns (id, secret, token).
    fn create(&self, body: Value) -> (String, String, Value) {
        let (st, v) = self.call("POST", "/api/v1/tokens", Some(body));
        assert_eq!(st, 201, "{v}");
        let id = v["token"]["id"].as_str().expect("token id").to_owned();
        let secret = v["secret"].as_str().expect("secret").to_owned();
        (id, secret, v["token"].clone())
    }

    fn create_simple(&self, label: &str, streams: Value) -> String {
        self.create(json!({"label": label, "streams": streams})).0
    }

    /// A list response; also checks it holds no secret.
    fn list(&self, query: &str) -> Value {
        let (st, v) = self.call("GET", &format!("/api/v1/tokens{query}"), None);
        assert_eq!(st, 200, "{query}: {v}");
        self.assert_no_secret(&v);
        v
    }

    fn list_ids(&self, query: &str) -> Vec<String> {
        ids(&self.list(query))
    }

    /// Every audit record of a target, newest first.
    fn audit(&self, target: &str) -> Vec<Value> {
        let (st, v) = self.call(
            "GET",
            &format!("/api/v1/audit?target={target}&limit=500"),
            None,
        );
        assert_eq!(st, 200, "{v}");
        self.assert_no_secret(&v);
        v["items"].as_array().expect("items").clone()
    }

    fn assert_no_secret(&self, v: &Value) {
        let text = v.to_string();
        for secret in self.secrets.borrow().iter() {
            assert!(
                !text.contains(secret.as_str()),
                "a publish secret leaked: {text}"
            );
            // Nor its signature alone.
            let sig = secret.rsplit('.').next().expect("signature");
            assert!(!text.contains(sig), "a secret's signature leaked: {text}");
        }
    }

    fn actor(&self) -> String {
        format!("api-key:{}", self.key_id)
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_owned())
        .collect()
}

fn streams(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| json!({"name": n, "is_regex": false}))
            .collect(),
    )
}

fn future(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

// ---------------------------------------------------------------- create

#[test]
fn create_returns_the_token_and_its_secret_once() {
    let c = Ctx::new();
    let (st, v) = c.call(
        "POST",
        "/api/v1/tokens",
        Some(json!({
            "label": "venue-a primary",
            "priority": 100,
            "streams": [{"name": "match1"}, {"name": "ev/[a-z]+", "is_regex": true}],
            "allowed_ips": ["10.1.2.3/8", "192.0.2.7"],
            "expires_in_seconds": 3600,
        })),
    );
    assert_eq!(st, 201, "{v}");
    let secret = v["secret"].as_str().expect("secret");
    assert_eq!(secret.split('.').count(), 3, "a compact JWT: {secret}");
    let t = &v["token"];
    assert!(Uuid::parse_str(t["id"].as_str().unwrap()).is_ok());
    assert_eq!(t["label"], "venue-a primary");
    assert_eq!(t["priority"], 100);
    assert_eq!(
        t["streams"],
        json!([{"name": "match1", "is_regex": false}, {"name": "ev/[a-z]+", "is_regex": true}])
    );
    // CIDRs are stored in canonical form; a bare address is a /32.
    assert_eq!(t["allowed_ips"], json!(["10.0.0.0/8", "192.0.2.7/32"]));
    assert_eq!(t["enabled"], true);
    let exp: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(t["expires_at"].clone()).expect("expires_at");
    let left = exp - chrono::Utc::now();
    assert!(
        left > chrono::Duration::seconds(3500) && left <= chrono::Duration::seconds(3600),
        "{left}"
    );
    assert!(t.get("secret_id").is_none(), "{t}");
    assert!(t.get("secret").is_none(), "{t}");

    // Defaults: no priority, no IP list, no expiry, enabled.
    let (_, _, t) = c.create(json!({"label": "plain", "streams": [{"name": "s"}]}));
    assert_eq!(t["priority"], Value::Null);
    assert_eq!(t["allowed_ips"], json!([]));
    assert_eq!(t["expires_at"], Value::Null);
    assert_eq!(t["enabled"], true);
    let (_, _, t) = c.create(json!({"label": "off", "streams": [{"name": "s"}], "enabled": false}));
    assert_eq!(t["enabled"], false);

    // The secret is never shown again.
    let id = v["token"]["id"].as_str().unwrap();
    let (st, shown) = c.call("GET", &format!("/api/v1/tokens/{id}"), None);
    assert_eq!(st, 200);
    c.assert_no_secret(&shown);
    c.list("");
}

#[test]
fn create_rejects_malformed_bodies() {
    let c = Ctx::new();
    let (st, v) = c.raw("POST", "/api/v1/tokens", "{\"label\": ");
    assert_error(st, &v, 400, "bad_request");
    let (st, v) = c.raw("POST", "/api/v1/tokens", "not json");
    assert_error(st, &v, 400, "bad_request");
    let (st, v) = c.raw("POST", "/api/v1/tokens", "");
    assert_error(st, &v, 400, "bad_request");
    let (st, v) = c.call(
        "POST",
        "/api/v1/tokens",
        Some(json!({"label": "x", "streams": [{"name": "s"}], "colour": "red"})),
    );
    let m = assert_error(st, &v, 400, "bad_request");
    assert!(m.contains("colour"), "{m}");
    // Unknown field inside a stream rule, and a wrong type.
    let (st, v) = c.call(
        "POST",
        "/api/v1/tokens",
        Some(json!({"label": "x", "streams": [{"name": "s", "regex": true}]})),
    );
    assert_error(st, &v, 400, "bad_request");
    let (st, v) = c.call(
        "POST",
        "/api/v1/tokens",
        Some(json!({"label": "x", "streams": [{"name": "s"}], "priority": "high"})),
    );
    assert_error(st, &v, 400, "bad_request");
    // Missing required field.
    let (st, v) = c.call("POST", "/api/v1/tokens", Some(json!({"label": "x"})));
    assert_error(st, &v, 400, "bad_request");

    // Over 64 KiB.
    let big = json!({"label": "x".repeat(70 * 1024), "streams": [{"name": "s"}]}).to_string();
    let (st, v) = c.raw("POST", "/api/v1/tokens", &big);
    assert_error(st, &v, 413, "payload_too_large");
    // Just under the limit is read, then validated.
    let under = json!({"label": "x".repeat(60 * 1024), "streams": [{"name": "s"}]}).to_string();
    let (st, v) = c.raw("POST", "/api/v1/tokens", &under);
    assert_error(st, &v, 422, "validation_failed");

    // Wrong content type.
    let ok_body = json!({"label": "x", "streams": [{"name": "s"}]}).to_string();
    let (st, v) = c.s.call_with_type(
        "POST",
        "/api/v1/tokens",
        Some(&c.key),
        Some(&ok_body),
        "text/plain",
    );
    assert_error(st, &v, 415, "unsupported_media_type");
    let (st, v) = c.s.call_with_type(
        "POST",
        "/api/v1/tokens",
        Some(&c.key),
        Some(&ok_body),
        "application/x-www-form-urlencoded",
    );
    assert_error(st, &v, 415, "unsupported_media_type");

    // Nothing was created by any of that.
    assert_eq!(c.list("")["total"], 0);
}

#[test]
fn create_validation_failures_are_422() {
    let c = Ctx::new();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "invalid regex",
            json!({"label": "x", "streams": [{"name": "ok"}, {"name": "(", "is_regex": true}]}),
            "streams[1].name",
        ),
        (
            "bad stream name",
            json!({"label": "x", "streams": [{"name": "a b"}]}),
            "streams[0].name",
        ),
        (
            "empty stream name",
            json!({"label": "x", "streams": [{"name": ""}]}),
            "streams[0].name",
        ),
        (
            "stream name too long",
            json!({"label": "x", "streams": [{"name": "a".repeat(129)}]}),
            "streams[0].name",
        ),
        (
            "empty streams",
            json!({"label": "x", "streams": []}),
            "streams",
        ),
        (
            "65 streams",
            json!({"label": "x", "streams": (0..65).map(|i| json!({"name": format!("s{i}")})).collect::<Vec<_>>()}),
            "streams",
        ),
        (
            "bad CIDR",
            json!({"label": "x", "streams": [{"name": "s"}], "allowed_ips": ["10.0.0.0/33"]}),
            "allowed_ips[0]",
        ),
        (
            "not an address",
            json!({"label": "x", "streams": [{"name": "s"}], "allowed_ips": ["1.2.3.4", "example.com"]}),
            "allowed_ips[1]",
        ),
        (
            "label too long",
            json!({"label": "x".repeat(129), "streams": [{"name": "s"}]}),
            "label",
        ),
        (
            "empty label",
            json!({"label": "", "streams": [{"name": "s"}]}),
            "label",
        ),
        (
            "control character in label",
            json!({"label": "a\nb", "streams": [{"name": "s"}]}),
            "label",
        ),
        (
            "expiry in the past",
            json!({"label": "x", "streams": [{"name": "s"}], "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            "both expiries",
            json!({"label": "x", "streams": [{"name": "s"}], "expires_at": future(3600), "expires_in_seconds": 60}),
            "expires_at",
        ),
        (
            "zero expires_in_seconds",
            json!({"label": "x", "streams": [{"name": "s"}], "expires_in_seconds": 0}),
            "expires_in_seconds",
        ),
    ];
    for (what, body, field) in cases {
        let (st, v) = c.call("POST", "/api/v1/tokens", Some(body));
        assert_eq!(st, 422, "{what}: {v}");
        let m = assert_error(st, &v, 422, "validation_failed");
        assert!(
            m.starts_with(field),
            "{what}: message {m:?} should name {field}"
        );
    }
    // Boundaries that are fine: 64 streams, a 128-character label.
    let (_, _, t) = c.create(json!({
        "label": "é".repeat(128),
        "streams": (0..64).map(|i| json!({"name": format!("s{i}")})).collect::<Vec<_>>(),
    }));
    assert_eq!(t["streams"].as_array().unwrap().len(), 64);
    assert_eq!(c.list("")["total"], 1);
    // No audit record for the refused attempts.
    let (st, v) = c.call("GET", "/api/v1/audit?action=token.create", None);
    assert_eq!(st, 200);
    assert_eq!(v["total"], 1, "{v}");
}

// ---------------------------------------------------------------- auth

#[test]
fn missing_bad_and_revoked_keys_are_401() {
    let c = Ctx::new();
    let id = c.create_simple("t", streams(&["s"]));
    let body = json!({"label": "x", "streams": [{"name": "s"}]}).to_string();
    let revoked = {
        let (kid, k) = c.s.db.api_key_with_id(&[Scope::Admin]);
        let (st, _) = c.call("DELETE", &format!("/api/v1/api-keys/{kid}"), None);
        assert_eq!(st, 200);
        k
    };
    // A well-shaped key whose secret does not match, and one that does not exist.
    let tampered = {
        let mut k = c.key.clone();
        let last = k.pop().unwrap();
        k.push(if last == 'A' { 'B' } else { 'A' });
        k
    };
    let requests: Vec<(&str, String, Option<&str>)> = vec![
        ("POST", "/api/v1/tokens".into(), Some(body.as_str())),
        ("GET", "/api/v1/tokens".into(), None),
        ("GET", format!("/api/v1/tokens/{id}"), None),
        (
            "PATCH",
            format!("/api/v1/tokens/{id}"),
            Some(r#"{"label":"y"}"#),
        ),
        ("DELETE", format!("/api/v1/tokens/{id}"), None),
        ("POST", format!("/api/v1/tokens/{id}/refresh"), None),
        (
            "POST",
            format!("/api/v1/tokens/{id}/reprioritize"),
            Some(r#"{"priority":1}"#),
        ),
    ];
    let bad_keys: [Option<&str>; 5] = [
        None,
        Some("nonsense"),
        Some("pmy_00000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        Some(tampered.as_str()),
        Some(revoked.as_str()),
    ];
    for (method, path, body) in &requests {
        for key in bad_keys {
            let (st, v) = c.s.call(method, path, key, *body);
            assert_error(st, &v, 401, "unauthorized");
        }
    }
    // Not the Bearer scheme.
    let url = format!("{}/api/v1/tokens", c.s.base);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let resp = agent
        .get(&url)
        .header("Authorization", format!("Basic {}", c.key))
        .call()
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    // The token is untouched.
    let (st, t) = c.call("GET", &format!("/api/v1/tokens/{id}"), None);
    assert_eq!(st, 200);
    assert_eq!(t["label"], "t");
}

#[test]
fn read_only_key_may_read_but_not_write() {
    let c = Ctx::new();
    let id = c.create_simple("t", streams(&["s"]));
    let read = c.s.db.api_key(&[Scope::Read]);
    let write = c.s.db.api_key(&[Scope::Write]);
    let body = json!({"label": "x", "streams": [{"name": "s"}]}).to_string();
    let writes: Vec<(&str, String, Option<&str>)> = vec![
        ("POST", "/api/v1/tokens".into(), Some(body.as_str())),
        (
            "PATCH",
            format!("/api/v1/tokens/{id}"),
            Some(r#"{"label":"y"}"#),
        ),
        ("DELETE", format!("/api/v1/tokens/{id}"), None),
        ("POST", format!("/api/v1/tokens/{id}/refresh"), None),
        (
            "POST",
            format!("/api/v1/tokens/{id}/reprioritize"),
            Some(r#"{"priority":1}"#),
        ),
    ];
    for (method, path, body) in &writes {
        let (st, v) = c.s.call(method, path, Some(&read), *body);
        let m = assert_error(st, &v, 403, "forbidden");
        assert!(m.contains("write"), "{m}");
    }
    for path in [
        "/api/v1/tokens".to_owned(),
        format!("/api/v1/tokens/{id}"),
        "/api/v1/audit".to_owned(),
    ] {
        let (st, v) = c.s.call("GET", &path, Some(&read), None);
        assert_eq!(st, 200, "{path}: {v}");
    }
    // Nothing changed, and nothing was audited beyond the create.
    let (_, t) = c.call("GET", &format!("/api/v1/tokens/{id}"), None);
    assert_eq!(t["label"], "t");
    assert_eq!(c.audit(&format!("token:{id}")).len(), 1);
    // A write key may write.
    let (st, v) = c.s.call(
        "PATCH",
        &format!("/api/v1/tokens/{id}"),
        Some(&write),
        Some(r#"{"label":"by-writer"}"#),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["label"], "by-writer");
}

// ---------------------------------------------------------------- list

#[test]
fn list_paginates() {
    let c = Ctx::new();
    let created: Vec<String> = (0..7)
        .map(|i| c.create_simple(&format!("tok-{i}"), streams(&["s"])))
        .collect();
    let mut seen = Vec::new();
    for (page, want) in [(1, 3), (2, 3), (3, 1)] {
        let v = c.list(&format!("?per_page=3&page={page}"));
        assert_eq!(v["page"], page);
        assert_eq!(v["per_page"], 3);
        assert_eq!(v["total"], 7);
        let got = ids(&v);
        assert_eq!(got.len(), want, "page {page}: {v}");
        seen.extend(got);
    }
    // Oldest first, each token exactly once.
    assert_eq!(seen, created);
    let v = c.list("?per_page=3&page=4");
    assert_eq!(v["items"], json!([]));
    assert_eq!(v["total"], 7);
    let v = c.list("?page=1000000");
    assert_eq!(v["items"], json!([]));
    // Defaults.
    let v = c.list("");
    assert_eq!(v["page"], 1);
    assert_eq!(v["per_page"], 50);
    assert_eq!(ids(&v), created);
    let v = c.list("?per_page=500");
    assert_eq!(v["per_page"], 500);

    for q in ["?per_page=0", "?per_page=501", "?page=0", "?page=1000001"] {
        let (st, v) = c.call("GET", &format!("/api/v1/tokens{q}"), None);
        assert_error(st, &v, 422, "validation_failed");
    }
    for q in [
        "?page=abc",
        "?per_page=-1",
        "?page=1.5",
        "?enabled=maybe",
        "?bogus=1",
    ] {
        let (st, v) = c.call("GET", &format!("/api/v1/tokens{q}"), None);
        assert_error(st, &v, 400, "bad_request");
    }
}

#[test]
fn list_filters_by_label_and_enabled() {
    let c = Ctx::new();
    let a = c.create_simple("Venue-A primary", streams(&["s"]));
    let b = c.create_simple("venue-a backup", streams(&["s"]));
    let d = c
        .create(json!({"label": "venue-b", "streams": [{"name": "s"}], "enabled": false}))
        .0;
    let pct = c.create_simple("100% literal_under", streams(&["s"]));

    assert_eq!(c.list_ids("?label=venue-a"), vec![a.clone(), b.clone()]);
    assert_eq!(c.list_ids("?label=VENUE-A"), vec![a.clone(), b.clone()]);
    assert_eq!(c.list_ids("?label=PRIMARY"), vec![a.clone()]);
    assert_eq!(
        c.list_ids("?label=venue"),
        vec![a.clone(), b.clone(), d.clone()]
    );
    assert_eq!(c.list_ids("?label=nomatch"), Vec::<String>::new());
    // LIKE metacharacters are literal.
    assert_eq!(c.list_ids("?label=%25"), vec![pct.clone()]);
    assert_eq!(c.list_ids("?label=l_u"), vec![pct.clone()]);
    assert_eq!(c.list_ids("?label=a_b"), Vec::<String>::new());

    assert_eq!(c.list_ids("?enabled=false"), vec![d.clone()]);
    assert_eq!(
        c.list_ids("?enabled=true"),
        vec![a.clone(), b.clone(), pct.clone()]
    );
    let v = c.list("?enabled=true&label=venue&per_page=1");
    assert_eq!(v["total"], 2);
    assert_eq!(ids(&v), vec![a.clone()]);

    // Disabling through PATCH moves a token between the filters.
    let (st, _) = c.call(
        "PATCH",
        &format!("/api/v1/tokens/{a}"),
        Some(json!({"enabled": false})),
    );
    assert_eq!(st, 200);
    assert_eq!(c.list_ids("?enabled=false"), vec![a, d]);
}

#[test]
fn list_filters_by_stream_with_exact_and_regex_entries() {
    let c = Ctx::new();
    let exact = c.create_simple("exact", streams(&["match1"]));
    let regex = c.create_simple("regex", json!([{"name": "match[0-9]+", "is_regex": true}]));
    let other = c.create_simple("other", streams(&["other"]));
    let mixed = c.create_simple(
        "mixed",
        json!([{"name": "zz"}, {"name": "ev/[a-z]+", "is_regex": true}]),
    );

    assert_eq!(
        c.list_ids("?stream=match1"),
        vec![exact.clone(), regex.clone()]
    );
    assert_eq!(c.list_ids("?stream=match22"), vec![regex.clone()]);
    assert_eq!(c.list_ids("?stream=zzz"), Vec::<String>::new());
    assert_eq!(c.list_ids("?stream=other"), vec![other.clone()]);
    // Regexes are anchored at both ends.
    assert_eq!(c.list_ids("?stream=xmatch22"), Vec::<String>::new());
    assert_eq!(c.list_ids("?stream=match22x"), Vec::<String>::new());
    assert_eq!(c.list_ids("?stream=ev%2Fabc"), vec![mixed.clone()]);
    assert_eq!(c.list_ids("?stream=zz"), vec![mixed.clone()]);
    // An exact entry that only looks like a regex does not match as one.
    let lit = c.create_simple("literal", streams(&["match.x"]));
    assert_eq!(c.list_ids("?stream=matchAx"), Vec::<String>::new());
    assert_eq!(c.list_ids("?stream=match.x"), vec![lit]);

    // Combined with other filters and paging.
    let v = c.list("?stream=match1&label=REG");
    assert_eq!(ids(&v), vec![regex.clone()]);
    let v = c.list("?stream=match1&per_page=1&page=2");
    assert_eq!(v["total"], 2);
    assert_eq!(ids(&v), vec![regex.clone()]);

    // Reflects edits: removing the regex entry drops the token.
    let (st, v) = c.call(
        "PATCH",
        &format!("/api/v1/tokens/{regex}"),
        Some(json!({"add_streams": [{"name": "fixed"}], "remove_streams": [{"name": "match[0-9]+", "is_regex": true}]})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(c.list_ids("?stream=match1"), vec![exact]);
    assert_eq!(c.list_ids("?stream=match22"), Vec::<String>::new());

    for bad in ["a%20b", "%C3%A9", &"a".repeat(129)] {
        let (st, v) = c.call("GET", &format!("/api/v1/tokens?stream={bad}"), None);
        let m = assert_error(st, &v, 422, "validation_failed");
        assert!(m.starts_with("stream"), "{m}");
    }
    let (st, v) = c.call("GET", "/api/v1/tokens?stream=", None);
    assert_error(st, &v, 422, "validation_failed");
}

// ---------------------------------------------------------------- show

#[test]
fn show_by_id() {
    let c = Ctx::new();
    let (id, _, created) =
        c.create(json!({"label": "t", "priority": -5, "streams": [{"name": "s"}]}));
    let (st, v) = c.call("GET", &format!("/api/v1/tokens/{id}"), None);
    assert_eq!(st, 200);
    assert_eq!(v, created);
    assert_eq!(v["priority"], -5);

    let (st, v) = c.call("GET", &format!("/api/v1/tokens/{}", Uuid::new_v4()), None);
    let m = assert_error(st, &v, 404, "not_found");
    assert!(m.contains("token"), "{m}");
    for bad in ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g"] {
        let (st, v) = c.call("GET", &format!("/api/v1/tokens/{bad}"), None);
        assert_error(st, &v, 400, "bad_request");
    }
    // Malformed ids on every id route.
    for (method, path, body) in [
        ("PATCH", "/api/v1/tokens/nope", Some(json!({"label": "x"}))),
        ("DELETE", "/api/v1/tokens/nope", None),
        ("POST", "/api/v1/tokens/nope/refresh", None),
        (
            "POST",
            "/api/v1/tokens/nope/reprioritize",
            Some(json!({"priority": 1})),
        ),
    ] {
        let (st, v) = c.call(method, path, body);
        assert_error(st, &v, 400, "bad_request");
    }
}

// ---------------------------------------------------------------- update

#[test]
fn patch_changes_each_field() {
    let c = Ctx::new();
    let (id, _, orig) = c.create(json!({
        "label": "t",
        "priority": 10,
        "streams": [{"name": "a"}],
        "allowed_ips": ["10.0.0.0/8"],
    }));
    let path = format!("/api/v1/tokens/{id}");
    let patch = |body: Value| -> Value {
        let (st, v) = c.call("PATCH", &path, Some(body.clone()));
        assert_eq!(st, 200, "{body}: {v}");
        let (_, shown) = c.call("GET", &path, None);
        assert_eq!(shown, v, "PATCH answer equals the stored token");
        v
    };

    let v = patch(json!({"label": "renamed"}));
    assert_eq!(v["label"], "renamed");
    assert_eq!(v["priority"], 10, "absent fields are untouched");
    assert_eq!(v["allowed_ips"], json!(["10.0.0.0/8"]));
    assert_eq!(v["created_at"], orig["created_at"]);
    assert_ne!(v["updated_at"], orig["updated_at"]);

    assert_eq!(patch(json!({"priority": 42}))["priority"], 42);
    let v = patch(json!({"priority": null}));
    assert_eq!(v["priority"], Value::Null);
    assert_eq!(v["label"], "renamed");
    assert_eq!(patch(json!({"priority": 7}))["priority"], 7);
    // An empty patch is refused (see empty_patch_is_refused_and_not_audited).

    let v = patch(json!({"add_streams": [{"name": "b"}, {"name": "c[0-9]", "is_regex": true}]}));
    assert_eq!(
        v["streams"],
        json!([{"name": "a", "is_regex": false}, {"name": "b", "is_regex": false}, {"name": "c[0-9]", "is_regex": true}])
    );
    // Adding one already present is a no-op.
    let v = patch(json!({"add_streams": [{"name": "b"}]}));
    assert_eq!(v["streams"].as_array().unwrap().len(), 3);
    let v = patch(json!({"remove_streams": [{"name": "a"}], "add_streams": [{"name": "d"}]}));
    assert_eq!(
        v["streams"],
        json!([{"name": "b", "is_regex": false}, {"name": "c[0-9]", "is_regex": true}, {"name": "d", "is_regex": false}])
    );

    let v = patch(json!({"allowed_ips": ["192.0.2.1", "2001:db8::/32"]}));
    assert_eq!(v["allowed_ips"], json!(["192.0.2.1/32", "2001:db8::/32"]));
    let v = patch(json!({"allowed_ips": []}));
    assert_eq!(v["allowed_ips"], json!([]));

    let at = future(3600);
    let v = patch(json!({"expires_at": at}));
    let got: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(v["expires_at"].clone()).unwrap();
    let want: chrono::DateTime<chrono::Utc> = at.parse().unwrap();
    assert_eq!(got, want);
    assert_eq!(
        patch(json!({"expires_at": null}))["expires_at"],
        Value::Null
    );

    assert_eq!(patch(json!({"enabled": false}))["enabled"], false);
    assert_eq!(patch(json!({"enabled": true}))["enabled"], true);

    // Several at once.
    let v = patch(
        json!({"label": "all", "priority": 1, "enabled": false, "allowed_ips": ["10.9.9.9"]}),
    );
    assert_eq!(v["label"], "all");
    assert_eq!(v["priority"], 1);
    assert_eq!(v["enabled"], false);
    assert_eq!(v["allowed_ips"], json!(["10.9.9.9/32"]));
}

#[test]
fn patch_rejects_invalid_changes_atomically() {
    let c = Ctx::new();
    let (id, _, _) = c.create(json!({
        "label": "t",
        "priority": 10,
        "streams": [{"name": "a"}, {"name": "b"}],
    }));
    let path = format!("/api/v1/tokens/{id}");
    let (_, before) = c.call("GET", &path, None);
    let audits_before = c.audit(&format!("token:{id}")).len();

    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"remove_streams": [{"name": "zzz"}]}),
            "remove_streams[0]",
        ),
        // Same name but regex flag differs: not present.
        (
            json!({"remove_streams": [{"name": "a", "is_regex": true}]}),
            "remove_streams[0]",
        ),
        (
            json!({"remove_streams": [{"name": "a"}, {"name": "b"}]}),
            "streams",
        ),
        (
            json!({"label": "renamed", "remove_streams": [{"name": "a"}, {"name": "b"}]}),
            "streams",
        ),
        // An added entry is named by its place in the request.
        (
            json!({"add_streams": [{"name": "(", "is_regex": true}]}),
            "add_streams[0].name",
        ),
        (
            json!({"add_streams": [{"name": "ok"}, {"name": "bad name"}]}),
            "add_streams[1].name",
        ),
        (
            json!({"add_streams": (0..63).map(|i| json!({"name": format!("n{i}")})).collect::<Vec<_>>()}),
            "streams",
        ),
        (json!({"allowed_ips": ["300.1.1.1"]}), "allowed_ips[0]"),
        (json!({"label": ""}), "label"),
        (json!({"label": "x".repeat(129)}), "label"),
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), "expires_at"),
        (
            json!({"priority": 99, "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
    ];
    for (body, field) in cases {
        let (st, v) = c.call("PATCH", &path, Some(body.clone()));
        let m = assert_error(st, &v, 422, "validation_failed");
        assert!(m.starts_with(field), "{body}: {m:?} should name {field}");
    }
    // Removing one of two is fine; then the last one cannot go.
    let (st, v) = c.call(
        "PATCH",
        &path,
        Some(json!({"remove_streams": [{"name": "a"}]})),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = c.call(
        "PATCH",
        &path,
        Some(json!({"remove_streams": [{"name": "b"}]})),
    );
    let m = assert_error(st, &v, 422, "validation_failed");
    assert!(m.starts_with("streams"), "{m}");
    // Replace the last one in a single patch is fine.
    let (st, v) = c.call(
        "PATCH",
        &path,
        Some(json!({"remove_streams": [{"name": "b"}], "add_streams": [{"name": "c"}]})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["streams"], json!([{"name": "c", "is_regex": false}]));

    for raw in [
        r#"{"colour": "red"}"#,
        r#"{"label": "x", "secret_id": "00000000-0000-0000-0000-000000000000"}"#,
        r#"{"streams": [{"name": "x"}]}"#,
        r#"{"priority": "high"}"#,
        r#"{"label":"#,
    ] {
        let (st, v) = c.raw("PATCH", &path, raw);
        assert_error(st, &v, 400, "bad_request");
    }
    let (st, v) = c.s.call_with_type(
        "PATCH",
        &path,
        Some(&c.key),
        Some(r#"{"label":"x"}"#),
        "text/plain",
    );
    assert_error(st, &v, 415, "unsupported_media_type");

    let (st, v) = c.call(
        "PATCH",
        &format!("/api/v1/tokens/{}", Uuid::new_v4()),
        Some(json!({"label": "x"})),
    );
    assert_error(st, &v, 404, "not_found");

    // Only the two successful patches changed anything or were audited.
    let (_, after) = c.call("GET", &path, None);
    assert_eq!(after["label"], before["label"]);
    assert_eq!(after["priority"], before["priority"]);
    assert_eq!(after["expires_at"], before["expires_at"]);
    assert_eq!(c.audit(&format!("token:{id}")).len(), audits_before + 2);
}

// ---------------------------------------------------------------- refresh

#[test]
fn refresh_issues_a_new_secret_and_nothing_else() {
    let c = Ctx::new();
    let (id, old_secret, before) = c.create(json!({
        "label": "t",
        "priority": 3,
        "streams": [{"name": "a"}],
        "allowed_ips": ["10.0.0.0/8"],
        "expires_in_seconds": 3600,
    }));
    let (st, v) = c.call("POST", &format!("/api/v1/tokens/{id}/refresh"), None);
    assert_eq!(st, 200, "{v}");
    let new_secret = v["secret"].as_str().expect("secret");
    assert_ne!(new_secret, old_secret);
    assert_eq!(new_secret.split('.').count(), 3);
    let after = &v["token"];
    for field in [
        "id",
        "label",
        "priority",
        "streams",
        "allowed_ips",
        "expires_at",
        "enabled",
        "created_at",
    ] {
        assert_eq!(after[field], before[field], "{field} changed on refresh");
    }
    // A refresh with a body is fine too (it is ignored), and again differs.
    let (st, v2) = c.call(
        "POST",
        &format!("/api/v1/tokens/{id}/refresh"),
        Some(json!({})),
    );
    assert_eq!(st, 200, "{v2}");
    assert_ne!(v2["secret"], v["secret"]);

    let (st, v) = c.call(
        "POST",
        &format!("/api/v1/tokens/{}/refresh", Uuid::new_v4()),
        None,
    );
    assert_error(st, &v, 404, "not_found");
    let audits = c.audit(&format!("token:{id}"));
    assert_eq!(audits[0]["action"], "token.refresh");
    assert_eq!(audits[1]["action"], "token.refresh");
}

// ---------------------------------------------------------------- reprioritize

#[test]
fn reprioritize_sets_priority_now() {
    let c = Ctx::new();
    let (id, _, _) = c.create(json!({"label": "t", "priority": 100, "streams": [{"name": "a"}]}));
    let path = format!("/api/v1/tokens/{id}/reprioritize");

    let (st, v) = c.call("POST", &path, Some(json!({"priority": 5})));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["previous_priority"], 100);
    assert_eq!(v["token"]["priority"], 5);
    assert_eq!(v["token"]["id"], id);
    assert_eq!(v["disconnect"], true, "disconnect defaults to true");
    assert_eq!(v["affected"], json!([]));
    assert_eq!(v["pinned"], json!([]));
    let (_, shown) = c.call("GET", &format!("/api/v1/tokens/{id}"), None);
    assert_eq!(shown["priority"], 5);

    let (st, v) = c.call(
        "POST",
        &path,
        Some(json!({"priority": null, "disconnect": false})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["previous_priority"], 5);
    assert_eq!(v["token"]["priority"], Value::Null);
    assert_eq!(v["disconnect"], false);

    let (st, v) = c.call("POST", &path, Some(json!({"priority": -3})));
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["previous_priority"], Value::Null);
    assert_eq!(v["token"]["priority"], -3);

    let (st, v) = c.call("POST", &path, Some(json!({})));
    let m = assert_error(st, &v, 422, "validation_failed");
    assert!(m.starts_with("priority"), "{m}");
    let (st, v) = c.call("POST", &path, Some(json!({"disconnect": true})));
    assert_error(st, &v, 422, "validation_failed");
    let (st, v) = c.call("POST", &path, Some(json!({"priority": 1, "force": true})));
    assert_error(st, &v, 400, "bad_request");
    let (st, v) = c.call("POST", &path, Some(json!({"priority": "1"})));
    assert_error(st, &v, 400, "bad_request");
    let (st, v) = c.raw("POST", &path, "");
    assert_error(st, &v, 400, "bad_request");
    let (st, v) = c.call(
        "POST",
        &format!("/api/v1/tokens/{}/reprioritize", Uuid::new_v4()),
        Some(json!({"priority": 1})),
    );
    assert_error(st, &v, 404, "not_found");

    let (_, shown) = c.call("GET", &format!("/api/v1/tokens/{id}"), None);
    assert_eq!(shown["priority"], -3, "refused calls changed nothing");
    let audits = c.audit(&format!("token:{id}"));
    let actions: Vec<&str> = audits
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "token.reprioritize",
            "token.reprioritize",
            "token.reprioritize",
            "token.create"
        ]
    );
    assert_eq!(audits[2]["before"]["priority"], 100);
    assert_eq!(audits[2]["after"]["priority"], 5);
}

// ---------------------------------------------------------------- delete

#[test]
fn delete_removes_the_token() {
    let c = Ctx::new();
    let id = c.create_simple("t", streams(&["a"]));
    let keep = c.create_simple("keep", streams(&["a"]));
    let (st, v) = c.call("DELETE", &format!("/api/v1/tokens/{id}"), None);
    assert_eq!(st, 204);
    assert_eq!(v, Value::Null, "204 has no body");
    let (st, v) = c.call("GET", &format!("/api/v1/tokens/{id}"), None);
    assert_error(st, &v, 404, "not_found");
    let (st, v) = c.call("DELETE", &format!("/api/v1/tokens/{id}"), None);
    assert_error(st, &v, 404, "not_found");
    for (method, path, body) in [
        (
            "PATCH",
            format!("/api/v1/tokens/{id}"),
            Some(json!({"label": "x"})),
        ),
        ("POST", format!("/api/v1/tokens/{id}/refresh"), None),
        (
            "POST",
            format!("/api/v1/tokens/{id}/reprioritize"),
            Some(json!({"priority": 1})),
        ),
    ] {
        let (st, v) = c.call(method, &path, body);
        assert_error(st, &v, 404, "not_found");
    }
    assert_eq!(c.list_ids(""), vec![keep.clone()]);
    assert_eq!(c.list_ids("?stream=a"), vec![keep]);

    let audits = c.audit(&format!("token:{id}"));
    assert_eq!(audits.len(), 2, "one delete record, none for the 404s");
    assert_eq!(audits[0]["action"], "token.delete");
    assert_eq!(audits[0]["after"], Value::Null);
    assert_eq!(audits[0]["before"]["id"], id);
    assert_eq!(audits[0]["before"]["label"], "t");
}

// ---------------------------------------------------------------- audit

#[test]
fn every_write_is_audited_and_no_secret_leaks() {
    let c = Ctx::new();
    let (id, _, _) = c.create(json!({
        "label": "audited",
        "priority": 10,
        "streams": [{"name": "a"}],
    }));
    let path = format!("/api/v1/tokens/{id}");
    assert_eq!(
        c.call("PATCH", &path, Some(json!({"label": "audited-2"})))
            .0,
        200
    );
    assert_eq!(c.call("POST", &format!("{path}/refresh"), None).0, 200);
    assert_eq!(
        c.call(
            "POST",
            &format!("{path}/reprioritize"),
            Some(json!({"priority": 20}))
        )
        .0,
        200
    );
    assert_eq!(
        c.call("PATCH", &path, Some(json!({"enabled": false}))).0,
        200
    );
    assert_eq!(c.call("DELETE", &path, None).0, 204);
    assert_eq!(
        c.secrets.borrow().len(),
        2,
        "create and refresh each issued a secret"
    );

    let audits = c.audit(&format!("token:{id}"));
    let actions: Vec<&str> = audits
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "token.delete",
            "token.update",
            "token.reprioritize",
            "token.refresh",
            "token.update",
            "token.create"
        ]
    );
    let mut last_id = i64::MAX;
    for a in &audits {
        assert_eq!(a["actor"], c.actor(), "{a}");
        assert_eq!(a["target"], format!("token:{id}"));
        let n = a["id"].as_i64().unwrap();
        assert!(n < last_id, "newest first");
        last_id = n;
        for side in ["before", "after"] {
            if let Some(o) = a[side].as_object() {
                assert!(!o.contains_key("secret"), "{a}");
                assert!(!o.contains_key("secret_id"), "{a}");
            }
        }
    }
    let create = audits.last().unwrap();
    assert_eq!(create["before"], Value::Null);
    assert_eq!(create["after"]["label"], "audited");
    assert_eq!(audits[4]["before"]["label"], "audited");
    assert_eq!(audits[4]["after"]["label"], "audited-2");
    assert_eq!(audits[1]["after"]["enabled"], false);

    // The action filter and the whole log hold no secret either.
    let (st, v) = c.call("GET", "/api/v1/audit?action=token.refresh", None);
    assert_eq!(st, 200);
    assert_eq!(v["total"], 1);
    c.assert_no_secret(&v);
    let (_, all) = c.call("GET", "/api/v1/audit?limit=500", None);
    c.assert_no_secret(&all);
    // Nor does the database's audit table as a whole.
    let dump = audit_table_text(&c.s.db);
    for s in c.secrets.borrow().iter() {
        assert!(!dump.contains(s.as_str()));
    }
}

fn audit_table_text(db: &common::TestDb) -> String {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    let mut conn = db.connect();
    let rows: Vec<Row> = diesel::sql_query("SELECT row_to_json(a)::text AS t FROM audit_log a")
        .load(&mut conn)
        .expect("read audit_log");
    rows.into_iter().map(|r| r.t).collect::<Vec<_>>().join("\n")
}

#[test]
fn empty_patch_is_refused_and_not_audited() {
    let s = common::TestServer::start();
    let key = s.db.api_key(&[primacy::auth::api_keys::Scope::Admin]);
    let (_, v) = s.call(
        "POST",
        "/api/v1/tokens",
        Some(&key),
        Some(r#"{"label":"x","streams":[{"name":"a"}]}"#),
    );
    let id = v["token"]["id"].as_str().unwrap().to_owned();
    let (st, body) = s.call(
        "PATCH",
        &format!("/api/v1/tokens/{id}"),
        Some(&key),
        Some("{}"),
    );
    let msg = common::assert_error(st, &body, 422, "validation_failed");
    assert!(msg.contains("nothing to change"), "{msg}");
    let (_, audit) = s.call(
        "GET",
        &format!("/api/v1/audit?target=token:{id}"),
        Some(&key),
        None,
    );
    assert_eq!(audit["total"], 1, "only the create is audited: {audit}");
}

// ---------------------------------------------------------------- hostile input

/// A regex rule must be a complete regular expression on its own: one that
/// would close the gateway's anchoring group and open its own (`a)|(.*`)
/// or end in an escape that would eat a closing parenthesis is refused
/// with 422, never stored, and never allows every stream; an `(?x)`
/// comment cannot swallow the anchoring either.
#[test]
fn regex_rules_cannot_escape_their_anchoring() {
    let c = Ctx::new();
    let escapes = [
        "teamA/[a-z0-9]+)|(.*",
        "x)|(?:.*",
        ".*)|(",
        "abc\\",
        "a|b)|(c",
    ];
    for rule in escapes {
        let (st, v) = c.call(
            "POST",
            "/api/v1/tokens",
            Some(json!({"label": "x", "streams": [{"name": rule, "is_regex": true}]})),
        );
        let m = assert_error(st, &v, 422, "validation_failed");
        assert!(m.starts_with("streams[0].name"), "{rule}: {m}");
    }
    // Nor through PATCH.
    let id = c.create_simple("ok", json!([{"name": "teamA/[a-z0-9]+", "is_regex": true}]));
    let (st, v) = c.call(
        "PATCH",
        &format!("/api/v1/tokens/{id}"),
        Some(json!({"add_streams": [{"name": "teamA/[a-z0-9]+)|(.*", "is_regex": true}]})),
    );
    assert_error(st, &v, 422, "validation_failed");
    assert_eq!(c.list("")["total"], 1, "nothing else was stored");
    // The valid rule matches only what it says.
    assert_eq!(c.list_ids("?stream=teamA%2Fcam1"), vec![id.clone()]);
    assert_eq!(c.list_ids("?stream=teamB%2Fcam1"), Vec::<String>::new());
    assert_eq!(c.list_ids("?stream=anything"), Vec::<String>::new());
    // Alternations inside a complete rule stay anchored as a whole.
    let alt = c.create_simple("alt", json!([{"name": "a|b", "is_regex": true}]));
    assert_eq!(c.list_ids("?stream=a"), vec![alt.clone()]);
    assert_eq!(c.list_ids("?stream=ab"), Vec::<String>::new());
    assert_eq!(c.list_ids("?stream=xb"), Vec::<String>::new());
    let commented = c.create_simple("x", json!([{"name": "(?x)zz#)|(.*", "is_regex": true}]));
    assert_eq!(c.list_ids("?stream=zz"), vec![commented]);
    assert_eq!(c.list_ids("?stream=zzz"), Vec::<String>::new());
}

/// A NUL, a newline or another control character in any string field or
/// filter of every token route is a 422 naming the field (a malformed id,
/// bool or number is a 400), never a 500, and changes nothing.
#[test]
fn control_characters_in_any_field_are_422_never_500() {
    let c = Ctx::new();
    let (id, _, _) = c.create(json!({"label": "x", "streams": [{"name": "s"}]}));
    let bad_strings = ["a\u{0}b", "a\nb", "a\u{7f}", "\u{1b}[31m"];
    for bad in bad_strings {
        let creates = [
            ("label", json!({"label": bad, "streams": [{"name": "s"}]})),
            (
                "streams[0].name",
                json!({"label": "x", "streams": [{"name": bad}]}),
            ),
            (
                "streams[0].name",
                json!({"label": "x", "streams": [{"name": bad, "is_regex": true}]}),
            ),
            (
                "allowed_ips[0]",
                json!({"label": "x", "streams": [{"name": "s"}], "allowed_ips": [bad]}),
            ),
        ];
        for (field, body) in creates {
            let (st, v) = c.call("POST", "/api/v1/tokens", Some(body.clone()));
            let m = assert_error(st, &v, 422, "validation_failed");
            assert!(m.starts_with(field), "{body}: {m}");
        }
        let patches = [
            ("label", json!({"label": bad})),
            (
                "add_streams[0].name",
                json!({"add_streams": [{"name": bad}]}),
            ),
            (
                "add_streams[0].name",
                json!({"add_streams": [{"name": bad, "is_regex": true}]}),
            ),
            (
                "remove_streams[0].name",
                json!({"remove_streams": [{"name": bad, "is_regex": true}]}),
            ),
            ("allowed_ips[0]", json!({"allowed_ips": [bad]})),
        ];
        for (field, body) in patches {
            let (st, v) = c.call("PATCH", &format!("/api/v1/tokens/{id}"), Some(body.clone()));
            let m = assert_error(st, &v, 422, "validation_failed");
            assert!(m.starts_with(field), "{body}: {m}");
        }
    }
    for q in ["label=a%00b", "label=%0A", "stream=a%00b", "stream=%0D%0A"] {
        let (st, v) = c.call("GET", &format!("/api/v1/tokens?{q}"), None);
        let m = assert_error(st, &v, 422, "validation_failed");
        assert!(m.starts_with(q.split('=').next().unwrap()), "{q}: {m}");
    }
    // Typed parameters: malformed, 400.
    for q in ["enabled=%00", "page=%00", "per_page=1%00"] {
        let (st, v) = c.call("GET", &format!("/api/v1/tokens?{q}"), None);
        assert_error(st, &v, 400, "bad_request");
    }
    for (method, path, body) in [
        ("GET", "/api/v1/tokens/a%00b".to_owned(), None),
        (
            "PATCH",
            "/api/v1/tokens/%00".to_owned(),
            Some(json!({"label": "y"})),
        ),
        ("DELETE", "/api/v1/tokens/%00".to_owned(), None),
        ("POST", "/api/v1/tokens/%00/refresh".to_owned(), None),
        (
            "POST",
            "/api/v1/tokens/%00/reprioritize".to_owned(),
            Some(json!({"priority": 1})),
        ),
        (
            "POST",
            format!("/api/v1/tokens/{id}/reprioritize"),
            Some(json!({"priority": "\u{0}"})),
        ),
        (
            "POST",
            "/api/v1/tokens".to_owned(),
            Some(json!({"label": "x", "streams": [{"name": "s"}], "expires_at": "\u{0}"})),
        ),
    ] {
        let (st, v) = c.call(method, &path, body);
        assert_error(st, &v, 400, "bad_request");
    }
    // Nothing changed, nothing more stored.
    assert_eq!(c.list("")["total"], 1);
    let (_, t) = c.call("GET", &format!("/api/v1/tokens/{id}"), None);
    assert_eq!(t["label"], "x", "{t}");
    assert_eq!(
        t["streams"],
        json!([{"name": "s", "is_regex": false}]),
        "{t}"
    );
}
