//! The shell's main loop (lease, registry writes, peer expiry; the resync
//! is in [`super::resync`]) and the sending side of commands. Everything
//! written to Redis is sealed in a signed envelope here. The pub/sub side
//! is in [`super::pubsub`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use redis::aio::ConnectionManager;
use redis::RedisResult;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::control::{Command, Gathered, NodeRef, Request};
use super::envelope::{Kind, Reject};
use super::registry::{wall_ms, Event, FeedRecord, Lease};
use super::resync::full_resync;
use super::Inner;
use crate::domain::FeedId;

/// What the main loop remembers between rounds.
pub(super) struct Local {
    /// This node's records as last written, with the engine instant their
    /// `eligible_since_ms` was computed from (so it is not recomputed, and
    /// republished, for clock jitter alone).
    pub(super) published: HashMap<Uuid, (Option<Instant>, FeedRecord)>,
    /// Some write was lost (Redis down): rewrite the whole hash.
    pub(super) dirty: bool,
    pub(super) resyncs: u64,
    /// The signed timestamp of the last full rewrite of this node's
    /// records (announced in the lease as `records_ms`).
    pub(super) records_ms: i64,
}

/// How often a full rewrite of this node's records happens even when no
/// write was lost, in resync rounds.
pub(super) const REWRITE_EVERY: u64 = 5;
/// While Redis is down, how often the lease write is retried.
const RETRY: Duration = Duration::from_millis(200);
/// How often peers' heartbeats are checked against the lease TTL.
const EXPIRY_CHECK: Duration = Duration::from_millis(100);
pub(super) fn interval(every: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(every);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

impl Inner {
    pub(super) fn con(&self) -> ConnectionManager {
        self.con.clone()
    }

    pub(super) fn redis_up(&self) -> bool {
        self.view.borrow().redis_up
    }

    pub(super) fn skew_ms(&self) -> i64 {
        self.settings.max_skew.as_millis() as i64
    }

    /// `body` signed by this node at `ts` for `place`.
    pub(super) fn seal<T: Serialize>(&self, kind: Kind, place: &str, ts: i64, body: &T) -> String {
        self.signer
            .seal(kind, place, &self.settings.node, ts, rand::random(), body)
    }

    /// Count and (rate-limited) log something dropped, read at `at`
    /// claiming to come from `claimed`.
    pub(super) fn reject(
        &self,
        kind: Kind,
        reason: Reject,
        at: &str,
        claimed: impl FnOnce() -> String,
    ) {
        self.rejects.reject(kind, reason, at, claimed);
    }

    /// A live peer's RTMP address.
    pub(super) fn peer_rtmp(&self, node: &str) -> Option<String> {
        self.view
            .borrow()
            .peers
            .get(node)
            .map(|p| p.lease.rtmp.clone())
    }

    pub(super) fn local_feed_count(&self) -> usize {
        self.metrics.feeds.get().max(0) as usize
    }

    /// Record a Redis success or failure; logs and gauges transitions.
    pub(super) fn set_redis(&self, up: bool, error: Option<&redis::RedisError>) -> bool {
        let mut changed = false;
        self.view.send_if_modified(|v| {
            if v.redis_up == up {
                return false;
            }
            v.redis_up = up;
            v.redis_since = Utc::now();
            if up {
                // Their silence was ours: count leases from now.
                let now = Instant::now();
                for p in v.peers.values_mut() {
                    p.seen = now;
                }
            }
            changed = true;
            true
        });
        if changed {
            self.metrics.cluster_redis_up.set(i64::from(up));
            if up {
                tracing::info!(node = %self.settings.node, "redis reachable: re-registering and resyncing");
            } else {
                tracing::warn!(node = %self.settings.node, error = ?error.map(|e| e.to_string()),
                    "redis unreachable: keeping every stream on air, electing among what this node sees");
            }
        }
        changed
    }

    fn lease(&self, feeds: usize, ts: i64, records_ms: i64) -> Lease {
        let s = &self.settings;
        Lease {
            node: s.node.clone(),
            region: s.region.clone(),
            http: s.http.clone(),
            rtmp: s.rtmp.clone(),
            srt: s.srt.clone(),
            draining: self.draining.load(Ordering::Acquire),
            started_at: self.started_at,
            renewed_ms: ts,
            records_ms,
            feeds,
            players: self.metrics.players.get(),
        }
    }

    pub(super) fn refresh_peer_gauge(&self) {
        let n = self.view.borrow().peers.len();
        self.metrics.cluster_nodes.set(n as i64 + 1);
        let mut by_node: HashMap<(String, String), i64> = HashMap::new();
        let total = {
            let remote = self.remote.lock().expect("remote lock");
            for r in remote.values() {
                *by_node
                    .entry((r.node.clone(), r.region.clone()))
                    .or_default() += 1;
            }
            remote.len()
        };
        self.metrics.cluster_remote_feeds.set(total as i64);
        let s = &self.settings;
        by_node.insert(
            (s.node.clone(), s.region.clone()),
            self.local_feed_count() as i64,
        );
        self.metrics.cluster_feeds.reset();
        for ((node, region), n) in by_node {
            self.metrics
                .cluster_feeds
                .with_label_values(&[node.as_str(), region.as_str()])
                .set(n);
        }
    }
}

pub(super) async fn main_loop(inner: Arc<Inner>, cancel: CancellationToken) {
    let changes = inner.engine.changes();
    let mut renew = interval(inner.settings.lease_renew);
    let mut retry = interval(RETRY);
    let mut resync = interval(inner.settings.resync);
    let mut expiry = interval(EXPIRY_CHECK);
    let mut local = Local {
        published: HashMap::new(),
        dirty: true,
        resyncs: 0,
        records_ms: 0,
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = renew.tick() => renew_lease(&inner, &mut local).await,
            _ = retry.tick(), if !inner.redis_up() => renew_lease(&inner, &mut local).await,
            _ = inner.renew_now.notified() => renew_lease(&inner, &mut local).await,
            _ = resync.tick() => full_resync(&inner, &mut local).await,
            _ = inner.resync_now.notified() => full_resync(&inner, &mut local).await,
            _ = changes.notified() => publish_local(&inner, &mut local).await,
            _ = expiry.tick() => expire_peers(&inner).await,
        }
    }
}

