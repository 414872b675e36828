//! One feed's state inside its source: codec configuration, metadata, GOP
//! cache, health and statistics.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use rml_rtmp::sessions::StreamMetadata;
use tokio::sync::mpsc;

use super::loss::{LossEstimator, LossParams};
use super::{FeedControl, FeedMeta};
use crate::media::{CodecConfig, Frame, FrameIntervalEstimator, GopCache, Track};

/// Bytes per one-second bucket over the last few seconds.
#[derive(Debug, Default)]
struct RateWindow {
    buckets: [(u64, u64); RATE_SECONDS + 1],
}

const RATE_SECONDS: usize = 5;

impl RateWindow {
    fn add(&mut self, second: u64, bytes: u64) {
        let slot = &mut self.buckets[(second as usize) % (RATE_SECONDS + 1)];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += bytes;
    }

    /// kbit/s over the last RATE_SECONDS complete seconds.
    fn kbps(&self, now_second: u64) -> f64 {
        let total: u64 = self
            .buckets
            .iter()
            .filter(|(s, _)| *s < now_second && now_second - *s <= RATE_SECONDS as u64)
            .map(|(_, b)| *b)
            .sum();
        (total * 8) as f64 / 1000.0 / RATE_SECONDS as f64
    }
}

/// Where a feed of another node comes from (global election).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Origin {
    pub node: String,
    pub region: String,
    /// As its node reported it: eligible since (None: not eligible).
    pub eligible_since: Option<Instant>,
    pub draining: bool,
    /// Its local mirror, if one runs.
    pub relay: Option<super::RelayState>,
}

impl Origin {
    /// Eligible since, as this node sees it: unavailable while its relay
    /// is broken (a node elects among what it can still see).
    pub fn effective_since(&self) -> Option<Instant> {
        if self.relay == Some(super::RelayState::Retrying) {
            None
        } else {
            self.eligible_since
        }
    }
}

pub(super) struct FeedSlot {
    pub meta: FeedMeta,
    /// `Some` for a feed published on another node; media arrives only
    /// through a relay (a mirror of it) and its eligibility comes from the
    /// registry, not from local health checks.
    pub origin: Option<Origin>,
    pub control: mpsc::Sender<FeedControl>,
    pub connected_at: DateTime<Utc>,
    pub joined: Instant,
    pub video_cfg: Option<CodecConfig>,
    pub audio_cfg: Option<CodecConfig>,
    pub metadata: Option<Arc<StreamMetadata>>,
    pub gop: GopCache,
    pub interval: FrameIntervalEstimator,
    pub last_media: Option<Instant>,
    /// The learned loss window (`None`: no media timeout configured).
    pub loss: Option<LossEstimator>,
    pub healthy: bool,
    pub draining: bool,
    /// Disconnect this feed once it is off the air (planned switch done).
    pub disconnect_after_cut: Option<String>,
    pub frames: u64,
    pub keyframes: u64,
    last_keyframe_dts: Option<i64>,
    pub keyframe_interval_ms: Option<i64>,
    pub last_dts: Option<i64>,
    pub srt: Option<super::SrtFeedStats>,
    video_rate: RateWindow,
    audio_rate: RateWindow,
}

impl FeedSlot {
    /// `connected_at`: the wall-clock time at `now`.
    pub fn new(
        now: Instant,
        connected_at: DateTime<Utc>,
        meta: FeedMeta,
        control: mpsc::Sender<FeedControl>,
        gop_max: usize,
        loss: Option<LossParams>,
    ) -> Self {
        Self {
            meta,
            origin: None,
            control,
            connected_at,
            joined: now,
            video_cfg: None,
            audio_cfg: None,
            metadata: None,
            gop: GopCache::new(gop_max),
            interval: FrameIntervalEstimator::new(),
            last_media: None,
            loss: loss.map(LossEstimator::new),
            healthy: false,
            draining: false,
            disconnect_after_cut: None,
            frames: 0,
            keyframes: 0,
            last_keyframe_dts: None,
            keyframe_interval_ms: None,
            last_dts: None,
            srt: None,
            video_rate: RateWindow::default(),
            audio_rate: RateWindow::default(),
        }
    }

    /// Record a frame. Returns true when the feed just became healthy
    /// (it has a keyframe to start from).
    pub fn observe(&mut self, now: Instant, frame: &Frame) -> bool {
        let second = now.duration_since(self.joined).as_secs();
        self.frames += 1;
        self.last_media = Some(now);
        if let Some(l) = self.loss.as_mut() {
            l.observe(now);
        }
        self.last_dts = Some(frame.dts);
        match frame.track {
            Track::Video => {
                self.video_rate.add(second, frame.payload.len() as u64);
                self.interval.observe(frame.dts);
                if frame.keyframe {
                    self.keyframes += 1;
                    if let Some(prev) = self.last_keyframe_dts {
                        let d = frame.dts - prev;
                        if d > 0 {
                            self.keyframe_interval_ms = Some(match self.keyframe_interval_ms {
                                Some(avg) => (avg * 3 + d) / 4,
                                None => d,
                            });
                        }
                    }
                    self.last_keyframe_dts = Some(frame.dts);
                }
            }
            Track::Audio => self.audio_rate.add(second, frame.payload.len() as u64),
        }
        self.gop.push(frame);
        let ready =
            self.gop.has_keyframe() || (self.video_cfg.is_none() && frame.track == Track::Audio);
        if ready && !self.healthy {
            self.healthy = true;
            return true;
        }
        false
    }

    /// The feed stopped sending media: forget its stale GOP so it is only
    /// cut to again from a fresh keyframe.
    pub fn mark_unhealthy(&mut self) {
        self.healthy = false;
        self.gop.clear();
    }

    pub fn is_remote(&self) -> bool {
        self.origin.is_some()
    }

    pub fn has_video(&self) -> bool {
        self.video_cfg.is_some()
    }

    pub fn video_kbps(&self, now: Instant) -> f64 {
        self.video_rate
            .kbps(now.duration_since(self.joined).as_secs())
    }

    pub fn audio_kbps(&self, now: Instant) -> f64 {
        self.audio_rate
            .kbps(now.duration_since(self.joined).as_secs())
    }

    pub fn disconnect(&self, reason: &str) {
        let _ = self.control.try_send(FeedControl::Disconnect {
            reason: reason.to_owned(),
        });
    }
}
