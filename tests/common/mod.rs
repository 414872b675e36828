//! Test harness: each test gets its own PostgreSQL database (created from
//! `template0`, migrated, dropped at the end) and, where it needs one, a real
//! gateway started in-process on `127.0.0.1:0`.
//!
//! The server for the databases is `PRIMACY_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`).

// Each test crate compiles these helpers and uses a different part of
// them: an `expect` would be unfulfilled in the crates that use it all.
#![allow(
    dead_code,
    reason = "each test crate uses a part of the shared helpers"
)]

pub mod cluster;
pub mod gateway;
pub mod media;
pub mod process;
pub mod rtmp_raw;
pub mod srt_raw;

use std::time::Duration;

use diesel::{Connection, PgConnection, RunQueryDsl};
use primacy::auth::api_keys::Scope;
use primacy::config::Config;
use primacy::lifecycle::{self, Running};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub const HS256: &str = "test-signing-secret-0123456789abcdef";

pub fn admin_url() -> String {
    std::env::var("PRIMACY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own, dropped (forcefully) when this goes out of scope.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

impl TestDb {
    /// An empty database (no migrations).
    pub fn empty() -> Self {
        let name = format!("primacy_test_{}", uuid::Uuid::new_v4().simple());
        let admin = admin_url();
        let mut conn =
            PgConnection::establish(&admin).expect("connect to the test PostgreSQL server");
        diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE template0"))
            .execute(&mut conn)
            .expect("create test database");
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or(admin.clone());
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// A migrated database.
    pub fn migrated() -> Self {
        let db = Self::empty();
        let mut conn = db.connect();
        primacy::store::run_migrations(&mut conn).expect("migrations");
        db
    }

    pub fn connect(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connect to test database")
    }

    /// Create an API key directly in the database; returns its secret.
    pub fn api_key(&self, scopes: &[Scope]) -> String {
        self.api_key_with_id(scopes).1
    }

    /// Create an API key directly in the database; returns its id and secret.
    pub fn api_key_with_id(&self, scopes: &[Scope]) -> (uuid::Uuid, String) {
        let mut conn = self.connect();
        let (row, secret) = primacy::api::api_keys::create_key(&mut conn, "test", scopes, "test")
            .expect("create API key");
        (row.id, secret.expose().to_owned())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut conn) = PgConnection::establish(&admin_url()) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn);
        }
    }
}

/// A configuration for a test gateway on loopback ports chosen by the OS.
pub fn test_config(db: &TestDb) -> Config {
    let env = vec![
        ("PRIMACY_DATABASE_URL".to_owned(), db.url.clone()),
        ("PRIMACY_HTTP_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("PRIMACY_RTMP_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("PRIMACY_SRT_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ("PRIMACY_HS256_SECRET".to_owned(), HS256.to_owned()),
        ("PRIMACY_HS256_KID".to_owned(), "test".to_owned()),
        ("PRIMACY_NODE_ID".to_owned(), "test-node".to_owned()),
        (
            "PRIMACY_SHUTDOWN__MAX_WAIT_MS".to_owned(),
            "2000".to_owned(),
        ),
    ];
    Config::load_from(None, env).expect("test config")
}

/// A gateway running in-process against its own database.
pub struct TestServer {
    pub db: TestDb,
    pub base: String,
    pub running: Option<Running>,
    rt: tokio::runtime::Runtime,
    http: Http,
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let db = TestDb::migrated();
        let mut config = test_config(&db);
        tweak(&mut config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let cancel = CancellationToken::new();
        let running = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(30), lifecycle::start(config, &cancel))
                    .await
            })
            .expect("gateway started within 30 s")
            .expect("gateway start");
        let base = format!("http://{}", running.http_addr);
        Self {
            db,
            http: Http::new(&base),
            base,
            running: Some(running),
            rt,
        }
    }

    /// Stop the gateway (a full drain) and start a new one on the same
    /// database, as a restart of the process would; `tweak` adjusts the
    /// new configuration. Returns how long the new start took.
    pub fn restart_with(&mut self, tweak: impl FnOnce(&mut Config)) -> Duration {
        if let Some(running) = self.running.take() {
            self.rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(20), running.shutdown()).await;
            });
        }
        let mut config = test_config(&self.db);
        tweak(&mut config);
        let cancel = CancellationToken::new();
        let t0 = std::time::Instant::now();
        let running = self
            .rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(30), lifecycle::start(config, &cancel))
                    .await
            })
            .expect("gateway restarted within 30 s")
            .expect("gateway restart");
        let took = t0.elapsed();
        self.base = format!("http://{}", running.http_addr);
        self.http = Http::new(&self.base);
        self.running = Some(running);
        took
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn http(&self) -> &Http {
        &self.http
    }

    /// Send a request with an optional bearer key and raw body; returns the
    /// status and the JSON body (`Value::Null` when empty).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        self.http.call(method, path, key, body)
    }

    pub fn call_with_type(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
        content_type: &str,
    ) -> (u16, Value) {
        self.http
            .call_with_type(method, path, key, body, content_type)
    }

    /// The raw response text of a GET without a key.
    pub fn get_text(&self, path: &str) -> (u16, String) {
        self.http.get_text(path)
    }
}

/// A small HTTP client for a gateway's API at `base`.
pub struct Http {
    pub base: String,
    agent: ureq::Agent,
}

impl Http {
    pub fn new(base: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Self {
            base: base.to_owned(),
            agent,
        }
    }

    /// Send a request with an optional bearer key and raw body; returns the
    /// status and the JSON body (`Value::Null` when empty).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        self.call_with_type(method, path, key, body, "application/json")
    }

    pub fn call_with_type(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
        content_type: &str,
    ) -> (u16, Value) {
        let (status, text) = self
            .try_call(method, path, key, body, content_type)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    /// Like `call_with_type`, but a connection failure is returned, not a
    /// panic (a gateway that is starting or gone); the body is raw text.
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
        content_type: &str,
    ) -> Result<(u16, String), ureq::Error> {
        let url = format!("{}{}", self.base, path);
        let auth = key.map(|k| format!("Bearer {k}"));
        let result = match method {
            "GET" | "DELETE" => {
                let mut req = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            "POST" | "PATCH" => {
                let mut req = if method == "POST" {
                    self.agent.post(&url)
                } else {
                    self.agent.patch(&url)
                };
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req = req.header("Content-Type", content_type);
                match body {
                    Some(b) => req.send(b.as_bytes()),
                    None => req.send_empty(),
                }
            }
            other => panic!("unsupported method {other}"),
        };
        let mut resp = result?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        Ok((status, text))
    }

    /// The raw response text of a GET without a key.
    pub fn get_text(&self, path: &str) -> (u16, String) {
        self.try_call("GET", path, None, None, "application/json")
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            self.rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(10), running.shutdown()).await;
            });
        }
    }
}

/// Assert the error body shape and code; returns the message.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) -> String {
    assert_eq!(status, want_status, "body: {body}");
    assert_eq!(body["error"]["code"], want_code, "body: {body}");
    body["error"]["message"]
        .as_str()
        .expect("error message")
        .to_owned()
}

/// Run the `primacy` binary with only `PATH`, `PRIMACY_LOG=warn` and the
/// given variables in its environment (nothing leaks in from the outer
/// one), killing it after 60 s. Returns (exit code, stdout, stderr).
pub fn run_primacy(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_primacy"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PRIMACY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn primacy");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("primacy {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (
        status.code().unwrap_or(-1),
        out.join().expect("stdout reader"),
        err.join().expect("stderr reader"),
    )
}
