//! Reading the registry back: every resync opens the leases and feed
//! records of the other nodes (dropping and counting what does not verify),
//! decides who is live, checks this node's own records, and makes what
//! verified the remote view and the engine's remote feeds.
//!
//! Invariants: nothing unverified reaches the view or the engine; a node is
//! live while its lease in Redis verifies or a verified heartbeat of it is
//! younger than the lease TTL (`P:nodes` is only a hint); a feed record
//! older than its node's last full rewrite is a replay.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use super::envelope::{Freshness, Kind, Reject};
use super::registry::{wall_ms, wall_to_instant, FeedRecord, Lease};
use super::run::{Local, REWRITE_EVERY};
use super::{Inner, Peer};

impl Inner {
    /// A lease read from `P:node:<node>`: signed by that node, for that
    /// key, renewed within the lease TTL (plus skew).
    fn open_lease(&self, node: &str, text: &str, now_ms: i64) -> Result<(Lease, i64), Reject> {
        let fresh = Freshness::stored(self.settings.lease_ttl.as_millis() as i64, self.skew_ms());
        let o = self.signer.open(
            Kind::Lease,
            &self.keys.lease(node),
            Some(node),
            text,
            now_ms,
            fresh,
        )?;
        let lease: Lease = o.parse()?;
        if lease.node != node {
            return Err(Reject::SenderMismatch);
        }
        Ok((lease, o.ts))
    }

    /// A record read from `P:feeds:<node>` field `field`: signed by that
    /// node for that field, not older than its last full rewrite (a record
    /// deleted since and written back is a replay) nor than the rewrite
    /// period allows.
    fn open_record(
        &self,
        node: &str,
        records_ms: i64,
        field: &str,
        text: &str,
        now_ms: i64,
    ) -> Result<FeedRecord, Reject> {
        let s = &self.settings;
        let max_age = (s.lease_ttl + s.resync * REWRITE_EVERY as u32).as_millis() as i64;
        let o = self.signer.open(
            Kind::Feed,
            &self.keys.feed_place(node, field),
            Some(node),
            text,
            now_ms,
            Freshness::stored(max_age, self.skew_ms()),
        )?;
        if o.ts < records_ms {
            return Err(Reject::Stale);
        }
        let r: FeedRecord = o.parse()?;
        if r.node != node {
            return Err(Reject::SenderMismatch);
        }
        if r.feed_id.to_string() != field {
            return Err(Reject::Malformed);
        }
        Ok(r)
    }
}

