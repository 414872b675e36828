//! The gateway under test: either a `primacy serve` child process started
//! here (its own database, created and dropped here; loopback ports chosen
//! free; an admin API key made with the `primacy api-keys create` command), or
//! a running gateway given by URL.
//!
//! Invariants: a child gateway is always stopped (SIGTERM, then SIGKILL after
//! 10 s) and its database dropped when the [`Gateway`] is dropped; only the
//! process started here is ever signalled, by its PID.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use diesel::{Connection, PgConnection, RunQueryDsl};
use serde_json::{json, Value};

use crate::procstat::ProcStat;

/// The signing secret of child gateways (loopback only, never a real key).
const HS256: &str = "loadtest-signing-secret-0123456789abcdef";

/// How to reach or start the gateway under test.
#[derive(Debug, Clone)]
pub enum Target {
    /// Start this `primacy` binary as a child process.
    Spawn {
        bin: PathBuf,
        /// PostgreSQL server URL (any database) used to create and drop the
        /// gateway's own database.
        admin_db: String,
        /// Where the gateway's stderr goes.
        log_dir: PathBuf,
    },
    /// A gateway that is already running.
    Url {
        http: String,
        api_key: String,
        rtmp: SocketAddr,
        srt: SocketAddr,
        /// Its PID on this machine, for /proc measurements.
        pid: Option<u32>,
    },
}

/// Extra settings for a child gateway (`PRIMACY_*` variables).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub env: Vec<(String, String)>,
    /// Reach the database through this address (a proxy) instead.
    pub db_via: Option<SocketAddr>,
}

impl Settings {
    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    pub fn database_via(mut self, addr: SocketAddr) -> Self {
        self.db_via = Some(addr);
        self
    }
}

/// `url` with its `host:port` replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (creds, rest) = match rest.rsplit_once('@') {
        Some((c, r)) => (format!("{c}@"), r),
        None => (String::new(), rest),
    };
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    format!("{scheme}://{creds}{addr}{path}")
}

/// A database of the gateway's own, dropped (forcefully) on drop.
struct OwnDb {
    admin: String,
    name: String,
    url: String,
}

impl OwnDb {
    fn create(admin: &str) -> Result<Self> {
        let name = format!("primacy_loadtest_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::establish(admin)
            .with_context(|| format!("connect to PostgreSQL at {}", primacy::redact::url(admin)))?;
        diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE template0"))
            .execute(&mut conn)
            .context("create the gateway's database")?;
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
        Ok(Self {
            admin: admin.to_owned(),
            url: format!("{base}/{name}"),
            name,
        })
    }
}

impl Drop for OwnDb {
    fn drop(&mut self) {
        if let Ok(mut conn) = PgConnection::establish(&self.admin) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn);
        }
    }
}

/// A loopback port that `bind` accepts, picked below Linux's ephemeral
/// range (32768–60999): a port taken from that range could be handed to
/// one of the load generator's own outgoing connections before the
/// gateway binds it (or while it restarts).
fn free_port(bind: impl Fn(u16) -> bool) -> Result<SocketAddr> {
    for _ in 0..200 {
        let port = rand::random_range(20_000..32_000);
        if bind(port) {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    bail!("no free loopback port in 20000-31999 after 200 tries")
}

/// Check that the Redis server at `url` (`redis://[user:pass@]host:port[/db]`)
/// answers a PING, within 2 s. The children talk to it themselves; this
/// only decides whether a run with several nodes can take place.
pub fn redis_ping(url: &str) -> Result<()> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| anyhow!("Redis URL {} is not redis://", primacy::redact::url(url)))?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:6379")
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .with_context(|| format!("Redis address {hostport}"))?
        .next()
        .ok_or_else(|| anyhow!("Redis address {hostport} resolves to nothing"))?;
    let t = Duration::from_secs(2);
    let mut s = std::net::TcpStream::connect_timeout(&addr, t)
        .with_context(|| format!("no Redis at {hostport}"))?;
    s.set_read_timeout(Some(t))?;
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 64];
    let n = s
        .read(&mut buf)
        .with_context(|| format!("Redis at {hostport}"))?;
    // +PONG, or an error such as -NOAUTH when the URL carries credentials:
    // the gateway authenticates itself.
    if n == 0 {
        bail!("Redis at {hostport} closed the connection");
    }
    Ok(())
}

