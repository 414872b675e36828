//! MPEG-TS demuxer: a byte stream in arbitrary chunks (SRT messages are not
//! aligned to 188-byte packets) → [`DemuxEvent`]s (codec configurations and
//! [`Frame`]s in the media model's form).
//!
//! Layers: packet sync (0x47, confirmed by the next packet's sync byte when
//! (re)synchronising) → PSI (PAT → PMT PID, PMT → one video PID of stream
//! type 0x1B H.264 or 0x24 H.265 and one audio PID of type 0x0F AAC ADTS) →
//! PES reassembly per PID → codec layer (Annex-B → AVCC/HVCC + decoder
//! record, ADTS → raw AAC + AudioSpecificConfig).
//!
//! Invariants:
//! - `push` never panics and buffers at most one partial packet (plus up to
//!   188 bytes of look-ahead while resynchronising) and one PES per PID
//!   (bounded at 8 MiB).
//! - The events depend only on the concatenated bytes, never on how they
//!   were chunked.
//! - Timestamps are milliseconds on the feed's own unwrapped timeline: the
//!   33-bit 90 kHz PTS/DTS are unwrapped on one clock shared by all PIDs (the
//!   first value maps to itself) and floored to ms; `dts` defaults to `pts`.
//! - A video frame is emitted only once its stream has a decoder record;
//!   a `Config` is emitted before the first frame that needs it, and again
//!   only when the record for that track changes.
//! - A PES damaged by a continuity error, transport error or scrambling is
//!   dropped whole; reassembly resumes at the next unit start.

#[path = "demux_es.rs"]
mod es;

use super::mux::crc32_mpeg2;
use crate::media::{CodecConfig, Frame, Track};
use es::{check_cc, Clock, Continuity, Es, PacketInfo};

/// What the demuxer produces, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemuxEvent {
    Config(CodecConfig),
    Frame(Frame),
}

/// Counters of what the demuxer saw.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DemuxStats {
    /// TS packets processed (null packets included).
    pub packets: u64,
    /// Continuity-counter jumps on the PIDs in use.
    pub continuity_errors: u64,
    /// Times sync was (re)acquired after skipping bytes.
    pub resyncs: u64,
    /// PES packets (or parts of them) dropped as malformed.
    pub pes_errors: u64,
}

const PACKET: usize = 188;
const SYNC: u8 = 0x47;
const PAT_PID: u16 = 0;
const NULL_PID: u16 = 0x1FFF;
const MAX_SECTION: usize = 1024 + 3;

/// Section reassembly for one PSI PID.
#[derive(Debug, Default)]
struct Psi {
    pid: u16,
    cc: Option<u8>,
    buf: Vec<u8>,
    active: bool,
    /// The last section applied (changes are detected by content).
    last: Vec<u8>,
}

impl Psi {
    fn new(pid: u16) -> Self {
        Psi {
            pid,
            ..Psi::default()
        }
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.active = false;
    }

    /// Feed one packet's payload; returns the sections it completed.
    fn feed(&mut self, pusi: bool, payload: &[u8]) -> Vec<Vec<u8>> {
        let mut done = Vec::new();
        if pusi {
            let Some((&pointer, rest)) = payload.split_first() else {
                return done;
            };
            let Some((tail, head)) = rest.split_at_checked(usize::from(pointer)) else {
                self.reset();
                return done;
            };
            if self.active {
                self.buf.extend_from_slice(tail);
                self.drain(&mut done);
            }
            self.buf.clear();
            self.buf.extend_from_slice(head);
            self.active = true;
        } else if self.active {
            self.buf.extend_from_slice(payload);
        } else {
            return done;
        }
        self.drain(&mut done);
        done
    }

    fn drain(&mut self, done: &mut Vec<Vec<u8>>) {
        loop {
            match self.buf.as_slice() {
                [] | [0xFF, ..] => return self.reset(),
                [_, b1, b2, ..] => {
                    let len = 3 + ((usize::from(*b1 & 0x0F) << 8) | usize::from(*b2));
                    if len > MAX_SECTION {
                        return self.reset();
                    }
                    if self.buf.len() < len {
                        return;
                    }
                    done.push(self.buf.drain(..len).collect());
                }
                _ => return,
            }
        }
    }
}

/// The body of a long-form PSI section of `table_id` (between the 8-byte
/// header and the CRC), if the CRC holds and it is current.
fn section_body(section: &[u8], table_id: u8) -> Option<&[u8]> {
    if section.len() < 12 || section[0] != table_id || section[1] & 0x80 == 0 {
        return None;
    }
    if crc32_mpeg2(section) != 0 || section[5] & 1 == 0 {
        return None;
    }
    Some(&section[8..section.len() - 4])
}

