//! FLV audio/video tag bodies ↔ [`Frame`] / [`CodecConfig`].
//!
//! Input is a tag body exactly as rml_rtmp delivers it in
//! `VideoDataReceived` / `AudioDataReceived` (no FLV tag header), with the
//! message timestamp already unwrapped to `i64` ms (it becomes the DTS).
//! Output of the builders is a full tag body to hand to
//! `ServerSession::send_video_data` / `send_audio_data`.
//!
//! Video comes in two layouts:
//! - legacy FLV: `frametype<<4 | codecid` (7 = AVC, 12 = HEVC as some
//!   encoders send), AVCPacketType (0 sequence header, 1 NALU, 2 end of
//!   sequence), signed 24-bit composition time, data;
//! - enhanced RTMP (`byte0 & 0x80`): `0x80 | frametype<<4 | packettype`,
//!   FourCC (`avc1`, `hvc1`), then for CodedFrames a signed 24-bit
//!   composition time; CodedFramesX has none (cts = 0).
//!
//! Invariants:
//! - Parsing never panics on any input (property-tested) and never copies
//!   more than the payload once.
//! - A parsed config has a non-empty record; a parsed frame has a non-empty
//!   payload (empty coded frames are [`FlvItem::Ignored`]); `track ==
//!   codec.track()`; `pts = dts + cts`; audio frames are keyframes.
//! - `parse(build(x)) == x` for every config and every frame whose `pts - dts`
//!   fits in a signed 24-bit integer. H.264 is built as legacy FLV (codec id
//!   7), H.265 as enhanced RTMP `hvc1` (CodedFrames, with cts), AAC as
//!   `0xAF` (AAC, 44 kHz, 16-bit, stereo: FLV's fixed marker for AAC).
//! - The builders are total: the frame's or config's `codec` decides the
//!   layout, whichever of the video/audio functions is called.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Codec, CodecConfig, Frame};

/// What one FLV tag body carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlvItem {
    Config(CodecConfig),
    Frame(Frame),
    /// end of sequence or anything to ignore
    Ignored,
}

/// Why a tag body could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("FLV tag body truncated")]
    Truncated,
    /// FLV codec id / sound format (0..=15), or [`UNSUPPORTED_FOURCC`] for an
    /// enhanced-RTMP FourCC other than `avc1` / `hvc1`.
    #[error("unsupported codec: {}", describe_codec(*.0))]
    UnsupportedCodec(u8),
    #[error("malformed FLV tag body: {0}")]
    Malformed(&'static str),
}

/// The value [`FlvError::UnsupportedCodec`] carries for an enhanced-RTMP
/// FourCC this gateway does not relay (FLV codec ids are 4 bits, so it cannot
/// clash with one).
pub const UNSUPPORTED_FOURCC: u8 = 0xFF;

fn describe_codec(id: u8) -> String {
    if id == UNSUPPORTED_FOURCC {
        "enhanced RTMP FourCC other than avc1/hvc1".to_owned()
    } else {
        format!("FLV codec id {id}")
    }
}

// Legacy FLV video.
const FRAME_TYPE_KEY: u8 = 1;
const FRAME_TYPE_INTER: u8 = 2;
const FRAME_TYPE_COMMAND: u8 = 5;
const CODEC_ID_AVC: u8 = 7;
const CODEC_ID_HEVC: u8 = 12;
const AVC_SEQUENCE_HEADER: u8 = 0;
const AVC_NALU: u8 = 1;
const AVC_END_OF_SEQUENCE: u8 = 2;

// Enhanced RTMP video.
const EX_HEADER: u8 = 0x80;
const EX_SEQUENCE_START: u8 = 0;
const EX_CODED_FRAMES: u8 = 1;
const EX_SEQUENCE_END: u8 = 2;
const EX_CODED_FRAMES_X: u8 = 3;
const FOURCC_AVC: &[u8; 4] = b"avc1";
const FOURCC_HEVC: &[u8; 4] = b"hvc1";

