//! Protocol payloads → the engine's [`FeedMedia`], shared by the servers
//! (`crate::server`: RTMP publishers, SRT publishers) and the pulling
//! client (`crate::client`), so every way a feed enters the gateway demuxes the
//! same way.
//!
//! [`FlvDemux`] takes RTMP audio/video message bodies (FLV tag bodies) with
//! their 32-bit timestamps, unwrapped per track; [`TsFeedDemux`] takes an
//! MPEG-TS byte stream in arbitrary chunks.

use crate::engine::FeedMedia;
use crate::media::ts::demux::{DemuxEvent, TsDemuxer};
use crate::media::{self, FlvError, FlvItem, TimestampUnwrapper, Track};

/// FLV tag bodies of one feed → media.
#[derive(Debug, Default)]
pub struct FlvDemux {
    video_ts: TimestampUnwrapper,
    audio_ts: TimestampUnwrapper,
}

impl FlvDemux {
    pub fn new() -> Self {
        Self::default()
    }

    /// One audio or video message body with its RTMP timestamp. `Ok(None)`
    /// for what carries nothing to relay (end of sequence, command frames).
    pub fn tag(
        &mut self,
        track: Track,
        body: &[u8],
        ts: u32,
    ) -> Result<Option<FeedMedia>, FlvError> {
        let parsed = match track {
            Track::Video => media::parse_flv_video(body, self.video_ts.unwrap(ts)),
            Track::Audio => media::parse_flv_audio(body, self.audio_ts.unwrap(ts)),
        }?;
        Ok(match parsed {
            FlvItem::Config(c) => Some(FeedMedia::Config(c)),
            FlvItem::Frame(f) => Some(FeedMedia::Frame(f)),
            FlvItem::Ignored => None,
        })
    }
}

/// An MPEG-TS byte stream of one feed → media.
#[derive(Debug, Default)]
pub struct TsFeedDemux {
    demux: TsDemuxer,
}

impl TsFeedDemux {
    pub fn new() -> Self {
        Self::default()
    }

    /// Demux a chunk; the media it completed, in stream order.
    pub fn push(&mut self, data: &[u8]) -> impl Iterator<Item = FeedMedia> {
        self.demux.push(data).into_iter().map(|ev| match ev {
            DemuxEvent::Config(c) => FeedMedia::Config(c),
            DemuxEvent::Frame(f) => FeedMedia::Frame(f),
        })
    }
}
