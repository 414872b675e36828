//! MPEG-TS muxer: [`Frame`]s and [`CodecConfig`]s in, whole 188-byte
//! transport-stream packets out, for SRT players (see [`chunk_1316`]).
//!
//! One muxer serves one output (one source, all its players) for its whole
//! life, across switches between feeds: the PIDs, the program and the
//! continuity counters belong to the output, not to the feed on air.
//!
//! Invariants:
//! - Every byte returned is part of a whole 188-byte packet starting with the
//!   sync byte `0x47`.
//! - Fixed layout: PAT on PID 0 (transport_stream_id 1) names program 1 with
//!   its PMT on [`PMT_PID`]; video (H.264 `0x1B` or H.265 `0x24`) on
//!   [`VIDEO_PID`], AAC in ADTS (`0x0F`) on [`AUDIO_PID`]. The PCR travels on
//!   the video PID, or on the audio PID while the output has no video config.
//! - Continuity counters are per PID, start at 0, go up by one (mod 16) for
//!   every packet with a payload and stay put for the adaptation-only PCR
//!   packets; they never reset, so a switch between feeds keeps them
//!   continuous.
//! - The PMT version (mod 32) changes only when the PMT's content (streams,
//!   stream types, PCR PID) differs from the last PMT sent; the PAT is
//!   always version 0.
//! - PAT+PMT go out before the first frame, before every video keyframe,
//!   before the first frame after [`TsMuxer::set_config`], and before any
//!   frame whose DTS is [`PSI_INTERVAL_MS`] (60 ms) or more past the DTS at
//!   the previous PSI (or more than 1 s before it). So every frame is
//!   preceded by PSI from at most 60 ms of output time earlier, and
//!   consecutive PSIs are at most 60 ms + one inter-frame gap apart: at most
//!   100 ms whenever frames (audio and video together) come at most 40 ms
//!   apart, i.e. video at 25 fps or more, or any AAC.
//! - PTS/DTS are `ms * 90` on the 90 kHz clock, wrapped to 33 bits. Video
//!   PES carry PTS and DTS (the DTS omitted when equal to the PTS, the usual
//!   encoding) and `PES_packet_length` 0; audio PES carry the PTS and an
//!   exact length. One frame is one PES.
//! - PCR = DTS − [`PCR_DELAY_MS`] (200 ms) on the 90 kHz base, never below 0
//!   and never below the previous PCR (until [`TsMuxer::mark_discontinuity`],
//!   which allows a new time base). It is written in the first packet of
//!   every PES on the PCR PID; while the PCR is on the video PID and video
//!   frames stall, an audio frame brings an adaptation-only packet on the
//!   video PID so that the PCR stays at most [`PCR_INTERVAL_MS`] apart. The
//!   200 ms lets audio interleave up to that far behind video without
//!   arriving "late" for a decoder that slaves to the PCR.
//! - Video is Annex-B: an access unit delimiter first, then the parameter
//!   sets of the current config before every keyframe (SPS+PPS for H.264,
//!   VPS/SPS/PPS/SEI of the record for H.265), then the frame's own NAL units
//!   with any AUD of theirs removed. Keyframes set random_access_indicator.
//! - Frames are dropped (empty output) when their codec has no config (or a
//!   config of another codec), when their payload cannot be converted, or
//!   when `track` disagrees with `codec`.
//!
//! Pure: no I/O, no clock. The Annex-B/ADTS glue is [`crate::media::codec`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::media::codec::{
    adts_header, avc_record_parameter_sets, avcc_nal_units, h264_nal_type, h265_nal_type,
    hevc_record_parameter_sets, H264_NAL_AUD, H265_NAL_AUD,
};
use crate::media::{Codec, CodecConfig, Frame, Track};

/// Size of one transport-stream packet.
pub const TS_PACKET_SIZE: usize = 188;
/// Payload size of one SRT message carrying TS: 7 packets.
pub const SRT_MESSAGE_SIZE: usize = 7 * TS_PACKET_SIZE;
/// PID of the PAT.
pub const PAT_PID: u16 = 0x0000;
/// PID of the (only) program's PMT.
pub const PMT_PID: u16 = 0x1000;
/// PID of the video elementary stream.
pub const VIDEO_PID: u16 = 0x0100;
/// PID of the audio elementary stream.
pub const AUDIO_PID: u16 = 0x0101;
/// The program number in the PAT and PMT.
pub const PROGRAM_NUMBER: u16 = 1;
/// transport_stream_id in the PAT.
pub const TRANSPORT_STREAM_ID: u16 = 1;
/// How far the PCR runs behind the DTS of the frame it is sent with.
pub const PCR_DELAY_MS: i64 = 200;
/// PAT+PMT are repeated before a frame this far past the previous PSI.
pub const PSI_INTERVAL_MS: i64 = 60;
/// Largest PCR gap (output time) before an adaptation-only PCR packet.
pub const PCR_INTERVAL_MS: i64 = 80;

