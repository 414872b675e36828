use super::*;
use std::collections::HashMap;

// ---------------------------------------------------------------------------
// An independent little TS reader for the assertions.

#[derive(Debug, Clone)]
struct Pkt {
    pid: u16,
    pusi: bool,
    has_payload: bool,
    cc: u8,
    discontinuity: bool,
    rai: bool,
    pcr: Option<u64>,
    payload: Vec<u8>,
}

fn parse_packets(ts: &[u8]) -> Vec<Pkt> {
    assert_eq!(ts.len() % 188, 0, "not whole packets");
    ts.chunks(188)
        .map(|p| {
            assert_eq!(p[0], 0x47, "sync byte");
            let pid = u16::from(p[1] & 0x1F) << 8 | u16::from(p[2]);
            let afc = (p[3] >> 4) & 3;
            let mut pos = 4;
            let (mut discontinuity, mut rai, mut pcr) = (false, false, None);
            if afc & 2 != 0 {
                let len = usize::from(p[4]);
                assert!(len <= 183);
                if len > 0 {
                    let flags = p[5];
                    discontinuity = flags & 0x80 != 0;
                    rai = flags & 0x40 != 0;
                    if flags & 0x10 != 0 {
                        let b = &p[6..12];
                        let base = (u64::from(b[0]) << 25)
                            | (u64::from(b[1]) << 17)
                            | (u64::from(b[2]) << 9)
                            | (u64::from(b[3]) << 1)
                            | (u64::from(b[4]) >> 7);
                        assert_eq!(b[4] & 0x7E, 0x7E, "PCR reserved bits");
                        pcr = Some(base);
                    }
                }
                pos += 1 + len;
            }
            Pkt {
                pid,
                pusi: p[1] & 0x40 != 0,
                has_payload: afc & 1 != 0,
                cc: p[3] & 0x0F,
                discontinuity,
                rai,
                pcr,
                payload: if afc & 1 != 0 {
                    p[pos..].to_vec()
                } else {
                    vec![]
                },
            }
        })
        .collect()
}

/// Table-driven CRC-32/MPEG-2, written separately from the muxer's.
fn crc_independent(data: &[u8]) -> u32 {
    let table: Vec<u32> = (0..256u32)
        .map(|i| {
            (0..8).fold(i << 24, |c, _| {
                if c & 0x8000_0000 != 0 {
                    (c << 1) ^ 0x04C1_1DB7
                } else {
                    c << 1
                }
            })
        })
        .collect();
    data.iter().fold(0xFFFF_FFFF, |crc, &b| {
        (crc << 8) ^ table[((crc >> 24) as u8 ^ b) as usize]
    })
}

/// The PSI section in a PSI packet's payload, CRC checked.
fn section(pkt: &Pkt) -> Vec<u8> {
    assert!(pkt.pusi);
    let p = &pkt.payload;
    let start = 1 + usize::from(p[0]);
    let len = usize::from(u16::from_be_bytes([p[start + 1], p[start + 2]]) & 0x0FFF);
    let s = p[start..start + 3 + len].to_vec();
    let (body, crc) = s.split_at(s.len() - 4);
    assert_eq!(crc_independent(body).to_be_bytes(), crc, "section CRC");
    assert!(
        p[start + 3 + len..].iter().all(|&b| b == 0xFF),
        "PSI stuffing"
    );
    s
}

/// PMT: (version, PCR PID, [(stream_type, pid)]).
fn parse_pmt(s: &[u8]) -> (u8, u16, Vec<(u8, u16)>) {
    assert_eq!(s[0], 0x02);
    let version = (s[5] >> 1) & 0x1F;
    let pcr_pid = u16::from_be_bytes([s[8], s[9]]) & 0x1FFF;
    let info = usize::from(u16::from_be_bytes([s[10], s[11]]) & 0x0FFF);
    let mut streams = Vec::new();
    let mut i = 12 + info;
    while i < s.len() - 4 {
        let pid = u16::from_be_bytes([s[i + 1], s[i + 2]]) & 0x1FFF;
        streams.push((s[i], pid));
        i += 5 + usize::from(u16::from_be_bytes([s[i + 3], s[i + 4]]) & 0x0FFF);
    }
    (version, pcr_pid, streams)
}

