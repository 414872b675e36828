//! `/api/v1/api-keys`, `/api/v1/audit`, the unauthenticated endpoints and
//! unknown routes.

mod common;

use common::{assert_error, TestServer};
use primacy::auth::api_keys::Scope;
use serde_json::{json, Value};
use uuid::Uuid;

struct Ctx {
    s: TestServer,
    admin: String,
    admin_id: Uuid,
}

impl Ctx {
    fn new() -> Self {
        let s = TestServer::start();
        let (admin_id, admin) = s.db.api_key_with_id(&[Scope::Admin]);
        Self { s, admin, admin_id }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        self.s
            .call(method, path, Some(&self.admin), body.as_deref())
    }

    /// Create a key through the API; returns (id, secret, key).
    fn create(&self, name: &str, scopes: &[&str]) -> (Uuid, String, Value) {
        let (st, v) = self.call(
            "POST",
            "/api/v1/api-keys",
            Some(json!({"name": name, "scopes": scopes})),
        );
        assert_eq!(st, 201, "{v}");
        (
            v["key"]["id"].as_str().unwrap().parse().unwrap(),
            v["secret"].as_str().unwrap().to_owned(),
            v["key"].clone(),
        )
    }

    fn list(&self, query: &str) -> Value {
        let (st, v) = self.call("GET", &format!("/api/v1/api-keys{query}"), None);
        assert_eq!(st, 200, "{v}");
        v
    }

    fn audit(&self, query: &str) -> Value {
        let (st, v) = self.call("GET", &format!("/api/v1/audit{query}"), None);
        assert_eq!(st, 200, "{query}: {v}");
        v
    }

    fn actor(&self) -> String {
        format!("api-key:{}", self.admin_id)
    }
}

fn items(v: &Value) -> &Vec<Value> {
    v["items"].as_array().expect("items")
}

fn find(v: &Value, id: Uuid) -> &Value {
    items(v)
        .iter()
        .find(|k| k["id"] == id.to_string())
        .unwrap_or_else(|| panic!("{id} not in {v}"))
}

/// Neither the secret nor any encoding of its hash appears in `text`.
fn assert_hides(text: &str, secret: &str) {
    use base64::Engine;
    assert!(!text.contains(secret), "secret leaked: {text}");
    // The random part follows `pmy_<8 hex>_`; it may itself contain `_`.
    let prefix = primacy::auth::api_keys::prefix_of(secret).expect("key shape");
    let body = &secret[prefix.len() + 1..];
    assert!(body.len() >= 40, "unexpected key shape");
    assert!(!text.contains(body), "secret body leaked: {text}");
    let hash = primacy::auth::api_keys::hash(secret);
    assert!(
        !text.contains(&hex::encode(hash)),
        "hash leaked (hex): {text}"
    );
    for engine in [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        let enc = engine.encode(hash);
        assert!(
            !text.contains(enc.trim_end_matches('=')),
            "hash leaked (base64): {text}"
        );
    }
}