/// stream_type values in the PMT.
pub const STREAM_TYPE_H264: u8 = 0x1B;
pub const STREAM_TYPE_H265: u8 = 0x24;
pub const STREAM_TYPE_AAC_ADTS: u8 = 0x0F;

const SYNC_BYTE: u8 = 0x47;
const NULL_PCR_PID: u16 = 0x1FFF;
/// A DTS this far before the previous PSI means the timeline went back:
/// send PSI and restart the interval from there.
const PSI_BACKSTEP_MS: i64 = 1000;
const TS_33_BITS: i64 = 1 << 33;
const STREAM_ID_VIDEO: u8 = 0xE0;
const STREAM_ID_AUDIO: u8 = 0xC0;
/// H.264 AUD: primary_pic_type 7 (any slice type) + stop bit.
const H264_AUD: [u8; 2] = [H264_NAL_AUD, 0xF0];
/// H.265 AUD: NAL header (type 35, layer 0, tid 1) + pic_type 2 + stop bit.
const H265_AUD: [u8; 3] = [H265_NAL_AUD << 1, 0x01, 0x50];
const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// Per-PID packet state.
#[derive(Debug, Clone)]
struct PidState {
    pid: u16,
    /// Continuity counter of the next packet with a payload.
    next_cc: u8,
    /// Whether a packet with a payload went out (the CC has a "previous").
    started: bool,
    /// The next packet carries discontinuity_indicator = 1.
    discontinuity: bool,
}

impl PidState {
    fn new(pid: u16) -> Self {
        PidState {
            pid,
            next_cc: 0,
            started: false,
            discontinuity: false,
        }
    }
}

/// The video config in the form the muxer needs.
#[derive(Debug, Clone)]
struct VideoConfig {
    codec: Codec,
    /// Parameter-set NAL units, in order, inserted before every keyframe.
    parameter_sets: Vec<Bytes>,
}

/// Content of a PMT: (stream_type, PID) per stream and the PCR PID.
type PmtContent = (Vec<(u8, u16)>, u16);

/// An MPEG-TS muxer for one output; see the module docs for the invariants.
#[derive(Debug, Clone)]
pub struct TsMuxer {
    pat: PidState,
    pmt: PidState,
    video: PidState,
    audio: PidState,
    video_cfg: Option<VideoConfig>,
    /// AudioSpecificConfig (known to convert to an ADTS header).
    audio_cfg: Option<Bytes>,
    pmt_version: u8,
    /// What the last PMT sent said (None before the first).
    pmt_sent: Option<PmtContent>,
    /// PSI must precede the next frame.
    psi_due: bool,
    /// DTS of the frame the last PSI went out with.
    last_psi_ms: Option<i64>,
    /// Last PCR base written (90 kHz, unwrapped).
    last_pcr: Option<i64>,
    /// The next PCR may go below `last_pcr` (new time base).
    pcr_reset: bool,
}

impl Default for TsMuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl TsMuxer {
    /// Fixed PIDs for the life of the muxer: PMT 0x1000, video 0x100, audio
    /// 0x101; program 1; PCR on the video PID (audio PID if the output has no
    /// video config).
    pub fn new() -> Self {
        TsMuxer {
            pat: PidState::new(PAT_PID),
            pmt: PidState::new(PMT_PID),
            video: PidState::new(VIDEO_PID),
            audio: PidState::new(AUDIO_PID),
            video_cfg: None,
            audio_cfg: None,
            pmt_version: 0,
            pmt_sent: None,
            psi_due: true,
            last_psi_ms: None,
            last_pcr: None,
            pcr_reset: false,
        }
    }

