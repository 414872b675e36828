//! Players of one specific feed rather than of a source's primary: what a
//! cluster peer's relay pulls (node-to-node relay, DESIGN section 6), so a
//! node can serve any of its feeds — the primary or a runner-up — to the
//! nodes that mirror it.
//!
//! Invariants: a feed player gets the feed's own header (metadata, codec
//! configurations) before its first frame, then the feed's frames with the
//! feed's own timestamps (the mirroring node rebases them like any feed's);
//! it starts at the feed's cached GOP, so the mirror has a keyframe at once;
//! it is closed when its feed leaves.

use std::sync::Arc;

use super::feed::FeedSlot;
use super::player::{Player, PlayerFormat, PlayerItem, Sent};
use crate::domain::FeedId;
use crate::media::{self, Frame, Track};
use crate::metrics::Metrics;

#[derive(Default)]
pub(super) struct FeedPlayers {
    players: Vec<(FeedId, Player)>,
}

/// A frame with its own timestamps, as an FLV player item.
fn item(frame: &Frame) -> PlayerItem {
    let ts = frame.dts as u32;
    match frame.track {
        Track::Video => PlayerItem::Video {
            ts,
            body: media::flv_video_frame(frame),
            keyframe: frame.keyframe,
        },
        Track::Audio => PlayerItem::Audio {
            ts,
            body: media::flv_audio_frame(frame),
        },
    }
}

/// The feed's header: metadata and codec configurations.
fn header(slot: &FeedSlot) -> Vec<PlayerItem> {
    let ts = slot.last_dts.unwrap_or(0).max(0) as u32;
    let mut h = Vec::new();
    if let Some(m) = &slot.metadata {
        h.push(PlayerItem::Metadata(m.clone()));
    }
    if let Some(v) = &slot.video_cfg {
        h.push(PlayerItem::Video {
            ts,
            body: media::flv_video_config(v).into(),
            keyframe: true,
        });
    }
    if let Some(a) = &slot.audio_cfg {
        h.push(PlayerItem::Audio {
            ts,
            body: media::flv_audio_config(a).into(),
        });
    }
    h
}

impl FeedPlayers {
    /// A new player of `feed`, started at its cached GOP.
    pub fn join(
        &mut self,
        feed: FeedId,
        slot: &FeedSlot,
        mut player: Player,
        metrics: &Arc<Metrics>,
    ) {
        let frames: Vec<PlayerItem> = slot.gop.frames().map(item).collect();
        if !frames.is_empty() {
            player.start(&header(slot), &frames);
        }
        metrics.players.inc();
        self.players.push((feed, player));
    }

    /// A frame of `feed` (its own timestamps).
    pub fn frame(&mut self, feed: FeedId, slot: &FeedSlot, frame: &Frame, metrics: &Arc<Metrics>) {
        if !self.players.iter().any(|(f, _)| *f == feed) {
            return;
        }
        let sync = match frame.track {
            Track::Video => frame.keyframe,
            Track::Audio => !slot.has_video(),
        };
        let it = item(frame);
        let hdr = header(slot);
        for (_, p) in self.players.iter_mut().filter(|(f, _)| *f == feed) {
            if let Sent::Ok = p.deliver(&hdr, &it, sync) {
                metrics.bytes_out.inc_by(it.payload_len() as u64);
            }
        }
        self.reap(metrics);
    }

    /// The feed's configuration or metadata changed.
    pub fn header_changed(&mut self, feed: FeedId, slot: &FeedSlot) {
        let hdr = header(slot);
        for (_, p) in self.players.iter_mut().filter(|(f, _)| *f == feed) {
            p.send_header(&hdr);
        }
    }

    /// The feed left: its players are told and let go.
    pub fn feed_gone(&mut self, feed: FeedId, metrics: &Arc<Metrics>) {
        let before = self.players.len();
        self.players.retain_mut(|(f, p)| {
            if *f == feed {
                p.close("feed ended");
                false
            } else {
                true
            }
        });
        metrics.players.sub((before - self.players.len()) as i64);
    }

    /// A player left; returns the feed it watched.
    pub fn leave(&mut self, id: u64, metrics: &Arc<Metrics>) -> Option<FeedId> {
        let i = self.players.iter().position(|(_, p)| p.id == id)?;
        let (feed, _) = self.players.remove(i);
        metrics.players.dec();
        Some(feed)
    }

    pub fn watching(&self, feed: FeedId) -> bool {
        self.players.iter().any(|(f, p)| *f == feed && !p.closed)
    }

    pub fn is_empty(&self) -> bool {
        self.players.is_empty()
    }

    pub fn format_ok(format: PlayerFormat) -> bool {
        format == PlayerFormat::Flv
    }

    fn reap(&mut self, metrics: &Arc<Metrics>) {
        let before = self.players.len();
        self.players.retain(|(_, p)| !p.closed);
        metrics.players.sub((before - self.players.len()) as i64);
    }
}
