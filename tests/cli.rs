//! The real `primacy` binary against a running gateway: bootstrap API keys
//! straight in the database, then the `tokens` commands through the REST
//! API, and `config`.

mod common;

use common::{run_primacy, TestServer};
use serde_json::Value;

/// Run, expect success, return stdout.
#[track_caller]
fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let (code, out, err) = run_primacy(args, env);
    assert_eq!(code, 0, "primacy {args:?}\nstdout: {out}\nstderr: {err}");
    out
}

/// Run, expect failure, return stderr.
#[track_caller]
fn fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let (code, out, err) = run_primacy(args, env);
    assert_ne!(
        code, 0,
        "primacy {args:?} should fail\nstdout: {out}\nstderr: {err}"
    );
    err
}

#[track_caller]
fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Bootstrap an admin key through the CLI; returns (id, secret).
fn bootstrap_key(s: &TestServer, name: &str) -> (String, String) {
    let out = ok(
        &[
            "api-keys", "create", "--name", name, "--scope", "admin", "--json",
        ],
        &[("PRIMACY_DATABASE_URL", &s.db.url)],
    );
    let v = json(&out);
    (
        v["key"]["id"].as_str().expect("key id").to_owned(),
        v["secret"].as_str().expect("secret").to_owned(),
    )
}

