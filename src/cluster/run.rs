//! The shell's tasks: the main loop (lease, registry writes, resync, peer
//! expiry) and the pub/sub loop (events, control commands, acks).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use redis::aio::ConnectionManager;
use redis::{PushKind, RedisResult};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::control::{Ack, Command, Envelope, Gathered, NodeRef, Outcome};
use super::registry::{wall_ms, wall_to_instant, Event, FeedRecord, Lease};
use super::{manager_config, Inner, Peer};
use crate::domain::{FeedId, SourceId, StreamName};
use crate::engine::SourceKey;

/// What the main loop remembers between rounds.
struct Local {
    /// This node's records as last written, with the engine instant their
    /// `eligible_since_ms` was computed from (so it is not recomputed, and
    /// republished, for clock jitter alone).
    published: HashMap<Uuid, (Option<Instant>, FeedRecord)>,
    /// Some write was lost (Redis down): rewrite the whole hash.
    dirty: bool,
    resyncs: u64,
}

/// How often a full rewrite of this node's records happens even when no
/// write was lost, in resync rounds.
const REWRITE_EVERY: u64 = 5;
/// While Redis is down, how often the lease write is retried.
const RETRY: Duration = Duration::from_millis(200);
/// How often peers' heartbeats are checked against the lease TTL.
const EXPIRY_CHECK: Duration = Duration::from_millis(100);
/// How often the subscriber pings while its connection is down (a
/// ConnectionManager reconnects, and resubscribes, only when a command is
/// sent); while it is up, every [`PING_EVERY_UP`] ticks.
const SUBSCRIBER_PING: Duration = Duration::from_millis(250);
const PING_EVERY_UP: u64 = 4;

