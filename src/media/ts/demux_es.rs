//! Elementary streams of the TS demuxer: PES reassembly per PID, PES header
//! and 90 kHz timestamp parsing, and the codec layer turning H.264 / H.265
//! access units and ADTS frames into [`DemuxEvent`]s.

use bytes::Bytes;

use super::{DemuxEvent, DemuxStats};
use crate::media::codec::{
    self, h264_nal_type, h265_is_irap, h265_nal_type, parse_adts_header, AdtsHeader,
};
use crate::media::{Codec, CodecConfig, Frame, Track};

/// A PES larger than this is dropped (no sane access unit is that big).
const MAX_PES: usize = 8 << 20;
const TS_WRAP: i64 = 1 << 33;

/// Unwraps 33-bit 90 kHz timestamps onto a monotonic `i64` tick line; the
/// first value maps to itself. Shared by all PIDs of the program so audio
/// and video stay in step across the wrap.
#[derive(Debug, Default)]
pub(super) struct Clock {
    last: Option<i64>,
}

impl Clock {
    pub(super) fn unwrap(&mut self, raw: u64) -> i64 {
        let v = (raw % TS_WRAP as u64) as i64;
        let ext = match self.last {
            None => v,
            Some(last) => {
                // 2^64 is a multiple of 2^33: wrapping keeps the residue right.
                let mut diff = v.wrapping_sub(last).rem_euclid(TS_WRAP);
                if diff >= TS_WRAP / 2 {
                    diff -= TS_WRAP;
                }
                last.saturating_add(diff)
            }
        };
        self.last = Some(ext);
        ext
    }
}

/// 90 kHz ticks → milliseconds (floor, so the mapping is monotonic).
pub(super) fn ticks_to_ms(ticks: i64) -> i64 {
    ticks.div_euclid(90)
}

/// A parsed PES packet.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Pes<'a> {
    pub(super) pts: Option<u64>,
    pub(super) dts: Option<u64>,
    pub(super) payload: &'a [u8],
}

fn read_timestamp(b: &[u8]) -> u64 {
    (u64::from(b[0] >> 1) & 7) << 30
        | u64::from(b[1]) << 22
        | u64::from(b[2] >> 1) << 15
        | u64::from(b[3]) << 7
        | u64::from(b[4] >> 1)
}

/// Parse a whole PES packet (MPEG-2 header form). `None` when malformed.
pub(super) fn parse_pes(buf: &[u8]) -> Option<Pes<'_>> {
    if buf.len() < 9 || buf[..3] != [0, 0, 1] || buf[6] & 0xC0 != 0x80 {
        return None;
    }
    let declared = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    let end = if declared == 0 {
        buf.len()
    } else {
        let end = 6 + declared;
        if end > buf.len() {
            return None;
        }
        end
    };
    let flags = buf[7] >> 6;
    let start = 9 + usize::from(buf[8]);
    if start > end {
        return None;
    }
    let header = &buf[9..start];
    let (pts, dts) = match flags {
        2 => (Some(read_timestamp(header.get(..5)?)), None),
        3 => (
            Some(read_timestamp(header.get(..5)?)),
            Some(read_timestamp(header.get(5..10)?)),
        ),
        _ => (None, None),
    };
    Some(Pes {
        pts,
        dts,
        payload: &buf[start..end],
    })
}

/// Total PES size if the header declares one and enough is known.
fn declared_total(buf: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([*buf.get(4)?, *buf.get(5)?]));
    (len != 0).then_some(6 + len)
}

/// The TS-level view of a packet for an elementary PID.
pub(super) struct PacketInfo {
    pub(super) pusi: bool,
    pub(super) scrambled: bool,
    pub(super) cc: u8,
    pub(super) discontinuity: bool,
}

/// Continuity-counter check for a packet carrying payload.
pub(super) enum Continuity {
    Ok,
    Duplicate,
    Broken,
}

pub(super) fn check_cc(last: &mut Option<u8>, cc: u8, discontinuity: bool) -> Continuity {
    let verdict = match *last {
        None => Continuity::Ok,
        Some(_) if discontinuity => Continuity::Ok,
        Some(l) if l == cc => Continuity::Duplicate,
        Some(l) if (l + 1) & 0x0F == cc => Continuity::Ok,
        Some(_) => Continuity::Broken,
    };
    *last = Some(cc);
    verdict
}

/// One elementary PID: PES reassembly plus its codec handler.
#[derive(Debug)]
pub(super) struct Es {
    pub(super) pid: u16,
    pub(super) stream_type: u8,
    cc: Option<u8>,
    pes: Vec<u8>,
    active: bool,
    handler: Handler,
}

#[derive(Debug)]
enum Handler {
    Video(VideoEs),
    Audio(AacEs),
}

impl Es {
    /// A handler for a supported stream type (0x1B H.264, 0x24 H.265, 0x0F
    /// AAC ADTS), `None` otherwise.
    pub(super) fn new(pid: u16, stream_type: u8) -> Option<Es> {
        let handler = match stream_type {
            0x1B => Handler::Video(VideoEs::new(Codec::H264)),
            0x24 => Handler::Video(VideoEs::new(Codec::H265)),
            0x0F => Handler::Audio(AacEs::default()),
            _ => return None,
        };
        Some(Es {
            pid,
            stream_type,
            cc: None,
            pes: Vec::new(),
            active: false,
            handler,
        })
    }