async fn renew_lease(inner: &Arc<Inner>, local: &mut Local) {
    let k = &inner.keys;
    let node = &inner.settings.node;
    let ts = wall_ms();
    let lease = inner.lease(local.published.len(), ts, local.records_ms);
    let ttl = inner.settings.lease_ttl.as_millis() as u64;
    let json = inner.seal(Kind::Lease, &k.lease(node), ts, &lease);
    let beat = inner.seal(
        Kind::Event,
        &k.events(),
        ts,
        &Event::Heartbeat {
            lease: Box::new(lease),
        },
    );
    let r: RedisResult<()> = redis::pipe()
        .cmd("SET")
        .arg(k.lease(node))
        .arg(json)
        .arg("PX")
        .arg(ttl)
        .ignore()
        .cmd("PEXPIRE")
        .arg(k.feeds(node))
        .arg(ttl * 2)
        .ignore()
        .cmd("SADD")
        .arg(k.nodes())
        .arg(node)
        .ignore()
        .cmd("PUBLISH")
        .arg(k.events())
        .arg(beat)
        .ignore()
        .query_async(&mut inner.con())
        .await;
    match r {
        Ok(()) => {
            if inner.set_redis(true, None) {
                local.dirty = true;
                full_resync(inner, local).await;
            }
        }
        Err(e) => {
            inner.set_redis(false, Some(&e));
        }
    }
}

/// Write what changed among this node's feeds and announce it.
async fn publish_local(inner: &Arc<Inner>, local: &mut Local) {
    let Ok(feeds) = inner.engine.local_feeds().await else {
        return;
    };
    let now = Instant::now();
    let now_ms = wall_ms();
    // Never before the last rewrite, even if the wall clock stepped back.
    let ts = now_ms.max(local.records_ms);
    let s = &inner.settings;
    let k = &inner.keys;
    let mut pipe = redis::pipe();
    let mut writes = 0;
    let mut seen = HashSet::new();
    for f in &feeds {
        let id = f.meta.id.0;
        seen.insert(id);
        let mut rec = FeedRecord::from_local(f, &s.node, &s.region, now, now_ms);
        if let Some((since, prev)) = local.published.get(&id) {
            if *since == f.eligible_since {
                rec.eligible_since_ms = prev.eligible_since_ms;
            }
            if *prev == rec {
                continue;
            }
        }
        let field = id.to_string();
        let json = inner.seal(Kind::Feed, &k.feed_place(&s.node, &field), ts, &rec);
        let event = inner.seal(
            Kind::Event,
            &k.events(),
            ts,
            &Event::Upsert {
                record: Box::new(rec.clone()),
            },
        );
        pipe.cmd("HSET")
            .arg(k.feeds(&s.node))
            .arg(field)
            .arg(json)
            .ignore()
            .cmd("PUBLISH")
            .arg(k.events())
            .arg(event)
            .ignore();
        writes += 1;
        local.published.insert(id, (f.eligible_since, rec));
    }
    let gone: Vec<Uuid> = local
        .published
        .keys()
        .filter(|id| !seen.contains(id))
        .copied()
        .collect();
    for id in gone {
        local.published.remove(&id);
        let event = inner.seal(
            Kind::Event,
            &k.events(),
            ts,
            &Event::Remove {
                node: s.node.clone(),
                feed_id: id,
            },
        );
        pipe.cmd("HDEL")
            .arg(k.feeds(&s.node))
            .arg(id.to_string())
            .ignore()
            .cmd("PUBLISH")
            .arg(k.events())
            .arg(event)
            .ignore();
        writes += 1;
    }
    if writes == 0 {
        return;
    }
    if !inner.redis_up() {
        local.dirty = true;
        return;
    }
    if let Err(e) = pipe.query_async::<()>(&mut inner.con()).await {
        local.dirty = true;
        inner.set_redis(false, Some(&e));
    }
}