fn interval(every: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(every);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

impl Inner {
    fn con(&self) -> ConnectionManager {
        self.con.clone()
    }

    fn redis_up(&self) -> bool {
        self.view.borrow().redis_up
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
    fn set_redis(&self, up: bool, error: Option<&redis::RedisError>) -> bool {
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

    fn lease(&self, feeds: usize) -> Lease {
        let s = &self.settings;
        Lease {
            node: s.node.clone(),
            region: s.region.clone(),
            http: s.http.clone(),
            rtmp: s.rtmp.clone(),
            srt: s.srt.clone(),
            draining: self.draining.load(Ordering::Acquire),
            started_at: self.started_at,
            renewed_ms: wall_ms(),
            feeds,
            players: self.metrics.players.get(),
        }
    }

    fn refresh_peer_gauge(&self) {
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
    let lease = inner.lease(local.published.len());
    let ttl = inner.settings.lease_ttl.as_millis() as u64;
    let json = serde_json::to_string(&lease).expect("lease serializes");
    let beat = serde_json::to_string(&Event::Heartbeat {
        lease: Box::new(lease),
    })
    .expect("event serializes");
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
        let json = serde_json::to_string(&rec).expect("record serializes");
        let event = serde_json::to_string(&Event::Upsert {
            record: Box::new(rec.clone()),
        })
        .expect("event serializes");
        pipe.cmd("HSET")
            .arg(k.feeds(&s.node))
            .arg(id.to_string())
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
        let event = serde_json::to_string(&Event::Remove {
            node: s.node.clone(),
            feed_id: id,
        })
        .expect("event serializes");
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

/// Rewrite this node's records when needed, then re-read every live node's
/// lease and feeds and make them the remote view.
async fn full_resync(inner: &Arc<Inner>, local: &mut Local) {
    if !inner.redis_up() {
        return;
    }
    local.resyncs += 1;
    let k = &inner.keys;
    let me = inner.settings.node.clone();
    let mut con = inner.con();
    if local.dirty || local.resyncs.is_multiple_of(REWRITE_EVERY) {
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(k.feeds(&me)).ignore();
        if !local.published.is_empty() {
            let mut hset = redis::cmd("HSET");
            hset.arg(k.feeds(&me));
            for (id, (_, rec)) in &local.published {
                hset.arg(id.to_string())
                    .arg(serde_json::to_string(rec).expect("record serializes"));
            }
            pipe.add_command(hset).ignore();
            pipe.cmd("PEXPIRE")
                .arg(k.feeds(&me))
                .arg(inner.settings.lease_ttl.as_millis() as u64 * 2)
                .ignore();
        }
        match pipe.query_async::<()>(&mut con).await {
            Ok(()) => local.dirty = false,
            Err(e) => {
                inner.set_redis(false, Some(&e));
                return;
            }
        }
    }
    let members: Vec<String> = match redis::cmd("SMEMBERS")
        .arg(k.nodes())
        .query_async(&mut con)
        .await
    {
        Ok(m) => m,
        Err(e) => {
            inner.set_redis(false, Some(&e));
            return;
        }
    };
    let others: Vec<String> = members.into_iter().filter(|m| *m != me).collect();
    let leases: Vec<Option<String>> = if others.is_empty() {
        Vec::new()
    } else {
        let mut mget = redis::cmd("MGET");
        for n in &others {
            mget.arg(k.lease(n));
        }
        match mget.query_async(&mut con).await {
            Ok(l) => l,
            Err(e) => {
                inner.set_redis(false, Some(&e));
                return;
            }
        }
    };
    let mut live: Vec<Lease> = Vec::new();
    let mut dead: Vec<&String> = Vec::new();
    for (n, l) in others.iter().zip(leases) {
        match l.and_then(|j| serde_json::from_str::<Lease>(&j).ok()) {
            Some(lease) if lease.node == *n => live.push(lease),
            _ => dead.push(n),
        }
    }
    let mut pipe = redis::pipe();
    for n in &dead {
        pipe.cmd("SREM").arg(k.nodes()).arg(n.as_str()).ignore();
    }
    for l in &live {
        pipe.cmd("HGETALL").arg(k.feeds(&l.node));
    }
    let hashes: Vec<HashMap<String, String>> = if dead.is_empty() && live.is_empty() {
        Vec::new()
    } else {
        match pipe.query_async(&mut con).await {
            Ok(h) => h,
            Err(e) => {
                inner.set_redis(false, Some(&e));
                return;
            }
        }
    };
    let mut remote = HashMap::new();
    for (lease, hash) in live.iter().zip(hashes) {
        for json in hash.values() {
            match serde_json::from_str::<FeedRecord>(json) {
                Ok(r) if r.node == lease.node => {
                    remote.insert(r.feed_id, r);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(node = %lease.node, error = %e, "unreadable feed record; skipped")
                }
            }
        }
    }
    let now = Instant::now();
    let now_ms = wall_ms();
    inner.view.send_modify(|v| {
        let mut peers = std::collections::BTreeMap::new();
        for lease in live {
            let reported = wall_to_instant(lease.renewed_ms, now, now_ms);
            let seen = v
                .peers
                .get(&lease.node)
                .map_or(reported, |p| p.seen.max(reported));
            peers.insert(lease.node.clone(), Peer { lease, seen });
        }
        for gone in v.peers.keys().filter(|n| !peers.contains_key(*n)) {
            tracing::warn!(node = %gone, "node left the cluster (no lease)");
        }
        v.peers = peers;
    });
    let feeds = remote.values().map(|r| r.to_remote(now, now_ms)).collect();
    *inner.remote.lock().expect("remote lock") = remote;
    let _ = inner.engine.remote_replace(feeds).await;
    inner.refresh_peer_gauge();
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

async fn drop_node_feeds(inner: &Arc<Inner>, node: &str) {
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
    let event =
        serde_json::to_string(&Event::Leave { node: me.clone() }).expect("event serializes");
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

pub(super) async fn broadcast(inner: &Arc<Inner>, command: Command) -> Gathered {
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
    let envelope = Envelope {
        id,
        from: inner.settings.node.clone(),
        command,
    };
    let payload = serde_json::to_string(&envelope).expect("command serializes");
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

pub(super) async fn pubsub_loop(inner: Arc<Inner>, cancel: CancellationToken) {
    // The library's push sender is unbounded; messages are small and each
    // is handled at once (commands in their own task).
    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = manager_config()
        .set_push_sender(tx)
        .set_automatic_resubscription();
    let mut con = match ConnectionManager::new_lazy_with_config(inner.client.clone(), config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the redis subscriber");
            return;
        }
    };
    let k = &inner.keys;
    let channels = [k.events(), k.control(), k.ack(&inner.settings.node)];
    let mut subscribed = 0;
    let mut ping = interval(SUBSCRIBER_PING);
    let mut ticks: u64 = 0;
    let mut reconnecting = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            push = rx.recv() => match push {
                Some(p) => {
                    match p.kind {
                        PushKind::Disconnection => reconnecting = true,
                        PushKind::Subscribe => reconnecting = false,
                        _ => {}
                    }
                    on_push(&inner, p).await
                }
                None => break,
            },
            _ = ping.tick() => {
                if subscribed < channels.len() {
                    while subscribed < channels.len() {
                        if con.subscribe(&channels[subscribed]).await.is_err() {
                            break;
                        }
                        subscribed += 1;
                    }
                    if subscribed == channels.len() {
                        tracing::debug!("subscribed to the cluster channels");
                        inner.resync_now.notify_one();
                    }
                } else {
                    ticks += 1;
                    if reconnecting || ticks.is_multiple_of(PING_EVERY_UP) {
                        let _: RedisResult<String> = redis::cmd("PING").query_async(&mut con).await;
                    }
                }
            }
        }
    }
}

async fn on_push(inner: &Arc<Inner>, push: redis::PushInfo) {
    match push.kind {
        PushKind::Message => {}
        PushKind::Subscribe => {
            // (Re)subscribed after a reconnect: events may have been missed.
            inner.resync_now.notify_one();
            return;
        }
        _ => return,
    }
    let mut data = push.data.into_iter();
    let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
        return;
    };
    let (Ok(channel), Ok(payload)) = (
        redis::from_redis_value::<String>(channel),
        redis::from_redis_value::<String>(payload),
    ) else {
        return;
    };
    let k = &inner.keys;
    if channel == k.events() {
        match serde_json::from_str::<Event>(&payload) {
            Ok(e) => on_event(inner, e).await,
            Err(e) => tracing::warn!(error = %e, "unreadable cluster event; ignored"),
        }
    } else if channel == k.control() {
        match serde_json::from_str::<Envelope>(&payload) {
            Ok(env) if env.from != inner.settings.node => {
                let inner = inner.clone();
                tokio::spawn(async move { on_command(&inner, env).await });
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "unreadable cluster command; ignored"),
        }
    } else if channel == k.ack(&inner.settings.node) {
        if let Ok(ack) = serde_json::from_str::<Ack>(&payload) {
            let tx = inner
                .pending
                .lock()
                .expect("pending lock")
                .get(&ack.id)
                .cloned();
            if let Some(tx) = tx {
                let _ = tx.try_send(ack);
            }
        }
    }
}

async fn on_event(inner: &Arc<Inner>, event: Event) {
    let me = &inner.settings.node;
    match event {
        Event::Upsert { record } => {
            if record.node == *me || !inner.view.borrow().peers.contains_key(&record.node) {
                // Unknown node: its heartbeat or the next resync brings it in.
                return;
            }
            let now = Instant::now();
            let remote = record.to_remote(now, wall_ms());
            inner
                .remote
                .lock()
                .expect("remote lock")
                .insert(record.feed_id, *record);
            let _ = inner.engine.remote_upsert(remote).await;
            inner.refresh_peer_gauge();
        }
        Event::Remove { node, feed_id } => {
            if node == *me {
                return;
            }
            inner.remote.lock().expect("remote lock").remove(&feed_id);
            let _ = inner.engine.remote_remove(FeedId(feed_id)).await;
            inner.refresh_peer_gauge();
        }
        Event::Heartbeat { lease } => {
            if lease.node == *me {
                return;
            }
            let mut new = false;
            inner.view.send_modify(|v| {
                let seen = Instant::now();
                new = !v.peers.contains_key(&lease.node);
                v.peers.insert(
                    lease.node.clone(),
                    Peer {
                        lease: *lease,
                        seen,
                    },
                );
            });
            if new {
                inner.resync_now.notify_one();
            }
        }
        Event::Leave { node } => {
            if node == *me {
                return;
            }
            tracing::info!(node = %node, "node released its lease");
            inner.view.send_modify(|v| {
                v.peers.remove(&node);
            });
            drop_node_feeds(inner, &node).await;
        }
    }
}

/// Apply another node's command here and answer it.
async fn on_command(inner: &Arc<Inner>, env: Envelope) {
    let e = &inner.engine;
    let mut outcome = Outcome::default();
    match env.command {
        Command::DisconnectToken { token, reason } => {
            inner.admission.invalidate(token);
            if let Ok(gone) = e.token_revoked(token, &reason).await {
                outcome.affected = gone;
            }
        }
        Command::TokenChanged { token } => {
            match crate::live_tokens::recheck(&inner.admission, e, token).await {
                Ok(revoked) => outcome.affected = revoked.into_iter().map(|r| r.view).collect(),
                Err(err) => {
                    // The cached row is dropped either way; the periodic
                    // re-check judges the feeds once the row can be read.
                    inner.admission.invalidate(token);
                    tracing::warn!(token_id = %token, error = %err, "cannot re-check a changed token's feeds now");
                }
            }
        }
        Command::Reprioritize {
            token,
            priority,
            disconnect,
        } => {
            inner.admission.invalidate(token);
            if let Ok(report) = e.reprioritize(token, priority, disconnect).await {
                outcome = report.into();
            }
        }
        Command::Kick { feed } => {
            if let Ok(Some(view)) = e.kick(feed, Duration::ZERO).await {
                outcome.affected.push(view);
            }
        }
        Command::Ban {
            token,
            stream,
            source_id,
            ban_seconds,
        } => {
            let key = SourceKey {
                stream: stream as StreamName,
                source: source_id as SourceId,
            };
            let _ = e
                .ban(token, key, Duration::from_secs(u64::from(ban_seconds)))
                .await;
        }
        Command::Drain { node } => {
            if node == inner.settings.node {
                tracing::info!(from = %env.from, "drain requested through the cluster");
                inner.readiness.begin_drain();
                inner.draining.store(true, Ordering::Release);
                inner.renew_now.notify_one();
            }
        }
    }
    let ack = Ack {
        id: env.id,
        node: inner.settings.node.clone(),
        region: inner.settings.region.clone(),
        outcome,
    };
    let payload = serde_json::to_string(&ack).expect("ack serializes");
    let r: RedisResult<i64> = redis::cmd("PUBLISH")
        .arg(inner.keys.ack(&env.from))
        .arg(payload)
        .query_async(&mut inner.con())
        .await;
    if let Err(err) = r {
        tracing::warn!(to = %env.from, error = %err, "could not answer a cluster command");
    }
}