    /// Set (or replace, on a switch to another feed) a track's codec config;
    /// PAT+PMT are re-sent before the next frame (the PMT version changes
    /// only if its content changes). The track is the codec's. An H.264 or
    /// H.265 record without parameter sets is still accepted (frames may carry
    /// them in-band); an AudioSpecificConfig that ADTS cannot express removes
    /// the audio stream, so its frames are dropped.
    pub fn set_config(&mut self, cfg: &CodecConfig) {
        match cfg.codec {
            Codec::H264 => {
                let (sps, pps) = avc_record_parameter_sets(&cfg.data);
                self.video_cfg = Some(VideoConfig {
                    codec: Codec::H264,
                    parameter_sets: sps.into_iter().chain(pps).collect(),
                });
            }
            Codec::H265 => {
                self.video_cfg = Some(VideoConfig {
                    codec: Codec::H265,
                    parameter_sets: hevc_record_parameter_sets(&cfg.data),
                });
            }
            Codec::Aac => {
                self.audio_cfg = adts_header(&cfg.data, 0).ok().map(|_| cfg.data.clone());
            }
        }
        self.psi_due = true;
    }

    /// The next packet of each PID (PAT, PMT, video, audio) carries
    /// discontinuity_indicator = 1, and the next PCR may start a new time
    /// base. Call on a switch. Marking twice before a PID's next packet still
    /// flags only that one packet.
    pub fn mark_discontinuity(&mut self) {
        for st in [
            &mut self.pat,
            &mut self.pmt,
            &mut self.video,
            &mut self.audio,
        ] {
            st.discontinuity = true;
        }
        self.pcr_reset = true;
    }

    /// Mux one frame into whole packets, preceded by PAT+PMT when due (see
    /// the module docs). Empty when the frame is dropped.
    pub fn mux(&mut self, frame: &Frame) -> Bytes {
        if frame.track != frame.codec.track() {
            return Bytes::new();
        }
        let pes = match frame.track {
            Track::Video => self.video_pes(frame),
            Track::Audio => self.audio_pes(frame),
        };
        let Some(pes) = pes else {
            return Bytes::new();
        };
        let mut out = BytesMut::with_capacity((pes.len() / 184 + 4) * TS_PACKET_SIZE);
        if self.psi_needed(frame) {
            self.write_psi(&mut out);
            self.last_psi_ms = Some(frame.dts);
        }
        let pcr_on_video = self.video_cfg.is_some();
        match frame.track {
            Track::Video => {
                let pcr = self.next_pcr(frame.dts);
                write_pes(&mut out, &mut self.video, &pes, Some(pcr), frame.keyframe);
            }
            Track::Audio => {
                let stalled = self
                    .last_pcr
                    .is_none_or(|last| pcr_base(frame.dts) >= last + PCR_INTERVAL_MS * 90);
                if pcr_on_video && self.video.started && stalled {
                    let pcr = self.next_pcr(frame.dts);
                    write_pcr_only(&mut out, &mut self.video, pcr);
                }
                let pcr = (!pcr_on_video).then(|| self.next_pcr(frame.dts));
                write_pes(&mut out, &mut self.audio, &pes, pcr, false);
            }
        }
        out.freeze()
    }

    /// PAT+PMT now (e.g. before a joining player's first keyframe). Advances
    /// the PSI continuity counters (and consumes pending discontinuity flags
    /// of the PAT and PMT PIDs) like any other PSI.
    pub fn psi(&mut self) -> Bytes {
        let mut out = BytesMut::with_capacity(2 * TS_PACKET_SIZE);
        self.write_psi(&mut out);
        out.freeze()
    }

    /// The catch-up of a player joining this output late: `frames` (its
    /// cached GOP) muxed by a private muxer set to `configs`, so that this
    /// muxer's counters do not move for the other players. The private
    /// muxer's continuity counters start where they must for each PID's last
    /// catch-up packet to be followed, without a jump, by this muxer's next.
    pub fn catch_up(&self, configs: &[&CodecConfig], frames: &[Frame]) -> Bytes {
        let fresh = || {
            let mut m = TsMuxer::new();
            for cfg in configs {
                m.set_config(cfg);
            }
            m
        };
        // Count the packets per PID (mod 16): the layout does not depend on
        // the counters.
        let mut probe = fresh();
        for f in frames {
            probe.mux(f);
        }
        let mut m = fresh();
        for (st, used, next) in [
            (&mut m.pat, &probe.pat, &self.pat),
            (&mut m.pmt, &probe.pmt, &self.pmt),
            (&mut m.video, &probe.video, &self.video),
            (&mut m.audio, &probe.audio, &self.audio),
        ] {
            st.next_cc = next.next_cc.wrapping_sub(used.next_cc) & 0x0F;
        }
        let mut out = BytesMut::new();
        for f in frames {
            out.extend_from_slice(&m.mux(f));
        }
        out.freeze()
    }