/// MPEG-TS → frames. See the module docs.
#[derive(Debug, Default)]
pub struct TsDemuxer {
    pending: Vec<u8>,
    synced: bool,
    /// Bytes were skipped since sync was last held.
    skipping: bool,
    stats: DemuxStats,
    pat: Psi,
    pmt: Option<Psi>,
    video: Option<Es>,
    audio: Option<Es>,
    clock: Clock,
    /// The last config emitted per track (video, audio).
    emitted: [Option<CodecConfig>; 2],
}

impl TsDemuxer {
    /// A demuxer waiting for sync and a PAT.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arbitrary chunks (any alignment). Re-synchronises on the 0x47 sync
    /// byte (requiring another sync byte 188 bytes on). Never panics.
    pub fn push(&mut self, data: &[u8]) -> Vec<DemuxEvent> {
        let mut out = Vec::new();
        self.feed(data, false, &mut out);
        self.dedupe(out)
    }

    /// Flush a pending PES (end of stream): the last video access unit, whose
    /// end is otherwise only known from the next unit start.
    pub fn finish(&mut self) -> Vec<DemuxEvent> {
        let mut out = Vec::new();
        self.feed(&[], true, &mut out);
        for es in [self.video.as_mut(), self.audio.as_mut()]
            .into_iter()
            .flatten()
        {
            es.finish(&mut self.clock, &mut self.stats, &mut out);
        }
        self.dedupe(out)
    }

    /// Counters since creation.
    pub fn stats(&self) -> &DemuxStats {
        &self.stats
    }

    fn feed(&mut self, data: &[u8], at_end: bool, out: &mut Vec<DemuxEvent>) {
        if self.pending.is_empty() {
            let used = self.scan(data, at_end, out);
            self.pending.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(data);
            let used = self.scan(&buf, at_end, out);
            buf.drain(..used);
            self.pending = buf;
        }
    }

    /// Process the whole packets of `buf`; returns the bytes consumed.
    fn scan(&mut self, buf: &[u8], at_end: bool, out: &mut Vec<DemuxEvent>) -> usize {
        let mut pos = 0;
        loop {
            if self.synced {
                let Some(pkt) = buf.get(pos..pos + PACKET) else {
                    return pos;
                };
                if pkt[0] == SYNC {
                    self.packet(pkt, out);
                    pos += PACKET;
                    continue;
                }
                self.synced = false;
            }
            // Hunt for a sync byte confirmed by the next packet's.
            loop {
                let Some(&here) = buf.get(pos) else {
                    return pos;
                };
                if here == SYNC {
                    match buf.get(pos + PACKET) {
                        Some(&SYNC) => break,
                        None if at_end && buf.len() == pos + PACKET => break,
                        None => return pos,
                        Some(_) => {}
                    }
                }
                self.skipping = true;
                pos += 1;
            }
            if std::mem::take(&mut self.skipping) {
                self.stats.resyncs += 1;
            }
            self.synced = true;
        }
    }

    fn packet(&mut self, pkt: &[u8], out: &mut Vec<DemuxEvent>) {
        self.stats.packets += 1;
        let pid = (u16::from(pkt[1] & 0x1F) << 8) | u16::from(pkt[2]);
        if pid == NULL_PID {
            return;
        }
        let transport_error = pkt[1] & 0x80 != 0;
        let afc = (pkt[3] >> 4) & 3;
        let mut offset = 4;
        let mut discontinuity = false;
        if afc & 2 != 0 {
            // 183 with a payload flag is out of spec but seen in the wild:
            // read it as an empty payload.
            let len = usize::from(pkt[4]);
            if len > 183 {
                return self.damaged(pid);
            }
            discontinuity = len > 0 && pkt[5] & 0x80 != 0;
            offset = 5 + len;
        }
        if afc & 1 == 0 {
            return; // adaptation field only (PCR) or reserved
        }
        if transport_error {
            return self.damaged(pid);
        }
        let info = PacketInfo {
            pusi: pkt[1] & 0x40 != 0,
            scrambled: pkt[3] >> 6 != 0,
            cc: pkt[3] & 0x0F,
            discontinuity,
        };
        let payload = &pkt[offset..];
        if pid == PAT_PID {
            let sections = self.psi_packet(None, &info, payload);
            for s in sections {
                self.apply_pat(&s);
            }
        } else if self.pmt.as_ref().is_some_and(|p| p.pid == pid) {
            let sections = self.psi_packet(Some(pid), &info, payload);
            for s in sections {
                self.apply_pmt(&s, out);
            }
        } else if let Some(es) = [self.video.as_mut(), self.audio.as_mut()]
            .into_iter()
            .flatten()
            .find(|es| es.pid == pid)
        {
            es.packet(&info, payload, &mut self.clock, &mut self.stats, out);
        }
    }

