//! Tests of the TS demuxer on hand-built streams.

use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;

use super::es::{parse_pes, ticks_to_ms, Clock, Pes};
use super::*;
use crate::media::{codec, Codec};

const PMT_PID: u16 = 0x1000;
const VIDEO_PID: u16 = 0x100;
const AUDIO_PID: u16 = 0x101;
const SPS: &str = "6764000dacd94141fb0110000003001000000303c0f1429960";
const PPS: &str = "68ef8fcb";
const IDR: &[u8] = &[0x65, 0x88, 0x84, 0x00, 0x10];
const SLICE: &[u8] = &[0x41, 0x9A, 0x02];
const ASC: [u8; 2] = [0x11, 0x90];

/// A minimal TS writer for the tests.
#[derive(Default)]
struct Ts {
    cc: HashMap<u16, u8>,
    out: Vec<u8>,
}

impl Ts {
    fn packet(&mut self, pid: u16, pusi: bool, payload: &[u8]) {
        assert!(payload.len() <= 184);
        let cc = self.cc.entry(pid).or_insert(0);
        let stuffing = 184 - payload.len();
        let afc = if stuffing == 0 { 0x10 } else { 0x30 };
        self.out.push(0x47);
        self.out.push((u8::from(pusi) << 6) | (pid >> 8) as u8);
        self.out.push(pid as u8);
        self.out.push(afc | *cc);
        *cc = (*cc + 1) & 0x0F;
        if stuffing > 0 {
            self.out.push((stuffing - 1) as u8);
            if stuffing > 1 {
                self.out.push(0);
                self.out.extend(std::iter::repeat_n(0xFF, stuffing - 2));
            }
        }
        self.out.extend_from_slice(payload);
    }

    fn units(&mut self, pid: u16, unit: &[u8]) {
        for (i, chunk) in unit.chunks(184).enumerate() {
            self.packet(pid, i == 0, chunk);
        }
    }

    fn section(&mut self, pid: u16, section: &[u8]) {
        let mut payload = vec![0];
        payload.extend_from_slice(section);
        self.units(pid, &payload);
    }

    fn program(&mut self, version: u8, streams: &[(u8, u16)]) {
        self.section(0, &pat(PMT_PID));
        self.section(PMT_PID, &pmt(version, streams, &[]));
    }

    fn video(&mut self, pid: u16, pts: u64, dts: u64, nals: &[&[u8]]) {
        let mut es = Vec::new();
        for nal in nals {
            es.extend_from_slice(&[0, 0, 0, 1]);
            es.extend_from_slice(nal);
        }
        self.units(pid, &pes(0xE0, Some(pts), Some(dts), &es, false));
    }
}

