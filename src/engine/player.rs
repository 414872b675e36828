//! Fan-out to players: bounded queues, never blocking on the slowest.
//!
//! A player is `synced` once it has the source's header (metadata, codec
//! configurations) and a keyframe. A full queue makes it unsynced: it then
//! skips everything until the next keyframe, where it gets the header again.

use std::sync::Arc;

use bytes::Bytes;
use rml_rtmp::sessions::StreamMetadata;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::media::FlvBody;

/// What a player session receives. Timestamps are the source's output
/// timeline in milliseconds, wrapped to 32 bits for RTMP.
#[derive(Debug, Clone)]
pub enum PlayerItem {
    Metadata(Arc<StreamMetadata>),
    /// An FLV video tag body (configuration or frame).
    Video {
        ts: u32,
        body: FlvBody,
        keyframe: bool,
    },
    /// An FLV audio tag body (configuration or frame).
    Audio {
        ts: u32,
        body: FlvBody,
    },
    /// MPEG-TS packets (a multiple of 188 bytes) from the source's shared
    /// muxer; `keyframe` when they start with PSI and a video keyframe.
    Ts {
        data: Bytes,
        keyframe: bool,
    },
    /// The source is gone (vacant for longer than `vacant_hold`).
    Close {
        reason: &'static str,
    },
}

/// What a player receives: FLV tag bodies (RTMP) or MPEG-TS (SRT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayerFormat {
    Flv,
    Ts,
}

impl PlayerItem {
    pub fn payload_len(&self) -> usize {
        match self {
            PlayerItem::Video { body, .. } | PlayerItem::Audio { body, .. } => body.len(),
            PlayerItem::Ts { data, .. } => data.len(),
            _ => 0,
        }
    }
}

pub(super) struct Player {
    pub id: u64,
    pub format: PlayerFormat,
    tx: mpsc::Sender<PlayerItem>,
    synced: bool,
    pub closed: bool,
}

pub(super) enum Sent {
    Ok,
    Skipped,
}

impl Player {
    pub fn new(id: u64, tx: mpsc::Sender<PlayerItem>, format: PlayerFormat) -> Self {
        Self {
            id,
            format,
            tx,
            synced: false,
            closed: false,
        }
    }

    fn try_send(&mut self, item: PlayerItem) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.synced = false;
                false
            }
            Err(TrySendError::Closed(_)) => {
                self.closed = true;
                self.synced = false;
                false
            }
        }
    }

    /// Send the header and a starting sequence (keyframe first), making the
    /// player synced if everything fit.
    pub fn start(&mut self, header: &[PlayerItem], frames: &[PlayerItem]) -> bool {
        self.synced = false;
        for item in header.iter().chain(frames) {
            if !self.try_send(item.clone()) {
                return false;
            }
        }
        self.synced = true;
        true
    }

    /// Deliver one live item. A keyframe (`sync_point`) re-syncs a lagging
    /// player with the header first.
    pub fn deliver(&mut self, header: &[PlayerItem], item: &PlayerItem, sync_point: bool) -> Sent {
        if self.closed {
            return Sent::Skipped;
        }
        if self.synced {
            if self.try_send(item.clone()) {
                return Sent::Ok;
            }
            return Sent::Skipped;
        }
        if sync_point && self.start(header, std::slice::from_ref(item)) {
            return Sent::Ok;
        }
        Sent::Skipped
    }

    /// Send a header change to a synced player (a new feed's configs).
    pub fn send_header(&mut self, header: &[PlayerItem]) {
        if self.synced {
            for item in header {
                if !self.try_send(item.clone()) {
                    return;
                }
            }
        }
    }

    pub fn close(&mut self, reason: &'static str) {
        let _ = self.tx.try_send(PlayerItem::Close { reason });
        self.closed = true;
    }
}
