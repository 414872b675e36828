//! Several gateways forming one cluster: in-process nodes (each with its own
//! runtime, engine and Redis connections) and `primacy` child processes,
//! sharing one test database and one Redis key prefix unique to the test.

// Each test crate compiles these helpers and uses a different part of
// them: an `expect` would be unfulfilled in the crates that use it all.
#![allow(
    dead_code,
    reason = "each test crate uses a part of the shared helpers"
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use primacy::auth::api_keys::Scope;
use primacy::config::Config;
use primacy::lifecycle::{self, Running};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::process::{GatewayProcess, Ports};
use super::{test_config, Http, TestDb};

pub const CLUSTER_SECRET: &str = "cluster-secret-for-tests-0123456789abcdef";

/// The shared Redis of the machine (`PRIMACY_TEST_REDIS_URL`).
pub fn shared_redis_url() -> String {
    std::env::var("PRIMACY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A private `redis-server` on a port of its own, killed (by PID) on drop.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// TLS only (no plaintext port), with a throwaway CA in `dir`.
    tls: bool,
}

/// Run `openssl` with `args` in `dir` (panics if it fails).
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivateRedis {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A TLS-only redis-server whose certificate (for 127.0.0.1) is signed
    /// by a throwaway CA made here with openssl ([`PrivateRedis::ca_file`]).
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let port = Ports::free().http;
        let dir =
            std::env::temp_dir().join(format!("primacy-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        if tls {
            let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
            openssl(
                &dir,
                &[
                    &["req", "-x509", "-nodes", "-days", "1"][..],
                    &ec[..],
                    &[
                        "-keyout",
                        "ca.key",
                        "-out",
                        "ca.pem",
                        "-subj",
                        "/CN=primacy test CA",
                    ][..],
                ]
                .concat(),
            );
            openssl(
                &dir,
                &[
                    &["req", "-nodes"][..],
                    &ec[..],
                    &[
                        "-keyout",
                        "server.key",
                        "-out",
                        "server.csr",
                        "-subj",
                        "/CN=127.0.0.1",
                    ][..],
                ]
                .concat(),
            );
            std::fs::write(
                dir.join("server.ext"),
                "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
            )
            .expect("extensions");
            openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    "server.csr",
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    "server.pem",
                    "-days",
                    "1",
                    "-extfile",
                    "server.ext",
                ],
            );
        }
        let mut r = Self {
            port,
            child: None,
            dir,
            tls,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA that signed a TLS server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        assert!(self.tls, "not a TLS server");
        self.dir.join("ca.pem")
    }

    /// Start it (again) on the same port; waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        if self.tls {
            let file = |f: &str| self.dir.join(f).to_string_lossy().into_owned();
            cmd.args(["--port", "0", "--tls-port", &port])
                .args(["--tls-cert-file", &file("server.pem")])
                .args(["--tls-key-file", &file("server.key")])
                .args(["--tls-ca-cert-file", &file("ca.pem")])
                .args(["--tls-auth-clients", "no"]);
        } else {
            cmd.args(["--port", &port]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < end,
                "redis-server did not listen within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill it (SIGKILL, by PID) and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `INFO commandstats` as (command, calls) pairs.
    pub fn command_calls(&self) -> Vec<(String, u64)> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "INFO", "commandstats"])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("cmdstat_")?;
                let (name, stats) = rest.split_once(':')?;
                let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.trim().parse().ok()?))
            })
            .collect()
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis ACL user on the shared Redis, limited to one key prefix and the
/// commands the gateway uses; deleted on drop.
pub struct AclUser {
    pub name: String,
    password: String,
    admin_url: String,
}