#[test]
fn token_lifecycle_through_the_cli() {
    let s = TestServer::start();
    let (key_id, key) = bootstrap_key(&s, "ops");
    assert!(key.starts_with("pmy_"), "{key}");
    let env = [("PRIMACY_API_KEY", key.as_str())];
    let api = s.base.as_str();
    let tokens = |args: &[&str]| -> Vec<String> {
        let mut v = vec!["tokens".to_owned(), "--api".to_owned(), api.to_owned()];
        v.extend(args.iter().map(|a| a.to_string()));
        v
    };
    let run_ok = |args: &[&str]| -> String {
        let a = tokens(args);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        ok(&a, &env)
    };
    let run_fails = |args: &[&str]| -> String {
        let a = tokens(args);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        fails(&a, &env)
    };

    let created = json(&run_ok(&[
        "create",
        "--label",
        "cam",
        "--stream",
        "match1",
        "--priority",
        "100",
        "--json",
    ]));
    let id = created["token"]["id"].as_str().expect("id").to_owned();
    let secret = created["secret"].as_str().expect("secret").to_owned();
    assert_eq!(secret.split('.').count(), 3);
    assert_eq!(created["token"]["label"], "cam");
    assert_eq!(created["token"]["priority"], 100);
    assert_eq!(
        created["token"]["streams"],
        serde_json::json!([{"name": "match1", "is_regex": false}])
    );
    // The secret admits a publish.
    let admitted = s.runtime().block_on(s.running().admission.check(
        &secret,
        &"match1".parse().unwrap(),
        &Default::default(),
        "127.0.0.1".parse().unwrap(),
        chrono::Utc::now(),
    ));
    assert!(admitted.is_ok(), "{admitted:?}");

    // Another token on a regex, to show --stream finds both kinds.
    let other = json(&run_ok(&[
        "create",
        "--label",
        "backup",
        "--stream-regex",
        "match[0-9]+",
        "--allow-ip",
        "10.0.0.0/8",
        "--expires-in",
        "3600",
        "--priority=-5",
        "--json",
    ]));
    let other_id = other["token"]["id"].as_str().unwrap().to_owned();
    assert_eq!(other["token"]["priority"], -5);
    assert_eq!(
        other["token"]["allowed_ips"],
        serde_json::json!(["10.0.0.0/8"])
    );
    assert!(other["token"]["expires_at"].is_string());

    let listed = json(&run_ok(&["list", "--stream", "match1", "--json"]));
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str(), other_id.as_str()]);
    assert_eq!(listed["total"], 2);
    assert!(!listed.to_string().contains(&secret));
    let listed = json(&run_ok(&["list", "--stream", "match7", "--json"]));
    assert_eq!(listed["total"], 1);
    let listed = json(&run_ok(&["list", "--label", "CAM", "--json"]));
    assert_eq!(listed["items"][0]["id"], id.as_str());
    assert_eq!(listed["total"], 1);
    let listed = json(&run_ok(&[
        "list",
        "--per-page",
        "1",
        "--page",
        "2",
        "--json",
    ]));
    assert_eq!(listed["items"][0]["id"], other_id.as_str());

    // Table output.
    let table = run_ok(&["list", "--stream", "match1"]);
    assert!(table.contains("LABEL"), "{table}");
    assert!(table.contains(&id), "{table}");
    assert!(table.contains("cam"), "{table}");
    assert!(table.contains("~match[0-9]+"), "{table}");
    assert!(table.contains("2 token(s)"), "{table}");
    assert!(!table.contains(&secret));
    let table = run_ok(&["show", &id]);
    assert!(
        table.contains(&id) && table.contains("cam") && table.contains("100"),
        "{table}"
    );

    let shown = json(&run_ok(&["show", &id, "--json"]));
    assert_eq!(shown, created["token"]);

    let updated = json(&run_ok(&["update", &id, "--priority", "7", "--json"]));
    assert_eq!(updated["priority"], 7);
    assert_eq!(updated["label"], "cam");
    let updated = json(&run_ok(&[
        "update",
        &id,
        "--label",
        "cam-a",
        "--add-stream",
        "match2",
        "--allow-ip",
        "192.0.2.0/24",
        "--json",
    ]));
    assert_eq!(updated["label"], "cam-a");
    assert_eq!(updated["priority"], 7);
    assert_eq!(updated["streams"].as_array().unwrap().len(), 2);
    assert_eq!(updated["allowed_ips"], serde_json::json!(["192.0.2.0/24"]));
    let updated = json(&run_ok(&[
        "update",
        &id,
        "--remove-stream",
        "match2",
        "--any-ip",
        "--json",
    ]));
    assert_eq!(updated["streams"].as_array().unwrap().len(), 1);
    assert_eq!(updated["allowed_ips"], serde_json::json!([]));
    // priority= may only lower unless the token allows raising.
    assert_eq!(updated["allow_priority_override"], false);
    let updated = json(&run_ok(&[
        "update",
        &id,
        "--allow-priority-override",
        "true",
        "--json",
    ]));
    assert_eq!(updated["allow_priority_override"], true);
    let raising = json(&run_ok(&[
        "create",
        "--label",
        "raising",
        "--stream",
        "match9",
        "--allow-priority-override",
        "--json",
    ]));
    assert_eq!(raising["token"]["allow_priority_override"], true);
    let raising_id = raising["token"]["id"].as_str().unwrap().to_owned();
    run_ok(&["delete", &raising_id]);
    let err = run_fails(&["update", &id]);
    assert!(err.contains("nothing to change"), "{err}");
    let err = run_fails(&["update", &id, "--remove-stream", "match1"]);
    assert!(err.contains("422"), "{err}");

    let re = json(&run_ok(&["reprioritize", &id, "--priority", "3", "--json"]));
    assert_eq!(re["previous_priority"], 7);
    assert_eq!(re["token"]["priority"], 3);
    assert_eq!(re["disconnect"], true);
    assert_eq!(re["affected"], serde_json::json!([]));
    assert_eq!(re["pinned"], serde_json::json!([]));
    let re = json(&run_ok(&[
        "reprioritize",
        &id,
        "--priority",
        "none",
        "--no-disconnect",
        "--json",
    ]));
    assert_eq!(re["previous_priority"], 3);
    assert_eq!(re["token"]["priority"], Value::Null);
    assert_eq!(re["disconnect"], false);
    let text = run_ok(&["reprioritize", &id, "--priority", "3"]);
    assert!(text.contains("priority null -> 3"), "{text}");
    assert!(text.contains("affected feeds: 0"), "{text}");
    let err = run_fails(&["reprioritize", &id, "--priority", "high"]);
    assert!(err.contains("--priority"), "{err}");

    let refreshed = json(&run_ok(&["refresh", &id, "--json"]));
    let new_secret = refreshed["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert_eq!(refreshed["token"]["id"], id.as_str());
    let text = run_ok(&["refresh", &id]);
    assert!(text.contains("secret (shown only once): "), "{text}");
    assert!(!text.contains(new_secret), "a newer secret replaces it");

    let disabled = json(&run_ok(&["disable", &id, "--json"]));
    assert_eq!(disabled["enabled"], false);
    let listed = json(&run_ok(&["list", "--enabled", "false", "--json"]));
    assert_eq!(listed["items"][0]["id"], id.as_str());
    let enabled = json(&run_ok(&["update", &id, "--enable", "--json"]));
    assert_eq!(enabled["enabled"], true);

    let out = run_ok(&["delete", &id, "--json"]);
    assert_eq!(json(&out)["deleted"], id.as_str());
    let err = run_fails(&["show", &id]);
    assert!(err.contains("404"), "{err}");
    assert!(err.contains("not found"), "{err}");
    let err = run_fails(&["delete", &id]);
    assert!(err.contains("404"), "{err}");
    let out = run_ok(&["delete", &other_id]);
    assert!(out.contains(&format!("deleted token {other_id}")), "{out}");
    assert_eq!(json(&run_ok(&["list", "--json"]))["total"], 0);

    // Every write was audited under the CLI's API key.
    let (st, audit) = s.call(
        "GET",
        &format!("/api/v1/audit?target=token:{id}&limit=100"),
        Some(&key),
        None,
    );
    assert_eq!(st, 200);
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.first().unwrap()["action"], "token.delete");
    assert_eq!(items.last().unwrap()["action"], "token.create");
    for e in items {
        assert_eq!(e["actor"], format!("api-key:{key_id}"));
    }
}