#[test]
fn create_returns_the_secret_once_and_it_works() {
    let c = Ctx::new();
    let (st, v) = c.call(
        "POST",
        "/api/v1/api-keys",
        Some(json!({"name": "ops laptop", "scopes": ["write", "read", "write"]})),
    );
    assert_eq!(st, 201, "{v}");
    let secret = v["secret"].as_str().unwrap();
    let key = &v["key"];
    assert_eq!(key["name"], "ops laptop");
    assert_eq!(
        key["scopes"],
        json!(["read", "write"]),
        "sorted and deduplicated"
    );
    let prefix = key["prefix"].as_str().unwrap();
    assert!(prefix.starts_with("pmy_"), "{prefix}");
    assert!(
        secret.starts_with(&format!("{prefix}_")),
        "{secret} / {prefix}"
    );
    assert_eq!(key["last_used_at"], Value::Null);
    assert_eq!(key["revoked_at"], Value::Null);
    assert!(key.get("secret_hash").is_none());
    assert!(key.get("secret").is_none());

    // The new key works with its scope and no more.
    let (st, _) = c.s.call("GET", "/api/v1/tokens", Some(secret), None);
    assert_eq!(st, 200);
    let (st, v) = c.s.call(
        "POST",
        "/api/v1/tokens",
        Some(secret),
        Some(r#"{"label":"x","streams":[{"name":"s"}]}"#),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = c.s.call("GET", "/api/v1/api-keys", Some(secret), None);
    assert_error(st, &v, 403, "forbidden");

    // Listing, auditing: never the secret or its hash.
    let listed = c.list("");
    assert_hides(&listed.to_string(), secret);
    assert_hides(&listed.to_string(), &c.admin);
    for k in items(&listed) {
        let o = k.as_object().unwrap();
        let mut fields: Vec<&str> = o.keys().map(String::as_str).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "created_at",
                "id",
                "last_used_at",
                "name",
                "prefix",
                "revoked_at",
                "scopes"
            ]
        );
    }
    let audit = c.audit("?limit=500");
    assert_hides(&audit.to_string(), secret);
    assert_hides(&audit.to_string(), &c.admin);
}

#[test]
fn create_validates_its_body() {
    let c = Ctx::new();
    let (st, v) = c.call(
        "POST",
        "/api/v1/api-keys",
        Some(json!({"name": "x", "scopes": ["root"]})),
    );
    let m = assert_error(st, &v, 400, "bad_request");
    assert!(m.contains("root"), "{m}");
    let (st, v) = c.call(
        "POST",
        "/api/v1/api-keys",
        Some(json!({"name": "x", "scopes": ["Admin"]})),
    );
    assert_error(st, &v, 400, "bad_request");
    let (st, v) = c.call(
        "POST",
        "/api/v1/api-keys",
        Some(json!({"name": "x", "scopes": ["read"], "expires": 1})),
    );
    assert_error(st, &v, 400, "bad_request");
    let (st, v) = c.call("POST", "/api/v1/api-keys", Some(json!({"name": "x"})));
    assert_error(st, &v, 400, "bad_request");
    let (st, v) =
        c.s.call("POST", "/api/v1/api-keys", Some(&c.admin), Some("{"));
    assert_error(st, &v, 400, "bad_request");

    let (st, v) = c.call(
        "POST",
        "/api/v1/api-keys",
        Some(json!({"name": "x", "scopes": []})),
    );
    let m = assert_error(st, &v, 422, "validation_failed");
    assert!(m.contains("scopes"), "{m}");
    for name in [String::new(), "n".repeat(129), "a\tb".into()] {
        let (st, v) = c.call(
            "POST",
            "/api/v1/api-keys",
            Some(json!({"name": name, "scopes": ["read"]})),
        );
        let m = assert_error(st, &v, 422, "validation_failed");
        assert!(m.contains("name"), "{m}");
    }
    // Only the bootstrap key exists.
    assert_eq!(c.list("")["total"], 1);
    assert_eq!(c.audit("?action=api_key.create")["total"], 1);
}

#[test]
fn list_paginates_newest_first() {
    let c = Ctx::new();
    let mut created = vec![c.admin_id];
    for i in 0..4 {
        created.push(c.create(&format!("k{i}"), &["read"]).0);
    }
    let v = c.list("");
    assert_eq!(v["total"], 5);
    assert_eq!(v["page"], 1);
    assert_eq!(v["per_page"], 50);
    let mut seen = Vec::new();
    for (page, want) in [(1, 2), (2, 2), (3, 1)] {
        let v = c.list(&format!("?per_page=2&page={page}"));
        assert_eq!(v["total"], 5);
        assert_eq!(v["per_page"], 2);
        assert_eq!(items(&v).len(), want, "{v}");
        seen.extend(
            items(&v)
                .iter()
                .map(|k| k["id"].as_str().unwrap().parse::<Uuid>().unwrap()),
        );
    }
    created.reverse();
    assert_eq!(seen, created, "newest first, each once");
    assert_eq!(items(&c.list("?per_page=2&page=9")).len(), 0);
    for q in ["?per_page=0", "?per_page=501", "?page=0"] {
        let (st, v) = c.call("GET", &format!("/api/v1/api-keys{q}"), None);
        assert_error(st, &v, 422, "validation_failed");
    }
    for q in ["?page=x", "?name=k1"] {
        let (st, v) = c.call("GET", &format!("/api/v1/api-keys{q}"), None);
        assert_error(st, &v, 400, "bad_request");
    }
}

