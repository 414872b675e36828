//! The engine's side of the global election (DESIGN section 6): feeds of
//! other nodes enter each source's election as *remote* feeds, ranked by
//! what their node reports; the cluster shell reads this node's feeds back
//! to publish them.
//!
//! Invariants: a remote feed is never disconnected, kicked or reprioritized
//! here (its node does that and reports the result); a resync replaces the
//! whole remote view, so a missed removal is repaired by the next one.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::feed::Origin;
use super::{Engine, FeedMeta, SourceKey};
use crate::domain::{FeedId, TokenId};

/// A feed of another node as the registry describes it.
#[derive(Debug, Clone)]
pub struct RemoteFeed {
    pub key: SourceKey,
    pub meta: FeedMeta,
    pub node: String,
    pub region: String,
    /// Eligible since (already converted to this process's clock); `None`
    /// when its node does not count it as eligible.
    pub eligible_since: Option<Instant>,
    pub draining: bool,
}

/// A feed of this node, for the registry.
#[derive(Debug, Clone)]
pub struct LocalFeed {
    pub key: SourceKey,
    pub meta: FeedMeta,
    pub connected_at: DateTime<Utc>,
    pub eligible_since: Option<Instant>,
    pub healthy: bool,
    pub draining: bool,
    pub on_air: bool,
}

/// The local mirror of a remote feed (node-to-node relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    Connecting,
    /// Media flows.
    Live,
    /// Broken; retried with backoff. The feed is unavailable here meanwhile.
    Retrying,
}

impl RelayState {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayState::Connecting => "connecting",
            RelayState::Live => "live",
            RelayState::Retrying => "retrying",
        }
    }
}

/// A remote feed this node should relay, and the node that has it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WantedMirror {
    pub key: SourceKey,
    pub feed: FeedId,
    pub node: String,
}

pub(crate) enum RemoteCommand {
    Upsert(Box<RemoteFeed>),
    Remove(FeedId),
    /// The complete remote view: every remote feed not in it leaves.
    Replace(Vec<RemoteFeed>),
    LocalFeeds(oneshot::Sender<Vec<LocalFeed>>),
    Wanted {
        runner_up: bool,
        reply: oneshot::Sender<Vec<WantedMirror>>,
    },
    /// The relay of a remote feed changed state (`None`: no relay).
    Relay {
        feed: FeedId,
        state: Option<RelayState>,
    },
    /// A kick with ban on another node: refuse the token on the source here too.
    Ban {
        token: TokenId,
        key: SourceKey,
        ban: Duration,
    },
}

impl Engine {
    pub(super) fn handle_remote(&mut self, cmd: RemoteCommand, now: Instant) {
        match cmd {
            RemoteCommand::Upsert(f) => self.remote_upsert(now, *f),
            RemoteCommand::Remove(id) => self.remote_remove(now, id),
            RemoteCommand::Replace(feeds) => {
                let keep: HashSet<FeedId> = feeds.iter().map(|f| f.meta.id).collect();
                let gone: Vec<FeedId> = self
                    .sources
                    .values()
                    .flat_map(|s| s.remote_ids().collect::<Vec<_>>())
                    .filter(|id| !keep.contains(id))
                    .collect();
                for id in gone {
                    self.remote_remove(now, id);
                }
                for f in feeds {
                    self.remote_upsert(now, f);
                }
            }
            RemoteCommand::Relay { feed, state } => {
                if let Some(key) = self.feed_index.get(&feed) {
                    if let Some(src) = self.sources.get_mut(key) {
                        src.relay_state(now, feed, state);
                    }
                }
            }
            RemoteCommand::Ban { token, key, ban } => {
                self.bans.insert((token, key), now + ban);
            }
            RemoteCommand::LocalFeeds(reply) => {
                let mut out = Vec::new();
                for src in self.sources.values() {
                    src.local_records(&mut out);
                }
                let _ = reply.send(out);
            }
            RemoteCommand::Wanted { runner_up, reply } => {
                let mut out = Vec::new();
                for src in self.sources.values() {
                    src.wanted_mirrors(runner_up, &mut out);
                }
                let _ = reply.send(
                    out.into_iter()
                        .map(|(key, feed, node)| WantedMirror { key, feed, node })
                        .collect(),
                );
            }
        }
    }

    fn remote_upsert(&mut self, now: Instant, f: RemoteFeed) {
        if let Some(key) = self.feed_index.get(&f.meta.id) {
            if *key != f.key {
                // Cannot move between sources; treat as leave + join.
                let id = f.meta.id;
                self.remote_remove(now, id);
            }
        }
        let id = f.meta.id;
        self.feed_index.insert(id, f.key.clone());
        let origin = Origin {
            node: f.node,
            region: f.region,
            eligible_since: f.eligible_since,
            draining: f.draining,
            relay: None,
        };
        self.source_mut(&f.key).remote_upsert(now, f.meta, origin);
    }

    fn remote_remove(&mut self, now: Instant, id: FeedId) {
        let Some(key) = self.feed_index.get(&id).cloned() else {
            return;
        };
        let Some(src) = self.sources.get_mut(&key) else {
            return;
        };
        if !src.remote_ids().any(|r| r == id) {
            return;
        }
        self.feed_index.remove(&id);
        src.feed_left(now, id);
        self.gc(&key);
    }
}
