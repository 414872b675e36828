//! Typed configuration: an optional TOML file overlaid by `PRIMACY_*`
//! environment variables, validated once and passed down (no globals).
//!
//! Invariants: a `Config` that left [`Config::load`] is valid; every error
//! names the key (or environment variable) at fault; `Debug`, `Display` and
//! [`Config::redacted_toml`] never show a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::election::ElectionParams;

/// A configuration error, always naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// A secret string: `Debug` and serialization print `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This process's name in the cluster.
    pub node_id: String,
    /// The group of nodes this one belongs to; single-node deployments are `local`.
    pub region: String,
    pub listen: ListenConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub rtmp: RtmpConfig,
    pub srt: SrtConfig,
    pub election: ElectionConfig,
    pub switch: SwitchConfig,
    pub shutdown: ShutdownConfig,
    pub relay: RelayConfig,
    pub cluster: ClusterConfig,
    pub admission: AdmissionConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    pub http: SocketAddr,
    pub rtmp: SocketAddr,
    pub srt: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/database`.
    pub url: Secret,
    pub pool_size: u32,
    /// How long a request waits for a pooled connection before answering 503.
    pub connect_timeout_ms: u64,
    /// Run pending migrations at start-up (each applied one is logged).
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Absent: a single-node region without cluster coordination.
    /// `redis://` or `rediss://` (TLS); an ACL user and its password go in
    /// the URL (`rediss://user:password@host:6380`).
    pub url: Option<Secret>,
    /// Prefix of every key and channel.
    pub key_prefix: String,
    /// CA certificates (PEM) that verify a `rediss://` server, instead of
    /// the built-in web PKI roots. Only with a `rediss://` URL.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The `kid` of the key that signs new publish-token secrets. Defaults to
    /// the first key.
    pub active_kid: Option<String>,
    /// Keys that verify publish-token secrets (rotation: keep the old key here
    /// until its secrets are refreshed).
    pub signing_keys: Vec<SigningKeyConfig>,
    /// How long a cached token row is trusted without an invalidation.
    pub token_cache_ttl_ms: u64,
    /// How often this node compares the revisions of the token rows its
    /// live feeds (and its cache) were judged against with PostgreSQL, and
    /// re-checks the feeds of tokens that changed: a node that missed a
    /// change message converges within this period.
    pub token_recheck_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    HS256,
    EdDSA,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    pub kid: String,
    pub algorithm: KeyAlgorithm,
    /// HS256: the shared secret, at least 32 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// EdDSA: PKCS#8 PEM private key (needed only on nodes that issue tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_pem_file: Option<PathBuf>,
    /// EdDSA: PEM public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest page a list endpoint returns.
    pub max_per_page: u32,
    /// `GET /tokens?stream=` requests matching regex rules at the same time;
    /// more are answered 503 with `Retry-After` (they never hold a database
    /// connection while matching).
    pub stream_filter_concurrency: u32,
}

/// RTMP server limits and options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtmpConfig {
    /// A client that has not completed the handshake by then is dropped.
    pub handshake_timeout_ms: u64,
    /// A connection whose publish or play has not been accepted this long
    /// after the handshake is closed, whatever it sends meanwhile.
    pub request_timeout_ms: u64,
    /// A publisher that sends nothing for this long is closed (as is a
    /// connection back between two requests).
    pub idle_timeout_ms: u64,
    /// Concurrent RTMP connections, all addresses together.
    pub max_connections: usize,
    /// Concurrent RTMP connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Largest RTMP message accepted from a publisher; a bigger one closes
    /// the session.
    pub max_message_bytes: usize,
    /// Bytes a connection may send after the handshake until its publish or
    /// play is accepted (all messages together), and the largest message a
    /// player may send. More closes the connection.
    pub max_request_bytes: usize,
    /// Partial-message input buffered by all connections that are not
    /// publishing, together; the connection that would exceed it is closed.
    pub max_buffered_bytes: usize,
    /// Players must present a publish token allowed for the stream
    /// (`?token=` on the play URL).
    pub play_requires_token: bool,
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            max_connections: 10_000,
            max_connections_per_ip: 50,
            max_message_bytes: 8 * 1024 * 1024,
            max_request_bytes: 64 * 1024,
            max_buffered_bytes: 64 * 1024 * 1024,
            play_requires_token: false,
        }
    }
}

/// SRT listener options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SrtConfig {
    /// Receive and send latency offered to callers (the peers negotiate the larger).
    pub latency_ms: u64,
    /// Highest bitrate a player connection is sized for; the per-connection
    /// sender buffer is bitrate × (latency + 250 ms) × 2, at least 1 MiB.
    pub max_bitrate_kbps: u64,
    /// A publisher that sends nothing for this long is closed.
    pub idle_timeout_ms: u64,
    /// Concurrent SRT connections (handshakes waiting for admission
    /// included), all addresses together.
    pub max_connections: usize,
    /// Concurrent SRT connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Players must put a publish token allowed for the stream in `s=`.
    pub play_requires_token: bool,
    /// Kernel receive and send buffer of the listener's UDP socket (shared
    /// by every SRT connection of the node) and of the node's own SRT
    /// client sockets (pull inputs, cluster relays). Keyframes of many
    /// feeds arrive in bursts; a small buffer drops packets that the
    /// retransmissions may not repair in time. Capped by the kernel at
    /// `net.core.rmem_max` / `wmem_max` (logged at start when it is).
    pub udp_buffer_bytes: usize,
}

/// Default kernel buffer of an SRT UDP socket (`srt.udp_buffer_bytes`),
/// also what the outgoing SRT clients (pull inputs, push outputs) use.
pub const SRT_UDP_BUFFER_BYTES: usize = 4 << 20;

