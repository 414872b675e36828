//! The one service for node commands: every operator action that acts on
//! live feeds (reprioritize, kick and its ban, a token changed, a remote
//! drain) is a [`Command`], carried out on a node by [`apply_local`]. The
//! API calls it for this node and the cluster shell calls the same function
//! for a command another node sent ([`super::pubsub`]), so the local and
//! the remote path of a command cannot drift apart.
//!
//! [`apply_everywhere`] applies a command here first (a node never needs
//! Redis to act on its own feeds), then sends it to every other node as one
//! control message and gathers their answers within
//! `cluster.ack_timeout_ms`: one operator action, one cluster message.
//!
//! Audit: the caller on the node that takes the operator's call writes the
//! record before anything is carried out (a kick) or in the transaction
//! that changes the row (a token); a node that applies a command sent by
//! another writes its own record, naming the sender, after answering.

use std::sync::Arc;
use std::time::Duration;

use super::control::{Command, Gathered, NodeRef, Outcome};
use super::Cluster;
use crate::auth::publish::Admission;
use crate::domain::{FeedId, TokenId};
use crate::engine::{EngineGone, EngineHandle, FeedView, SourceKey};

/// What [`apply_local`] acts on: this node's engine and admission, and its
/// place in the cluster. Cheap to build per command.
#[derive(Clone)]
pub struct Node {
    name: String,
    engine: EngineHandle,
    admission: Arc<Admission>,
    cluster: Option<Cluster>,
    /// Begins this node's drain (a [`Command::Drain`] naming it).
    drain: Arc<dyn Fn() + Send + Sync>,
}

impl Node {
    pub fn new(
        name: String,
        engine: EngineHandle,
        admission: Arc<Admission>,
        cluster: Option<Cluster>,
        drain: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        Self {
            name,
            engine,
            admission,
            cluster,
            drain,
        }
    }
}

/// What a command did on one node.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub outcome: Outcome,
    /// Whether it changed anything here (what a node that applies another
    /// node's command puts on record).
    pub acted: bool,
}

/// Carry out `command` on this node. The same function for a command an
/// operator gave this node and one another node sent.
pub async fn apply_local(node: &Node, command: &Command) -> Result<Applied, EngineGone> {
    let e = &node.engine;
    let mut outcome = Outcome::default();
    let acted = match command {
        Command::DisconnectToken { token, reason } => {
            node.admission.invalidate(*token);
            outcome.affected = e.token_revoked(*token, reason).await?;
            !outcome.affected.is_empty()
        }
        Command::TokenChanged { token } => {
            match crate::live_tokens::recheck(&node.admission, e, *token).await {
                Ok(revoked) => {
                    outcome.affected = revoked.into_iter().map(|r| r.view).collect();
                }
                Err(err) => {
                    // The cached row is dropped either way; the periodic
                    // re-check judges the feeds once the row can be read.
                    node.admission.invalidate(*token);
                    tracing::warn!(token_id = %token, error = %err,
                        "cannot re-check a changed token's live feeds now; the periodic re-check will");
                }
            }
            !outcome.affected.is_empty()
        }
        Command::Reprioritize {
            token,
            priority,
            disconnect,
        } => {
            // The row changed: drop the cached one, then switch.
            node.admission.invalidate(*token);
            outcome = e.reprioritize(*token, *priority, *disconnect).await?.into();
            !outcome.affected.is_empty() || !outcome.pinned.is_empty()
        }
        Command::Kick { feed } => match e.kick(*feed, Duration::ZERO).await? {
            Some(view) => {
                outcome.affected.push(view);
                true
            }
            None => false,
        },
        Command::Ban {
            token,
            stream,
            source_id,
            ban_seconds,
        } => {
            let key = SourceKey {
                stream: stream.clone(),
                source: source_id.clone(),
            };
            e.ban(*token, key, Duration::from_secs(u64::from(*ban_seconds)))
                .await?;
            true
        }
        Command::Drain { node: named } => {
            let me = *named == node.name;
            if me {
                (node.drain)();
            }
            me
        }
    };
    Ok(Applied { outcome, acted })
}

/// A command applied here and sent to the other nodes.
#[derive(Debug, Clone, Default)]
pub struct Everywhere {
    pub here: Applied,
    /// The other nodes' answers (none without a cluster).
    pub there: Gathered,
}