    /// A packet of this PID with payload (possibly empty after the
    /// adaptation field).
    pub(super) fn packet(
        &mut self,
        info: &PacketInfo,
        payload: &[u8],
        clock: &mut Clock,
        stats: &mut DemuxStats,
        out: &mut Vec<DemuxEvent>,
    ) {
        match check_cc(&mut self.cc, info.cc, info.discontinuity) {
            Continuity::Ok => {}
            Continuity::Duplicate => return,
            Continuity::Broken => {
                stats.continuity_errors += 1;
                self.abort();
            }
        }
        if info.scrambled {
            // Unreadable: a unit start still completes the previous PES.
            if info.pusi {
                self.finish(clock, stats, out);
            }
            self.abort();
            return;
        }
        if info.pusi {
            if self.active {
                self.finish(clock, stats, out);
            }
            self.pes.clear();
            self.active = true;
        } else if !self.active {
            return;
        }
        self.pes.extend_from_slice(payload);
        if self.pes.len() > MAX_PES {
            stats.pes_errors += 1;
            self.abort();
            return;
        }
        if let Some(total) = declared_total(&self.pes) {
            if self.pes.len() >= total {
                self.pes.truncate(total);
                self.finish(clock, stats, out);
            }
        }
    }

    /// Drop the PES being collected (damage): wait for the next unit start.
    pub(super) fn abort(&mut self) {
        self.active = false;
        self.pes.clear();
        match &mut self.handler {
            Handler::Video(_) => {}
            Handler::Audio(a) => a.reset(),
        }
    }

    /// Complete the PES being collected (next unit start, end of stream, or
    /// the stream leaving the PMT).
    pub(super) fn finish(
        &mut self,
        clock: &mut Clock,
        stats: &mut DemuxStats,
        out: &mut Vec<DemuxEvent>,
    ) {
        if !self.active {
            return;
        }
        self.active = false;
        match parse_pes(&self.pes) {
            None => stats.pes_errors += 1,
            Some(pes) => {
                let dts = pes.dts.map(|t| clock.unwrap(t));
                let pts = pes.pts.map(|t| clock.unwrap(t));
                match &mut self.handler {
                    Handler::Video(v) => v.access_unit(pts, dts, pes.payload, stats, out),
                    Handler::Audio(a) => a.pes(pts, pes.payload, stats, out),
                }
            }
        }
        self.pes.clear();
    }
}

/// H.264 / H.265: Annex-B access units → AVCC/HVCC frames + records.
#[derive(Debug)]
struct VideoEs {
    codec: Codec,
    vps: Vec<Bytes>,
    sps: Vec<Bytes>,
    pps: Vec<Bytes>,
    config: Option<Bytes>,
}

impl VideoEs {
    fn new(codec: Codec) -> Self {
        VideoEs {
            codec,
            vps: Vec::new(),
            sps: Vec::new(),
            pps: Vec::new(),
            config: None,
        }
    }

    fn access_unit(
        &mut self,
        pts: Option<i64>,
        dts: Option<i64>,
        data: &[u8],
        stats: &mut DemuxStats,
        out: &mut Vec<DemuxEvent>,
    ) {
        let Some(pts) = pts else {
            stats.pes_errors += 1;
            return;
        };
        let dts = dts.unwrap_or(pts);
        let (mut vps, mut sps, mut pps) = (Vec::new(), Vec::new(), Vec::new());
        let mut keep = Vec::new();
        let mut keyframe = false;
        for nal in codec::annexb_nal_units(data) {
            if self.codec == Codec::H264 {
                match h264_nal_type(nal) {
                    codec::H264_NAL_SPS => sps.push(nal),
                    codec::H264_NAL_PPS => pps.push(nal),
                    codec::H264_NAL_AUD | codec::H264_NAL_FILLER => {}
                    t => {
                        keyframe |= t == codec::H264_NAL_IDR;
                        keep.push(nal);
                    }
                }
            } else {
                match h265_nal_type(nal) {
                    codec::H265_NAL_VPS => vps.push(nal),
                    codec::H265_NAL_SPS => sps.push(nal),
                    codec::H265_NAL_PPS => pps.push(nal),
                    codec::H265_NAL_AUD | codec::H265_NAL_FILLER => {}
                    t => {
                        keyframe |= h265_is_irap(t);
                        keep.push(nal);
                    }
                }
            }
        }
        if !(vps.is_empty() && sps.is_empty() && pps.is_empty()) {
            self.update_config(&vps, &sps, &pps, out);
        }
        if self.config.is_some() && !keep.is_empty() {
            out.push(DemuxEvent::Frame(Frame {
                track: Track::Video,
                codec: self.codec,
                dts: ticks_to_ms(dts),
                pts: ticks_to_ms(pts),
                keyframe,
                payload: codec::nal_units_to_avcc(keep),
            }));
        }
    }