impl Default for SrtConfig {
    fn default() -> Self {
        Self {
            latency_ms: 120,
            max_bitrate_kbps: 20_000,
            idle_timeout_ms: 10_000,
            max_connections: 10_000,
            max_connections_per_ip: 50,
            play_requires_token: false,
            udp_buffer_bytes: SRT_UDP_BUFFER_BYTES,
        }
    }
}

impl SrtConfig {
    /// Bytes of sender buffer per connection.
    pub fn sender_buffer_bytes(&self) -> usize {
        let secs = (self.latency_ms + 250) as f64 / 1000.0;
        let bytes = self.max_bitrate_kbps as f64 * 1000.0 / 8.0 * secs * 2.0;
        (bytes as usize).max(1 << 20)
    }
}

/// Election parameters (DESIGN section 2). A health check set to 0 is off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElectionConfig {
    pub failback_hold_ms: u64,
    pub feed_timeout_ms: u64,
    pub min_bitrate_kbps: u64,
    pub bitrate_window_ms: u64,
    pub max_keyframe_interval_ms: u64,
    pub timestamp_stall_ms: u64,
    pub flap_count: u32,
    pub flap_window_ms: u64,
    pub flap_hold_ms: u64,
    /// Loss of signal (with `feed_timeout_ms` set): a feed silent for its
    /// learned loss window loses eligibility. The window is
    /// min(feed_timeout_ms, max(loss_floor_ms, mean + loss_k × deviation of
    /// its frame inter-arrival times, loss_gap_factor × its largest gap
    /// within loss_memory_ms)); only feed_timeout_ms applies during
    /// loss_warmup_ms after its first frame.
    pub loss_floor_ms: u64,
    pub loss_k: u32,
    pub loss_gap_factor: u32,
    pub loss_memory_ms: u64,
    pub loss_warmup_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverSwitch {
    /// Cut at once to the new primary's cached keyframe (gap ≈ one frame).
    CachedKeyframe,
    /// Wait for the new primary's next keyframe (freeze up to one GOP).
    NextKeyframe,
}

/// Switch parameters (DESIGN section 3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwitchConfig {
    pub failover_switch: FailoverSwitch,
    /// A planned switch (failback, reprioritize) may cut at the new
    /// primary's cached keyframe instead of waiting for its next one when
    /// that keyframe is at most this old; players then run that much later.
    /// 0 keeps every planned switch make-before-break at the next keyframe.
    pub planned_max_added_latency_ms: u64,
    pub switch_deadline_ms: u64,
    pub vacant_hold_ms: u64,
    pub gop_cache_max_bytes: usize,
}

/// Multi-node coordination (active only when `redis.url` is set).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Shared by the nodes of a cluster: signs the credentials one node uses
    /// to pull a feed from another (node-to-node relay). At least 32 bytes;
    /// required when `redis.url` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// Addresses other nodes and the Director hand out for this node
    /// (`host:port`); default: the bound listen address.
    pub public_http: Option<String>,
    pub public_rtmp: Option<String>,
    pub public_srt: Option<String>,
    /// The Director lists this region first when the caller names none.
    pub preferred_region: Option<String>,
    /// A node whose lease is not renewed for this long is gone.
    pub lease_ttl_ms: u64,
    /// How often the lease is renewed.
    pub lease_renew_ms: u64,
    /// How often the whole feed registry is re-read and this node's part
    /// rewritten (repairs missed events).
    pub resync_ms: u64,
    /// How long a cross-node command waits for the other nodes' answers.
    pub ack_timeout_ms: u64,
    /// Clock skew allowed between nodes: a signed cluster message older or
    /// newer than this (by the receiver's clock) is dropped as stale, and
    /// replays are remembered this long. Nodes need synchronized clocks.
    pub max_skew_ms: u64,
    /// Also relay the second-best remote feed of a watched source, so a
    /// cross-node failover is as fast as a local one.
    pub prefetch_runner_up: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            secret: None,
            public_http: None,
            public_rtmp: None,
            public_srt: None,
            preferred_region: None,
            lease_ttl_ms: 5_000,
            lease_renew_ms: 1_000,
            resync_ms: 2_000,
            ack_timeout_ms: 1_000,
            max_skew_ms: 5_000,
            prefetch_runner_up: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    pub max_wait_ms: u64,
}

/// Repeated failed admissions (RTMP and SRT publishes, and plays that need
/// a token): after `throttle_failures` refusals within `throttle_window_ms`
/// from one IP address (no valid token), or of one token (validly signed
/// but refused: deleted, refreshed away, disabled, expired), further
/// attempts from that address, or with that token, are refused at once,
/// without checking the token, for `throttle_block_ms`; each further
/// failure soon after doubles that, up to `throttle_max_block_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// 0 turns the throttle off.
    pub throttle_failures: u32,
    pub throttle_window_ms: u64,
    pub throttle_block_ms: u64,
    pub throttle_max_block_ms: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            throttle_failures: 10,
            throttle_window_ms: 60_000,
            throttle_block_ms: 1_000,
            throttle_max_block_ms: 60_000,
        }
    }
}

/// Log lines that peers can cause (refusals, malformed input, panics on
/// hostile input): at most `burst` per `interval_ms` per kind of line and
/// peer address, then one "suppressed N similar lines" line per interval.
/// Metrics count every event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub burst: u32,
    pub interval_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            burst: 5,
            interval_ms: 60_000,
        }
    }
}