impl AclUser {
    /// Create it through `admin_url` (a connection allowed to run ACL).
    pub fn create(admin_url: &str, prefix: &str) -> Self {
        let name = format!("primacy-test-{}", uuid::Uuid::new_v4().simple());
        let password = uuid::Uuid::new_v4().simple().to_string();
        let mut con = redis_connection(admin_url);
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(&name)
            .arg("reset")
            .arg("on")
            .arg(format!(">{password}"))
            .arg(format!("~{prefix}:*"))
            .arg(format!("&{prefix}:*"));
        for c in primacy::cluster::REDIS_COMMANDS {
            cmd.arg(format!("+{c}"));
        }
        let _: () = cmd.query(&mut con).expect("ACL SETUSER");
        Self {
            name,
            password,
            admin_url: admin_url.to_owned(),
        }
    }

    /// `admin_url` with this user and its password.
    pub fn url(&self) -> String {
        let (scheme, rest) = self.admin_url.split_once("://").expect("a redis URL");
        format!("{scheme}://{}:{}@{rest}", self.name, self.password)
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        if let Ok(client) = redis::Client::open(self.admin_url.as_str()) {
            if let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(5)) {
                let _: redis::RedisResult<i64> = redis::cmd("ACL")
                    .arg("DELUSER")
                    .arg(&self.name)
                    .query(&mut con);
            }
        }
    }
}

/// A plain synchronous connection (for tests that talk to Redis directly).
pub fn redis_connection(url: &str) -> redis::Connection {
    let client = redis::Client::open(url).expect("redis url");
    let con = client
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("connect to redis");
    con.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    con
}

/// One test's cluster: a database, an admin key, a Redis and a key prefix.
pub struct TestCluster {
    pub db: TestDb,
    pub key: String,
    pub redis_url: String,
    pub prefix: String,
}

impl TestCluster {
    pub fn new(redis_url: &str) -> Self {
        let db = TestDb::migrated();
        let key = db.api_key(&[Scope::Admin]);
        Self {
            db,
            key,
            redis_url: redis_url.to_owned(),
            prefix: format!("primacy-test-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    pub fn config(&self, node: &str, region: &str) -> Config {
        let mut c = test_config(&self.db);
        c.node_id = node.to_owned();
        c.region = region.to_owned();
        c.redis.url = Some(primacy::config::Secret::new(self.redis_url.clone()));
        c.redis.key_prefix = self.prefix.clone();
        c.cluster.secret = Some(primacy::config::Secret::new(CLUSTER_SECRET));
        c.election.failback_hold_ms = 1_000;
        c
    }

    /// An in-process node.
    pub fn node(&self, node: &str, region: &str) -> Node {
        self.node_with(node, region, |_| {})
    }

    pub fn node_with(&self, node: &str, region: &str, tweak: impl FnOnce(&mut Config)) -> Node {
        let mut config = self.config(node, region);
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
            .expect("node started within 30 s")
            .expect("node start");
        Node {
            name: node.to_owned(),
            region: region.to_owned(),
            http: Http::new(&format!("http://{}", running.http_addr)),
            key: self.key.clone(),
            running: Some(running),
            rt: Some(rt),
            child: None,
        }
    }

    /// A node as a `primacy serve` child process on free loopback ports.
    pub fn child_node(&self, node: &str, region: &str) -> Node {
        let redis = self.redis_url.clone();
        let mut child = GatewayProcess::spawn(
            &self.db,
            Ports::free(),
            &[
                ("PRIMACY_LOG", "warn"),
                ("PRIMACY_NODE_ID", node),
                ("PRIMACY_REGION", region),
                ("PRIMACY_REDIS_URL", &redis),
                ("PRIMACY_REDIS_KEY_PREFIX", &self.prefix),
                ("PRIMACY_CLUSTER_SECRET", CLUSTER_SECRET),
                ("PRIMACY_ELECTION__FAILBACK_HOLD_MS", "1000"),
            ],
        );
        child.wait_ready(Duration::from_secs(30));
        Node {
            name: node.to_owned(),
            region: region.to_owned(),
            http: Http::new(&format!("http://127.0.0.1:{}", child.ports.http)),
            key: self.key.clone(),
            running: None,
            rt: None,
            child: Some(child),
        }
    }

    /// A publish token for `streams` at `priority`: (id, secret).
    pub fn token(&self, via: &Node, streams: &[&str], priority: i32) -> (String, String) {
        let streams: Vec<Value> = streams.iter().map(|n| json!({"name": n})).collect();
        let body = json!({"label": "t", "streams": streams, "priority": priority}).to_string();
        let (st, v) = via.call("POST", "/api/v1/tokens", Some(&self.key), Some(&body));
        assert_eq!(st, 201, "{v}");
        (
            v["token"]["id"].as_str().unwrap().to_owned(),
            v["secret"].as_str().unwrap().to_owned(),
        )
    }
}

pub struct Node {
    pub name: String,
    pub region: String,
    pub http: Http,
    pub key: String,
    pub running: Option<Running>,
    rt: Option<tokio::runtime::Runtime>,
    child: Option<GatewayProcess>,
}

impl Node {
    pub fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        self.http.call(method, path, key, body)
    }

    pub fn get(&self, path: &str) -> Value {
        let (st, v) = self.call("GET", path, Some(&self.key), None);
        assert_eq!(st, 200, "GET {path} on {}: {v}", self.name);
        v
    }

    /// This node's RTMP address as its lease announces it (child nodes too).
    pub fn rtmp_addr(&self) -> String {
        let v = self.get("/api/v1/cluster/nodes");
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["local"] == true)
            .and_then(|n| n["rtmp"].as_str())
            .expect("local node")
            .to_owned()
    }