// Audio.
const SOUND_FORMAT_AAC: u8 = 10;
/// AAC, 44 kHz, 16-bit, stereo: what FLV requires for AAC whatever the real
/// parameters (those are in the AudioSpecificConfig).
const AAC_MARKER: u8 = 0xAF;
const AAC_SEQUENCE_HEADER: u8 = 0;
const AAC_RAW: u8 = 1;

const CTS_MIN: i64 = -(1 << 23);
const CTS_MAX: i64 = (1 << 23) - 1;

/// Parse an RTMP/FLV VIDEO tag body (as delivered by rml_rtmp VideoDataReceived) with the message timestamp already unwrapped to i64 ms.
/// Legacy FLV: byte0 = frametype<<4 | codecid (7 = AVC, 12 = HEVC as some encoders send); AVCPacketType byte1 (0 = seq header, 1 = NALU, 2 = end of seq); cts = signed 24-bit bytes 2..5; pts = dts + cts.
/// Enhanced RTMP (byte0 & 0x80): frametype = (byte0>>4)&7, packettype = byte0 & 0x0f, FourCC bytes1..5 ('hvc1' -> H265, 'avc1' -> H264; others -> UnsupportedCodec); packet types 0 SequenceStart, 1 CodedFrames (with 3-byte cts), 3 CodedFramesX (cts = 0), 2 SequenceEnd, others Ignored.
///
/// Also [`FlvItem::Ignored`]: video info/command frames (frame type 5) and
/// coded frames with an empty payload. Only frame type 1 is a keyframe.
pub fn parse_flv_video(body: &[u8], dts: i64) -> Result<FlvItem, FlvError> {
    let &b0 = body.first().ok_or(FlvError::Truncated)?;
    if b0 & EX_HEADER != 0 {
        return parse_enhanced_video(body, dts);
    }
    let frame_type = b0 >> 4;
    let codec = match b0 & 0x0f {
        CODEC_ID_AVC => Codec::H264,
        CODEC_ID_HEVC => Codec::H265,
        other => return Err(FlvError::UnsupportedCodec(other)),
    };
    if frame_type == FRAME_TYPE_COMMAND {
        return Ok(FlvItem::Ignored);
    }
    let &packet_type = body.get(1).ok_or(FlvError::Truncated)?;
    match packet_type {
        AVC_END_OF_SEQUENCE => Ok(FlvItem::Ignored),
        AVC_SEQUENCE_HEADER | AVC_NALU => {
            let cts = read_i24(body.get(2..5).ok_or(FlvError::Truncated)?);
            let data = &body[5..];
            if packet_type == AVC_SEQUENCE_HEADER {
                config(codec, data)
            } else {
                Ok(frame(codec, dts, cts, frame_type == FRAME_TYPE_KEY, data))
            }
        }
        _ => Err(FlvError::Malformed("unknown AVCPacketType")),
    }
}

fn parse_enhanced_video(body: &[u8], dts: i64) -> Result<FlvItem, FlvError> {
    let b0 = body[0];
    let frame_type = (b0 >> 4) & 0x07;
    let packet_type = b0 & 0x0f;
    if !matches!(
        packet_type,
        EX_SEQUENCE_START | EX_CODED_FRAMES | EX_SEQUENCE_END | EX_CODED_FRAMES_X
    ) {
        // Metadata, MPEG-2 TS sequence start, multitrack, ModEx: not relayed.
        return Ok(FlvItem::Ignored);
    }
    if frame_type == FRAME_TYPE_COMMAND {
        // A command frame carries a command byte instead of a FourCC.
        return Ok(FlvItem::Ignored);
    }
    let fourcc = body.get(1..5).ok_or(FlvError::Truncated)?;
    let codec = if fourcc == FOURCC_AVC {
        Codec::H264
    } else if fourcc == FOURCC_HEVC {
        Codec::H265
    } else {
        return Err(FlvError::UnsupportedCodec(UNSUPPORTED_FOURCC));
    };
    let rest = &body[5..];
    let keyframe = frame_type == FRAME_TYPE_KEY;
    match packet_type {
        EX_SEQUENCE_START => config(codec, rest),
        EX_CODED_FRAMES => {
            let cts = read_i24(rest.get(..3).ok_or(FlvError::Truncated)?);
            Ok(frame(codec, dts, cts, keyframe, &rest[3..]))
        }
        EX_CODED_FRAMES_X => Ok(frame(codec, dts, 0, keyframe, rest)),
        _ => Ok(FlvItem::Ignored), // EX_SEQUENCE_END
    }
}