/// Outbound connections of pull inputs and push outputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// TCP connect (RTMP) or SRT handshake, per URL tried.
    pub connect_timeout_ms: u64,
    /// RTMP handshake, `connect` and `play`/`publish` accepted, per URL.
    pub handshake_timeout_ms: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 3_000,
            handshake_timeout_ms: 5_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: default_node_id(),
            region: "local".into(),
            listen: ListenConfig::default(),
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            auth: AuthConfig::default(),
            api: ApiConfig::default(),
            rtmp: RtmpConfig::default(),
            srt: SrtConfig::default(),
            election: ElectionConfig::default(),
            switch: SwitchConfig::default(),
            shutdown: ShutdownConfig::default(),
            relay: RelayConfig::default(),
            cluster: ClusterConfig::default(),
            admission: AdmissionConfig::default(),
            log: LogConfig::default(),
        }
    }
}

fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.len() <= 64);
    host.unwrap_or_else(|| "primacy-1".into())
}

// Not derived: a `[redis]` table (or `PRIMACY_REDIS_URL`) that omits
// `key_prefix` must get "primacy", not an empty (invalid) prefix.
impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: "primacy".into(),
            ca_file: None,
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            http: "0.0.0.0:8080".parse().expect("static address"),
            rtmp: "0.0.0.0:1935".parse().expect("static address"),
            srt: "0.0.0.0:9000".parse().expect("static address"),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::new("postgres://postgres@127.0.0.1:5432/primacy"),
            pool_size: 8,
            connect_timeout_ms: 2_000,
            migrate_on_start: true,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            active_kid: None,
            signing_keys: Vec::new(),
            token_cache_ttl_ms: 60_000,
            token_recheck_ms: 2_000,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_per_page: 500,
            stream_filter_concurrency: 2,
        }
    }
}

impl ElectionConfig {
    /// The parameters of the election core (which knows nothing of the
    /// configuration file).
    pub fn params(&self) -> ElectionParams {
        ElectionParams {
            failback_hold: Duration::from_millis(self.failback_hold_ms),
            flap_count: self.flap_count,
            flap_window: Duration::from_millis(self.flap_window_ms),
            flap_hold: Duration::from_millis(self.flap_hold_ms),
        }
    }
}

impl Default for ElectionConfig {
    fn default() -> Self {
        Self {
            failback_hold_ms: 2_000,
            feed_timeout_ms: 1_500,
            min_bitrate_kbps: 0,
            bitrate_window_ms: 5_000,
            max_keyframe_interval_ms: 0,
            timestamp_stall_ms: 0,
            flap_count: 3,
            flap_window_ms: 60_000,
            flap_hold_ms: 30_000,
            loss_floor_ms: 150,
            loss_k: 4,
            loss_gap_factor: 3,
            loss_memory_ms: 30_000,
            loss_warmup_ms: 2_000,
        }
    }
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            failover_switch: FailoverSwitch::CachedKeyframe,
            planned_max_added_latency_ms: 0,
            switch_deadline_ms: 3_000,
            vacant_hold_ms: 30_000,
            gop_cache_max_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            max_wait_ms: 30_000,
        }
    }
}

/// Named environment variables and the key each one sets. Any other key can
/// be set as `PRIMACY_<SECTION>__<KEY>` (double underscore between levels),
/// e.g. `PRIMACY_ELECTION__FAILBACK_HOLD_MS=1000`.
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("PRIMACY_DATABASE_URL", "database.url"),
    ("PRIMACY_DATABASE_POOL_SIZE", "database.pool_size"),
    ("PRIMACY_REDIS_URL", "redis.url"),
    ("PRIMACY_REDIS_KEY_PREFIX", "redis.key_prefix"),
    ("PRIMACY_HTTP_LISTEN", "listen.http"),
    ("PRIMACY_RTMP_LISTEN", "listen.rtmp"),
    ("PRIMACY_SRT_LISTEN", "listen.srt"),
    ("PRIMACY_NODE_ID", "node_id"),
    ("PRIMACY_REGION", "region"),
    ("PRIMACY_CLUSTER_SECRET", "cluster.secret"),
];

/// `PRIMACY_HS256_SECRET` (with optional `PRIMACY_HS256_KID`, default `env`)
/// adds an HS256 signing key and makes it the active one.
pub const ENV_HS256_SECRET: &str = "PRIMACY_HS256_SECRET";
pub const ENV_HS256_KID: &str = "PRIMACY_HS256_KID";

/// Variables with the `PRIMACY_` prefix that belong to the CLI, not the config.
const ENV_NOT_CONFIG: &[&str] = &[
    "PRIMACY_CONFIG",
    "PRIMACY_API",
    "PRIMACY_API_KEY",
    "PRIMACY_LOG",
];

/// Prefixes of variables that belong to the scripts around the gateway
/// (`PRIMACY_TEST_*` for the test suite, `PRIMACY_LOADTEST_*` for the load
/// test, `PRIMACY_RUN_*` for `scripts/run.sh`): the gateway ignores them, so
/// a shell set up for the tests can also run it. Any other unknown
/// `PRIMACY_*` variable stays an error, since it is most likely a typo.
const ENV_NOT_CONFIG_PREFIXES: &[&str] = &["PRIMACY_TEST_", "PRIMACY_LOADTEST_", "PRIMACY_RUN_"];

fn is_not_config(var: &str) -> bool {
    ENV_NOT_CONFIG.contains(&var) || ENV_NOT_CONFIG_PREFIXES.iter().any(|p| var.starts_with(p))
}