    fn psi_needed(&self, frame: &Frame) -> bool {
        let Some(last) = self.last_psi_ms else {
            return true;
        };
        self.psi_due
            || frame.is_video_keyframe()
            || frame.dts >= last.saturating_add(PSI_INTERVAL_MS)
            || frame.dts < last.saturating_sub(PSI_BACKSTEP_MS)
    }

    /// The PCR base to write with a frame of this DTS, and remember it.
    fn next_pcr(&mut self, dts: i64) -> u64 {
        let mut pcr = pcr_base(dts);
        if let Some(last) = self.last_pcr.filter(|_| !self.pcr_reset) {
            pcr = pcr.max(last);
        }
        self.last_pcr = Some(pcr);
        self.pcr_reset = false;
        wrap33(pcr)
    }

    fn pmt_content(&self) -> PmtContent {
        let mut streams = Vec::with_capacity(2);
        if let Some(v) = &self.video_cfg {
            let stream_type = match v.codec {
                Codec::H265 => STREAM_TYPE_H265,
                _ => STREAM_TYPE_H264,
            };
            streams.push((stream_type, VIDEO_PID));
        }
        if self.audio_cfg.is_some() {
            streams.push((STREAM_TYPE_AAC_ADTS, AUDIO_PID));
        }
        let pcr_pid = match streams.first() {
            Some(&(_, pid)) => pid,
            None => NULL_PCR_PID,
        };
        (streams, pcr_pid)
    }

    fn write_psi(&mut self, out: &mut BytesMut) {
        let content = self.pmt_content();
        if self.pmt_sent.as_ref().is_some_and(|sent| *sent != content) {
            self.pmt_version = (self.pmt_version + 1) % 32;
        }
        let pat = pat_section();
        write_section(out, &mut self.pat, &pat);
        let pmt = pmt_section(&content, self.pmt_version);
        write_section(out, &mut self.pmt, &pmt);
        self.pmt_sent = Some(content);
        self.psi_due = false;
    }

    /// PES (header + Annex-B access unit) of a video frame.
    fn video_pes(&self, frame: &Frame) -> Option<BytesMut> {
        let cfg = self.video_cfg.as_ref().filter(|c| c.codec == frame.codec)?;
        let units = avcc_nal_units(&frame.payload).ok()?;
        let hevc = frame.codec == Codec::H265;
        let aud: &[u8] = if hevc { &H265_AUD } else { &H264_AUD };
        let is_aud = |n: &[u8]| match hevc {
            true => h265_nal_type(n) == H265_NAL_AUD,
            false => h264_nal_type(n) == H264_NAL_AUD,
        };
        let units: Vec<&[u8]> = units.into_iter().filter(|n| !is_aud(n)).collect();
        if units.is_empty() {
            return None;
        }
        let params: &[Bytes] = if frame.keyframe {
            &cfg.parameter_sets
        } else {
            &[]
        };
        let es_len = 4
            + aud.len()
            + params.iter().map(|p| p.len() + 4).sum::<usize>()
            + units.iter().map(|u| u.len() + 4).sum::<usize>();
        let mut pes = BytesMut::with_capacity(19 + es_len);
        let dts = (frame.dts != frame.pts).then_some(frame.dts);
        put_pes_header(&mut pes, STREAM_ID_VIDEO, 0, frame.pts, dts);
        pes.put_slice(&START_CODE);
        pes.put_slice(aud);
        for unit in params.iter().map(|p| &p[..]).chain(units) {
            pes.put_slice(&START_CODE);
            pes.put_slice(unit);
        }
        Some(pes)
    }