/// One reassembled PES: (first packet index, bytes).
fn pes_of(pkts: &[Pkt], pid: u16) -> Vec<(usize, Vec<u8>)> {
    let mut out: Vec<(usize, Vec<u8>)> = Vec::new();
    for (i, p) in pkts.iter().enumerate().filter(|(_, p)| p.pid == pid) {
        if p.pusi {
            out.push((i, p.payload.clone()));
        } else if let Some(last) = out.last_mut() {
            last.1.extend_from_slice(&p.payload);
        }
    }
    out
}

fn read_ts(b: &[u8]) -> u64 {
    assert_eq!(b[0] & 1, 1);
    assert_eq!(b[2] & 1, 1);
    assert_eq!(b[4] & 1, 1);
    (u64::from(b[0] & 0x0E) << 29)
        | (u64::from(b[1]) << 22)
        | (u64::from(b[2] >> 1) << 15)
        | (u64::from(b[3]) << 7)
        | u64::from(b[4] >> 1)
}

/// (pts, dts, payload after the header) of a PES.
fn parse_pes(pes: &[u8]) -> (u64, Option<u64>, &[u8]) {
    assert_eq!(&pes[..3], &[0, 0, 1]);
    let flags = pes[7] >> 6;
    let hlen = usize::from(pes[8]);
    let pts = read_ts(&pes[9..14]);
    assert_eq!(pes[9] >> 4, if flags == 3 { 3 } else { 2 });
    let dts = (flags == 3).then(|| {
        assert_eq!(pes[14] >> 4, 1);
        read_ts(&pes[14..19])
    });
    (pts, dts, &pes[9 + hlen..])
}

fn split_annexb(es: &[u8]) -> Vec<Vec<u8>> {
    assert_eq!(&es[..4], &[0, 0, 0, 1]);
    let mut units = Vec::new();
    let mut cur = Vec::new();
    let mut i = 4;
    while i < es.len() {
        if es[i..].starts_with(&[0, 0, 0, 1]) {
            units.push(std::mem::take(&mut cur));
            i += 4;
        } else {
            cur.push(es[i]);
            i += 1;
        }
    }
    units.push(cur);
    units
}

// ---------------------------------------------------------------------------
// Fixtures.

const SPS: &[u8] = &[0x67, 0x42, 0xC0, 0x1E, 0xAB, 0xCD];
const PPS: &[u8] = &[0x68, 0xCE, 0x38, 0x80];

fn avc_config() -> CodecConfig {
    let mut rec = vec![1, 0x42, 0xC0, 0x1E, 0xFF, 0xE1, 0, SPS.len() as u8];
    rec.extend_from_slice(SPS);
    rec.extend_from_slice(&[1, 0, PPS.len() as u8]);
    rec.extend_from_slice(PPS);
    CodecConfig {
        track: Track::Video,
        codec: Codec::H264,
        data: Bytes::from(rec),
    }
}

fn aac_config() -> CodecConfig {
    // AAC LC, 48 kHz, stereo.
    CodecConfig {
        track: Track::Audio,
        codec: Codec::Aac,
        data: Bytes::from_static(&[0x11, 0x90]),
    }
}

fn avcc(units: &[&[u8]]) -> Bytes {
    let mut out = Vec::new();
    for u in units {
        out.extend_from_slice(&(u.len() as u32).to_be_bytes());
        out.extend_from_slice(u);
    }
    Bytes::from(out)
}

fn video(dts: i64, pts: i64, key: bool, size: usize) -> Frame {
    let mut nal = vec![if key { 0x65 } else { 0x41 }];
    nal.extend((0..size).map(|i| (i % 251) as u8 | 1));
    Frame {
        track: Track::Video,
        codec: Codec::H264,
        dts,
        pts,
        keyframe: key,
        payload: avcc(&[&[0x09, 0xF0], &nal]),
    }
}