/// A free loopback TCP port (bound, then released).
pub fn free_tcp() -> Result<SocketAddr> {
    free_port(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// A free loopback UDP port (bound, then released).
pub fn free_udp() -> Result<SocketAddr> {
    free_port(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// The gateway under test.
pub struct Gateway {
    pub http: String,
    pub rtmp: SocketAddr,
    pub srt: SocketAddr,
    pub key: String,
    agent: ureq::Agent,
    child: Option<Child>,
    url_pid: Option<u32>,
    bin: Option<PathBuf>,
    env: Vec<(String, String)>,
    log: Option<PathBuf>,
    db: Option<OwnDb>,
    /// Time from spawning the process to `/api/ready` answering 200.
    pub started_in: Option<Duration>,
}

impl Gateway {
    /// Start (or attach to) the gateway; ready when this returns.
    pub fn start(target: &Target, settings: &Settings, name: &str) -> Result<Self> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        match target {
            Target::Url {
                http,
                api_key,
                rtmp,
                srt,
                pid,
            } => Ok(Self {
                http: http.trim_end_matches('/').to_owned(),
                rtmp: *rtmp,
                srt: *srt,
                key: api_key.clone(),
                agent,
                child: None,
                url_pid: *pid,
                bin: None,
                env: Vec::new(),
                log: None,
                db: None,
                started_in: None,
            }),
            Target::Spawn {
                bin,
                admin_db,
                log_dir,
            } => {
                if !bin.exists() {
                    bail!(
                        "gateway binary {} not found: build it with `cargo build --release --bin primacy` or pass --gateway-bin",
                        bin.display()
                    );
                }
                let db = OwnDb::create(admin_db)?;
                let (http, rtmp, srt) = (free_tcp()?, free_tcp()?, free_udp()?);
                let db_url = match settings.db_via {
                    Some(addr) => via(&db.url, addr),
                    None => db.url.clone(),
                };
                let mut env = vec![
                    ("PRIMACY_DATABASE_URL".to_owned(), db_url),
                    ("PRIMACY_HTTP_LISTEN".to_owned(), http.to_string()),
                    ("PRIMACY_RTMP_LISTEN".to_owned(), rtmp.to_string()),
                    ("PRIMACY_SRT_LISTEN".to_owned(), srt.to_string()),
                    ("PRIMACY_HS256_SECRET".to_owned(), HS256.to_owned()),
                    ("PRIMACY_HS256_KID".to_owned(), "loadtest".to_owned()),
                    ("PRIMACY_NODE_ID".to_owned(), format!("loadtest-{name}")),
                    ("PRIMACY_LOG".to_owned(), "warn".to_owned()),
                    (
                        "PRIMACY_SHUTDOWN__MAX_WAIT_MS".to_owned(),
                        "2000".to_owned(),
                    ),
                    // Thousands of loopback sessions come from one address.
                    (
                        "PRIMACY_RTMP__MAX_CONNECTIONS_PER_IP".to_owned(),
                        "20000".to_owned(),
                    ),
                    (
                        "PRIMACY_RTMP__MAX_CONNECTIONS".to_owned(),
                        "20000".to_owned(),
                    ),
                    (
                        "PRIMACY_SRT__MAX_CONNECTIONS_PER_IP".to_owned(),
                        "20000".to_owned(),
                    ),
                    (
                        "PRIMACY_SRT__MAX_CONNECTIONS".to_owned(),
                        "20000".to_owned(),
                    ),
                    // The admission and churn scenarios measure refusals of
                    // bad tokens from the same address as good ones: the
                    // throttle would measure itself instead.
                    (
                        "PRIMACY_ADMISSION__THROTTLE_FAILURES".to_owned(),
                        "0".to_owned(),
                    ),
                ];
                env.extend(settings.env.iter().cloned());
                std::fs::create_dir_all(log_dir)?;
                let log = log_dir.join(format!("gateway-{name}.log"));
                let mut gw = Self {
                    http: format!("http://{http}"),
                    rtmp,
                    srt,
                    key: String::new(),
                    agent,
                    child: None,
                    url_pid: None,
                    bin: Some(bin.clone()),
                    env,
                    log: Some(log),
                    db: Some(db),
                    started_in: None,
                };
                gw.launch(name)?;
                gw.key = gw.create_api_key()?;
                Ok(gw)
            }
        }
    }

    /// Start another node of the same cluster beside this child gateway:
    /// its own `primacy serve` process and loopback ports, the same
    /// database (so the same tokens and API key), this gateway's settings
    /// overlaid by `settings` (node id, region). The database stays this
    /// gateway's: drop the peer first.
    pub fn peer(&self, settings: &Settings, name: &str) -> Result<Self> {
        let Some(log_dir) = self.log.as_ref().and_then(|l| l.parent()) else {
            bail!("a peer node needs a gateway started here, not one given by URL");
        };
        let mut env = self.env.clone();
        env.push(("PRIMACY_NODE_ID".to_owned(), format!("loadtest-{name}")));
        env.extend(settings.env.iter().cloned());
        let mut gw = Self {
            http: String::new(),
            rtmp: self.rtmp,
            srt: self.srt,
            key: self.key.clone(),
            agent: self.agent.clone(),
            child: None,
            url_pid: None,
            bin: self.bin.clone(),
            env,
            log: Some(log_dir.join(format!("gateway-{name}.log"))),
            db: None,
            started_in: None,
        };
        gw.new_ports()?;
        gw.launch(name)?;
        Ok(gw)
    }

    /// Spawn the child until it is ready. A port picked as free can be
    /// taken by someone else before the gateway binds it (the machine may
    /// be shared): pick new ones and try again, three times at most.
    fn launch(&mut self, name: &str) -> Result<()> {
        let mut attempt = 0;
        self.started_in = Some(loop {
            attempt += 1;
            match self.spawn() {
                Ok(d) => break d,
                Err(e) if attempt < 3 && self.log_says("Address already in use") => {
                    eprintln!("[loadtest] {name}: {e:#}; retrying on other ports");
                    self.child = None;
                    self.new_ports()?;
                }
                Err(e) => return Err(e),
            }
        });
        Ok(())
    }

    /// Whether the child's log holds `text`.
    fn log_says(&self, text: &str) -> bool {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .is_some_and(|s| s.contains(text))
    }

    /// Pick new listening ports for the child.
    fn new_ports(&mut self) -> Result<()> {
        let (http, rtmp, srt) = (free_tcp()?, free_tcp()?, free_udp()?);
        for (k, v) in self.env.iter_mut() {
            match k.as_str() {
                "PRIMACY_HTTP_LISTEN" => *v = http.to_string(),
                "PRIMACY_RTMP_LISTEN" => *v = rtmp.to_string(),
                "PRIMACY_SRT_LISTEN" => *v = srt.to_string(),
                _ => {}
            }
        }
        self.http = format!("http://{http}");
        self.rtmp = rtmp;
        self.srt = srt;
        if let Some(log) = &self.log {
            let _ = std::fs::write(log, "");
        }
        Ok(())
    }

    /// Spawn the child and wait until it is ready; returns the time taken.
    fn spawn(&mut self) -> Result<Duration> {
        let bin = self
            .bin
            .clone()
            .ok_or_else(|| anyhow!("not a child gateway"))?;
        let log = self.log.clone().expect("child gateways have a log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let t0 = Instant::now();
        let child = Command::new(&bin)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        self.child = Some(child);
        self.wait_ready(t0, Duration::from_secs(30))
    }

    fn wait_ready(&mut self, t0: Instant, timeout: Duration) -> Result<Duration> {
        let url = format!("{}/api/ready", self.http);
        let quick: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_millis(500)))
            .build()
            .into();
        loop {
            if let Ok(r) = quick.get(&url).call() {
                if r.status() == 200 {
                    return Ok(t0.elapsed());
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "the gateway exited ({status}) before it was ready; see {}",
                        self.log.as_deref().unwrap_or(Path::new("?")).display()
                    );
                }
            }
            if t0.elapsed() > timeout {
                bail!("the gateway was not ready within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn create_api_key(&self) -> Result<String> {
        let bin = self.bin.as_ref().expect("child gateway");
        let out = Command::new(bin)
            .args([
                "api-keys", "create", "--name", "loadtest", "--scope", "admin", "--json",
            ])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PRIMACY_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .context("run `primacy api-keys create`")?;
        if !out.status.success() {
            bail!(
                "`primacy api-keys create` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("api-keys create --json")?;
        v["secret"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("api-keys create printed no secret"))
    }

    /// The database URL of a child gateway.
    pub fn database_url(&self) -> Option<&str> {
        self.db.as_ref().map(|d| d.url.as_str())
    }

    /// The gateway's PID on this machine, when known.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id).or(self.url_pid)
    }

    /// CPU, memory and descriptors of the gateway process, when it is local.
    pub fn stat(&self) -> Option<ProcStat> {
        self.pid().and_then(|p| ProcStat::read(p).ok())
    }

    /// SIGKILL the child gateway and start it again with the same database
    /// and ports; returns the time from the new spawn to ready.
    pub fn kill9_and_restart(&mut self) -> Result<Duration> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("only a gateway started by the load test can be killed"))?;
        child.kill()?; // SIGKILL
        child.wait()?;
        // The ports are free again once the process is gone (SO_REUSEADDR
        // is set by the gateway's listeners).
        self.spawn()
    }

    /// Call the REST API; returns (status, JSON body).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let url = format!("{}{}", self.http, path);
        let auth = format!("Bearer {}", self.key);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(b),
            ("POST", None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
            ("PATCH", Some(b)) => self
                .agent
                .patch(&url)
                .header("Authorization", &auth)
                .send_json(b),
            _ => bail!("unsupported call {method} {path}"),
        };
        let mut resp = resp.with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, v))
    }

    /// A publish token for `streams` at `priority`: (token id, secret).
    pub fn token(&self, label: &str, streams: &[&str], priority: Option<i32>) -> Result<Token> {
        let streams: Vec<Value> = streams.iter().map(|n| json!({ "name": n })).collect();
        self.token_for(label, Value::Array(streams), priority)
    }

    /// A publish token for every stream whose name matches `pattern`.
    pub fn token_regex(&self, label: &str, pattern: &str, priority: Option<i32>) -> Result<Token> {
        self.token_for(
            label,
            json!([{ "name": pattern, "is_regex": true }]),
            priority,
        )
    }

    fn token_for(&self, label: &str, streams: Value, priority: Option<i32>) -> Result<Token> {
        let body = json!({ "label": label, "streams": streams, "priority": priority });
        let (st, v) = self.call("POST", "/api/v1/tokens", Some(&body))?;
        if st != 201 {
            bail!("create token: {st} {v}");
        }
        Ok(Token {
            id: v["token"]["id"].as_str().unwrap_or_default().to_owned(),
            secret: v["secret"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// The streams API view of one stream (`None` while it is not live).
    pub fn stream(&self, name: &str) -> Result<Option<Value>> {
        let (st, v) = self.call("GET", &format!("/api/v1/streams/{name}"), None)?;
        Ok((st == 200).then_some(v))
    }

    /// Wait until `name` has `feeds` feeds with one on air (that of
    /// `on_air_token` when given).
    pub fn wait_on_air(
        &self,
        name: &str,
        feeds: usize,
        on_air_token: Option<&str>,
        timeout: Duration,
    ) -> Result<Value> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(v) = self.stream(name)? {
                let fs = v["sources"][0]["feeds"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let on_air = fs.iter().any(|f| {
                    f["state"] == "on_air" && on_air_token.is_none_or(|t| f["token_id"] == t)
                });
                if fs.len() >= feeds && on_air {
                    return Ok(v);
                }
            }
            if Instant::now() > end {
                bail!("stream {name}: not {feeds} feeds with one on air within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn rtmp_url(&self, key: &str) -> String {
        format!("rtmp://{}/live/{key}", self.rtmp)
    }

    pub fn srt_url(&self, stream_id: &str) -> String {
        format!("srt://{}?streamid={stream_id}", self.srt)
    }
}

/// A publish token made for the run.
#[derive(Debug, Clone)]
pub struct Token {
    pub id: String,
    pub secret: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // `db` drops after the process is gone.
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls() {
        let a: std::net::SocketAddr = "127.0.0.1:6000".parse().unwrap();
        assert_eq!(
            super::via("postgres://u:p@127.0.0.1:5432/db", a),
            "postgres://u:p@127.0.0.1:6000/db"
        );
        assert_eq!(
            super::via("postgres://h/db", a),
            "postgres://127.0.0.1:6000/db"
        );
    }
}