/// Drop nodes whose heartbeat is older than the lease TTL (only while Redis
/// is reachable: otherwise the silence is ours).
async fn expire_peers(inner: &Arc<Inner>) {
    if !inner.redis_up() {
        return;
    }
    let ttl = inner.settings.lease_ttl;
    let now = Instant::now();
    let mut expired = Vec::new();
    inner.view.send_if_modified(|v| {
        let before = v.peers.len();
        v.peers.retain(|n, p| {
            let alive = now.duration_since(p.seen) <= ttl;
            if !alive {
                expired.push(n.clone());
            }
            alive
        });
        v.peers.len() != before
    });
    for node in expired {
        tracing::warn!(node = %node, "node lease expired: its feeds leave the election");
        drop_node_feeds(inner, &node).await;
    }
}

pub(super) async fn drop_node_feeds(inner: &Arc<Inner>, node: &str) {
    let ids: Vec<Uuid> = {
        let mut remote = inner.remote.lock().expect("remote lock");
        let ids: Vec<Uuid> = remote
            .values()
            .filter(|r| r.node == node)
            .map(|r| r.feed_id)
            .collect();
        for id in &ids {
            remote.remove(id);
        }
        ids
    };
    for id in ids {
        let _ = inner.engine.remote_remove(FeedId(id)).await;
    }
    inner.refresh_peer_gauge();
}

/// Release the lease and the records (graceful stop).
pub(super) async fn leave(inner: &Arc<Inner>) {
    let k = &inner.keys;
    let me = &inner.settings.node;
    let event = inner.seal(
        Kind::Event,
        &k.events(),
        wall_ms(),
        &Event::Leave { node: me.clone() },
    );
    let r: RedisResult<()> = redis::pipe()
        .cmd("DEL")
        .arg(k.lease(me))
        .arg(k.feeds(me))
        .ignore()
        .cmd("SREM")
        .arg(k.nodes())
        .arg(me)
        .ignore()
        .cmd("PUBLISH")
        .arg(k.events())
        .arg(event)
        .ignore()
        .query_async(&mut inner.con())
        .await;
    match r {
        Ok(()) => tracing::info!(node = %me, "cluster lease released"),
        Err(e) => {
            tracing::warn!(node = %me, error = %e, "could not release the cluster lease; it expires by itself")
        }
    }
}

pub(super) async fn broadcast(
    inner: &Arc<Inner>,
    actor: Option<String>,
    command: Command,
) -> Gathered {
    let expected: Vec<NodeRef> = inner
        .view
        .borrow()
        .peers
        .values()
        .map(|p| NodeRef {
            node: p.lease.node.clone(),
            region: p.lease.region.clone(),
        })
        .collect();
    let mut gathered = Gathered::default();
    if expected.is_empty() {
        return gathered;
    }
    let id = Uuid::new_v4();
    let (tx, mut rx) = mpsc::channel(expected.len().max(1));
    inner.pending.lock().expect("pending lock").insert(id, tx);
    let request = Request {
        id,
        from: inner.settings.node.clone(),
        actor,
        command,
    };
    let payload = inner.seal(Kind::Command, &inner.keys.control(), wall_ms(), &request);
    let sent: RedisResult<i64> = redis::cmd("PUBLISH")
        .arg(inner.keys.control())
        .arg(payload)
        .query_async(&mut inner.con())
        .await;
    if let Err(e) = &sent {
        inner.set_redis(false, Some(e));
    } else {
        let deadline = tokio::time::Instant::now() + inner.settings.ack_timeout;
        while gathered.acks.len() < expected.len() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(ack)) => {
                    if !gathered.acks.iter().any(|a| a.node == ack.node) {
                        gathered.acks.push(ack);
                    }
                }
                _ => break,
            }
        }
    }
    inner.pending.lock().expect("pending lock").remove(&id);
    gathered.missing = expected
        .into_iter()
        .filter(|n| !gathered.acks.iter().any(|a| a.node == n.node))
        .collect();
    if !gathered.missing.is_empty() {
        tracing::warn!(missing = ?gathered.missing.iter().map(|n| &n.node).collect::<Vec<_>>(),
            "nodes did not answer a cluster command in time");
    }
    gathered
}
