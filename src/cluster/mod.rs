//! The cluster shell (DESIGN section 6): Redis coordinates the nodes of a
//! cluster; PostgreSQL stays the record. Active only when `redis.url` is set.
//!
//! Owns this node's lease, its part of the feed registry, the remote view
//! (other nodes' leases and feeds) and the control channel. Feeds of other
//! nodes enter this node's engine as remote feeds, so every node computes
//! the same global election (the engine ranks a remote feed by the
//! eligible-since instant its node reported).
//!
//! Invariants:
//! - Nothing here is needed to act on local feeds: every command is applied
//!   locally by the caller first, Redis only carries it to the others.
//! - While Redis is unreachable the remote view is frozen (nodes are not
//!   expired: their silence is ours), streams stay on air, and on Redis's
//!   return the node re-registers, rewrites its feeds and resyncs at once.
//! - A node whose heartbeat is older than `cluster.lease_ttl_ms` (while
//!   Redis is reachable) is gone: its feeds leave the election here.
//! - Pub/sub loses what is published while Redis is down; the periodic
//!   full resync (`cluster.resync_ms`) repairs any missed event.
//! - Redis is not trusted: every lease, feed record, event, command and ack
//!   is a signed envelope ([`envelope`]) checked before use (MAC, signer,
//!   age, replay); what fails is dropped and counted ([`rejects`]). A node
//!   is a member while its signed lease or heartbeat is fresh; `P:nodes` is
//!   only a hint. Commands applied here are audited here.

pub mod commands;
pub mod control;

pub mod envelope;
mod pubsub;
pub mod registry;
mod rejects;
mod relay;
mod resync;
mod run;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::cluster::ClusterSecret;
use crate::auth::publish::Admission;
use crate::config::Config;
use crate::engine::EngineHandle;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::store::Db;
pub use control::{Ack, Command, Gathered, NodeRef, Outcome};
use registry::{FeedRecord, Keys, Lease};

/// Every Redis command the cluster shell sends (lower case, as a Redis ACL
/// names them): what an ACL user for a node must be allowed, with the
/// key pattern `~P:*` and the channel pattern `&P:*` (`P` =
/// `redis.key_prefix`). `hello` and `auth` log in (RESP3); add `select`
/// when `redis.url` names a database other than 0. The client library also
/// sends `client|setinfo` (Redis 7.2 and later) and ignores its refusal, so
/// it may be left out.
pub const REDIS_COMMANDS: &[&str] = &[
    "hello",
    "auth",
    "ping",
    "set",
    "pexpire",
    "sadd",
    "srem",
    "smembers",
    "mget",
    "del",
    "hset",
    "hdel",
    "hgetall",
    "publish",
    "subscribe",
    "multi",
    "exec",
];

/// Timing and identity of the cluster shell, from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node: String,
    pub region: String,
    pub http: String,
    pub rtmp: String,
    pub srt: String,
    pub lease_ttl: Duration,
    pub lease_renew: Duration,
    pub resync: Duration,
    pub ack_timeout: Duration,
    /// Clock skew allowed between nodes (`cluster.max_skew_ms`).
    pub max_skew: Duration,
    pub prefetch_runner_up: bool,
    pub preferred_region: Option<String>,
    /// `srt.udp_buffer_bytes`, for the relays' SRT client sockets.
    pub srt_udp_buffer_bytes: usize,
}

impl Settings {
    /// `bound`: the (http, rtmp, srt) addresses actually bound.
    pub fn from_config(c: &Config, bound: (SocketAddr, SocketAddr, SocketAddr)) -> Self {
        let k = &c.cluster;
        Self {
            node: c.node_id.clone(),
            region: c.region.clone(),
            http: k.public_http.clone().unwrap_or_else(|| bound.0.to_string()),
            rtmp: k.public_rtmp.clone().unwrap_or_else(|| bound.1.to_string()),
            srt: k.public_srt.clone().unwrap_or_else(|| bound.2.to_string()),
            lease_ttl: Duration::from_millis(k.lease_ttl_ms),
            lease_renew: Duration::from_millis(k.lease_renew_ms),
            resync: Duration::from_millis(k.resync_ms),
            ack_timeout: Duration::from_millis(k.ack_timeout_ms),
            max_skew: Duration::from_millis(k.max_skew_ms),
            prefetch_runner_up: k.prefetch_runner_up,
            preferred_region: k.preferred_region.clone(),
            srt_udp_buffer_bytes: c.srt.udp_buffer_bytes,
        }
    }
}