/// Apply `command` here, then send it (one message) to every other node on
/// behalf of `actor` and gather their answers. Without a cluster only the
/// local part runs.
pub async fn apply_everywhere(
    node: &Node,
    actor: &str,
    command: Command,
) -> Result<Everywhere, EngineGone> {
    let here = apply_local(node, &command).await?;
    let there = match &node.cluster {
        Some(c) => c.broadcast_as(Some(actor.to_owned()), command).await,
        None => Gathered::default(),
    };
    Ok(Everywhere { here, there })
}

/// A token's row changed (edited, secret refreshed, deleted): judge its
/// live feeds again on every node. A node that does not answer converges
/// through its periodic re-check.
pub async fn token_changed(node: &Node, actor: &str, token: TokenId) -> Result<(), EngineGone> {
    let done = apply_everywhere(node, actor, Command::TokenChanged { token }).await?;
    let remote: usize = done
        .there
        .acks
        .iter()
        .map(|a| a.outcome.affected.len())
        .sum();
    if remote > 0 {
        tracing::info!(token_id = %token, feeds = remote,
            "other nodes disconnected feeds the token no longer allows");
    }
    Ok(())
}

/// What a reprioritize did on every node.
#[derive(Debug, Clone, Default)]
pub struct Reprioritized {
    /// Feeds switched away and disconnected, or re-elected in place.
    pub affected: Vec<FeedView>,
    /// Pinned feeds left connected.
    pub pinned: Vec<FeedView>,
    /// Live nodes that did not answer in time.
    pub unanswered: Vec<NodeRef>,
}

/// Apply a token's new priority (its row already saved) to its live feeds
/// on every node, with one cluster message.
pub async fn reprioritize(
    node: &Node,
    actor: &str,
    token: TokenId,
    priority: Option<i32>,
    disconnect: bool,
) -> Result<Reprioritized, EngineGone> {
    let command = Command::Reprioritize {
        token,
        priority,
        disconnect,
    };
    let done = apply_everywhere(node, actor, command).await?;
    let mut out = Reprioritized {
        affected: done.here.outcome.affected,
        pinned: done.here.outcome.pinned,
        unanswered: done.there.missing,
    };
    for ack in done.there.acks {
        out.affected.extend(ack.outcome.affected);
        out.pinned.extend(ack.outcome.pinned);
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum KickError {
    #[error(transparent)]
    Engine(#[from] EngineGone),
    /// No node has the feed; `unanswered`: live nodes that did not answer.
    #[error("live feed not found")]
    NotFound { unanswered: Vec<NodeRef> },
}

/// Disconnect one feed wherever it is (here first, else on the node that
/// has it), then, with `ban_seconds > 0`, refuse its token on its source
/// for that long on every node. The caller has put the kick on record.
pub async fn kick(
    node: &Node,
    actor: &str,
    feed: FeedId,
    ban_seconds: u32,
) -> Result<FeedView, KickError> {
    let command = Command::Kick { feed };
    let here = apply_local(node, &command).await?;
    let view = match (here.outcome.affected.into_iter().next(), &node.cluster) {
        (Some(v), _) => v,
        (None, Some(c)) => {
            let g = c.broadcast_as(Some(actor.to_owned()), command).await;
            let found = g
                .acks
                .into_iter()
                .find_map(|a| a.outcome.affected.into_iter().next());
            found.ok_or(KickError::NotFound {
                unanswered: g.missing,
            })?
        }
        (None, None) => return Err(KickError::NotFound { unanswered: vec![] }),
    };
    if ban_seconds > 0 {
        if let Some(ban) = ban_command(&view, ban_seconds) {
            apply_local(node, &ban).await?;
            if let Some(c) = &node.cluster {
                // Not waited for: the kick is done; a node that misses the
                // ban only lets the encoder back sooner.
                c.send_as(Some(actor.to_owned()), ban);
            }
        }
    }
    Ok(view)
}

/// The ban of a kicked feed.
fn ban_command(v: &FeedView, ban_seconds: u32) -> Option<Command> {
    Some(Command::Ban {
        token: TokenId(v.token_id),
        stream: v.stream.parse().ok()?,
        source_id: v.source_id.parse().ok()?,
        ban_seconds,
    })
}

/// Drain another node (`name`), on behalf of `actor`; the caller has put
/// it on record. Whether that node answered.
pub async fn drain_other(node: &Node, actor: &str, name: &str) -> Result<bool, EngineGone> {
    let done = apply_everywhere(
        node,
        actor,
        Command::Drain {
            node: name.to_owned(),
        },
    )
    .await?;
    Ok(done.there.acks.iter().any(|a| a.node == name))
}