/// Parse an FLV AUDIO tag body: byte0>>4 == 10 is AAC (others -> UnsupportedCodec); byte1 0 = AudioSpecificConfig, 1 = raw frame. Audio frames are keyframes (keyframe = true).
///
/// A raw frame with an empty payload is [`FlvItem::Ignored`].
pub fn parse_flv_audio(body: &[u8], dts: i64) -> Result<FlvItem, FlvError> {
    let &b0 = body.first().ok_or(FlvError::Truncated)?;
    let format = b0 >> 4;
    if format != SOUND_FORMAT_AAC {
        return Err(FlvError::UnsupportedCodec(format));
    }
    let &packet_type = body.get(1).ok_or(FlvError::Truncated)?;
    let data = &body[2..];
    match packet_type {
        AAC_SEQUENCE_HEADER => config(Codec::Aac, data),
        AAC_RAW => Ok(frame(Codec::Aac, dts, 0, true, data)),
        _ => Err(FlvError::Malformed("unknown AACPacketType")),
    }
}

fn config(codec: Codec, data: &[u8]) -> Result<FlvItem, FlvError> {
    if data.is_empty() {
        return Err(FlvError::Malformed("empty decoder configuration"));
    }
    Ok(FlvItem::Config(CodecConfig {
        track: codec.track(),
        codec,
        data: Bytes::copy_from_slice(data),
    }))
}

fn frame(codec: Codec, dts: i64, cts: i32, keyframe: bool, payload: &[u8]) -> FlvItem {
    if payload.is_empty() {
        return FlvItem::Ignored;
    }
    FlvItem::Frame(Frame {
        track: codec.track(),
        codec,
        dts,
        pts: dts.saturating_add(i64::from(cts)),
        keyframe,
        payload: Bytes::copy_from_slice(payload),
    })
}

fn read_i24(b: &[u8]) -> i32 {
    let raw = (i32::from(b[0]) << 16) | (i32::from(b[1]) << 8) | i32::from(b[2]);
    // Sign-extend from bit 23.
    (raw << 8) >> 8
}

fn put_i24(buf: &mut impl BufMut, v: i64) {
    let v = v.clamp(CTS_MIN, CTS_MAX) as i32;
    buf.put_slice(&v.to_be_bytes()[1..]);
}

/// The FLV tag body announcing `cfg`, laid out by `cfg.codec`.
pub fn flv_config(cfg: &CodecConfig) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + cfg.data.len());
    match cfg.codec {
        Codec::H264 => {
            buf.put_u8(FRAME_TYPE_KEY << 4 | CODEC_ID_AVC);
            buf.put_u8(AVC_SEQUENCE_HEADER);
            put_i24(&mut buf, 0);
        }
        Codec::H265 => {
            buf.put_u8(EX_HEADER | FRAME_TYPE_KEY << 4 | EX_SEQUENCE_START);
            buf.put_slice(FOURCC_HEVC);
        }
        Codec::Aac => {
            buf.put_u8(AAC_MARKER);
            buf.put_u8(AAC_SEQUENCE_HEADER);
        }
    }
    buf.put_slice(&cfg.data);
    buf.freeze()
}