    /// PES (header + ADTS frame) of an audio frame.
    fn audio_pes(&self, frame: &Frame) -> Option<BytesMut> {
        let asc = self
            .audio_cfg
            .as_ref()
            .filter(|_| frame.codec == Codec::Aac)?;
        if frame.payload.is_empty() {
            return None;
        }
        let adts = adts_header(asc, frame.payload.len()).ok()?;
        // After PES_packet_length: 3 header bytes + 5 PTS bytes + ADTS frame.
        let length = u16::try_from(8 + adts.len() + frame.payload.len()).ok()?;
        let mut pes = BytesMut::with_capacity(6 + usize::from(length));
        put_pes_header(&mut pes, STREAM_ID_AUDIO, length, frame.pts, None);
        pes.put_slice(&adts);
        pes.put_slice(&frame.payload);
        Some(pes)
    }
}

/// Split TS bytes into SRT-sized messages of 7×188 = 1316 bytes (the last
/// may be shorter; a multiple of 188 when `ts` is whole packets). Zero-copy:
/// the messages share `ts`'s buffer.
pub fn chunk_1316(ts: &Bytes) -> Vec<Bytes> {
    (0..ts.len())
        .step_by(SRT_MESSAGE_SIZE)
        .map(|start| ts.slice(start..ts.len().min(start + SRT_MESSAGE_SIZE)))
        .collect()
}

/// CRC-32/MPEG-2 (poly 0x04C11DB7, init 0xFFFFFFFF, no reflection, no final
/// xor), as PSI sections use.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// `ms * 90` wrapped to 33 bits.
fn ts90(ms: i64) -> u64 {
    wrap33(ms.saturating_mul(90))
}

fn wrap33(v: i64) -> u64 {
    v.rem_euclid(TS_33_BITS) as u64
}

/// The unwrapped PCR base for a frame of this DTS (never negative).
fn pcr_base(dts: i64) -> i64 {
    dts.saturating_sub(PCR_DELAY_MS).saturating_mul(90).max(0)
}

/// A PSI section: header through the last data byte, then the CRC.
fn finish_section(mut section: Vec<u8>) -> Vec<u8> {
    let crc = crc32_mpeg2(&section);
    section.extend_from_slice(&crc.to_be_bytes());
    section
}

/// table_id .. last_section_number for a section of `body_len` bytes after
/// it (CRC included in the length).
fn section_header(table_id: u8, id: u16, version: u8, body_len: usize) -> Vec<u8> {
    let section_length = 5 + body_len + 4;
    let mut s = Vec::with_capacity(3 + section_length);
    s.push(table_id);
    // section_syntax_indicator 1, '0', reserved '11', 12-bit length.
    s.extend_from_slice(&(0xB000 | section_length as u16).to_be_bytes());
    s.extend_from_slice(&id.to_be_bytes());
    s.push(0xC1 | (version << 1)); // reserved '11', version, current_next 1
    s.extend_from_slice(&[0, 0]); // section_number, last_section_number
    s
}

fn pat_section() -> Vec<u8> {
    let mut s = section_header(0x00, TRANSPORT_STREAM_ID, 0, 4);
    s.extend_from_slice(&PROGRAM_NUMBER.to_be_bytes());
    s.extend_from_slice(&(0xE000 | PMT_PID).to_be_bytes());
    finish_section(s)
}

fn pmt_section((streams, pcr_pid): &PmtContent, version: u8) -> Vec<u8> {
    let mut s = section_header(0x02, PROGRAM_NUMBER, version, 4 + 5 * streams.len());
    s.extend_from_slice(&(0xE000 | pcr_pid).to_be_bytes());
    s.extend_from_slice(&0xF000u16.to_be_bytes()); // program_info_length 0
    for &(stream_type, pid) in streams {
        s.push(stream_type);
        s.extend_from_slice(&(0xE000 | pid).to_be_bytes());
        s.extend_from_slice(&0xF000u16.to_be_bytes()); // ES_info_length 0
    }
    finish_section(s)
}

/// A PES header with a PTS and optionally a DTS.
fn put_pes_header(pes: &mut BytesMut, stream_id: u8, length: u16, pts: i64, dts: Option<i64>) {
    pes.put_slice(&[0, 0, 1, stream_id]);
    pes.put_u16(length);
    pes.put_u8(0x84); // '10', not scrambled, data_alignment_indicator 1
    match dts {
        Some(dts) => {
            pes.put_u8(0xC0);
            pes.put_u8(10);
            put_timestamp(pes, 0x3, ts90(pts));
            put_timestamp(pes, 0x1, ts90(dts));
        }
        None => {
            pes.put_u8(0x80);
            pes.put_u8(5);
            put_timestamp(pes, 0x2, ts90(pts));
        }
    }
}

