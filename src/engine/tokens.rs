//! The engine's side of token changes: re-judging a token's live feeds
//! and disconnecting feeds at their token's expiry (a timer, checked on
//! every tick against the wall clock, since expiry is a wall-clock time).

use std::time::Instant;

use chrono::{DateTime, Utc};

use super::{Engine, Recheck, RevokedFeed, SourceKey};
use crate::domain::{FeedGrant, TokenId};

impl Engine {
    /// A feed with this expiry joined or was re-granted.
    pub(super) fn note_expiry(&mut self, at: Option<DateTime<Utc>>) {
        if let Some(at) = at {
            self.next_expiry = Some(self.next_expiry.map_or(at, |n| n.min(at)));
        }
    }

    fn recompute_expiry(&mut self) {
        self.next_expiry = self.sources.values().filter_map(|s| s.next_expiry()).min();
    }

    pub(super) fn recheck_token(
        &mut self,
        now: Instant,
        token: TokenId,
        judge: &mut dyn FnMut(&SourceKey, std::net::SocketAddr, &FeedGrant) -> Recheck,
    ) -> Vec<RevokedFeed> {
        // A disconnected feed leaves its source here; its session's
        // unpublish then drops it from the index, as for any disconnect.
        let mut revoked = Vec::new();
        for src in self.sources.values_mut() {
            revoked.extend(src.recheck_token(now, token, judge));
        }
        self.recompute_expiry();
        revoked
    }

    /// Disconnect the feeds whose token has expired by now.
    pub(super) fn expire_tokens(&mut self, now: Instant) {
        let Some(at) = self.next_expiry else {
            return;
        };
        let wall = self.wall.at(now);
        if at > wall {
            return;
        }
        for src in self.sources.values_mut() {
            for r in src.expire(now, wall) {
                tracing::info!(feed = %r.view.feed_id, token_id = %r.view.token_id,
                    stream = %r.view.stream, reason = %r.reason, "feed disconnected at its token's expiry");
            }
        }
        self.recompute_expiry();
    }
}
