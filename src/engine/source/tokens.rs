//! A source's feeds as their tokens see them: Reprioritize, disconnecting
//! a revoked token's feeds, re-judging live feeds against a token's
//! current row, and token expiry.
//!
//! Invariant: a local feed with a grant is elected with
//! `grant.effective_priority()`: the token's priority as it applies to the
//! feed, lowered (never raised, unless the token allows it) by the feed's
//! `priority=`.

use std::time::Instant;

use chrono::{DateTime, Utc};

use super::Source;
use crate::domain::{FeedGrant, FeedId, Priority, TokenId};
use crate::election::Input;
use crate::engine::cause::SwitchCause;
use crate::engine::view::{FeedView, ReprioritizeReport};
use crate::engine::{Recheck, RevokedFeed, SourceKey};

impl Source {
    /// The local feeds of a token (a remote feed is its own node's business).
    fn token_feeds(&self, token: TokenId) -> Vec<FeedId> {
        self.feeds
            .iter()
            .filter(|(_, f)| f.meta.token_id == token && !f.is_remote())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Apply a token's new priority. Non-pinned feeds are switched away
    /// and disconnected (`disconnect`) or re-elected in place. Pinned feeds
    /// are never disconnected, but their priority is capped by the token's
    /// new one (min) unless the token allows raising: lowering a token
    /// takes the air from all of its feeds.
    pub fn reprioritize(
        &mut self,
        now: Instant,
        token: TokenId,
        priority: Option<i32>,
        disconnect: bool,
        report: &mut ReprioritizeReport,
    ) {
        for id in self.token_feeds(token) {
            let Some(slot) = self.feeds.get(&id) else {
                continue;
            };
            if slot.meta.pinned {
                if let Some(grant) = slot.meta.grant.clone() {
                    self.regrant(
                        now,
                        id,
                        FeedGrant {
                            token_priority: Priority(priority),
                            ..grant
                        },
                    );
                }
                if let Some(view) = self.feed_view(now, id) {
                    report.pinned.push(view);
                }
                continue;
            }
            let Some(view) = self.feed_view(now, id) else {
                continue;
            };
            report.affected.push(view);
            if disconnect {
                let on_air = self.switch.is_on_air(id);
                if let Some(slot) = self.feeds.get_mut(&id) {
                    slot.draining = true;
                    slot.disconnect_after_cut =
                        Some("token reprioritized; reconnect to get the new priority".into());
                    if !on_air {
                        slot.disconnect("token reprioritized; reconnect to get the new priority");
                    }
                }
                self.settings.changes.notify_one();
                self.with_cause(SwitchCause::Reprioritized, |s| {
                    let d = s.election.handle_input(now, Input::Drain { feed: id });
                    s.apply(now, d);
                });
            } else {
                self.settings.changes.notify_one();
                if let Some(slot) = self.feeds.get_mut(&id) {
                    slot.meta.priority = Priority(priority);
                    if let Some(g) = slot.meta.grant.as_mut() {
                        g.token_priority = Priority(priority);
                    }
                }
                self.with_cause(SwitchCause::Reprioritized, |s| {
                    let d = s.election.handle_input(
                        now,
                        Input::PriorityChanged {
                            feed: id,
                            priority: Priority(priority),
                        },
                    );
                    s.apply(now, d);
                });
            }
        }
    }

    /// Replace a live feed's grant; re-elect when its effective priority
    /// changed (a pinned feed capped or uncapped).
    fn regrant(&mut self, now: Instant, id: FeedId, grant: FeedGrant) {
        let Some(slot) = self.feeds.get_mut(&id) else {
            return;
        };
        let priority = grant.effective_priority();
        slot.meta.grant = Some(grant);
        if slot.meta.priority == priority {
            return;
        }
        tracing::info!(stream = %self.key.stream, source = %self.key.source, feed = %id,
            token_id = %slot.meta.token_id, from = ?slot.meta.priority.0, to = ?priority.0,
            "feed priority follows its token");
        slot.meta.priority = priority;
        self.settings.changes.notify_one();
        self.with_cause(SwitchCause::Reprioritized, |s| {
            let d = s
                .election
                .handle_input(now, Input::PriorityChanged { feed: id, priority });
            s.apply(now, d);
        });
    }

    /// Disconnect one local feed at once (unplanned if it is on air).
    fn revoke(&mut self, now: Instant, id: FeedId, reason: &str) -> Option<FeedView> {
        let view = self.feed_view(now, id);
        if let Some(slot) = self.feeds.get(&id) {
            tracing::info!(stream = %self.key.stream, source = %self.key.source, feed = %id,
                token_id = %slot.meta.token_id, reason, "disconnecting a feed its token no longer allows");
            slot.disconnect(reason);
        }
        self.feed_left(now, id);
        view
    }

    /// Disconnect every feed of a token at once (unplanned for the on-air one).
    pub fn disconnect_token(
        &mut self,
        now: Instant,
        token: TokenId,
        reason: &str,
    ) -> Vec<FeedView> {
        self.token_feeds(token)
            .into_iter()
            .filter_map(|id| self.revoke(now, id, reason))
            .collect()
    }

    /// Judge every local feed of `token` that holds a grant: keep it with
    /// its grant brought up to date, or disconnect it with the reason.
    pub fn recheck_token(
        &mut self,
        now: Instant,
        token: TokenId,
        judge: &mut dyn FnMut(&SourceKey, std::net::SocketAddr, &FeedGrant) -> Recheck,
    ) -> Vec<RevokedFeed> {
        let mut revoked = Vec::new();
        for id in self.token_feeds(token) {
            let Some(slot) = self.feeds.get(&id) else {
                continue;
            };
            let Some(grant) = slot.meta.grant.as_ref() else {
                continue;
            };
            match judge(&self.key, slot.meta.peer, grant) {
                Recheck::Keep(grant) => self.regrant(now, id, grant),
                Recheck::Revoke(reason) => {
                    if let Some(view) = self.revoke(now, id, &reason) {
                        revoked.push(RevokedFeed { view, reason });
                    }
                }
            }
        }
        revoked
    }

    /// Disconnect the local feeds whose token expired at or before `wall`.
    pub fn expire(&mut self, now: Instant, wall: DateTime<Utc>) -> Vec<RevokedFeed> {
        let expired: Vec<FeedId> = self
            .feeds
            .iter()
            .filter(|(_, f)| {
                !f.is_remote()
                    && f.meta
                        .grant
                        .as_ref()
                        .and_then(|g| g.expires_at)
                        .is_some_and(|e| e <= wall)
            })
            .map(|(id, _)| *id)
            .collect();
        let reason = "token has expired";
        expired
            .into_iter()
            .filter_map(|id| {
                self.revoke(now, id, reason).map(|view| RevokedFeed {
                    view,
                    reason: reason.to_owned(),
                })
            })
            .collect()
    }

    /// The earliest token expiry among local feeds.
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.feeds
            .values()
            .filter(|f| !f.is_remote())
            .filter_map(|f| f.meta.grant.as_ref().and_then(|g| g.expires_at))
            .min()
    }

    /// (token, revision) of every local feed that holds a grant.
    pub fn token_revisions(&self, out: &mut Vec<(TokenId, i64)>) {
        out.extend(
            self.feeds
                .values()
                .filter(|f| !f.is_remote())
                .filter_map(|f| f.meta.grant.as_ref().map(|g| (f.meta.token_id, g.revision))),
        );
    }
}