/// A 33-bit PES timestamp in 5 bytes behind a 4-bit prefix, with markers.
fn put_timestamp(buf: &mut BytesMut, prefix: u8, ts: u64) {
    buf.put_u8((prefix << 4) | (((ts >> 29) & 0x0E) as u8) | 1);
    buf.put_u16((((ts >> 14) & 0xFFFE) as u16) | 1);
    buf.put_u16((((ts << 1) & 0xFFFE) as u16) | 1);
}

/// 6-byte PCR field: 33-bit base, 6 reserved bits, 9-bit extension 0.
fn pcr_field(base: u64) -> [u8; 6] {
    let v = (base << 15) | (0x3F << 9);
    let b = v.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// The 4-byte packet header. `payload` picks adaptation_field_control
/// (with an adaptation field always present here when `af` is true).
fn put_packet_header(out: &mut BytesMut, st: &PidState, pusi: bool, af: bool, payload: bool) {
    let afc = match (af, payload) {
        (true, true) => 0x30,
        (true, false) => 0x20,
        _ => 0x10,
    };
    let cc = if payload {
        st.next_cc
    } else {
        st.next_cc.wrapping_sub(1) & 0x0F
    };
    out.put_u8(SYNC_BYTE);
    out.put_u16((u16::from(pusi) << 14) | st.pid);
    out.put_u8(afc | cc);
}

/// Packetize one PES. The first packet has PUSI, the PCR (if any) and the
/// random_access_indicator (if `rai`); the last is padded with adaptation
/// field stuffing.
fn write_pes(out: &mut BytesMut, st: &mut PidState, pes: &[u8], pcr: Option<u64>, rai: bool) {
    let mut rest = pes;
    let mut first = true;
    while !rest.is_empty() {
        let pcr = pcr.filter(|_| first);
        let rai = rai && first;
        let flags = (u8::from(st.discontinuity) << 7)
            | (u8::from(rai) << 6)
            | (u8::from(pcr.is_some()) << 4);
        // adaptation_field_length, if an adaptation field is needed for flags.
        let mut af_len = (flags != 0).then(|| 1 + if pcr.is_some() { 6 } else { 0 });
        let space = 184 - af_len.map_or(0, |l| l + 1);
        let take = rest.len().min(space);
        if take < space {
            let pad = space - take;
            af_len = Some(af_len.map_or(pad - 1, |l| l + pad));
        }
        put_packet_header(out, st, first, af_len.is_some(), true);
        if let Some(len) = af_len {
            out.put_u8(len as u8);
            if len > 0 {
                out.put_u8(flags);
                if let Some(pcr) = pcr {
                    out.put_slice(&pcr_field(pcr));
                }
                let used = 1 + if pcr.is_some() { 6 } else { 0 };
                out.put_bytes(0xFF, len - used);
            }
        }
        out.put_slice(&rest[..take]);
        rest = &rest[take..];
        first = false;
        sent_payload(st);
    }
}

/// One PSI section (fits in one packet): pointer_field 0, the section, 0xFF
/// stuffing in the payload.
fn write_section(out: &mut BytesMut, st: &mut PidState, section: &[u8]) {
    let af = st.discontinuity;
    put_packet_header(out, st, true, af, true);
    let mut used = 4;
    if af {
        out.put_slice(&[1, 0x80]);
        used += 2;
    }
    out.put_u8(0); // pointer_field
    out.put_slice(section);
    used += 1 + section.len();
    out.put_bytes(0xFF, TS_PACKET_SIZE - used);
    sent_payload(st);
}

/// An adaptation-only packet carrying just a PCR (CC not incremented).
fn write_pcr_only(out: &mut BytesMut, st: &mut PidState, pcr: u64) {
    put_packet_header(out, st, false, true, false);
    out.put_u8(183);
    out.put_u8((u8::from(st.discontinuity) << 7) | 0x10);
    out.put_slice(&pcr_field(pcr));
    out.put_bytes(0xFF, 183 - 7);
    st.discontinuity = false;
}

fn sent_payload(st: &mut PidState) {
    st.next_cc = (st.next_cc + 1) & 0x0F;
    st.started = true;
    st.discontinuity = false;
}

#[cfg(test)]
#[path = "mux_tests.rs"]
mod tests;