fn audio(ms: i64) -> Frame {
    Frame {
        track: Track::Audio,
        codec: Codec::Aac,
        dts: ms,
        pts: ms,
        keyframe: true,
        payload: Bytes::from(vec![0x21; 300]),
    }
}

/// A/V interleaved by DTS: 30 fps video (keyframe every 30), 48 kHz AAC.
fn av_frames(start_ms: i64, video_count: i64) -> Vec<Frame> {
    let mut frames: Vec<Frame> = (0..video_count)
        .map(|i| {
            let t = start_ms + i * 1000 / 30;
            video(t, t + 66, i % 30 == 0, 500 + (i as usize * 97) % 3000)
        })
        .collect();
    let end = start_ms + video_count * 1000 / 30;
    let mut k = 0;
    while start_ms + k * 1024 * 1000 / 48000 < end {
        frames.push(audio(start_ms + k * 1024 * 1000 / 48000));
        k += 1;
    }
    frames.sort_by_key(|f| f.dts);
    frames
}

fn configured() -> TsMuxer {
    let mut m = TsMuxer::new();
    m.set_config(&avc_config());
    m.set_config(&aac_config());
    m
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn output_is_whole_synced_packets() {
    let mut m = configured();
    for f in av_frames(0, 60) {
        let out = m.mux(&f);
        assert!(!out.is_empty());
        assert_eq!(out.len() % TS_PACKET_SIZE, 0);
        assert!(out.chunks(188).all(|p| p[0] == 0x47));
    }
    assert_eq!(m.psi().len(), 2 * TS_PACKET_SIZE);
}

#[test]
fn crc_matches_known_vector_and_independent_table() {
    assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_E6E7);
    assert_eq!(crc_independent(b"123456789"), 0x0376_E6E7);
    let data: Vec<u8> = (0..=255).collect();
    assert_eq!(crc32_mpeg2(&data), crc_independent(&data));
}

#[test]
fn pat_and_pmt_are_valid() {
    let mut m = configured();
    let pkts = parse_packets(&m.psi());
    assert_eq!((pkts[0].pid, pkts[1].pid), (PAT_PID, PMT_PID));
    let pat = section(&pkts[0]);
    assert_eq!(pat[0], 0x00);
    assert_eq!(u16::from_be_bytes([pat[3], pat[4]]), TRANSPORT_STREAM_ID);
    assert_eq!(u16::from_be_bytes([pat[8], pat[9]]), PROGRAM_NUMBER);
    assert_eq!(u16::from_be_bytes([pat[10], pat[11]]) & 0x1FFF, PMT_PID);
    assert_eq!(pat.len(), 16);
    let pmt = section(&pkts[1]);
    assert_eq!(u16::from_be_bytes([pmt[3], pmt[4]]), PROGRAM_NUMBER);
    assert_eq!(
        parse_pmt(&pmt),
        (
            0,
            VIDEO_PID,
            vec![
                (STREAM_TYPE_H264, VIDEO_PID),
                (STREAM_TYPE_AAC_ADTS, AUDIO_PID)
            ]
        )
    );
}

#[test]
fn audio_only_output_carries_pcr_on_audio_pid() {
    let mut m = TsMuxer::new();
    m.set_config(&aac_config());
    let out = m.mux(&audio(1000));
    let pkts = parse_packets(&out);
    assert_eq!(
        parse_pmt(&section(&pkts[1])),
        (0, AUDIO_PID, vec![(0x0F, AUDIO_PID)])
    );
    assert_eq!(pkts[2].pid, AUDIO_PID);
    assert_eq!(pkts[2].pcr, Some(800 * 90));
}