#[test]
fn revoke_stops_a_key_at_once() {
    let c = Ctx::new();
    let (id, secret, _) = c.create("doomed", &["admin"]);
    let (st, _) = c.s.call("GET", "/api/v1/api-keys", Some(&secret), None);
    assert_eq!(st, 200);

    let (st, v) = c.call("DELETE", &format!("/api/v1/api-keys/{id}"), None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id"], id.to_string());
    assert!(v["revoked_at"].is_string(), "{v}");
    assert_hides(&v.to_string(), &secret);

    for (method, path) in [
        ("GET", "/api/v1/api-keys"),
        ("GET", "/api/v1/tokens"),
        ("GET", "/api/v1/audit"),
    ] {
        let (st, v) = c.s.call(method, path, Some(&secret), None);
        assert_error(st, &v, 401, "unauthorized");
    }
    // A revoked key cannot revoke anything either.
    let (st, v) = c.s.call(
        "DELETE",
        &format!("/api/v1/api-keys/{}", c.admin_id),
        Some(&secret),
        None,
    );
    assert_error(st, &v, 401, "unauthorized");

    let (st, v) = c.call("DELETE", &format!("/api/v1/api-keys/{id}"), None);
    assert_error(st, &v, 409, "conflict");
    let (st, v) = c.call(
        "DELETE",
        &format!("/api/v1/api-keys/{}", Uuid::new_v4()),
        None,
    );
    let m = assert_error(st, &v, 404, "not_found");
    assert!(m.contains("API key"), "{m}");
    let (st, v) = c.call("DELETE", "/api/v1/api-keys/not-a-uuid", None);
    assert_error(st, &v, 400, "bad_request");

    // Still listed (for the trail), marked revoked; the others unaffected.
    let listed = c.list("");
    assert!(find(&listed, id)["revoked_at"].is_string());
    assert_eq!(find(&listed, c.admin_id)["revoked_at"], Value::Null);

    // An admin may revoke its own key; then it is locked out.
    let (st, v) = c.call("DELETE", &format!("/api/v1/api-keys/{}", c.admin_id), None);
    assert_eq!(st, 200, "{v}");
    let (st, v) = c.call("GET", "/api/v1/api-keys", None);
    assert_error(st, &v, 401, "unauthorized");
}

#[test]
fn lower_scopes_are_forbidden_on_key_endpoints() {
    let c = Ctx::new();
    let (target, _, _) = c.create("target", &["read"]);
    for scopes in [
        &[Scope::Write][..],
        &[Scope::Read],
        &[Scope::Read, Scope::Write],
    ] {
        let key = c.s.db.api_key(scopes);
        let (st, v) = c.s.call(
            "POST",
            "/api/v1/api-keys",
            Some(&key),
            Some(r#"{"name":"x","scopes":["admin"]}"#),
        );
        let m = assert_error(st, &v, 403, "forbidden");
        assert!(m.contains("admin"), "{m}");
        let (st, v) = c.s.call("GET", "/api/v1/api-keys", Some(&key), None);
        assert_error(st, &v, 403, "forbidden");
        let (st, v) = c.s.call(
            "DELETE",
            &format!("/api/v1/api-keys/{target}"),
            Some(&key),
            None,
        );
        assert_error(st, &v, 403, "forbidden");
    }
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/api-keys".to_owned(),
            Some(r#"{"name":"x","scopes":["admin"]}"#),
        ),
        ("GET", "/api/v1/api-keys".to_owned(), None),
        ("DELETE", format!("/api/v1/api-keys/{target}"), None),
    ] {
        let (st, v) = c.s.call(method, &path, None, body);
        assert_error(st, &v, 401, "unauthorized");
    }
    // Nothing was created or revoked.
    let listed = c.list("");
    assert_eq!(find(&listed, target)["revoked_at"], Value::Null);
    assert_eq!(c.audit("?action=api_key.revoke")["total"], 0);
}

#[test]
fn last_used_at_is_recorded() {
    let c = Ctx::new();
    let (id, secret, key) = c.create("user", &["read"]);
    assert_eq!(key["last_used_at"], Value::Null);
    assert_eq!(find(&c.list(""), id)["last_used_at"], Value::Null);
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let (st, _) = c.s.call("GET", "/api/v1/tokens", Some(&secret), None);
    assert_eq!(st, 200);
    let listed = c.list("");
    let used: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(find(&listed, id)["last_used_at"].clone())
            .expect("last_used_at set");
    assert!(used >= before && used <= chrono::Utc::now() + chrono::Duration::seconds(5));
    // The admin key listing keys was used too.
    assert!(find(&listed, c.admin_id)["last_used_at"].is_string());
    // A bad secret with the same prefix does not touch the row.
    let (never, never_secret, _) = c.create("never", &["read"]);
    let last = never_secret.chars().last().unwrap();
    let wrong = format!(
        "{}{}",
        &never_secret[..never_secret.len() - 1],
        if last == 'x' { 'y' } else { 'x' }
    );
    let (st, _) = c.s.call("GET", "/api/v1/tokens", Some(&wrong), None);
    assert_eq!(st, 401);
    assert_eq!(find(&c.list(""), never)["last_used_at"], Value::Null);
}

#[test]
fn audit_records_key_writes_and_filters() {
    let c = Ctx::new();
    let (a, _, _) = c.create("a", &["read"]);
    let (b, _, _) = c.create("b", &["write"]);
    let (st, _) = c.call("DELETE", &format!("/api/v1/api-keys/{a}"), None);
    assert_eq!(st, 200);
    let (st, t) = c.call(
        "POST",
        "/api/v1/tokens",
        Some(json!({"label": "t", "streams": [{"name": "s"}]})),
    );
    assert_eq!(st, 201);
    let token = t["token"]["id"].as_str().unwrap().to_owned();

    // Everything: 1 bootstrap create (actor "test") + 2 creates + 1 revoke + 1 token.
    let all = c.audit("");
    assert_eq!(all["total"], 5, "{all}");
    let actions: Vec<&str> = items(&all)
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "token.create",
            "api_key.revoke",
            "api_key.create",
            "api_key.create",
            "api_key.create"
        ]
    );
    assert_eq!(items(&all)[4]["actor"], "test");
    assert_eq!(items(&all)[4]["target"], format!("api_key:{}", c.admin_id));
    for e in &items(&all)[..4] {
        assert_eq!(e["actor"], c.actor(), "{e}");
    }

    let v = c.audit(&format!("?target=api_key:{a}"));
    assert_eq!(v["total"], 2);
    let e = &items(&v)[0];
    assert_eq!(e["action"], "api_key.revoke");
    assert_eq!(e["before"]["revoked_at"], Value::Null);
    assert!(e["after"]["revoked_at"].is_string());
    assert_eq!(items(&v)[1]["action"], "api_key.create");
    assert_eq!(items(&v)[1]["before"], Value::Null);
    assert_eq!(items(&v)[1]["after"]["name"], "a");

    let v = c.audit(&format!("?target=api_key:{b}"));
    assert_eq!(v["total"], 1);
    let v = c.audit(&format!("?target=token:{token}"));
    assert_eq!(v["total"], 1);
    assert_eq!(items(&v)[0]["action"], "token.create");
    // Exact, not a prefix or substring.
    assert_eq!(c.audit("?target=api_key")["total"], 0);
    assert_eq!(c.audit("?target=token:")["total"], 0);

    assert_eq!(c.audit("?action=api_key.create")["total"], 3);
    assert_eq!(c.audit("?action=api_key.revoke")["total"], 1);
    assert_eq!(c.audit("?action=api_key")["total"], 0);
    let v = c.audit(&format!("?action=api_key.create&target=api_key:{b}"));
    assert_eq!(v["total"], 1);

    // Time filters. A `+` offset must be percent-encoded in a query string.
    assert_eq!(c.audit("?since=2999-01-01T00:00:00Z")["total"], 0);
    assert_eq!(c.audit("?since=2000-01-01T00:00:00Z")["total"], 5);
    assert_eq!(c.audit("?since=2000-01-01T00:00:00%2B02:00")["total"], 5);
    let newest_at = items(&all)[0]["at"].as_str().unwrap().to_owned();
    let v = c.audit(&format!("?since={}", newest_at.replace('+', "%2B")));
    assert!(v["total"].as_i64().unwrap() >= 1, "since is inclusive: {v}");
    let (st, v) = c.call("GET", "/api/v1/audit?since=yesterday", None);
    assert_error(st, &v, 400, "bad_request");

    // Paging.
    let mut ids = Vec::new();
    for (page, want) in [(1, 2), (2, 2), (3, 1), (4, 0)] {
        let v = c.audit(&format!("?limit=2&page={page}"));
        assert_eq!(v["total"], 5);
        assert_eq!(v["per_page"], 2);
        assert_eq!(v["page"], page);
        assert_eq!(items(&v).len(), want);
        ids.extend(items(&v).iter().map(|e| e["id"].as_i64().unwrap()));
    }
    let all_ids: Vec<i64> = items(&all)
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, all_ids);
    for q in ["?limit=0", "?limit=501", "?page=0"] {
        let (st, v) = c.call("GET", &format!("/api/v1/audit{q}"), None);
        assert_error(st, &v, 422, "validation_failed");
    }
    for q in ["?limit=x", "?per_page=2", "?actor=test"] {
        let (st, v) = c.call("GET", &format!("/api/v1/audit{q}"), None);
        assert_error(st, &v, 400, "bad_request");
    }

    // Read scope suffices; no key does not.
    let read = c.s.db.api_key(&[Scope::Read]);
    let (st, _) = c.s.call("GET", "/api/v1/audit", Some(&read), None);
    assert_eq!(st, 200);
    let (st, v) = c.s.call("GET", "/api/v1/audit", None, None);
    assert_error(st, &v, 401, "unauthorized");
}