/// A node as `GET /api/v1/cluster/nodes` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    pub node: String,
    pub region: String,
    /// `host:port` of its HTTP API, RTMP and SRT listeners.
    pub http: String,
    pub rtmp: String,
    pub srt: String,
    pub draining: bool,
    /// This node (the one answering).
    pub local: bool,
    pub started_at: DateTime<Utc>,
    /// Time since its lease was last renewed, as seen by the answering node.
    pub lease_age_ms: u64,
    pub feeds: usize,
    pub players: i64,
}

/// Redis state for `/api/health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RedisState {
    /// `ok` or `unavailable`.
    pub status: String,
    /// Since when it has been in that state.
    pub since: DateTime<Utc>,
    /// Live nodes in the cluster, this one included.
    pub nodes: usize,
}

#[derive(Debug, Clone)]
struct Peer {
    lease: Lease,
    /// The signed timestamp of that lease (or of the heartbeat carrying it).
    ts: i64,
    seen: Instant,
}

/// What this node knows of the others; written only by the shell's tasks.
#[derive(Debug, Clone)]
struct View {
    redis_up: bool,
    redis_since: DateTime<Utc>,
    peers: BTreeMap<String, Peer>,
    /// Nodes that released their lease, with the signed time they did: a
    /// lease or heartbeat of theirs signed before that is a replay (kept
    /// until such a lease would be stale anyway).
    left: BTreeMap<String, i64>,
}

/// A handle on the running cluster shell. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    /// The runtime the shell started on: every Redis call runs there, also
    /// when the API (on actix's own runtimes) asks for one.
    runtime: tokio::runtime::Handle,
    settings: Settings,
    keys: Keys,
    started_at: DateTime<Utc>,
    client: redis::Client,
    con: ConnectionManager,
    engine: EngineHandle,
    admission: Arc<Admission>,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    db: Db,
    secret: ClusterSecret,
    /// Seals and opens every envelope this node writes or reads.
    signer: envelope::Signer,
    rejects: rejects::Rejections,
    view: watch::Sender<View>,
    /// Remote feeds by id (the registry as last read or heard). Shared,
    /// not owned by one task, for now: the pub/sub task applies feed
    /// events as they arrive and the main loop replaces the whole map on a
    /// resync; routing every event through the main loop would put a
    /// resync's Redis round trips (a scan of every node's feeds) in front
    /// of each event. The lock is held for map operations only, never
    /// across an await, and the engine (one task) owns what players see.
    remote: Mutex<HashMap<Uuid, FeedRecord>>,
    /// Broadcast commands waiting for acks: inserted and removed by the
    /// command's sender, read by the pub/sub task (same rule as above).
    pending: Mutex<HashMap<Uuid, mpsc::Sender<Ack>>>,
    draining: AtomicBool,
    /// Wakes the main loop: renew the lease now (draining changed).
    renew_now: Notify,
    /// Wakes the main loop: resync now (a new node appeared).
    resync_now: Notify,
    /// Stops the shell's tasks: after the lease is released, or with the
    /// node's cancellation when it is dropped without a graceful stop.
    stop: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis.url: {0}")]
    Url(#[source] redis::RedisError),
    #[error("cluster.secret is required when redis.url is set")]
    NoSecret,
    #[error("redis.ca_file: cannot read {path}")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("redis.ca_file: {path} holds no PEM certificate")]
    CaEmpty { path: std::path::PathBuf },
    #[error("redis.ca_file: {path} does not parse as PEM certificates")]
    CaPem {
        path: std::path::PathBuf,
        #[source]
        source: redis::RedisError,
    },
}