/// An FLV tag body in two parts: the tag's own few header bytes (`head`,
/// at most [`FlvBody::MAX_HEAD`]) and the frame's payload, which is shared
/// with the GOP cache and every player instead of copied behind a new head
/// per tag. A body built elsewhere (a configuration, a tag read from a
/// file) is all payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlvBody {
    head_len: u8,
    head: [u8; FlvBody::MAX_HEAD],
    payload: Bytes,
}

impl FlvBody {
    /// The longest head: enhanced RTMP's frame byte, FourCC and 24-bit cts.
    pub const MAX_HEAD: usize = 8;

    fn with_head(head: &[u8], payload: Bytes) -> Self {
        let mut h = [0u8; Self::MAX_HEAD];
        h[..head.len()].copy_from_slice(head);
        Self {
            head_len: head.len() as u8,
            head: h,
            payload,
        }
    }

    /// The bytes before the payload.
    pub fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    /// The bytes after the head (shared, not copied).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The whole body's length.
    pub fn len(&self) -> usize {
        usize::from(self.head_len) + self.payload.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body in one buffer (a copy unless it is all payload), for what
    /// needs it contiguous: rml_rtmp's publishing session, parsers.
    pub fn to_bytes(&self) -> Bytes {
        if self.head_len == 0 {
            return self.payload.clone();
        }
        let mut buf = BytesMut::with_capacity(self.len());
        buf.put_slice(self.head());
        buf.put_slice(&self.payload);
        buf.freeze()
    }
}

impl From<Bytes> for FlvBody {
    fn from(payload: Bytes) -> Self {
        Self::with_head(&[], payload)
    }
}

/// The FLV tag body carrying `frame`, laid out by `frame.codec`; the written
/// composition time is `pts - dts` clamped to the signed 24-bit range. The
/// payload is `frame.payload` itself.
pub fn flv_frame(frame: &Frame) -> FlvBody {
    let mut buf = [0u8; FlvBody::MAX_HEAD];
    let frame_type = if frame.keyframe {
        FRAME_TYPE_KEY
    } else {
        FRAME_TYPE_INTER
    };
    let len = {
        let mut w = &mut buf[..];
        match frame.codec {
            Codec::H264 => {
                w.put_u8(frame_type << 4 | CODEC_ID_AVC);
                w.put_u8(AVC_NALU);
                put_i24(&mut w, frame.cts());
            }
            Codec::H265 => {
                w.put_u8(EX_HEADER | frame_type << 4 | EX_CODED_FRAMES);
                w.put_slice(FOURCC_HEVC);
                put_i24(&mut w, frame.cts());
            }
            Codec::Aac => {
                w.put_u8(AAC_MARKER);
                w.put_u8(AAC_RAW);
            }
        }
        FlvBody::MAX_HEAD - w.len()
    };
    FlvBody::with_head(&buf[..len], frame.payload.clone())
}

/// Build FLV tag bodies back (for RTMP players). H.264 uses legacy FLV (codec id 7); H.265 uses enhanced RTMP ('hvc1', CodedFrames with cts). Returned Bytes is the full tag body.
///
/// Same as [`flv_config`]: the codec decides the layout.
pub fn flv_video_config(cfg: &CodecConfig) -> Bytes {
    flv_config(cfg)
}

/// The AAC sequence header tag body (`AF 00` + AudioSpecificConfig). Same as
/// [`flv_config`]: the codec decides the layout.
pub fn flv_audio_config(cfg: &CodecConfig) -> Bytes {
    flv_config(cfg)
}

/// `cts` written = frame.pts - frame.dts (clamped to the signed 24-bit range).
///
/// Same as [`flv_frame`]: the codec decides the layout.
pub fn flv_video_frame(frame: &Frame) -> FlvBody {
    flv_frame(frame)
}

/// The AAC raw-frame tag body (`AF 01` + frame). Same as [`flv_frame`]: the
/// codec decides the layout.
pub fn flv_audio_frame(frame: &Frame) -> FlvBody {
    flv_frame(frame)
}

#[cfg(test)]
#[path = "flv_tests.rs"]
mod tests;