#[test]
fn unknown_routes_are_json_404s() {
    let c = Ctx::new();
    for (method, path, key) in [
        ("GET", "/nope", None),
        ("GET", "/api/v1/nope", Some(c.admin.as_str())),
        ("GET", "/api/v2/tokens", Some(c.admin.as_str())),
        ("POST", "/api/v1/tokens/x/y/z", Some(c.admin.as_str())),
        ("DELETE", "/api/health", None),
        ("GET", "/", None),
    ] {
        let (st, v) = c.s.call(method, path, key, None);
        let m = assert_error(st, &v, 404, "not_found");
        assert!(m.contains(path), "{m}");
    }
}

#[test]
fn health_ready_and_openapi_need_no_key() {
    let c = Ctx::new();
    let (st, v) = c.s.call("GET", "/api/health", None, None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["database"], "ok");
    assert_eq!(v["node_id"], "test-node");
    assert_eq!(v["ready"], true);
    assert!(v["version"].is_string());
    assert!(v["uptime_seconds"].is_u64());
    let (st, v) = c.s.call("GET", "/api/ready", None, None);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ready"], true);
    // A (bad) key does not hurt these.
    let (st, _) = c.s.call("GET", "/api/health", Some("garbage"), None);
    assert_eq!(st, 200);

    let (st, text) = c.s.get_text("/api/openapi.json");
    assert_eq!(st, 200);
    let doc: Value = serde_json::from_str(&text).expect("OpenAPI document is JSON");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/api/v1/tokens",
        "/api/v1/tokens/{id}",
        "/api/v1/api-keys",
        "/api/v1/audit",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the document"
        );
    }
}
