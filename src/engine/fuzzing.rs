//! One [`Source`] under virtual time, for fuzz targets and their replay
//! tests: feeds join, send media and leave, players join and leave, timers
//! run, all at millisecond offsets from one base instant (no runtime, no
//! sleeping). Not part of the gateway's API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::source::Source;
use super::{
    EngineSettings, FeedControl, FeedMedia, FeedMeta, PlayerFormat, PlayerItem, SourceKey,
    WallClock,
};
use crate::domain::FeedId;
use crate::metrics::Metrics;

/// A source driven by explicit events.
pub struct SourceHarness {
    base: Instant,
    src: Source,
    /// Each local feed's control channel (kept open, drained).
    controls: HashMap<FeedId, mpsc::Receiver<FeedControl>>,
}

impl SourceHarness {
    pub fn new(settings: EngineSettings) -> Self {
        let key = SourceKey {
            stream: "live/fuzz".parse().expect("a valid stream name"),
            source: Default::default(),
        };
        let base = Instant::now();
        Self {
            base,
            src: Source::new(
                key,
                Arc::new(settings),
                Arc::new(Metrics::new()),
                WallClock::new(base, chrono::Utc::now()),
            ),
            controls: HashMap::new(),
        }
    }

    fn at(&self, now_ms: u64) -> Instant {
        self.base + Duration::from_millis(now_ms)
    }

    /// A local feed joins (its `peer` is loopback).
    pub fn feed_joined(&mut self, now_ms: u64, meta: FeedMeta) {
        let (tx, rx) = mpsc::channel(16);
        self.controls.insert(meta.id, rx);
        let now = self.at(now_ms);
        self.src.feed_joined(now, meta, tx);
    }

    pub fn feed_left(&mut self, now_ms: u64, feed: FeedId) {
        self.controls.remove(&feed);
        let now = self.at(now_ms);
        self.src.feed_left(now, feed);
    }

    pub fn feed_media(&mut self, now_ms: u64, feed: FeedId, media: FeedMedia) {
        let now = self.at(now_ms);
        self.src.feed_media(now, feed, media);
    }

    /// The engine's periodic timers (feed timeouts, switch deadlines,
    /// vacancy).
    pub fn tick(&mut self, now_ms: u64) {
        let now = self.at(now_ms);
        self.src.on_tick(now);
    }

    /// A player joins; its items arrive on the returned receiver, which
    /// holds at most `queue` of them.
    pub fn player_joined(
        &mut self,
        now_ms: u64,
        id: u64,
        format: PlayerFormat,
        queue: usize,
    ) -> mpsc::Receiver<PlayerItem> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let now = self.at(now_ms);
        self.src.player_joined_as(now, id, tx, format);
        rx
    }

    pub fn player_left(&mut self, now_ms: u64, id: u64) {
        let now = self.at(now_ms);
        self.src.player_left(now, id);
    }

    /// Kick a feed as an operator would; drains every feed's control
    /// messages (disconnects the engine asked for).
    pub fn kick(&mut self, now_ms: u64, feed: FeedId) {
        let now = self.at(now_ms);
        self.src.kick(now, feed);
        self.drain_controls();
    }

    /// Disconnect requests the engine sent to feeds since the last call.
    pub fn drain_controls(&mut self) -> Vec<(FeedId, FeedControl)> {
        let mut out = Vec::new();
        for (id, rx) in &mut self.controls {
            while let Ok(c) = rx.try_recv() {
                out.push((*id, c));
            }
        }
        out
    }

    /// The feed on air, if any.
    pub fn primary(&self, now_ms: u64) -> Option<uuid::Uuid> {
        self.src.view(self.at(now_ms)).primary
    }

    pub fn is_idle(&self) -> bool {
        self.src.is_idle()
    }
}

/// A loopback peer for synthetic feeds.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1935))
}