impl Config {
    /// Load from an optional file and the process environment, then validate.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Load from an optional file and the given environment, then validate.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("PRIMACY_"))
            .collect();
        let mut hs256: Option<String> = None;
        let mut hs256_kid: Option<String> = None;
        for (var, value) in &env {
            if is_not_config(var) {
                continue;
            }
            if var == ENV_HS256_SECRET {
                hs256 = Some(value.clone());
                continue;
            }
            if var == ENV_HS256_KID {
                hs256_kid = Some(value.clone());
                continue;
            }
            let key = match ENV_ALIASES.iter().find(|(v, _)| v == var) {
                Some((_, key)) => (*key).to_owned(),
                None => {
                    let rest = &var["PRIMACY_".len()..];
                    if !rest.contains("__") && !defaults.contains_key(&rest.to_ascii_lowercase()) {
                        return Err(ConfigError::Env {
                            var: var.clone(),
                            message: "unknown setting (nested keys use a double underscore, e.g. \
                                      PRIMACY_ELECTION__FAILBACK_HOLD_MS)"
                                .into(),
                        });
                    }
                    rest.to_ascii_lowercase().replace("__", ".")
                }
            };
            set_path(&mut table, &defaults, &key, value).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
        }
        if let Some(secret) = hs256 {
            let kid = hs256_kid.unwrap_or_else(|| "env".into());
            let auth = table
                .entry("auth")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(auth) = auth.as_table_mut() else {
                return Err(invalid("auth", "must be a table"));
            };
            let mut key = toml::Table::new();
            key.insert("kid".into(), kid.clone().into());
            key.insert("algorithm".into(), "HS256".into());
            key.insert("secret".into(), secret.into());
            let keys = auth
                .entry("signing_keys")
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            match keys.as_array_mut() {
                Some(a) => {
                    a.retain(|k| k.get("kid").and_then(|v| v.as_str()) != Some(kid.as_str()))
                }
                None => return Err(invalid("auth.signing_keys", "must be an array of tables")),
            }
            if let Some(a) = keys.as_array_mut() {
                a.insert(0, toml::Value::Table(key));
            }
            auth.insert("active_kid".into(), kid.into());
        }
        // serde_path_to_error names the key at fault (`election.flap_count`).
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(
            |e: serde_path_to_error::Error<toml::de::Error>| {
                let key = e.path().to_string();
                let mut message = e.into_inner().message().to_owned();
                let generic = format!("PRIMACY_{}", key.replace('.', "__").to_ascii_uppercase());
                let from_env = ENV_ALIASES
                    .iter()
                    .filter(|(_, k)| *k == key)
                    .map(|(v, _)| (*v).to_owned())
                    .chain(std::iter::once(generic))
                    .find(|v| env.contains_key(v));
                if let Some(var) = from_env {
                    message.push_str(&format!(" (value from {var})"));
                }
                match file {
                    Some(path) => ConfigError::Parse {
                        path: path.to_owned(),
                        message: format!("config key `{key}`: {message}"),
                    },
                    None => invalid(&key, message),
                }
            },
        )?;
        config.validate()?;
        Ok(config)
    }

    /// Check every rule a typed value cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !name_ok(&self.node_id) {
            return Err(invalid("node_id", "1–64 characters of A-Z a-z 0-9 - _ ."));
        }
        if !name_ok(&self.region) {
            return Err(invalid("region", "1–64 characters of A-Z a-z 0-9 - _ ."));
        }
        let url = self.database.url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "database.url",
                "must start with postgres:// or postgresql://",
            ));
        }
        if !(1..=256).contains(&self.database.pool_size) {
            return Err(invalid("database.pool_size", "must be between 1 and 256"));
        }
        if self.database.connect_timeout_ms == 0 {
            return Err(invalid(
                "database.connect_timeout_ms",
                "must be greater than 0",
            ));
        }
        if let Some(url) = &self.redis.url {
            let u = url.expose();
            if !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("redis+unix://"))
            {
                return Err(invalid(
                    "redis.url",
                    "must start with redis://, rediss:// or redis+unix://",
                ));
            }
        }
        if let Some(path) = &self.redis.ca_file {
            let tls = self
                .redis
                .url
                .as_ref()
                .is_some_and(|u| u.expose().starts_with("rediss://"));
            if !tls {
                return Err(invalid("redis.ca_file", "only with a rediss:// redis.url"));
            }
            if !path.is_file() {
                return Err(invalid(
                    "redis.ca_file",
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(char::is_whitespace) {
            return Err(invalid(
                "redis.key_prefix",
                "must be non-empty and contain no spaces",
            ));
        }
        self.validate_cluster()?;
        self.validate_keys()?;
        if self.auth.token_cache_ttl_ms == 0 {
            return Err(invalid("auth.token_cache_ttl_ms", "must be greater than 0"));
        }
        if !(100..=600_000).contains(&self.auth.token_recheck_ms) {
            return Err(invalid(
                "auth.token_recheck_ms",
                "must be between 100 and 600000",
            ));
        }
        if !(1..=64).contains(&self.api.stream_filter_concurrency) {
            return Err(invalid(
                "api.stream_filter_concurrency",
                "must be between 1 and 64",
            ));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.api.max_body_bytes) {
            return Err(invalid(
                "api.max_body_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if !(1..=10_000).contains(&self.api.max_per_page) {
            return Err(invalid("api.max_per_page", "must be between 1 and 10000"));
        }
        if self.rtmp.handshake_timeout_ms == 0 {
            return Err(invalid(
                "rtmp.handshake_timeout_ms",
                "must be greater than 0",
            ));
        }
        if self.rtmp.idle_timeout_ms == 0 {
            return Err(invalid("rtmp.idle_timeout_ms", "must be greater than 0"));
        }
        if !(100..=600_000).contains(&self.rtmp.request_timeout_ms) {
            return Err(invalid(
                "rtmp.request_timeout_ms",
                "must be between 100 and 600000",
            ));
        }
        if self.rtmp.max_connections == 0 {
            return Err(invalid("rtmp.max_connections", "must be at least 1"));
        }
        if self.rtmp.max_connections_per_ip == 0 {
            return Err(invalid("rtmp.max_connections_per_ip", "must be at least 1"));
        }
        if self.rtmp.max_message_bytes < 64 * 1024 {
            return Err(invalid("rtmp.max_message_bytes", "must be at least 65536"));
        }
        if !(4096..=self.rtmp.max_message_bytes).contains(&self.rtmp.max_request_bytes) {
            return Err(invalid(
                "rtmp.max_request_bytes",
                "must be at least 4096 and at most rtmp.max_message_bytes",
            ));
        }
        if self.rtmp.max_buffered_bytes < self.rtmp.max_request_bytes {
            return Err(invalid(
                "rtmp.max_buffered_bytes",
                "must be at least rtmp.max_request_bytes",
            ));
        }
        if self.srt.max_connections == 0 {
            return Err(invalid("srt.max_connections", "must be at least 1"));
        }
        if self.srt.max_connections_per_ip == 0 {
            return Err(invalid("srt.max_connections_per_ip", "must be at least 1"));
        }
        self.validate_abuse_limits()?;
        if !(20..=8_000).contains(&self.srt.latency_ms) {
            return Err(invalid("srt.latency_ms", "must be between 20 and 8000"));
        }
        if !(100..=1_000_000).contains(&self.srt.max_bitrate_kbps) {
            return Err(invalid(
                "srt.max_bitrate_kbps",
                "must be between 100 and 1000000",
            ));
        }
        if self.srt.idle_timeout_ms == 0 {
            return Err(invalid("srt.idle_timeout_ms", "must be greater than 0"));
        }
        if !(64 * 1024..=64 << 20).contains(&self.srt.udp_buffer_bytes) {
            return Err(invalid(
                "srt.udp_buffer_bytes",
                "must be between 65536 and 67108864",
            ));
        }
        let e = &self.election;
        if e.flap_count == 0 {
            return Err(invalid("election.flap_count", "must be at least 1"));
        }
        if e.loss_floor_ms < 20 {
            return Err(invalid(
                "election.loss_floor_ms",
                "must be at least 20 (two engine ticks)",
            ));
        }
        if e.feed_timeout_ms > 0 && e.loss_floor_ms > e.feed_timeout_ms {
            return Err(invalid(
                "election.loss_floor_ms",
                "must not be above election.feed_timeout_ms (set it equal to use a fixed timeout)",
            ));
        }
        for (key, v) in [
            ("election.loss_k", e.loss_k),
            ("election.loss_gap_factor", e.loss_gap_factor),
        ] {
            if !(1..=64).contains(&v) {
                return Err(invalid(key, "must be between 1 and 64"));
            }
        }
        if !(1_000..=3_600_000).contains(&e.loss_memory_ms) {
            return Err(invalid(
                "election.loss_memory_ms",
                "must be between 1000 and 3600000",
            ));
        }
        if e.loss_warmup_ms > 600_000 {
            return Err(invalid("election.loss_warmup_ms", "must be at most 600000"));
        }
        if e.min_bitrate_kbps > 0 && e.bitrate_window_ms == 0 {
            return Err(invalid(
                "election.bitrate_window_ms",
                "must be greater than 0 when election.min_bitrate_kbps is set",
            ));
        }
        if self.switch.switch_deadline_ms == 0 {
            return Err(invalid(
                "switch.switch_deadline_ms",
                "must be greater than 0",
            ));
        }
        for (key, v) in [
            ("relay.connect_timeout_ms", self.relay.connect_timeout_ms),
            (
                "relay.handshake_timeout_ms",
                self.relay.handshake_timeout_ms,
            ),
        ] {
            if !(100..=60_000).contains(&v) {
                return Err(invalid(key, "must be between 100 and 60000"));
            }
        }
        if self.switch.gop_cache_max_bytes < 64 * 1024 {
            return Err(invalid(
                "switch.gop_cache_max_bytes",
                "must be at least 65536",
            ));
        }
        Ok(())
    }

    fn validate_abuse_limits(&self) -> Result<(), ConfigError> {
        let a = &self.admission;
        if a.throttle_failures > 0 {
            if !(1_000..=86_400_000).contains(&a.throttle_window_ms) {
                return Err(invalid(
                    "admission.throttle_window_ms",
                    "must be between 1000 and 86400000",
                ));
            }
            if !(100..=86_400_000).contains(&a.throttle_block_ms) {
                return Err(invalid(
                    "admission.throttle_block_ms",
                    "must be between 100 and 86400000",
                ));
            }
            if !(a.throttle_block_ms..=86_400_000).contains(&a.throttle_max_block_ms) {
                return Err(invalid(
                    "admission.throttle_max_block_ms",
                    "must be at least admission.throttle_block_ms and at most 86400000",
                ));
            }
        }
        if self.log.burst == 0 {
            return Err(invalid("log.burst", "must be at least 1"));
        }
        if !(1_000..=86_400_000).contains(&self.log.interval_ms) {
            return Err(invalid(
                "log.interval_ms",
                "must be between 1000 and 86400000",
            ));
        }
        Ok(())
    }

    fn validate_keys(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, k) in self.auth.signing_keys.iter().enumerate() {
            let key = |field: &str| format!("auth.signing_keys[{i}].{field}");
            if k.kid.is_empty() || k.kid.len() > 64 || k.kid.contains(char::is_whitespace) {
                return Err(invalid(&key("kid"), "1–64 characters without spaces"));
            }
            if !seen.insert(k.kid.as_str()) {
                return Err(invalid(&key("kid"), format!("duplicate kid {:?}", k.kid)));
            }
            match k.algorithm {
                KeyAlgorithm::HS256 => match &k.secret {
                    Some(s) if s.expose().len() >= 32 => {}
                    Some(_) => {
                        return Err(invalid(
                            &key("secret"),
                            "an HS256 secret must be at least 32 bytes",
                        ))
                    }
                    None => return Err(invalid(&key("secret"), "required for HS256")),
                },
                KeyAlgorithm::EdDSA => {
                    if k.public_key_pem_file.is_none() {
                        return Err(invalid(&key("public_key_pem_file"), "required for EdDSA"));
                    }
                }
            }
        }
        if let Some(active) = &self.auth.active_kid {
            if !self.auth.signing_keys.iter().any(|k| &k.kid == active) {
                return Err(invalid(
                    "auth.active_kid",
                    format!("no signing key has kid {active:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Rules that only `serve` needs (tools like `migrate` run without keys).
    pub fn validate_for_serve(&self) -> Result<(), ConfigError> {
        if self.redis.url.is_some() && self.cluster.secret.is_none() {
            return Err(invalid(
                "cluster.secret",
                "required when redis.url is set (at least 32 bytes, the same on every node)",
            ));
        }
        if self.auth.signing_keys.is_empty() {
            return Err(invalid(
                "auth.signing_keys",
                format!("at least one publish-token signing key is required (or set {ENV_HS256_SECRET})"),
            ));
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if c.secret.as_ref().is_some_and(|s| s.expose().len() < 32) {
            return Err(invalid("cluster.secret", "must be at least 32 bytes"));
        }
        for (key, v) in [
            ("cluster.public_http", &c.public_http),
            ("cluster.public_rtmp", &c.public_rtmp),
            ("cluster.public_srt", &c.public_srt),
        ] {
            if let Some(v) = v {
                let ok = v
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !ok || v.contains(char::is_whitespace) || v.contains('/') {
                    return Err(invalid(key, "must be host:port"));
                }
            }
        }
        if c.lease_ttl_ms < 1_000 {
            return Err(invalid("cluster.lease_ttl_ms", "must be at least 1000"));
        }
        if c.lease_renew_ms == 0 || c.lease_renew_ms * 2 > c.lease_ttl_ms {
            return Err(invalid(
                "cluster.lease_renew_ms",
                "must be greater than 0 and at most half of cluster.lease_ttl_ms",
            ));
        }
        if c.resync_ms < 100 {
            return Err(invalid("cluster.resync_ms", "must be at least 100"));
        }
        if !(10..=60_000).contains(&c.ack_timeout_ms) {
            return Err(invalid(
                "cluster.ack_timeout_ms",
                "must be between 10 and 60000",
            ));
        }
        if !(100..=60_000).contains(&c.max_skew_ms) {
            return Err(invalid(
                "cluster.max_skew_ms",
                "must be between 100 and 60000",
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML with every secret redacted.
    pub fn redacted_toml(&self) -> String {
        let mut value = toml::Table::try_from(self).expect("config serializes");
        if let Some(db) = value.get_mut("database").and_then(|v| v.as_table_mut()) {
            db.insert(
                "url".into(),
                crate::redact::url(self.database.url.expose()).into(),
            );
        }
        if let (Some(redis), Some(url)) = (
            value.get_mut("redis").and_then(|v| v.as_table_mut()),
            &self.redis.url,
        ) {
            redis.insert("url".into(), crate::redact::url(url.expose()).into());
        }
        toml::to_string_pretty(&value).expect("config serializes")
    }
}

/// Set `a.b.c` in `table` from an environment string, typed like the default
/// at the same path (strings where the default is absent).
fn set_path(
    table: &mut toml::Table,
    defaults: &toml::Table,
    key: &str,
    raw: &str,
) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut default: Option<&toml::Value> = None;
    let mut dtable = Some(defaults);
    for p in &parts {
        default = dtable.and_then(|t| t.get(*p));
        dtable = default.and_then(|v| v.as_table());
    }
    let value = match default {
        Some(toml::Value::Integer(_)) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("expected an integer for `{key}`, got {raw:?}"))?,
        Some(toml::Value::Boolean(_)) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(format!("expected true or false for `{key}`, got {raw:?}")),
        },
        Some(toml::Value::Table(_)) | Some(toml::Value::Array(_)) => {
            return Err(format!("`{key}` is a section; set its keys instead"))
        }
        _ => toml::Value::String(raw.to_owned()),
    };
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry((*p).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a section"))?;
    }
    cur.insert(parts[parts.len() - 1].to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.listen.http.port(), 8080);
        assert_eq!(c.listen.rtmp.port(), 1935);
        assert_eq!(c.listen.srt.port(), 9000);
        assert_eq!(c.election.failback_hold_ms, 2_000);
        assert_eq!(c.election.feed_timeout_ms, 1_500);
        assert_eq!(c.election.flap_count, 3);
        assert_eq!(c.switch.vacant_hold_ms, 30_000);
        assert_eq!(c.region, "local");
        assert!(c.validate_for_serve().is_err());
    }

    #[test]
    fn env_overrides_typed() {
        let c = Config::load_from(
            None,
            env(&[
                ("PRIMACY_HTTP_LISTEN", "127.0.0.1:0"),
                ("PRIMACY_REGION", "eu-west"),
                ("PRIMACY_NODE_ID", "123"),
                ("PRIMACY_ELECTION__FAILBACK_HOLD_MS", "500"),
                ("PRIMACY_DATABASE__MIGRATE_ON_START", "false"),
                ("PRIMACY_HS256_SECRET", "0123456789abcdef0123456789abcdef"),
                ("PRIMACY_API_KEY", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.http.port(), 0);
        assert_eq!(c.region, "eu-west");
        assert_eq!(c.node_id, "123");
        assert_eq!(c.election.failback_hold_ms, 500);
        assert!(!c.database.migrate_on_start);
        assert_eq!(c.auth.active_kid.as_deref(), Some("env"));
        assert!(c.validate_for_serve().is_ok());
    }

    #[test]
    fn partial_sections_keep_their_defaults() {
        let c = Config::load_from(
            None,
            env(&[("PRIMACY_REDIS_URL", "redis://127.0.0.1:6379")]),
        )
        .unwrap();
        assert_eq!(c.redis.key_prefix, "primacy");
        assert!(c.redis.url.is_some());
    }

    #[test]
    fn script_variables_are_not_settings() {
        let c = Config::load_from(
            None,
            env(&[
                (
                    "PRIMACY_TEST_DATABASE_URL",
                    "postgres://x@127.0.0.1/postgres",
                ),
                ("PRIMACY_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
                ("PRIMACY_LOADTEST_FIXTURES", "/nowhere"),
                ("PRIMACY_RUN_STATE_DIR", "/nowhere"),
            ]),
        )
        .expect("script variables are ignored");
        assert_eq!(c.database.url, Config::default().database.url);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::load_from(None, env(&[("PRIMACY_ELECTION__FLAP_COUNT", "x")])).unwrap_err();
        assert!(
            e.to_string().contains("PRIMACY_ELECTION__FLAP_COUNT"),
            "{e}"
        );
        let e = Config::load_from(None, env(&[("PRIMACY_HTTP_LISTEN", "nope")])).unwrap_err();
        assert!(
            e.to_string().contains("listen.http") || e.to_string().contains("http"),
            "{e}"
        );
        let e = Config::load_from(None, env(&[("PRIMACY_DATABASE_URL", "mysql://x")])).unwrap_err();
        assert!(e.to_string().contains("database.url"), "{e}");
        let e = Config::load_from(None, env(&[("PRIMACY_HS256_SECRET", "short")])).unwrap_err();
        assert!(e.to_string().contains("auth.signing_keys[0].secret"), "{e}");
        let e = Config::load_from(None, env(&[("PRIMACY_BOGUS", "1")])).unwrap_err();
        assert!(e.to_string().contains("PRIMACY_BOGUS"), "{e}");
        // A typo next to a script's variable is still caught.
        let e = Config::load_from(None, env(&[("PRIMACY_TESTS_X", "1")])).unwrap_err();
        assert!(e.to_string().contains("PRIMACY_TESTS_X"), "{e}");
        let e =
            Config::load_from(None, env(&[("PRIMACY_SRT__UDP_BUFFER_BYTES", "4096")])).unwrap_err();
        assert!(e.to_string().contains("srt.udp_buffer_bytes"), "{e}");
    }

    #[test]
    fn loss_window_keys_are_validated() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.election.loss_floor_ms, 150);
        assert_eq!(c.election.loss_k, 4);
        assert_eq!(c.election.loss_gap_factor, 3);
        assert_eq!(c.election.loss_memory_ms, 30_000);
        assert_eq!(c.election.loss_warmup_ms, 2_000);
        for (var, bad, key) in [
            (
                "PRIMACY_ELECTION__LOSS_FLOOR_MS",
                "10",
                "election.loss_floor_ms",
            ),
            (
                "PRIMACY_ELECTION__LOSS_FLOOR_MS",
                "2000",
                "election.loss_floor_ms",
            ),
            ("PRIMACY_ELECTION__LOSS_K", "0", "election.loss_k"),
            (
                "PRIMACY_ELECTION__LOSS_GAP_FACTOR",
                "65",
                "election.loss_gap_factor",
            ),
            (
                "PRIMACY_ELECTION__LOSS_MEMORY_MS",
                "10",
                "election.loss_memory_ms",
            ),
            (
                "PRIMACY_ELECTION__LOSS_WARMUP_MS",
                "600001",
                "election.loss_warmup_ms",
            ),
        ] {
            let e = Config::load_from(None, env(&[(var, bad)])).unwrap_err();
            assert!(e.to_string().contains(key), "{var}={bad}: {e}");
        }
        // A fixed timeout: the floor equal to feed_timeout_ms.
        let c =
            Config::load_from(None, env(&[("PRIMACY_ELECTION__LOSS_FLOOR_MS", "1500")])).unwrap();
        assert_eq!(c.election.loss_floor_ms, 1_500);
        assert!(c.redacted_toml().contains("loss_gap_factor = 3"));
    }

    #[test]
    fn file_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("primacy-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "[election]\nfailback_hold_ms = \"soon\"\n").unwrap();
        let e = Config::load_from(Some(&path), env(&[])).unwrap_err();
        assert!(e.to_string().contains("failback_hold_ms"), "{e}");
        std::fs::write(&path, "[election]\nfailbak_hold_ms = 1\n").unwrap();
        let e = Config::load_from(Some(&path), env(&[])).unwrap_err();
        assert!(e.to_string().contains("failbak_hold_ms"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cluster_skew_and_redis_ca_file_are_validated() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.cluster.max_skew_ms, 5_000);
        assert!(c.redis.ca_file.is_none());
        for bad in ["99", "60001"] {
            let e =
                Config::load_from(None, env(&[("PRIMACY_CLUSTER__MAX_SKEW_MS", bad)])).unwrap_err();
            assert!(e.to_string().contains("cluster.max_skew_ms"), "{e}");
        }
        let manifest = env!("CARGO_MANIFEST_DIR");
        let ca = format!("{manifest}/Cargo.toml");
        // A CA file needs a rediss:// URL, and must exist.
        let e = Config::load_from(
            None,
            env(&[
                ("PRIMACY_REDIS_URL", "redis://127.0.0.1:6379"),
                ("PRIMACY_REDIS__CA_FILE", &ca),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("redis.ca_file"), "{e}");
        let e = Config::load_from(
            None,
            env(&[
                ("PRIMACY_REDIS_URL", "rediss://127.0.0.1:6380"),
                (
                    "PRIMACY_REDIS__CA_FILE",
                    &format!("{manifest}/no-such-file.pem"),
                ),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("redis.ca_file"), "{e}");
        let c = Config::load_from(
            None,
            env(&[
                (
                    "PRIMACY_REDIS_URL",
                    "rediss://primacy:hunter2hunter2@127.0.0.1:6380",
                ),
                ("PRIMACY_REDIS__CA_FILE", &ca),
            ]),
        )
        .unwrap();
        assert!(c.redis.ca_file.is_some());
        // The ACL user's password never shows.
        assert!(!c.redacted_toml().contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/primacy.example.toml");
        let c = Config::load_from(Some(&path), env(&[])).unwrap();
        assert!(c.validate_for_serve().is_ok());
    }

    /// Every key of the configuration is in the example file, set to its
    /// default (or commented out where it has none), except the keys the
    /// example fills in on purpose.
    #[test]
    fn example_config_documents_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/primacy.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let example: toml::Table = text.parse().unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        // Examples of values that have no useful default.
        let illustrative = [
            "node_id",
            "database.url",
            "auth.active_kid",
            "auth.signing_keys",
        ];
        let mut problems = Vec::new();
        fn walk(
            prefix: &str,
            defaults: &toml::Table,
            example: Option<&toml::Table>,
            text: &str,
            illustrative: &[&str],
            problems: &mut Vec<String>,
        ) {
            for (k, v) in defaults {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if illustrative.contains(&key.as_str()) {
                    continue;
                }
                let found = example.and_then(|t| t.get(k));
                match (v, found) {
                    (toml::Value::Table(d), f) => walk(
                        &key,
                        d,
                        f.and_then(|f| f.as_table()),
                        text,
                        illustrative,
                        problems,
                    ),
                    (_, Some(f)) if f != v => {
                        problems.push(format!("{key} = {f} in the example, default {v}"))
                    }
                    (_, Some(_)) => {}
                    (_, None) if text.contains(&format!("# {k} = ")) => {}
                    (_, None) => problems.push(format!("{key} is not in the example")),
                }
            }
        }
        walk(
            "",
            &defaults,
            Some(&example),
            &text,
            &illustrative,
            &mut problems,
        );
        assert!(
            problems.is_empty(),
            "docs/primacy.example.toml:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn listener_limits_are_validated() {
        let bad = [
            (
                "PRIMACY_RTMP__REQUEST_TIMEOUT_MS",
                "0",
                "rtmp.request_timeout_ms",
            ),
            (
                "PRIMACY_RTMP__MAX_REQUEST_BYTES",
                "100",
                "rtmp.max_request_bytes",
            ),
            (
                "PRIMACY_RTMP__MAX_BUFFERED_BYTES",
                "4096",
                "rtmp.max_buffered_bytes",
            ),
            (
                "PRIMACY_RTMP__MAX_CONNECTIONS_PER_IP",
                "0",
                "rtmp.max_connections_per_ip",
            ),
            ("PRIMACY_SRT__MAX_CONNECTIONS", "0", "srt.max_connections"),
            (
                "PRIMACY_SRT__MAX_CONNECTIONS_PER_IP",
                "0",
                "srt.max_connections_per_ip",
            ),
            (
                "PRIMACY_ADMISSION__THROTTLE_WINDOW_MS",
                "10",
                "admission.throttle_window_ms",
            ),
            (
                "PRIMACY_ADMISSION__THROTTLE_MAX_BLOCK_MS",
                "10",
                "admission.throttle_max_block_ms",
            ),
            ("PRIMACY_LOG__BURST", "0", "log.burst"),
            ("PRIMACY_LOG__INTERVAL_MS", "5", "log.interval_ms"),
        ];
        for (var, value, key) in bad {
            let e = Config::load_from(None, env(&[(var, value)])).unwrap_err();
            assert!(e.to_string().contains(key), "{var}={value}: {e}");
        }
        let c = Config::load_from(
            None,
            env(&[
                ("PRIMACY_ADMISSION__THROTTLE_FAILURES", "0"),
                ("PRIMACY_ADMISSION__THROTTLE_WINDOW_MS", "10"),
                ("PRIMACY_LOG__BURST", "20"),
            ]),
        )
        .expect("with the throttle off its other keys are not checked");
        assert_eq!(c.log.burst, 20);
        let d = Config::default();
        assert_eq!(
            (d.rtmp.max_connections_per_ip, d.srt.max_connections_per_ip),
            (50, 50)
        );
        assert_eq!(d.rtmp.request_timeout_ms, 10_000);
        assert_eq!(d.rtmp.max_request_bytes, 65_536);
    }

    #[test]
    fn redaction() {
        assert_eq!(
            crate::redact::url("postgres://u:pw@h:5432/db?sslmode=require&password=x"),
            "postgres://u:***@h:5432/db?sslmode=require&password=***"
        );
        assert_eq!(
            crate::redact::url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        let c = Config::load_from(
            None,
            env(&[
                ("PRIMACY_DATABASE_URL", "postgres://u:hunter2hunter2@h/db"),
                (
                    "PRIMACY_HS256_SECRET",
                    "supersecret-supersecret-supersecret",
                ),
            ]),
        )
        .unwrap();
        let printed = c.redacted_toml();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("supersecret"), "{printed}");
        assert!(!format!("{c:?}").contains("supersecret"));
    }

    #[test]
    fn election_params_from_config() {
        let c = ElectionConfig {
            failback_hold_ms: 500,
            feed_timeout_ms: 1_500,
            min_bitrate_kbps: 0,
            bitrate_window_ms: 0,
            max_keyframe_interval_ms: 0,
            timestamp_stall_ms: 0,
            flap_count: 4,
            flap_window_ms: 10_000,
            flap_hold_ms: 7_000,
            ..Default::default()
        };
        let p = c.params();
        assert_eq!(p.failback_hold, Duration::from_millis(500));
        assert_eq!(p.flap_count, 4);
        assert_eq!(p.flap_window, Duration::from_secs(10));
        assert_eq!(p.flap_hold, Duration::from_secs(7));
    }
}
