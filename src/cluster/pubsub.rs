//! The shell's pub/sub loop: events (feed changes, heartbeats, leaves),
//! commands from other nodes and the acks to this node's commands.
//!
//! Every message is opened ([`super::envelope`]) before it is parsed for
//! use: signed for its channel, within `cluster.max_skew_ms` of now, by the
//! node it speaks for (an event about node B signed by node A, a request
//! whose `from` is not its signer, an ack naming another node: dropped),
//! and never seen before (the loop owns the [`ReplayGuard`]). Commands are
//! accepted only from a node with a live lease here. A command applied
//! here is answered, then audited here (actor `cluster:<sender>`, with the
//! operator the request names).
//!
//! This node's own messages come back on the shared channels; they are
//! recognised by their verified signer and skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{PushKind, RedisResult};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::commands::{apply_local, Node};
use super::control::{Ack, Command, Outcome, Request};
use super::envelope::{Freshness, Kind, Opened, Reject, ReplayGuard};
use super::registry::{wall_ms, Event};
use super::rejects::PushOverflow;
use super::run::{drop_node_feeds, interval};
use super::{manager_config, Cluster, Inner, Peer};
use crate::domain::FeedId;
use crate::store::audit::{decision, Change};

/// How often the subscriber pings while its connection is down (a
/// ConnectionManager reconnects, and resubscribes, only when a command is
/// sent); while it is up, every [`PING_EVERY_UP`] ticks.
const SUBSCRIBER_PING: Duration = Duration::from_millis(250);
const PING_EVERY_UP: u64 = 4;
/// Messages received and not yet handled, at most; beyond, new ones are
/// dropped unread (and counted) so a flood on the channels cannot grow the
/// node's memory. Each is handled in microseconds, so a genuine cluster
/// never comes near.
const PUSH_QUEUE: usize = 4_096;
/// Most messages remembered for replay detection within the skew window
/// (heartbeats, feed changes and commands of every node; far above what a
/// cluster sends in a few seconds).
const REPLAY_CAPACITY: usize = 1 << 18;

pub(super) async fn pubsub_loop(inner: Arc<Inner>, cancel: CancellationToken) {
    // Bounded: the library hands over every message at once; what does not
    // fit is dropped and counted (commands are handled in their own task).
    let (tx, mut rx) = mpsc::channel(PUSH_QUEUE);
    let overflow = PushOverflow::new(&inner.metrics.cluster_rejected);
    let sender = move |info: redis::PushInfo| match tx.try_send(info) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => {
            overflow.dropped();
            Ok(())
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
    };
    let config = manager_config()
        .set_push_sender(sender)
        .set_automatic_resubscription();
    let mut con = match ConnectionManager::new_lazy_with_config(inner.client.clone(), config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the redis subscriber");
            return;
        }
    };
    let mut guard = ReplayGuard::new(inner.skew_ms(), REPLAY_CAPACITY);
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
                    on_push(&inner, &mut guard, p).await
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

/// The node a rejected message claims to come from, for the log only.
fn claimed(text: &str) -> String {
    #[derive(Deserialize)]
    struct Claim {
        node: Option<String>,
        from: Option<String>,
    }
    serde_json::from_str::<Claim>(text)
        .ok()
        .and_then(|c| c.node.or(c.from))
        .unwrap_or_default()
}

/// Open a message read on `channel`; `None` when it is dropped (counted)
/// or is this node's own.
fn open_message(
    inner: &Inner,
    guard: &mut ReplayGuard,
    kind: Kind,
    channel: &str,
    text: &str,
) -> Option<Opened> {
    let now = wall_ms();
    let fresh = Freshness::message(inner.skew_ms());
    let opened = inner
        .signer
        .open(kind, channel, None, text, now, fresh)
        .and_then(|o| {
            if o.node == inner.settings.node {
                return Ok(None);
            }
            guard.admit(&o, now).map(|()| Some(o))
        });
    match opened {
        Ok(o) => o,
        Err(reason) => {
            inner.reject(kind, reason, channel, || claimed(text));
            None
        }
    }
}

/// Whether `node` has a live lease in this node's view.
fn is_peer(inner: &Inner, node: &str) -> bool {
    inner.view.borrow().peers.contains_key(node)
}