/// The Redis client for `url` (`redis://` or `rediss://`, user and password
/// in the URL for an ACL user); `ca_pem`: the CA certificates (PEM) that
/// verify a `rediss://` server instead of the built-in web PKI roots.
fn redis_client(url: &str, ca_pem: Option<Vec<u8>>) -> Result<redis::Client, redis::RedisError> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info()?;
    // RESP3 so one ConnectionManager can subscribe and resubscribe itself.
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let info = info.set_redis_settings(settings);
    match ca_pem {
        None => redis::Client::open(info),
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            },
        ),
    }
}

fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(1_000)))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(250))
}

/// The parts of the node the shell acts on.
pub struct Parts {
    pub engine: EngineHandle,
    pub admission: Arc<Admission>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    /// Where commands applied here are audited.
    pub db: Db,
}

impl Cluster {
    /// Join the cluster: start the shell's tasks (they stop at
    /// [`Cluster::leave`]). Does not wait for Redis: a node starts and
    /// serves without it.
    pub fn start(
        config: &Config,
        settings: Settings,
        parts: Parts,
    ) -> Result<Option<Self>, ClusterError> {
        let Some(url) = &config.redis.url else {
            return Ok(None);
        };
        let raw = config
            .cluster
            .secret
            .as_ref()
            .ok_or(ClusterError::NoSecret)?
            .expose()
            .as_bytes();
        let secret = ClusterSecret::new(raw).with_max_skew_ms(config.cluster.max_skew_ms);
        let signer = envelope::Signer::new(raw);
        let client = match &config.redis.ca_file {
            None => redis_client(url.expose(), None).map_err(ClusterError::Url)?,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| ClusterError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                // The client library takes a file without certificates as
                // an empty trust store; say so now rather than at connect.
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(ClusterError::CaEmpty { path: path.clone() });
                }
                redis_client(url.expose(), Some(pem)).map_err(|source| ClusterError::CaPem {
                    path: path.clone(),
                    source,
                })?
            }
        };
        let con = ConnectionManager::new_lazy_with_config(client.clone(), manager_config())
            .map_err(ClusterError::Url)?;
        let (view, _) = watch::channel(View {
            redis_up: false,
            redis_since: Utc::now(),
            peers: BTreeMap::new(),
            left: BTreeMap::new(),
        });
        let inner = Arc::new(Inner {
            runtime: tokio::runtime::Handle::current(),
            keys: Keys::new(&config.redis.key_prefix),
            settings,
            started_at: Utc::now(),
            client,
            con,
            engine: parts.engine,
            admission: parts.admission,
            readiness: parts.readiness,
            rejects: rejects::Rejections::new(parts.metrics.cluster_rejected.clone()),
            metrics: parts.metrics,
            db: parts.db,
            secret,
            signer,
            view,
            remote: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            renew_now: Notify::new(),
            resync_now: Notify::new(),
            stop: CancellationToken::new(),
        });
        tracing::info!(node = %inner.settings.node, region = %inner.settings.region,
            prefix = %config.redis.key_prefix, "joining the cluster");
        tokio::spawn(run::main_loop(inner.clone(), inner.stop.clone()));
        tokio::spawn(pubsub::pubsub_loop(inner.clone(), inner.stop.clone()));
        tokio::spawn(relay::relay_loop(inner.clone(), inner.stop.clone()));
        Ok(Some(Self { inner }))
    }

    pub fn node(&self) -> &str {
        &self.inner.settings.node
    }

    pub fn region(&self) -> &str {
        &self.inner.settings.region
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn secret(&self) -> &ClusterSecret {
        &self.inner.secret
    }

    pub fn redis_state(&self) -> RedisState {
        let v = self.inner.view.borrow();
        RedisState {
            status: if v.redis_up { "ok" } else { "unavailable" }.into(),
            since: v.redis_since,
            nodes: v.peers.len() + 1,
        }
    }

    /// This node and every live node it knows, by region then node.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let s = &self.inner.settings;
        let mut out = vec![NodeInfo {
            node: s.node.clone(),
            region: s.region.clone(),
            http: s.http.clone(),
            rtmp: s.rtmp.clone(),
            srt: s.srt.clone(),
            draining: self.is_draining(),
            local: true,
            started_at: self.inner.started_at,
            lease_age_ms: 0,
            feeds: self.inner.local_feed_count(),
            players: self.inner.metrics.players.get(),
        }];
        let now = Instant::now();
        let v = self.inner.view.borrow();
        out.extend(v.peers.values().map(|p| NodeInfo {
            node: p.lease.node.clone(),
            region: p.lease.region.clone(),
            http: p.lease.http.clone(),
            rtmp: p.lease.rtmp.clone(),
            srt: p.lease.srt.clone(),
            draining: p.lease.draining,
            local: false,
            started_at: p.lease.started_at,
            lease_age_ms: now.duration_since(p.seen).as_millis() as u64,
            feeds: p.lease.feeds,
            players: p.lease.players,
        }));
        out.sort_by(|a, b| (&a.region, &a.node).cmp(&(&b.region, &b.node)));
        out
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Mark the lease draining (the Director stops offering this node).
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
        self.inner.renew_now.notify_one();
    }

    /// Release the lease and this node's feed records so the others drop
    /// its feeds at once (the last step of a graceful stop).
    pub async fn leave(&self) {
        let inner = self.inner.clone();
        let _ = self
            .inner
            .runtime
            .spawn(async move {
                inner.stop.cancel();
                run::leave(&inner).await
            })
            .await;
    }

    /// Stop the shell's tasks without releasing the lease (it expires by
    /// itself, as after a crash). For tests of node failure.
    pub fn abandon(&self) {
        self.inner.stop.cancel();
    }

    /// Send a command to every other node and gather their answers within
    /// `cluster.ack_timeout_ms`. The caller has already applied it locally.
    pub async fn broadcast(&self, command: Command) -> Gathered {
        self.broadcast_as(None, command).await
    }

    /// [`Cluster::broadcast`] on behalf of an operator (`actor`, as in the
    /// audit log): the nodes that apply it name them in their audit rows.
    pub async fn broadcast_as(&self, actor: Option<String>, command: Command) -> Gathered {
        let inner = self.inner.clone();
        self.inner
            .runtime
            .spawn(async move { run::broadcast(&inner, actor, command).await })
            .await
            .unwrap_or_default()
    }

    /// Send a command without waiting for answers (logged when some node
    /// does not answer in time).
    pub fn send(&self, command: Command) {
        self.send_as(None, command);
    }

    /// [`Cluster::send`] on behalf of an operator.
    pub fn send_as(&self, actor: Option<String>, command: Command) {
        let inner = self.inner.clone();
        self.inner.runtime.spawn(async move {
            run::broadcast(&inner, actor, command).await;
        });
    }
}