#[test]
fn pmt_version_changes_only_with_content() {
    let mut m = configured();
    let version = |m: &mut TsMuxer| parse_pmt(&section(&parse_packets(&m.psi())[1])).0;
    assert_eq!(version(&mut m), 0);
    m.set_config(&avc_config()); // same streams: no bump
    m.set_config(&aac_config());
    assert_eq!(version(&mut m), 0);
    let mut hevc = avc_config();
    hevc.codec = Codec::H265;
    m.set_config(&hevc);
    assert_eq!(version(&mut m), 1);
    m.set_config(&avc_config());
    m.set_config(&hevc); // back and forth between two PMTs: no change sent
    assert_eq!(version(&mut m), 1);
    m.set_config(&avc_config());
    assert_eq!(version(&mut m), 2);
    // The first PMT sent is version 0 whatever happened before.
    let mut fresh = TsMuxer::new();
    fresh.set_config(&hevc);
    fresh.set_config(&avc_config());
    fresh.set_config(&aac_config());
    assert_eq!(version(&mut fresh), 0);
}

#[test]
fn frames_without_matching_config_are_dropped() {
    let mut m = TsMuxer::new();
    assert!(m.mux(&video(0, 0, true, 10)).is_empty());
    assert!(m.mux(&audio(0)).is_empty());
    m.set_config(&avc_config());
    let mut h265 = video(0, 0, true, 10);
    h265.codec = Codec::H265;
    assert!(m.mux(&h265).is_empty());
    let mut wrong_track = video(0, 0, true, 10);
    wrong_track.track = Track::Audio;
    assert!(m.mux(&wrong_track).is_empty());
    let mut truncated = video(0, 0, true, 10);
    truncated.payload = truncated.payload.slice(..8);
    assert!(m.mux(&truncated).is_empty());
    assert!(m.mux(&audio(0)).is_empty(), "no audio config yet");
    // An AudioSpecificConfig ADTS cannot express removes the audio stream.
    m.set_config(&aac_config());
    m.set_config(&CodecConfig {
        data: Bytes::from_static(&[0xF8, 0x00]),
        ..aac_config()
    });
    assert!(m.mux(&audio(0)).is_empty());
    assert!(!m.mux(&video(0, 0, true, 10)).is_empty());
}

#[test]
fn continuity_counters_per_pid_survive_a_switch() {
    let mut m = configured();
    let mut ts = Vec::new();
    for f in av_frames(0, 90) {
        ts.extend_from_slice(&m.mux(&f));
    }
    // Switch: new feed's configs, discontinuity, timeline continues.
    m.mark_discontinuity();
    m.set_config(&avc_config());
    m.set_config(&aac_config());
    let switch_at = ts.len() / 188;
    for f in av_frames(3000, 90) {
        ts.extend_from_slice(&m.mux(&f));
    }
    ts.extend_from_slice(&m.psi());
    let pkts = parse_packets(&ts);
    let mut last: HashMap<u16, u8> = HashMap::new();
    for p in &pkts {
        let expect = match last.get(&p.pid) {
            Some(&cc) if p.has_payload => (cc + 1) & 0x0F,
            Some(&cc) => cc,
            None => 0,
        };
        assert_eq!(p.cc, expect, "pid {:#x}", p.pid);
        last.insert(p.pid, p.cc);
    }
    for pid in [PAT_PID, PMT_PID, VIDEO_PID, AUDIO_PID] {
        let flagged: Vec<usize> = pkts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.pid == pid && p.discontinuity)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(flagged.len(), 1, "pid {pid:#x}");
        let first_after = pkts
            .iter()
            .enumerate()
            .position(|(i, p)| i >= switch_at && p.pid == pid);
        assert_eq!(Some(flagged[0]), first_after, "pid {pid:#x}");
    }
    assert!(pkts.iter().filter(|p| p.pid == VIDEO_PID).count() > 16 * 3);
}