async fn on_push(inner: &Arc<Inner>, guard: &mut ReplayGuard, push: redis::PushInfo) {
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
    let me = &inner.settings.node;
    let kind = if channel == k.events() {
        Kind::Event
    } else if channel == k.control() {
        Kind::Command
    } else if channel == k.ack(me) {
        Kind::Ack
    } else {
        return;
    };
    let Some(opened) = open_message(inner, guard, kind, &channel, &payload) else {
        return;
    };
    let refuse = |reason: Reject| inner.reject(kind, reason, &channel, || opened.node.clone());
    match kind {
        Kind::Event => match opened.parse::<Event>() {
            Ok(event) if event_node(&event) != opened.node => refuse(Reject::SenderMismatch),
            Ok(event) => on_event(inner, event, opened.ts).await,
            Err(reason) => refuse(reason),
        },
        Kind::Command => match opened.parse::<Request>() {
            Ok(req) if req.from != opened.node => refuse(Reject::SenderMismatch),
            Ok(_) if !is_peer(inner, &opened.node) => refuse(Reject::UnknownSender),
            Ok(req) => {
                let inner = inner.clone();
                tokio::spawn(async move { on_command(&inner, req).await });
            }
            Err(reason) => refuse(reason),
        },
        Kind::Ack => match opened.parse::<Ack>() {
            Ok(ack) if ack.node != opened.node => refuse(Reject::SenderMismatch),
            Ok(ack) => {
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
            Err(reason) => refuse(reason),
        },
        Kind::Lease | Kind::Feed => {}
    }
}

/// The node an event speaks for (must be its signer).
fn event_node(e: &Event) -> &str {
    match e {
        Event::Upsert { record } => &record.node,
        Event::Remove { node, .. } | Event::Leave { node } => node,
        Event::Heartbeat { lease } => &lease.node,
    }
}

/// Apply a verified event of another node (`ts`: its signed time).
async fn on_event(inner: &Arc<Inner>, event: Event, ts: i64) {
    match event {
        Event::Upsert { record } => {
            if !is_peer(inner, &record.node) {
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
            // Only the node that has the feed removes it.
            let removed = {
                let mut remote = inner.remote.lock().expect("remote lock");
                let its = remote.get(&feed_id).is_some_and(|r| r.node == node);
                its && remote.remove(&feed_id).is_some()
            };
            if removed {
                let _ = inner.engine.remote_remove(FeedId(feed_id)).await;
                inner.refresh_peer_gauge();
            }
        }
        Event::Heartbeat { lease } => {
            let mut new = false;
            inner.view.send_if_modified(|v| {
                if v.peers.get(&lease.node).is_some_and(|p| p.ts > ts)
                    || v.left.get(&lease.node).is_some_and(|left| *left >= ts)
                {
                    // Older than what this node has (reordered), or from
                    // before the node left: keep what this node knows.
                    return false;
                }
                new = !v.peers.contains_key(&lease.node);
                v.peers.insert(
                    lease.node.clone(),
                    Peer {
                        lease: *lease,
                        ts,
                        seen: Instant::now(),
                    },
                );
                true
            });
            if new {
                inner.resync_now.notify_one();
            }
        }
        Event::Leave { node } => {
            tracing::info!(node = %node, "node released its lease");
            inner.view.send_modify(|v| {
                v.peers.remove(&node);
                let left = v.left.entry(node.clone()).or_insert(ts);
                *left = (*left).max(ts);
            });
            drop_node_feeds(inner, &node).await;
        }
    }
}

/// Apply another node's command here (the same [`apply_local`] the API
/// uses for this node's own), answer it, and audit what it did here.
async fn on_command(inner: &Arc<Inner>, req: Request) {
    let here = command_node(inner);
    let applied = apply_local(&here, &req.command).await.unwrap_or_default();
    let ack = Ack {
        id: req.id,
        node: inner.settings.node.clone(),
        region: inner.settings.region.clone(),
        outcome: applied.outcome,
    };
    let to = inner.keys.ack(&req.from);
    let payload = inner.seal(Kind::Ack, &to, wall_ms(), &ack);
    let r: RedisResult<i64> = redis::cmd("PUBLISH")
        .arg(to)
        .arg(payload)
        .query_async(&mut inner.con())
        .await;
    if let Err(err) = r {
        tracing::warn!(to = %req.from, error = %err, "could not answer a cluster command");
    }
    if applied.acted {
        if let Command::Drain { .. } = req.command {
            tracing::info!(from = %req.from, actor = ?req.actor, "drain requested through the cluster");
        }
        audit(inner, &req, &ack.outcome).await;
    }
}

/// This node as the command service acts on it; its drain marks the lease
/// draining too.
fn command_node(inner: &Arc<Inner>) -> Node {
    let readiness = inner.readiness.clone();
    let cluster = Cluster {
        inner: inner.clone(),
    };
    let drain_lease = cluster.clone();
    Node::new(
        inner.settings.node.clone(),
        inner.engine.clone(),
        inner.admission.clone(),
        Some(cluster),
        Arc::new(move || {
            readiness.begin_drain();
            drain_lease.set_draining();
        }),
    )
}

/// The audit row of a command this node applied: actor `cluster:<sender>`,
/// the operator who asked for it on the sender (when it says), what it
/// did here. Written after the answer (a slow database does not make the
/// sender give up on this node); a failure is logged.
async fn audit(inner: &Inner, req: &Request, outcome: &Outcome) {
    let (action, target) = req.command.audit_action();
    let actor = format!("cluster:{}", req.from);
    let before = match &req.command {
        Command::Kick { .. } => outcome
            .affected
            .first()
            .and_then(|v| serde_json::to_value(v).ok()),
        _ => None,
    };
    let ids = |v: &[crate::engine::FeedView]| v.iter().map(|f| f.feed_id).collect::<Vec<_>>();
    let after = serde_json::json!({
        "request": req.id,
        "from": req.from,
        "operator": req.actor,
        "node": inner.settings.node,
        "command": req.command,
        "affected": ids(&outcome.affected),
        "pinned": ids(&outcome.pinned),
    });
    let written = inner
        .db
        .run(move |c| decision(c, &actor, &target, Change::new(action, before, Some(after))))
        .await;
    if let Err(e) = written {
        tracing::error!(from = %req.from, action, error = %e,
            "could not write the audit record of a cluster command applied here");
    }
}