/// Rewrite this node's records when needed, then re-read every live node's
/// lease and feeds and make them the remote view. A node is live when its
/// lease in Redis verifies, or when a verified heartbeat of it arrived
/// within the lease TTL (so a lease key deleted or spoiled by someone
/// else does not drop a node that is heard from).
pub(super) async fn full_resync(inner: &Arc<Inner>, local: &mut Local) {
    if !inner.redis_up() {
        return;
    }
    local.resyncs += 1;
    let k = &inner.keys;
    let me = inner.settings.node.clone();
    let mut con = inner.con();
    if local.dirty || local.resyncs.is_multiple_of(REWRITE_EVERY) {
        // Every record re-signed with one timestamp, announced in the next
        // lease: anything older found in the hash later is a replay.
        let ts = wall_ms().max(local.records_ms);
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(k.feeds(&me)).ignore();
        if !local.published.is_empty() {
            let mut hset = redis::cmd("HSET");
            hset.arg(k.feeds(&me));
            for (id, (_, rec)) in &local.published {
                let field = id.to_string();
                let sealed = inner.seal(Kind::Feed, &k.feed_place(&me, &field), ts, rec);
                hset.arg(field).arg(sealed);
            }
            pipe.add_command(hset).ignore();
            pipe.cmd("PEXPIRE")
                .arg(k.feeds(&me))
                .arg(inner.settings.lease_ttl.as_millis() as u64 * 2)
                .ignore();
        }
        match pipe.query_async::<()>(&mut con).await {
            Ok(()) => {
                local.dirty = false;
                local.records_ms = ts;
            }
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
    // Peers heard from within the TTL count even when the node set lost them.
    let ttl = inner.settings.lease_ttl;
    let heard: BTreeMap<String, Peer> = {
        let now = Instant::now();
        inner
            .view
            .borrow()
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.seen) <= ttl)
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect()
    };
    let mut others: Vec<String> = members.into_iter().filter(|m| *m != me).collect();
    for n in heard.keys() {
        if !others.contains(n) {
            others.push(n.clone());
        }
    }
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
    let now_ms = wall_ms();
    let left = {
        // Past this age a departed node's lease is stale anyway.
        let keep = now_ms - (ttl.as_millis() as i64 + inner.skew_ms());
        let mut left = BTreeMap::new();
        inner.view.send_if_modified(|v| {
            let before = v.left.len();
            v.left.retain(|_, ts| *ts >= keep);
            left = v.left.clone();
            v.left.len() != before
        });
        left
    };
    // Node → (lease, signed ts): the newer of Redis's and the heartbeat's.
    let mut live: BTreeMap<String, (Lease, i64)> = BTreeMap::new();
    let mut dead: Vec<&String> = Vec::new();
    for (n, text) in others.iter().zip(leases) {
        let opened = text.map(|t| {
            inner.open_lease(n, &t, now_ms).and_then(|(l, ts)| {
                if left.get(n).is_some_and(|at| *at >= ts) {
                    // Signed before the node left: written back by someone.
                    Err(Reject::Replay)
                } else {
                    Ok((l, ts))
                }
            })
        });
        let stored = match opened {
            None => None,
            Some(Ok(l)) => Some(l),
            Some(Err(reason)) => {
                inner.reject(Kind::Lease, reason, &k.lease(n), || n.clone());
                None
            }
        };
        let best = match (stored, heard.get(n)) {
            (Some((_, ts)), Some(p)) if p.ts > ts => Some((p.lease.clone(), p.ts)),
            (Some(l), _) => Some(l),
            (None, Some(p)) => Some((p.lease.clone(), p.ts)),
            (None, None) => None,
        };
        match best {
            Some(l) => {
                live.insert(n.clone(), l);
            }
            None => dead.push(n),
        }
    }
    let mut pipe = redis::pipe();
    for n in &dead {
        pipe.cmd("SREM").arg(k.nodes()).arg(n.as_str()).ignore();
    }
    for n in live.keys() {
        pipe.cmd("HGETALL").arg(k.feeds(n));
    }
    // This node's own records too: someone else may have changed them.
    pipe.cmd("HGETALL").arg(k.feeds(&me));
    let mut hashes: Vec<HashMap<String, String>> = match pipe.query_async(&mut con).await {
        Ok(h) => h,
        Err(e) => {
            inner.set_redis(false, Some(&e));
            return;
        }
    };
    if let Some(own) = hashes.pop() {
        check_own_records(inner, local, &own, now_ms);
    }
    let mut remote = HashMap::new();
    for ((node, (lease, _)), hash) in live.iter().zip(hashes) {
        for (field, text) in &hash {
            match inner.open_record(node, lease.records_ms, field, text, now_ms) {
                Ok(r) => {
                    remote.insert(r.feed_id, r);
                }
                Err(reason) => {
                    inner.reject(Kind::Feed, reason, &k.feed_place(node, field), || {
                        node.clone()
                    });
                }
            }
        }
    }
    let now = Instant::now();
    inner.view.send_modify(|v| {
        let mut peers = BTreeMap::new();
        for (node, (lease, ts)) in live {
            let reported = wall_to_instant(ts, now, now_ms);
            let seen = v
                .peers
                .get(&node)
                .map_or(reported, |p| p.seen.max(reported));
            peers.insert(node, Peer { lease, ts, seen });
        }
        for gone in v.peers.keys().filter(|n| !peers.contains_key(*n)) {
            tracing::warn!(node = %gone, "node left the cluster (no valid lease)");
        }
        v.peers = peers;
    });
    let feeds = remote.values().map(|r| r.to_remote(now, now_ms)).collect();
    *inner.remote.lock().expect("remote lock") = remote;
    let _ = inner.engine.remote_replace(feeds).await;
    inner.refresh_peer_gauge();
}

/// Compare this node's records in Redis with what it wrote: a record that
/// does not verify (counted), is missing, or was added by someone else
/// makes the whole hash be rewritten at the next resync, so the other
/// nodes miss a tampered-with feed of this node for one resync at most.
fn check_own_records(inner: &Inner, local: &mut Local, own: &HashMap<String, String>, now_ms: i64) {
    let me = &inner.settings.node;
    let mut intact = own.len() == local.published.len();
    for (field, text) in own {
        let wrote = field
            .parse::<Uuid>()
            .ok()
            .and_then(|id| local.published.get(&id));
        match inner.open_record(me, local.records_ms, field, text, now_ms) {
            Ok(r) if wrote.is_some_and(|(_, w)| *w == r) => {}
            Ok(_) => intact = false,
            Err(reason) => {
                intact = false;
                inner.reject(
                    Kind::Feed,
                    reason,
                    &inner.keys.feed_place(me, field),
                    || me.clone(),
                );
            }
        }
    }
    if !intact && !local.dirty {
        tracing::warn!(node = %me, "this node's feed records in redis differ from what it wrote; rewriting them");
        local.dirty = true;
    }
}