fn section(table_id: u8, ext: u16, version: u8, body: &[u8]) -> Vec<u8> {
    let len = 5 + body.len() + 4;
    let mut s = vec![table_id, 0xB0 | (len >> 8) as u8, len as u8];
    s.extend_from_slice(&ext.to_be_bytes());
    s.extend_from_slice(&[0xC1 | (version << 1), 0, 0]);
    s.extend_from_slice(body);
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

fn pat(pmt_pid: u16) -> Vec<u8> {
    section(0, 1, 0, &[0, 1, 0xE0 | (pmt_pid >> 8) as u8, pmt_pid as u8])
}

fn pmt(version: u8, streams: &[(u8, u16)], descriptor: &[u8]) -> Vec<u8> {
    let mut body = vec![
        0xE1,
        0x00,
        0xF0 | (descriptor.len() >> 8) as u8,
        descriptor.len() as u8,
    ];
    body.extend_from_slice(descriptor);
    for &(st, pid) in streams {
        body.extend_from_slice(&[st, 0xE0 | (pid >> 8) as u8, pid as u8, 0xF0, 0]);
    }
    section(2, 1, version, &body)
}

fn ts_field(prefix: u8, v: u64) -> [u8; 5] {
    [
        (prefix << 4) | (((v >> 30) & 7) as u8) << 1 | 1,
        (v >> 22) as u8,
        (((v >> 15) & 0x7F) as u8) << 1 | 1,
        (v >> 7) as u8,
        ((v & 0x7F) as u8) << 1 | 1,
    ]
}

fn pes(stream_id: u8, pts: Option<u64>, dts: Option<u64>, data: &[u8], bounded: bool) -> Vec<u8> {
    let mut header = Vec::new();
    let flags = match (pts, dts) {
        (Some(p), Some(d)) => {
            header.extend_from_slice(&ts_field(3, p));
            header.extend_from_slice(&ts_field(1, d));
            0xC0
        }
        (Some(p), None) => {
            header.extend_from_slice(&ts_field(2, p));
            0x80
        }
        _ => 0,
    };
    let len = if bounded {
        3 + header.len() + data.len()
    } else {
        0
    };
    let mut out = vec![0, 0, 1, stream_id, (len >> 8) as u8, len as u8];
    out.extend_from_slice(&[0x80, flags, header.len() as u8]);
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out
}

fn adts(len: usize, fill: u8) -> Vec<u8> {
    let mut f = codec::adts_header(&ASC, len).unwrap().to_vec();
    f.extend(std::iter::repeat_n(fill, len));
    f
}

fn sps() -> Vec<u8> {
    hex::decode(SPS).unwrap()
}

fn pps() -> Vec<u8> {
    hex::decode(PPS).unwrap()
}

fn av_program(ts: &mut Ts) {
    ts.program(0, &[(0x1B, VIDEO_PID), (0x0F, AUDIO_PID)]);
}

/// A/V stream: `gops` GOPs of 3 frames at 30 fps plus one AAC PES per frame.
fn av_stream(gops: usize) -> Vec<u8> {
    let (sps, pps) = (sps(), pps());
    let mut ts = Ts::default();
    av_program(&mut ts);
    for i in 0..gops * 3 {
        let dts = 90_000 + 3000 * i as u64;
        if i % 3 == 0 {
            ts.video(
                VIDEO_PID,
                dts + 3000,
                dts,
                &[&[0x09, 0xF0], &sps, &pps, IDR],
            );
        } else {
            ts.video(VIDEO_PID, dts + 3000, dts, &[&[0x09, 0xF0], SLICE]);
        }
        let audio = [adts(300, i as u8), adts(200, 0xA5)].concat();
        ts.units(AUDIO_PID, &pes(0xC0, Some(dts), None, &audio, true));
    }
    ts.out
}

fn run(ts: &[u8]) -> (Vec<DemuxEvent>, DemuxStats) {
    let mut d = TsDemuxer::new();
    let mut events = d.push(ts);
    events.extend(d.finish());
    (events, d.stats().clone())
}

fn frames(events: &[DemuxEvent], track: Track) -> Vec<&Frame> {
    events
        .iter()
        .filter_map(|e| match e {
            DemuxEvent::Frame(f) if f.track == track => Some(f),
            _ => None,
        })
        .collect()
}

fn configs(events: &[DemuxEvent]) -> Vec<&CodecConfig> {
    events
        .iter()
        .filter_map(|e| match e {
            DemuxEvent::Config(c) => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn clock_unwraps_across_the_33_bit_wrap() {
    let mut c = Clock::default();
    let wrap = 1u64 << 33;
    assert_eq!(c.unwrap(wrap - 900), (wrap - 900) as i64);
    assert_eq!(c.unwrap(900), (wrap + 900) as i64);
    assert_eq!(c.unwrap(wrap - 1800), (wrap - 1800) as i64);
    assert_eq!(c.unwrap(3000), (wrap + 3000) as i64);
    assert_eq!(ticks_to_ms(-1), -1);
    assert_eq!(ticks_to_ms(89), 0);
    assert_eq!(ticks_to_ms(90), 1);
}

#[test]
fn pes_header_parsing() {
    let both = pes(0xE0, Some(123_456), Some(120_000), &[1, 2], false);
    assert_eq!(
        parse_pes(&both),
        Some(Pes {
            pts: Some(123_456),
            dts: Some(120_000),
            payload: &[1, 2]
        })
    );
    let max = (1u64 << 33) - 1;
    let pts_only = pes(0xC0, Some(max), None, &[9], true);
    assert_eq!(parse_pes(&pts_only).unwrap().pts, Some(max));
    assert_eq!(parse_pes(&pts_only).unwrap().dts, None);
    assert_eq!(
        parse_pes(&pes(0xE0, None, None, &[7], false))
            .unwrap()
            .payload,
        &[7]
    );
    // Declared length longer than the data, bad start code, short header.
    let mut long = pes(0xC0, Some(1), None, &[9], true);
    long[5] += 1;
    assert_eq!(parse_pes(&long), None);
    assert_eq!(parse_pes(&[0, 0, 2, 0xE0, 0, 0, 0x80, 0, 0]), None);
    assert_eq!(parse_pes(&[0, 0, 1, 0xE0, 0, 0, 0x80, 0x80, 2, 0, 0]), None);
}

#[test]
fn h264_config_then_frames() {
    let (events, stats) = run(&av_stream(2));
    let cfgs = configs(&events);
    assert_eq!(cfgs.len(), 2, "one video and one audio config");
    // Audio PES are bounded, so audio completes before the first video AU.
    assert_eq!(
        (cfgs[0].codec, cfgs[0].data.as_ref()),
        (Codec::Aac, &ASC[..])
    );
    assert_eq!(cfgs[1].codec, Codec::H264);
    assert_eq!(
        cfgs[1].data,
        codec::avc_record(&[&sps()], &[&pps()]).unwrap()
    );
    let video = frames(&events, Track::Video);
    assert_eq!(video.len(), 6);
    assert_eq!((video[0].dts, video[0].pts), (1000, 1033));
    assert!(video[0].keyframe && !video[1].keyframe && video[3].keyframe);
    // AUD, SPS and PPS are gone: only the IDR slice, length-prefixed.
    assert_eq!(video[0].payload, codec::nal_units_to_avcc([IDR]));
    assert_eq!(video[1].payload, codec::nal_units_to_avcc([SLICE]));
    assert_eq!(video[5].dts, 1000 + 5 * 100 / 3);
    assert_eq!(
        stats.continuity_errors + stats.resyncs + stats.pes_errors,
        0
    );
}

#[test]
fn aac_frames_split_from_pes_with_sample_accurate_timing() {
    let (events, _) = run(&av_stream(2));
    let audio = frames(&events, Track::Audio);
    assert_eq!(audio.len(), 12);
    // Frame 2 of a PES is 1024 samples at 48 kHz = 21.33 ms after frame 1.
    assert_eq!(
        (audio[0].dts, audio[1].dts, audio[2].dts),
        (1000, 1021, 1033)
    );
    assert!(audio
        .iter()
        .all(|f| f.pts == f.dts && f.keyframe && f.codec == Codec::Aac));
    assert_eq!(audio[0].payload.len(), 300);
    assert_eq!(audio[1].payload, Bytes::from(vec![0xA5; 200]));
}

#[test]
fn aac_without_pts_accumulates_without_drift() {
    let mut ts = Ts::default();
    av_program(&mut ts);
    for k in 0..300u64 {
        let pts = (k == 0).then_some(90_000);
        ts.units(AUDIO_PID, &pes(0xC0, pts, None, &adts(10, 1), true));
    }
    let (events, _) = run(&ts.out);
    let audio = frames(&events, Track::Audio);
    assert_eq!(audio.len(), 300);
    for (k, f) in audio.iter().enumerate() {
        assert_eq!(f.dts, 1000 + (k as i64 * 1024 * 1000) / 48000);
    }
}

#[test]
fn adts_frame_cut_across_pes_boundary() {
    let mut ts = Ts::default();
    av_program(&mut ts);
    let frames_ = [adts(50, 1), adts(60, 2), adts(70, 3)].concat();
    let cut = 57 + 20; // inside the second frame
    ts.units(
        AUDIO_PID,
        &pes(0xC0, Some(90_000), None, &frames_[..cut], true),
    );
    // The PTS belongs to the first frame starting in this PES (the third).
    ts.units(
        AUDIO_PID,
        &pes(0xC0, Some(90_000 + 2 * 1920), None, &frames_[cut..], true),
    );
    let (events, stats) = run(&ts.out);
    let audio = frames(&events, Track::Audio);
    let got: Vec<_> = audio.iter().map(|f| (f.dts, f.payload.len())).collect();
    assert_eq!(got, vec![(1000, 50), (1021, 60), (1042, 70)]);
    assert_eq!(stats.pes_errors, 0);
}

#[test]
fn video_before_parameter_sets_is_dropped() {
    let mut ts = Ts::default();
    av_program(&mut ts);
    ts.video(VIDEO_PID, 3000, 3000, &[SLICE]);
    ts.video(VIDEO_PID, 6000, 6000, &[&sps(), &pps(), IDR]);
    let (events, _) = run(&ts.out);
    assert!(matches!(&events[0], DemuxEvent::Config(c) if c.codec == Codec::H264));
    let video = frames(&events, Track::Video);
    assert_eq!(video.len(), 1);
    assert!(video[0].keyframe);
}

#[test]
fn changed_parameter_sets_emit_a_new_config() {
    let mut ts = Ts::default();
    av_program(&mut ts);
    let mut pps2 = pps();
    pps2.push(0x80);
    ts.video(VIDEO_PID, 3000, 3000, &[&sps(), &pps(), IDR]);
    ts.video(VIDEO_PID, 6000, 6000, &[&sps(), &pps(), IDR]);
    ts.video(VIDEO_PID, 9000, 9000, &[&sps(), &pps2, IDR]);
    let (events, _) = run(&ts.out);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| {
            if matches!(e, DemuxEvent::Config(_)) {
                "C"
            } else {
                "F"
            }
        })
        .collect();
    assert_eq!(kinds, ["C", "F", "F", "C", "F"]);
}

#[test]
fn continuity_error_drops_the_broken_pes() {
    let mut ts = Ts::default();
    av_program(&mut ts);
    ts.video(VIDEO_PID, 3000, 3000, &[&sps(), &pps(), IDR]);
    let start = ts.out.len();
    let big = vec![0x11; 500];
    ts.video(VIDEO_PID, 6000, 6000, &[SLICE, &big]);
    let mut data = ts.out.clone();
    data.drain(start + 188..start + 2 * 188); // lose the AU's 2nd packet
    let mut ts2 = Ts {
        cc: ts.cc,
        out: data,
    };
    ts2.video(VIDEO_PID, 9000, 9000, &[SLICE]);
    let (events, stats) = run(&ts2.out);
    let dts: Vec<i64> = frames(&events, Track::Video)
        .iter()
        .map(|f| f.dts)
        .collect();
    assert_eq!(dts, vec![33, 100]);
    assert_eq!(stats.continuity_errors, 1);
}

#[test]
fn duplicate_packets_are_ignored() {
    let mut ts = Ts::default();
    av_program(&mut ts);
    let start = ts.out.len();
    ts.video(VIDEO_PID, 3000, 3000, &[&sps(), &pps(), IDR, &[0x22; 400]]);
    let dup = ts.out[start + 188..start + 376].to_vec();
    ts.out.splice(start + 376..start + 376, dup);
    let (events, stats) = run(&ts.out);
    let video = frames(&events, Track::Video);
    assert_eq!(video.len(), 1);
    assert_eq!(
        video[0].payload,
        codec::nal_units_to_avcc([IDR, &[0x22; 400][..]])
    );
    assert_eq!(stats.continuity_errors, 0);
}

#[test]
fn chunking_does_not_change_events() {
    let stream = av_stream(3);
    let (whole, _) = run(&stream);
    let mut d = TsDemuxer::new();
    let mut bytewise = Vec::new();
    for b in &stream {
        bytewise.extend(d.push(std::slice::from_ref(b)));
    }
    bytewise.extend(d.finish());
    assert_eq!(whole, bytewise);
}

#[test]
fn resyncs_after_garbage() {
    let clean = av_stream(2);
    let mut dirty = vec![0x47, 1, 2, 3, 0x47, 0x47];
    dirty.extend_from_slice(&clean[..188 * 10]);
    dirty.extend_from_slice(&[0x00, 0x47, 0x47, 0x99]); // garbage between packets
    dirty.extend_from_slice(&clean[188 * 10..]);
    let (events, stats) = run(&dirty);
    let (expected, _) = run(&clean);
    assert_eq!(stats.resyncs, 2);
    assert_eq!(events, expected);
}

#[test]
fn null_pcr_only_and_scrambled_packets_are_skipped() {
    let mut ts = Ts::default();
    av_program(&mut ts);
    ts.packet(0x1FFF, false, &[0xFF; 184]);
    ts.video(VIDEO_PID, 3000, 3000, &[&sps(), &pps(), IDR]);
    // PCR-only packet on the video PID (adaptation field only, CC unchanged).
    let mut pcr = vec![
        0x47,
        (VIDEO_PID >> 8) as u8,
        VIDEO_PID as u8,
        0x20,
        183,
        0x10,
    ];
    pcr.extend_from_slice(&[0; 6]);
    pcr.resize(188, 0xFF);
    ts.out.extend_from_slice(&pcr);
    ts.video(VIDEO_PID, 6000, 6000, &[SLICE]);
    let scrambled_at = ts.out.len();
    ts.video(VIDEO_PID, 9000, 9000, &[SLICE]);
    ts.out[scrambled_at + 3] |= 0x80;
    ts.video(VIDEO_PID, 12000, 12000, &[SLICE]);
    let (events, stats) = run(&ts.out);
    let dts: Vec<i64> = frames(&events, Track::Video)
        .iter()
        .map(|f| f.dts)
        .collect();
    assert_eq!(dts, vec![33, 66, 133]);
    assert_eq!(stats.packets, ts.out.len() as u64 / 188);
    assert_eq!(stats.continuity_errors, 0);
}

#[test]
fn pmt_change_moves_to_new_pids() {
    let mut ts = Ts::default();
    av_program(&mut ts);
    ts.video(VIDEO_PID, 3000, 3000, &[&sps(), &pps(), IDR]);
    ts.section(PMT_PID, &pmt(1, &[(0x1B, 0x200)], &[]));
    ts.video(VIDEO_PID, 6000, 6000, &[SLICE]); // old PID: ignored now
    ts.video(0x200, 9000, 9000, &[SLICE]); // no config yet on the new PID
    ts.video(0x200, 12000, 12000, &[&sps(), &pps(), IDR]);
    let (events, _) = run(&ts.out);
    let dts: Vec<i64> = frames(&events, Track::Video)
        .iter()
        .map(|f| f.dts)
        .collect();
    // The old PID's pending PES is flushed when it leaves the PMT.
    assert_eq!(dts, vec![33, 133]);
    // Same record on the new PID: no second Config.
    assert_eq!(configs(&events).len(), 1);
}

#[test]
fn pat_change_and_multi_packet_pmt() {
    let mut ts = Ts::default();
    av_program(&mut ts);
    ts.video(VIDEO_PID, 3000, 3000, &[&sps(), &pps(), IDR]);
    ts.section(0, &pat(0x1500));
    // A 300-byte program descriptor: the section spans two packets. The
    // first video stream listed takes the video slot; 0x300 is ignored.
    ts.section(
        0x1500,
        &pmt(0, &[(0x1B, 0x301), (0x24, 0x300)], &[0x05; 300]),
    );
    ts.video(0x300, 4500, 4500, &[&sps(), &pps(), IDR]);
    ts.video(0x301, 6000, 6000, &[&sps(), &pps(), IDR]);
    ts.video(0x301, 9000, 9000, &[SLICE]);
    ts.video(0x300, 10500, 10500, &[SLICE]);
    let (events, _) = run(&ts.out);
    let dts: Vec<i64> = frames(&events, Track::Video)
        .iter()
        .map(|f| f.dts)
        .collect();
    assert_eq!(dts, vec![33, 66, 100]);
}

#[test]
fn hevc_passes_through_with_hvcc() {
    let vps = hex::decode("40010c01ffff01600000030090000003000003003c959409").unwrap();
    let sps = hex::decode(
        "42010101600000030090000003000003003ca00a080f16595952930bc05a020000030002000003003c10",
    )
    .unwrap();
    let pps = hex::decode("4401c073c189").unwrap();
    let idr: &[u8] = &[0x26, 0x01, 0xAF, 0x10];
    let trail: &[u8] = &[0x02, 0x01, 0xD0];
    let mut ts = Ts::default();
    ts.program(0, &[(0x24, VIDEO_PID)]);
    ts.video(
        VIDEO_PID,
        3000,
        3000,
        &[&[0x46, 0x01, 0x50], &vps, &sps, &pps, idr],
    );
    ts.video(VIDEO_PID, 6000, 6000, &[trail]);
    let (events, _) = run(&ts.out);
    let cfg = configs(&events)[0];
    assert_eq!(cfg.codec, Codec::H265);
    assert_eq!(
        codec::hevc_record_parameter_sets(&cfg.data),
        vec![vps, sps, pps]
    );
    let video = frames(&events, Track::Video);
    assert_eq!(video.len(), 2);
    assert!(video[0].keyframe && !video[1].keyframe);
    assert_eq!(video[0].payload, codec::nal_units_to_avcc([idr]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..4000), cut in 0usize..4000) {
        let mut d = TsDemuxer::new();
        let cut = cut.min(data.len());
        d.push(&data[..cut]);
        d.push(&data[cut..]);
        d.finish();
    }

    #[test]
    fn sync_aligned_garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..6000)) {
        let mut data = data;
        for i in (0..data.len()).step_by(188) {
            data[i] = 0x47;
        }
        // Keep the PIDs of interest likely.
        for i in (1..data.len()).step_by(188 * 3) {
            data[i] &= 0xE0;
        }
        let mut d = TsDemuxer::new();
        d.push(&data);
        d.finish();
    }

    #[test]
    fn corrupted_stream_never_panics(flips in prop::collection::vec((0usize..20_000, any::<u8>()), 1..40)) {
        let mut stream = av_stream(3);
        for (at, v) in flips {
            let len = stream.len();
            stream[at % len] = v;
        }
        let mut d = TsDemuxer::new();
        d.push(&stream);
        d.finish();
    }
}