    /// A packet that cannot be trusted: drop whatever its PID was collecting.
    fn damaged(&mut self, pid: u16) {
        if pid == PAT_PID {
            self.pat.reset();
        } else if let Some(pmt) = self.pmt.as_mut().filter(|p| p.pid == pid) {
            pmt.reset();
        } else if let Some(es) = [self.video.as_mut(), self.audio.as_mut()]
            .into_iter()
            .flatten()
            .find(|es| es.pid == pid)
        {
            self.stats.pes_errors += 1;
            es.abort();
        }
    }

    /// Continuity check and section reassembly for the PAT (`None`) or PMT.
    fn psi_packet(&mut self, pmt: Option<u16>, info: &PacketInfo, payload: &[u8]) -> Vec<Vec<u8>> {
        let psi = match pmt {
            None => &mut self.pat,
            Some(_) => match self.pmt.as_mut() {
                Some(p) => p,
                None => return Vec::new(),
            },
        };
        match check_cc(&mut psi.cc, info.cc, info.discontinuity) {
            Continuity::Ok => {}
            Continuity::Duplicate => return Vec::new(),
            Continuity::Broken => {
                self.stats.continuity_errors += 1;
                psi.reset();
            }
        }
        if info.scrambled {
            return Vec::new();
        }
        psi.feed(info.pusi, payload)
            .into_iter()
            .filter(|s| s != &psi.last)
            .collect()
    }

    fn apply_pat(&mut self, section: &[u8]) {
        let Some(body) = section_body(section, 0x00) else {
            return;
        };
        let program = body.chunks_exact(4).find_map(|e| {
            let number = u16::from_be_bytes([e[0], e[1]]);
            (number != 0).then(|| (u16::from(e[2] & 0x1F) << 8) | u16::from(e[3]))
        });
        let Some(pmt_pid) = program else {
            return;
        };
        self.pat.last = section.to_vec();
        if self.pmt.as_ref().is_none_or(|p| p.pid != pmt_pid) {
            self.pmt = Some(Psi::new(pmt_pid));
        }
    }

    fn apply_pmt(&mut self, section: &[u8], out: &mut Vec<DemuxEvent>) {
        let Some(body) = section_body(section, 0x02) else {
            return;
        };
        let Some(info_len) = body.get(2..4) else {
            return;
        };
        let info_len = usize::from(u16::from_be_bytes([info_len[0], info_len[1]]) & 0x0FFF);
        let Some(mut rest) = body.get(4 + info_len..) else {
            return;
        };
        let (mut video, mut audio) = (None, None);
        while let Some((head, tail)) = rest.split_first_chunk::<5>() {
            let stream_type = head[0];
            let pid = (u16::from(head[1] & 0x1F) << 8) | u16::from(head[2]);
            let es_info = usize::from(u16::from_be_bytes([head[3], head[4]]) & 0x0FFF);
            rest = tail.get(es_info..).unwrap_or_default();
            match stream_type {
                0x1B | 0x24 if video.is_none() => video = Some((pid, stream_type)),
                0x0F if audio.is_none() => audio = Some((pid, stream_type)),
                _ => {}
            }
        }
        if let Some(pmt) = self.pmt.as_mut() {
            pmt.last = section.to_vec();
        }
        let (clock, stats) = (&mut self.clock, &mut self.stats);
        for (slot, wanted) in [(&mut self.video, video), (&mut self.audio, audio)] {
            let keep = match (slot.as_ref(), wanted) {
                (Some(es), Some((pid, st))) => es.pid == pid && es.stream_type == st,
                _ => false,
            };
            if keep {
                continue;
            }
            if let Some(mut old) = slot.take() {
                old.finish(clock, stats, out);
            }
            *slot = wanted.and_then(|(pid, st)| Es::new(pid, st));
        }
    }

    /// Drop `Config` events that repeat the last one emitted for their track.
    fn dedupe(&mut self, events: Vec<DemuxEvent>) -> Vec<DemuxEvent> {
        events
            .into_iter()
            .filter(|ev| match ev {
                DemuxEvent::Config(cfg) => {
                    let slot = &mut self.emitted[usize::from(cfg.track == Track::Audio)];
                    if slot.as_ref() == Some(cfg) {
                        false
                    } else {
                        *slot = Some(cfg.clone());
                        true
                    }
                }
                DemuxEvent::Frame(_) => true,
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "demux_tests.rs"]
mod tests;