#[test]
fn catch_up_leads_into_the_shared_output_without_moving_it() {
    let mut shared = configured();
    let history = av_frames(0, 75);
    for f in &history {
        shared.mux(f);
    }
    let untouched = shared.clone();
    // A player joins with the last GOP (video from the keyframe at 2 s on).
    let gop: Vec<Frame> = history.iter().filter(|f| f.dts >= 2000).cloned().collect();
    let (avc, aac) = (avc_config(), aac_config());
    let mut ts = shared.catch_up(&[&avc, &aac], &gop).to_vec();
    let joined_at = ts.len() / 188;
    let mut reference = untouched;
    for f in av_frames(2500, 20) {
        let out = shared.mux(&f);
        assert_eq!(out, reference.mux(&f), "the shared muxer's output moved");
        ts.extend_from_slice(&out);
    }
    let pkts = parse_packets(&ts);
    assert!(pkts[0].pid == PAT_PID && pkts[1].pid == PMT_PID);
    let mut last: HashMap<u16, u8> = HashMap::new();
    for (i, p) in pkts.iter().enumerate() {
        if let Some(&cc) = last.get(&p.pid) {
            let expect = if p.has_payload { (cc + 1) & 0x0F } else { cc };
            assert_eq!(
                p.cc, expect,
                "pid {:#x} at packet {i} (joined at {joined_at})",
                p.pid
            );
        }
        assert!(!p.discontinuity, "no discontinuity to flag");
        last.insert(p.pid, p.cc);
    }
}

#[test]
fn marking_twice_flags_one_packet() {
    let mut m = configured();
    m.mux(&video(0, 0, true, 100));
    m.mark_discontinuity();
    m.mark_discontinuity();
    let pkts = parse_packets(&[m.mux(&video(33, 33, false, 1000)), m.psi(), m.psi()].concat());
    let video_flags: Vec<bool> = pkts
        .iter()
        .filter(|p| p.pid == VIDEO_PID)
        .map(|p| p.discontinuity)
        .collect();
    assert_eq!(video_flags.iter().filter(|&&d| d).count(), 1);
    assert!(video_flags[0]);
    // No PSI due with this frame: the first psi() is flagged, the next is clean.
    let pat: Vec<bool> = pkts
        .iter()
        .filter(|p| p.pid == PAT_PID)
        .map(|p| p.discontinuity)
        .collect();
    assert_eq!(pat, vec![true, false]);
    let pmt = pkts.iter().find(|p| p.pid == PMT_PID).unwrap();
    section(pmt); // still a valid section behind the adaptation field
}

#[test]
fn keyframes_get_aud_and_parameter_sets() {
    let mut m = configured();
    let mut ts = Vec::new();
    let frames = [
        video(0, 0, true, 50),
        video(33, 33, false, 50),
        video(1000, 1000, true, 50),
    ];
    for f in &frames {
        ts.extend_from_slice(&m.mux(f));
    }
    let pkts = parse_packets(&ts);
    let pes = pes_of(&pkts, VIDEO_PID);
    assert_eq!(pes.len(), 3);
    for ((_, pes), f) in pes.iter().zip(&frames) {
        let (_, _, es) = parse_pes(pes);
        let units = split_annexb(es);
        assert_eq!(units[0], vec![0x09, 0xF0], "AUD first");
        let slice_nal = units.last().unwrap();
        assert_eq!(slice_nal[0], if f.keyframe { 0x65 } else { 0x41 });
        if f.keyframe {
            assert_eq!(units.len(), 4);
            assert_eq!((&units[1][..], &units[2][..]), (SPS, PPS));
        } else {
            assert_eq!(
                units.len(),
                2,
                "no parameter sets, the payload's AUD removed"
            );
        }
        assert_eq!(&pes[4..6], &[0, 0], "video PES_packet_length 0");
        assert_eq!(pes[3], 0xE0);
    }
    // random_access_indicator exactly on keyframes' first packets.
    let rai: Vec<bool> = pes.iter().map(|(i, _)| pkts[*i].rai).collect();
    assert_eq!(rai, vec![true, false, true]);
    assert_eq!(pkts.iter().filter(|p| p.rai).count(), 2);
}