#[test]
fn tokens_commands_report_client_errors() {
    let s = TestServer::start();
    let (_, key) = bootstrap_key(&s, "ops");
    let api = s.base.as_str();
    let some_id = uuid::Uuid::new_v4().to_string();

    // No key at all (and none inherited from the outer environment).
    let err = fails(&["tokens", "--api", api, "list"], &[]);
    assert!(err.contains("PRIMACY_API_KEY"), "{err}");
    let err = fails(
        &["tokens", "--api", api, "list"],
        &[("PRIMACY_API_KEY", "")],
    );
    assert!(err.contains("PRIMACY_API_KEY"), "{err}");
    // A wrong key.
    let err = fails(
        &["tokens", "--api", api, "list"],
        &[("PRIMACY_API_KEY", "pmy_00000000_nope")],
    );
    assert!(err.contains("401"), "{err}");
    let env = [("PRIMACY_API_KEY", key.as_str())];
    // The API URL from the environment instead of --api.
    let out = ok(
        &["tokens", "list", "--json"],
        &[("PRIMACY_API_KEY", key.as_str()), ("PRIMACY_API", api)],
    );
    assert_eq!(json(&out)["total"], 0);
    // Validation errors come back as one readable line.
    let err = fails(
        &[
            "tokens", "--api", api, "create", "--label", "x", "--stream", "a b",
        ],
        &env,
    );
    assert!(
        err.contains("422") && err.contains("streams[0].name"),
        "{err}"
    );
    let err = fails(&["tokens", "--api", api, "create", "--label", "x"], &env);
    assert!(err.contains("--stream"), "{err}");
    let err = fails(&["tokens", "--api", api, "show", "not-a-uuid"], &env);
    assert!(err.contains("not-a-uuid"), "{err}");
    let err = fails(&["tokens", "--api", api, "show", &some_id], &env);
    assert!(err.contains("404"), "{err}");
    let err = fails(&["tokens", "--api", "ftp://x", "list"], &env);
    assert!(err.contains("--api"), "{err}");
    // Nothing listening.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let err = fails(&["tokens", "--api", &dead, "list"], &env);
    assert!(err.contains("cannot reach the API"), "{err}");
}