    pub fn rtmp(&self, path: &str) -> String {
        format!("rtmp://{}/live/{path}", self.rtmp_addr())
    }

    /// The stream's first source as this node sees it (`Null` if unknown).
    pub fn source(&self, stream: &str) -> Value {
        let (st, v) = self.call(
            "GET",
            &format!("/api/v1/streams/{stream}"),
            Some(&self.key),
            None,
        );
        match st {
            200 => v["sources"][0].clone(),
            404 => Value::Null,
            _ => panic!("GET stream on {}: {st} {v}", self.name),
        }
    }

    /// The feed the election picked for the stream, with its node.
    pub fn elected(&self, stream: &str) -> Option<(String, String)> {
        let s = self.source(stream);
        let id = s["elected"].as_str()?.to_owned();
        let node = s["feeds"]
            .as_array()?
            .iter()
            .find(|f| f["feed_id"] == id.as_str())
            .and_then(|f| f["node"].as_str())?
            .to_owned();
        Some((id, node))
    }

    /// A child node's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(GatewayProcess::pid)
    }

    /// Run a future on an in-process node's runtime.
    pub fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.as_ref().expect("an in-process node").block_on(f)
    }

    /// Stop gracefully (in-process) or SIGTERM (child).
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// SIGKILL a child node (by its PID).
    pub fn kill(&mut self) {
        let mut c = self.child.take().expect("a child node");
        c.signal("KILL");
        let _ = c.wait_exit(Duration::from_secs(10));
    }

    fn stop(&mut self) {
        if let (Some(running), Some(rt)) = (self.running.take(), self.rt.as_ref()) {
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(10), running.shutdown()).await;
            });
        }
        if let Some(mut c) = self.child.take() {
            c.signal("TERM");
            let _ = c.wait_exit(Duration::from_secs(10));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Wait until `check` holds (polling every 25 ms); returns how long it took.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Every node elects the same feed for `stream`, and it is on node `on`.
pub fn agree_on(nodes: &[&Node], stream: &str, on: &str) -> Option<String> {
    let mut first: Option<String> = None;
    for n in nodes {
        let (id, node) = n.elected(stream)?;
        if node != on || first.as_ref().is_some_and(|f| *f != id) {
            return None;
        }
        first = Some(id);
    }
    first
}