#[test]
fn hevc_frames_get_vps_sps_pps_and_hevc_aud() {
    let vps: &[u8] = &[0x40, 0x01, 0x0C];
    let sps: &[u8] = &[0x42, 0x01, 0x01];
    let pps: &[u8] = &[0x44, 0x01, 0xC1];
    let mut rec = vec![0u8; 22];
    rec[0] = 1;
    rec.push(3);
    for (t, u) in [(32u8, vps), (33, sps), (34, pps)] {
        rec.extend_from_slice(&[0x80 | t, 0, 1, 0, u.len() as u8]);
        rec.extend_from_slice(u);
    }
    let mut m = TsMuxer::new();
    m.set_config(&CodecConfig {
        track: Track::Video,
        codec: Codec::H265,
        data: rec.into(),
    });
    let idr: &[u8] = &[0x26, 0x01, 0xAF, 0x12];
    let frame = Frame {
        track: Track::Video,
        codec: Codec::H265,
        dts: 0,
        pts: 0,
        keyframe: true,
        payload: avcc(&[&[0x46, 0x01, 0x50], idr]),
    };
    let pkts = parse_packets(&m.mux(&frame));
    assert_eq!(
        parse_pmt(&section(&pkts[1])).2,
        vec![(STREAM_TYPE_H265, VIDEO_PID)]
    );
    let pes = pes_of(&pkts, VIDEO_PID);
    let units = split_annexb(parse_pes(&pes[0].1).2);
    let expect: Vec<&[u8]> = vec![&H265_AUD, vps, sps, pps, idr];
    assert_eq!(units.iter().map(|u| &u[..]).collect::<Vec<_>>(), expect);
}

#[test]
fn pts_and_dts_are_encoded_at_90_khz_with_33_bit_wrap() {
    let mut m = configured();
    let wrap_ms = (1i64 << 33) / 90 + 1; // just past the wrap
    let cases = [(1000, 1066), (2000, 2000), (wrap_ms, wrap_ms + 40)];
    for (dts, pts) in cases {
        let pkts = parse_packets(&m.mux(&video(dts, pts, false, 20)));
        let pes = pes_of(&pkts, VIDEO_PID);
        let (p, d, _) = parse_pes(&pes[0].1);
        assert_eq!(p, (pts * 90) as u64 % (1 << 33));
        assert_eq!(d, (dts != pts).then_some((dts * 90) as u64 % (1 << 33)));
    }
    let pkts = parse_packets(&m.mux(&audio(5000)));
    let pes = pes_of(&pkts, AUDIO_PID);
    let (p, d, adts) = parse_pes(&pes[0].1);
    assert_eq!((p, d), (450_000, None));
    assert_eq!(pes[0].1[3], 0xC0);
    let len = usize::from(u16::from_be_bytes([pes[0].1[4], pes[0].1[5]]));
    assert_eq!(len, pes[0].1.len() - 6, "audio PES_packet_length");
    assert_eq!(adts.len(), 7 + 300);
    assert_eq!(&adts[..2], &[0xFF, 0xF1]);
    assert_eq!(ts90(-1), (1 << 33) - 90);
}

#[test]
fn pcr_is_on_every_video_pes_and_monotonic() {
    let mut m = configured();
    let mut ts = Vec::new();
    let frames = av_frames(0, 120);
    for f in &frames {
        ts.extend_from_slice(&m.mux(f));
    }
    let pkts = parse_packets(&ts);
    let pes = pes_of(&pkts, VIDEO_PID);
    assert_eq!(pes.len(), 120);
    let video_dts: Vec<i64> = frames
        .iter()
        .filter(|f| f.track == Track::Video)
        .map(|f| f.dts)
        .collect();
    for ((i, _), dts) in pes.iter().zip(&video_dts) {
        let expect = ((dts - PCR_DELAY_MS) * 90).max(0) as u64;
        assert_eq!(pkts[*i].pcr, Some(expect));
    }
    let pcrs: Vec<u64> = pkts.iter().filter_map(|p| p.pcr).collect();
    assert!(pcrs.windows(2).all(|w| w[0] <= w[1]), "PCR monotonic");
    assert!(pkts.iter().all(|p| p.pcr.is_none() || p.pid == VIDEO_PID));
    assert!(
        pkts.iter().filter(|p| p.pcr.is_some()).all(|p| p.pusi),
        "PCR on PES starts"
    );
}

