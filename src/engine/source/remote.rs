//! A source's feeds of other nodes (global election): their registry
//! records coming in, the state of their local mirrors, and what this node
//! publishes and mirrors in turn.
//!
//! Invariant: a remote feed's eligibility comes from its node's record and
//! its mirror's state, never from the media of its mirror.

use std::time::Instant;

use tokio::sync::mpsc;

use super::Source;
use crate::domain::FeedId;
use crate::election::Input;
use crate::engine::cause::SwitchCause;
use crate::engine::feed::{FeedSlot, Origin};
use crate::engine::remote::LocalFeed;
use crate::engine::{FeedMeta, RelayState, SourceKey};

impl Source {
    /// Add or update a feed of another node (global election).
    pub fn remote_upsert(&mut self, now: Instant, meta: FeedMeta, origin: Origin) {
        let id = meta.id;
        let priority = meta.priority;
        let mut inputs = Vec::new();
        match self.feeds.get_mut(&id) {
            Some(slot) if !slot.is_remote() => return,
            Some(slot) => {
                let old = slot.origin.clone().expect("remote");
                let origin = Origin {
                    relay: old.relay,
                    ..origin
                };
                if slot.meta.priority != priority {
                    inputs.push(Input::PriorityChanged { feed: id, priority });
                }
                slot.meta = meta;
                if origin.draining && !old.draining {
                    inputs.push(Input::Drain { feed: id });
                }
                if origin.effective_since() != old.effective_since() {
                    inputs.push(Input::Remote {
                        feed: id,
                        since: origin.effective_since(),
                    });
                }
                slot.origin = Some(origin);
            }
            None => {
                tracing::info!(stream = %self.key.stream, source = %self.key.source, feed = %id,
                    node = %origin.node, region = %origin.region, priority = ?priority.0, "remote feed joined");
                // Nobody controls a remote feed from here: its control
                // channel has no receiver.
                let (control, _) = mpsc::channel(1);
                let mut slot = FeedSlot::new(
                    now,
                    self.wall.at(now),
                    meta,
                    control,
                    self.settings.gop_cache_max_bytes,
                    None,
                );
                inputs.push(Input::Joined { feed: id, priority });
                if origin.draining {
                    inputs.push(Input::Drain { feed: id });
                }
                inputs.push(Input::Remote {
                    feed: id,
                    since: origin.eligible_since,
                });
                slot.origin = Some(origin);
                self.feeds.insert(id, slot);
            }
        }
        for input in inputs {
            let cause = match input {
                Input::PriorityChanged { .. } => SwitchCause::Reprioritized,
                Input::Drain { .. } => SwitchCause::Drained,
                _ => SwitchCause::Unavailable,
            };
            self.with_cause(cause, |s| {
                let d = s.election.handle_input(now, input);
                s.apply(now, d);
            });
        }
    }

    /// The mirror of a remote feed changed state.
    pub fn relay_state(&mut self, now: Instant, feed: FeedId, state: Option<RelayState>) {
        let Some(slot) = self.feeds.get_mut(&feed) else {
            return;
        };
        let Some(origin) = slot.origin.as_mut() else {
            return;
        };
        let before = origin.effective_since();
        origin.relay = state;
        let after = origin.effective_since();
        if matches!(state, None | Some(RelayState::Retrying)) {
            // Its cache is stale from now on: cut to it only from fresh media.
            slot.mark_unhealthy();
        }
        if before != after {
            self.with_cause(SwitchCause::Unavailable, |s| {
                let d = s
                    .election
                    .handle_input(now, Input::Remote { feed, since: after });
                s.apply(now, d);
            });
        }
    }

    /// The ids of this source's remote feeds.
    pub fn remote_ids(&self) -> impl Iterator<Item = FeedId> + '_ {
        self.feeds
            .iter()
            .filter(|(_, f)| f.is_remote())
            .map(|(id, _)| *id)
    }

    /// What the registry publishes about this source's local feeds.
    pub fn local_records(&self, out: &mut Vec<LocalFeed>) {
        let states = self.election.feeds();
        for st in &states {
            let Some(slot) = self.feeds.get(&st.feed) else {
                continue;
            };
            if slot.is_remote() {
                continue;
            }
            out.push(LocalFeed {
                key: self.key.clone(),
                meta: slot.meta.clone(),
                connected_at: slot.connected_at,
                eligible_since: st.eligible_since,
                healthy: st.healthy,
                draining: st.draining,
                on_air: self.switch.is_on_air(st.feed),
            });
        }
    }

    /// Remote feeds this node should mirror: the primary when it is remote
    /// and someone watches here, (`runner_up`) the best other remote feed,
    /// and every remote feed whose relay is broken while its node still
    /// reports it eligible. The last keeps the broken relay retrying (and
    /// the feed unavailable here) until it recovers or leaves the registry:
    /// stopping it would forget the breakage, make the feed look available
    /// again, elect it back and stop the relay to its replacement, over and
    /// over, until its node's lease expired.
    pub fn wanted_mirrors(&self, runner_up: bool, out: &mut Vec<(SourceKey, FeedId, String)>) {
        if self.players.is_empty() {
            return;
        }
        let first = out.len();
        let states = self.election.feeds();
        let primary = self.election.primary();
        // The feed still on air during a planned switch away from it.
        if let Some(on) = self.switch.on_air_feed().filter(|f| Some(*f) != primary) {
            if let Some(o) = self.feeds.get(&on).and_then(|f| f.origin.as_ref()) {
                out.push((self.key.clone(), on, o.node.clone()));
            }
        }
        let mut taken = 0;
        for st in states
            .iter()
            .filter(|s| s.eligible || Some(s.feed) == primary)
        {
            let is_primary = Some(st.feed) == primary;
            if !is_primary && (!runner_up || taken >= 1) {
                continue;
            }
            if !is_primary {
                taken += 1;
            }
            if let Some(o) = self.feeds.get(&st.feed).and_then(|f| f.origin.as_ref()) {
                out.push((self.key.clone(), st.feed, o.node.clone()));
            }
        }
        for (id, slot) in &self.feeds {
            let Some(o) = slot.origin.as_ref() else {
                continue;
            };
            let broken = o.relay == Some(RelayState::Retrying) && o.eligible_since.is_some();
            if broken && !out[first..].iter().any(|(_, f, _)| f == id) {
                out.push((self.key.clone(), *id, o.node.clone()));
            }
        }
    }
}