#[test]
fn api_keys_commands() {
    let s = TestServer::start();
    let db = [("PRIMACY_DATABASE_URL", s.db.url.as_str())];
    let (ops_id, ops) = bootstrap_key(&s, "ops");

    let out = ok(
        &[
            "api-keys", "create", "--name", "reader", "--scope", "read", "--scope", "write",
        ],
        &db,
    );
    assert!(out.contains("secret (shown only once): pmy_"), "{out}");
    assert!(out.contains("reader"), "{out}");
    assert!(out.contains("read,write"), "{out}");

    let listed = json(&ok(&["api-keys", "list", "--json"], &db));
    let keys = listed.as_array().expect("array");
    assert_eq!(keys.len(), 2);
    assert!(keys
        .iter()
        .any(|k| k["id"] == ops_id.as_str() && k["name"] == "ops"));
    let text = listed.to_string();
    assert!(!text.contains(&ops), "{text}");
    assert!(!text.contains("secret"), "{text}");
    let table = ok(&["api-keys", "list"], &db);
    assert!(
        table.contains("PREFIX") && table.contains(&ops_id),
        "{table}"
    );
    assert!(!table.contains(&ops), "{table}");

    // The key works against the API until revoked.
    let (st, _) = s.call("GET", "/api/v1/api-keys", Some(&ops), None);
    assert_eq!(st, 200);
    let revoked = json(&ok(&["api-keys", "revoke", &ops_id, "--json"], &db));
    assert_eq!(revoked["id"], ops_id.as_str());
    assert!(revoked["revoked_at"].is_string());
    let (st, _) = s.call("GET", "/api/v1/api-keys", Some(&ops), None);
    assert_eq!(st, 401);
    let err = fails(
        &["tokens", "--api", &s.base, "list"],
        &[("PRIMACY_API_KEY", ops.as_str())],
    );
    assert!(err.contains("401"), "{err}");

    let err = fails(&["api-keys", "revoke", &ops_id], &db);
    assert!(err.contains("already revoked"), "{err}");
    let missing = uuid::Uuid::new_v4().to_string();
    let err = fails(&["api-keys", "revoke", &missing], &db);
    assert!(err.contains(&missing), "{err}");
    let err = fails(
        &["api-keys", "create", "--name", "x", "--scope", "root"],
        &db,
    );
    assert!(err.contains("root"), "{err}");
    let err = fails(&["api-keys", "create", "--name", "x"], &db);
    assert!(err.contains("--scope"), "{err}");
    let err = fails(
        &["api-keys", "create", "--name", "", "--scope", "read"],
        &db,
    );
    assert!(err.contains("name"), "{err}");

    // Audited with the CLI as actor.
    let mut conn = s.db.connect();
    let (rows, _) = primacy::store::audit::list(
        &mut conn,
        &primacy::store::audit::AuditFilter {
            target: Some(format!("api_key:{ops_id}")),
            limit: 10,
            ..Default::default()
        },
    )
    .unwrap();
    let actions: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.action.as_str(), r.actor.as_str()))
        .collect();
    assert_eq!(
        actions,
        [("api_key.revoke", "cli"), ("api_key.create", "cli")]
    );
}

#[test]
fn config_is_printed_redacted() {
    let out = ok(
        &["config"],
        &[
            (
                "PRIMACY_DATABASE_URL",
                "postgres://primacy:hunter2-password@db.example:5432/primacy?password=hunter3",
            ),
            (
                "PRIMACY_HS256_SECRET",
                "supersecret-supersecret-supersecret",
            ),
            ("PRIMACY_REDIS_URL", "redis://:redispass@127.0.0.1:6379"),
            ("PRIMACY_REGION", "eu-west"),
        ],
    );
    for secret in ["hunter2-password", "hunter3", "supersecret", "redispass"] {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    assert!(out.contains("<redacted>"), "{out}");
    assert!(out.contains("db.example:5432"), "{out}");
    assert!(out.contains("eu-west"), "{out}");
    assert!(out.contains("[election]"), "{out}");
    // The output is TOML.
    let parsed: toml::Table = out.parse().expect("TOML");
    assert_eq!(parsed["region"].as_str(), Some("eu-west"));
    // The loss window's keys, with their defaults.
    let election = parsed["election"].as_table().expect("[election]");
    for (key, v) in [
        ("loss_floor_ms", 150),
        ("loss_k", 4),
        ("loss_gap_factor", 3),
        ("loss_memory_ms", 30_000),
        ("loss_warmup_ms", 2_000),
    ] {
        assert_eq!(election[key].as_integer(), Some(v), "{key}:\n{out}");
    }

    // CLI-only variables are not configuration.
    ok(
        &["config"],
        &[("PRIMACY_API_KEY", "x"), ("PRIMACY_API", "http://x")],
    );
}

#[test]
fn config_errors_name_the_variable() {
    let err = fails(&["config"], &[("PRIMACY_ELECTION__FLAP_COUNT", "x")]);
    assert!(err.contains("PRIMACY_ELECTION__FLAP_COUNT"), "{err}");
    let err = fails(&["config"], &[("PRIMACY_ELECTION__LOSS_FLOOR_MS", "5")]);
    assert!(err.contains("election.loss_floor_ms"), "{err}");
    let err = fails(&["config"], &[("PRIMACY_BOGUS", "1")]);
    assert!(err.contains("PRIMACY_BOGUS"), "{err}");
    let err = fails(&["config"], &[("PRIMACY_ELECTION__FLAP_COUNT", "0")]);
    assert!(err.contains("election.flap_count"), "{err}");
    // A config file that does not exist.
    let err = fails(&["--config", "/nonexistent/primacy.toml", "config"], &[]);
    assert!(err.contains("/nonexistent/primacy.toml"), "{err}");
}