#[test]
fn stalled_video_gets_pcr_only_packets() {
    let mut m = configured();
    let mut ts = m.mux(&video(1000, 1000, true, 100)).to_vec();
    for k in 0..20 {
        ts.extend_from_slice(&m.mux(&audio(1000 + k * 21)));
    }
    let pkts = parse_packets(&ts);
    let pcr_only: Vec<&Pkt> = pkts
        .iter()
        .filter(|p| p.pid == VIDEO_PID && !p.has_payload)
        .collect();
    assert_eq!(pcr_only.len(), 4, "every >= 80 ms over 400 ms");
    let video_cc = pkts
        .iter()
        .rfind(|p| p.pid == VIDEO_PID && p.has_payload)
        .unwrap()
        .cc;
    assert!(pcr_only.iter().all(|p| p.cc == video_cc && p.pcr.is_some()));
    let pcrs: Vec<u64> = pkts.iter().filter_map(|p| p.pcr).collect();
    assert!(pcrs
        .windows(2)
        .all(|w| w[0] < w[1] && w[1] - w[0] <= 90 * 100));
}

#[test]
fn psi_precedes_keyframes_and_repeats_every_100_ms() {
    let mut m = configured();
    let mut frames = av_frames(0, 300);
    // A sparse stretch: only audio for a while.
    frames.retain(|f| !(f.track == Track::Video && (5000..6000).contains(&f.dts)));
    let mut last_psi: Option<i64> = None;
    let mut psi_times = Vec::new();
    for f in &frames {
        let pkts = parse_packets(&m.mux(f));
        let has_psi = pkts.first().is_some_and(|p| p.pid == PAT_PID);
        if has_psi {
            assert_eq!(pkts[1].pid, PMT_PID);
            last_psi = Some(f.dts);
            psi_times.push(f.dts);
        }
        if f.is_video_keyframe() {
            assert!(has_psi, "PSI before keyframe at {}", f.dts);
        }
        assert!(
            f.dts - last_psi.unwrap() <= PSI_INTERVAL_MS,
            "frame at {}",
            f.dts
        );
    }
    assert!(
        psi_times.windows(2).all(|w| w[1] - w[0] <= 100),
        "{psi_times:?}"
    );
    // Video alone at 25 fps.
    let mut m = configured();
    let mut psi_times = Vec::new();
    for i in 0..100 {
        let f = video(i * 40, i * 40, i % 50 == 0, 100);
        if parse_packets(&m.mux(&f))[0].pid == PAT_PID {
            psi_times.push(f.dts);
        }
    }
    assert!(
        psi_times.windows(2).all(|w| w[1] - w[0] <= 100),
        "{psi_times:?}"
    );
    assert!(psi_times.len() < 60);
    // Not every frame: the overhead stays bounded.
    assert!(psi_times.len() < frames.len() / 2);
}

#[test]
fn set_config_forces_psi_before_next_frame() {
    let mut m = configured();
    m.mux(&video(0, 0, true, 10));
    assert_eq!(
        parse_packets(&m.mux(&video(33, 33, false, 10)))[0].pid,
        VIDEO_PID
    );
    m.set_config(&aac_config());
    assert_eq!(
        parse_packets(&m.mux(&video(66, 66, false, 10)))[0].pid,
        PAT_PID
    );
}

#[test]
fn big_frames_span_packets_with_correct_stuffing() {
    let mut m = configured();
    for size in [0, 1, 150, 160, 161, 162, 163, 164, 170, 183, 184, 185, 5000] {
        let f = video(0, 0, false, size);
        let pkts = parse_packets(&m.mux(&f));
        let pes = pes_of(&pkts, VIDEO_PID);
        let units = split_annexb(parse_pes(&pes[0].1).2);
        assert_eq!(units.len(), 2, "size {size}");
        assert_eq!(units[1].len(), size + 1, "size {size}");
    }
}

#[test]
fn chunk_1316_splits_on_packet_boundaries() {
    let ts = Bytes::from(vec![0x47; 188 * 16]);
    let chunks = chunk_1316(&ts);
    let sizes: Vec<usize> = chunks.iter().map(Bytes::len).collect();
    assert_eq!(sizes, vec![1316, 1316, 376]);
    assert!(chunk_1316(&Bytes::new()).is_empty());
    assert_eq!(chunk_1316(&ts.slice(..1316)).len(), 1);
}