/// This node's place in the cluster, known once its listeners are bound.
pub struct Membership {
    pub settings: Settings,
    /// `None`: no `redis.url`, a single-node region.
    pub cluster: Option<Cluster>,
    pub started_at: DateTime<Utc>,
}

/// Where the API finds the membership (set once, at "join cluster").
pub type MembershipSlot = Arc<std::sync::OnceLock<Membership>>;

impl Membership {
    /// Every live node, this one included (just this one without Redis).
    pub fn nodes(&self, metrics: &Metrics, draining: bool) -> Vec<NodeInfo> {
        if let Some(c) = &self.cluster {
            return c.nodes();
        }
        let s = &self.settings;
        vec![NodeInfo {
            node: s.node.clone(),
            region: s.region.clone(),
            http: s.http.clone(),
            rtmp: s.rtmp.clone(),
            srt: s.srt.clone(),
            draining,
            local: true,
            started_at: self.started_at,
            lease_age_ms: 0,
            feeds: metrics.feeds.get().max(0) as usize,
            players: metrics.players.get(),
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::REDIS_COMMANDS;

    /// The documented ACL grants exactly the commands the shell sends.
    #[test]
    fn the_documented_acl_lists_every_redis_command() {
        let doc = include_str!("../../docs/security.md");
        let line = doc
            .lines()
            .find(|l| l.starts_with("ACL SETUSER primacy "))
            .expect("an ACL SETUSER line in docs/security.md");
        let granted: Vec<&str> = line
            .split_whitespace()
            .filter_map(|w| w.strip_prefix('+'))
            .collect();
        assert_eq!(granted, REDIS_COMMANDS, "{line}");
        assert!(line.contains(" ~primacy:* &primacy:* "), "{line}");
    }
}
