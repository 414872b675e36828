//! The media model: what the gateway carries between ingest and egress.
//!
//! Media travels inside the gateway as [`Frame`]s (access units) plus one
//! [`CodecConfig`] per feed and track, never as protocol packets: ingest
//! demuxes (RTMP/FLV tag bodies via [`parse_flv_video`] /
//! [`parse_flv_audio`]), egress muxes ([`flv_video_frame`] and friends).
//! On top of that sit the pieces a switch needs: a per-feed [`GopCache`],
//! the 32-bit RTMP [`TimestampUnwrapper`], the per-switch [`Rebase`], the
//! per-source [`OutputClock`] and a [`FrameIntervalEstimator`].
//!
//! Everything here is pure data and functions: no I/O, no clock, no tokio.
//!
//! Invariants:
//! - Timestamps are `i64` milliseconds. A frame's `dts`/`pts` are on its
//!   feed's own unwrapped timeline until a [`Rebase`] maps them onto the
//!   source's output timeline; `pts - dts` (the composition offset) is never
//!   changed by rebasing or clamping.
//! - Video payloads are length-prefixed NAL units (AVCC/HVCC, 4-byte lengths
//!   as in FLV); audio payloads are one raw AAC frame. Payloads are not
//!   validated beyond being non-empty.
//! - The codec decides the byte format everywhere; a well-formed [`Frame`] or
//!   [`CodecConfig`] has `track == codec.track()` (the parsers guarantee it).
//! - Payloads are shared [`Bytes`]: cloning a frame never copies media.

pub mod codec;
mod flv;
mod gop;
mod timeline;
pub mod ts;

use bytes::Bytes;

pub use flv::{
    flv_audio_config, flv_audio_frame, flv_config, flv_frame, flv_video_config, flv_video_frame,
    parse_flv_audio, parse_flv_video, FlvBody, FlvError, FlvItem, UNSUPPORTED_FOURCC,
};
pub use gop::GopCache;
pub use timeline::{FrameIntervalEstimator, OutputClock, Rebase, TimestampUnwrapper};

/// Which elementary stream of a feed a frame or configuration belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    Video,
    Audio,
}

/// The codecs the gateway relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    H264,
    H265,
    Aac,
}

impl Codec {
    /// The track this codec's frames travel on.
    pub fn track(self) -> Track {
        match self {
            Codec::H264 | Codec::H265 => Track::Video,
            Codec::Aac => Track::Audio,
        }
    }
}

/// One access unit. Timestamps are in milliseconds on the feed's own unwrapped timeline (i64).
/// Video payload: length-prefixed NAL units (AVCC/HVCC form, 4-byte lengths as in FLV). Audio: one raw AAC frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub track: Track,
    pub codec: Codec,
    pub dts: i64,
    pub pts: i64,
    pub keyframe: bool,
    pub payload: Bytes,
}

impl Frame {
    /// Composition time offset, `pts - dts` (negative for some encoders).
    pub fn cts(&self) -> i64 {
        self.pts.saturating_sub(self.dts)
    }

    /// A video keyframe (a point where a decoder can start).
    pub fn is_video_keyframe(&self) -> bool {
        self.track == Track::Video && self.keyframe
    }
}

/// Decoder configuration of a feed's track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecConfig {
    pub track: Track,
    pub codec: Codec,
    /// AVCDecoderConfigurationRecord, HEVCDecoderConfigurationRecord or AudioSpecificConfig
    pub data: Bytes,
}