    /// Replace each kind of parameter set present in the access unit and
    /// rebuild the record; a changed record is emitted.
    fn update_config(
        &mut self,
        vps: &[&[u8]],
        sps: &[&[u8]],
        pps: &[&[u8]],
        out: &mut Vec<DemuxEvent>,
    ) {
        let own = |units: &[&[u8]]| units.iter().map(|u| Bytes::copy_from_slice(u)).collect();
        if !vps.is_empty() {
            self.vps = own(vps);
        }
        if !sps.is_empty() {
            self.sps = own(sps);
        }
        if !pps.is_empty() {
            self.pps = own(pps);
        }
        let record = match self.codec {
            Codec::H265 => codec::hevc_record(&refs(&self.vps), &refs(&self.sps), &refs(&self.pps)),
            _ => codec::avc_record(&refs(&self.sps), &refs(&self.pps)),
        };
        if let Ok(record) = record {
            if self.config.as_ref() != Some(&record) {
                self.config = Some(record.clone());
                out.push(DemuxEvent::Config(CodecConfig {
                    track: Track::Video,
                    codec: self.codec,
                    data: record,
                }));
            }
        }
    }
}

fn refs(units: &[Bytes]) -> Vec<&[u8]> {
    units.iter().map(|u| u.as_ref()).collect()
}

/// AAC in ADTS: one frame per ADTS frame; DTS from the PES PTS for the first
/// frame starting in the PES, then advancing 1024 samples per raw block,
/// computed from the anchor so it does not drift.
#[derive(Debug, Default)]
struct AacEs {
    /// An ADTS frame cut by the PES boundary.
    leftover: Vec<u8>,
    /// 90 kHz tick of the frame that starts the current run.
    anchor: Option<i64>,
    /// Raw blocks since the anchor.
    blocks: i64,
    rate: u32,
    config: Option<[u8; 2]>,
}

impl AacEs {
    fn reset(&mut self) {
        self.leftover.clear();
        self.anchor = None;
    }

    fn now(&self) -> Option<i64> {
        let anchor = self.anchor?;
        let rate = i128::from(self.rate.max(1));
        let offset = i128::from(self.blocks) * 1024 * 90_000 / rate;
        Some(anchor.saturating_add(i64::try_from(offset).unwrap_or(i64::MAX)))
    }

    fn pes(
        &mut self,
        pts: Option<i64>,
        data: &[u8],
        stats: &mut DemuxStats,
        out: &mut Vec<DemuxEvent>,
    ) {
        let boundary = self.leftover.len();
        let joined;
        let bytes: &[u8] = if boundary == 0 {
            data
        } else {
            joined = [std::mem::take(&mut self.leftover).as_slice(), data].concat();
            &joined
        };
        let mut pos = 0;
        let mut anchored = false;
        let mut garbage = false;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            let header = match parse_adts_header(rest) {
                Ok(h) => h,
                Err(codec::CodecError::Truncated) if rest.len() < 9 && could_be_adts(rest) => {
                    self.leftover = rest.to_vec();
                    break;
                }
                Err(_) => {
                    garbage = true;
                    pos += 1;
                    continue;
                }
            };
            if rest.len() < header.frame_len {
                self.leftover = rest.to_vec();
                break;
            }
            if pos >= boundary && !anchored {
                anchored = true;
                if let Some(pts) = pts {
                    self.anchor = Some(pts);
                    self.blocks = 0;
                    self.rate = header.sample_rate();
                }
            }
            self.frame(&header, &rest[..header.frame_len], out);
            pos += header.frame_len;
        }
        if garbage {
            stats.pes_errors += 1;
        }
    }

    fn frame(&mut self, header: &AdtsHeader, adts: &[u8], out: &mut Vec<DemuxEvent>) {
        if header.sample_rate() != self.rate {
            // Re-anchor where the previous rate left off.
            self.anchor = self.now();
            self.blocks = 0;
            self.rate = header.sample_rate();
        }
        let Some(ticks) = self.now() else {
            return; // no timestamp yet
        };
        self.blocks += i64::from(header.raw_blocks);
        let asc = header.audio_specific_config();
        if self.config != Some(asc) {
            self.config = Some(asc);
            out.push(DemuxEvent::Config(CodecConfig {
                track: Track::Audio,
                codec: Codec::Aac,
                data: Bytes::copy_from_slice(&asc),
            }));
        }
        let raw = &adts[header.header_len..];
        // Several raw blocks in one ADTS frame cannot be split without
        // parsing the AAC syntax: skipped (timeline still advances).
        if header.raw_blocks == 1 && !raw.is_empty() {
            let ms = ticks_to_ms(ticks);
            out.push(DemuxEvent::Frame(Frame {
                track: Track::Audio,
                codec: Codec::Aac,
                dts: ms,
                pts: ms,
                keyframe: true,
                payload: Bytes::copy_from_slice(raw),
            }));
        }
    }
}

/// A prefix shorter than a header that may still grow into an ADTS header.
fn could_be_adts(prefix: &[u8]) -> bool {
    match prefix {
        [0xFF] => true,
        [0xFF, b, ..] => b & 0xF6 == 0xF0,
        _ => false,
    }
}
