//! Tests of the Annex-B / AVCC, decoder record and ADTS glue.

use proptest::prelude::*;

use super::*;

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test hex")
}

// Real parameter sets from libx264 (High, 320x240) and libx265 (Main).
const H264_SPS: &str = "6764000dacd94141fb0110000003001000000303c0f1429960";
const H264_PPS: &str = "68ef8fcb";
/// ffmpeg 5.1's avcC for the SPS/PPS above (with the High extension).
const FFMPEG_AVCC: &str =
    "0164000dffe100196764000dacd94141fb0110000003001000000303c0f142996001000468ef8fcbfdf8f800";
const H264_BASELINE_SPS: &str = "6742c00dda0507ec0440000003004000000f03c50aa8";
const H265_VPS: &str = "40010c01ffff01600000030090000003000003003c959409";
const H265_SPS: &str =
    "42010101600000030090000003000003003ca00a080f16595952930bc05a020000030002000003003c10";
const H265_PPS: &str = "4401c073c189";

#[test]
fn annexb_split_handles_3_and_4_byte_start_codes() {
    let data = [
        0xAA, 0, 0, 0, 1, 0x09, 0xF0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 0, 1, 0x65, 0x88, 0, 0,
    ];
    let units = annexb_nal_units(&data);
    assert_eq!(units, vec![&[0x09, 0xF0][..], &[0x67, 1, 2], &[0x65, 0x88]]);
}

#[test]
fn annexb_split_skips_empty_units_and_no_start_code() {
    assert!(annexb_nal_units(&[1, 2, 3, 4]).is_empty());
    assert!(annexb_nal_units(&[]).is_empty());
    assert_eq!(
        annexb_nal_units(&[0, 0, 1, 0, 0, 1, 0x41]),
        vec![&[0x41][..]]
    );
    assert_eq!(annexb_nal_units(&[0, 0, 1]), Vec::<&[u8]>::new());
}

#[test]
fn annexb_to_avcc_and_back() {
    let annexb = [0, 0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x65, 0x88, 0x84];
    let avcc = annexb_to_avcc(&annexb);
    assert_eq!(
        avcc.as_ref(),
        &[0, 0, 0, 2, 0x67, 0x42, 0, 0, 0, 3, 0x65, 0x88, 0x84]
    );
    let back = avcc_to_annexb(&avcc).unwrap();
    assert_eq!(
        back.as_ref(),
        &[0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x65, 0x88, 0x84]
    );
}

#[test]
fn avcc_rejects_truncated_lengths() {
    assert_eq!(avcc_nal_units(&[0, 0, 0, 5, 1]), Err(CodecError::Truncated));
    assert_eq!(avcc_nal_units(&[0, 0, 1]), Err(CodecError::Truncated));
    assert_eq!(avcc_to_annexb(&[0, 0, 0, 9]), Err(CodecError::Truncated));
    assert_eq!(avcc_nal_units(&[0, 0, 0, 0]).unwrap(), Vec::<&[u8]>::new());
}

#[test]
fn rbsp_unescape_removes_emulation_prevention() {
    assert_eq!(
        unescape_rbsp(&[1, 0, 0, 3, 1, 0, 0, 3]),
        vec![1, 0, 0, 1, 0, 0]
    );
    assert_eq!(
        unescape_rbsp(&[0, 3, 0, 0, 3, 0, 3]),
        vec![0, 3, 0, 0, 0, 3]
    );
}

#[test]
fn bit_reader_exp_golomb() {
    // 1 | 010 | 011 | 00100 → 0, 1, 2, 3
    let data = [0b1010_0110, 0b0100_0000];
    let mut r = BitReader::new(&data, 0);
    assert_eq!(
        [
            r.ue().unwrap(),
            r.ue().unwrap(),
            r.ue().unwrap(),
            r.ue().unwrap()
        ],
        [0, 1, 2, 3]
    );
    assert!(r.ue().is_err());
    assert!(BitReader::new(&[0, 0, 0, 0, 0], 0).ue().is_err());
}

#[test]
fn avc_record_matches_ffmpeg() {
    let (sps, pps) = (unhex(H264_SPS), unhex(H264_PPS));
    let record = avc_record(&[&sps], &[&pps]).unwrap();
    assert_eq!(hex::encode(&record), FFMPEG_AVCC);
    let (s, p) = avc_record_parameter_sets(&record);
    assert_eq!(s, vec![sps]);
    assert_eq!(p, vec![pps]);
}

#[test]
fn avc_record_baseline_has_no_extension() {
    let (sps, pps) = (unhex(H264_BASELINE_SPS), unhex(H264_PPS));
    let record = avc_record(&[&sps], &[&pps]).unwrap();
    assert_eq!(record.len(), 6 + 2 + sps.len() + 1 + 2 + pps.len());
    assert_eq!(&record[..5], &[1, 0x42, 0xC0, 0x0D, 0xFF]);
    assert_eq!(
        avc_record_parameter_sets(&record),
        (vec![sps.into()], vec![pps.into()])
    );
}

#[test]
fn avc_record_errors() {
    assert!(avc_record(&[], &[&[0x68]]).is_err());
    assert!(avc_record(&[&[0x67, 0x42, 0]], &[&[0x68]]).is_err());
    assert!(avc_record(&[&[0x67, 0x42, 0, 0x1e]], &[]).is_err());
    // A High SPS that does not parse still gives a record, without extension.
    let record = avc_record(&[&[0x67, 0x64, 0, 0x1e]], &[&[0x68, 1]]).unwrap();
    assert_eq!(record.len(), 6 + 2 + 4 + 1 + 2 + 2);
}

#[test]
fn avc_record_parameter_sets_is_lenient() {
    assert_eq!(avc_record_parameter_sets(&[]), (vec![], vec![]));
    assert_eq!(
        avc_record_parameter_sets(&[2, 0, 0, 0, 0, 0]),
        (vec![], vec![])
    );
    let full = unhex(FFMPEG_AVCC);
    // Cut inside the PPS: the SPS survives.
    let (s, p) = avc_record_parameter_sets(&full[..full.len() - 6]);
    assert_eq!(s.len(), 1);
    assert!(p.is_empty());
}

#[test]
fn hevc_record_matches_ffmpeg_layout() {
    let (vps, sps, pps) = (unhex(H265_VPS), unhex(H265_SPS), unhex(H265_PPS));
    let record = hevc_record(&[&vps], &[&sps], &[&pps]).unwrap();
    // ffmpeg 5.1's hvcC, with array_completeness set (parameter sets are
    // only in the record once the demuxer strips them from the frames).
    let expected = format!(
        "0101600000009000000000003cf000fcfdf8f800000f03a000010018{H265_VPS}a10001{:04x}{H265_SPS}a20001{:04x}{H265_PPS}",
        sps.len(),
        pps.len()
    );
    assert_eq!(hex::encode(&record), expected);
    assert_eq!(hevc_record_parameter_sets(&record), vec![vps, sps, pps]);
}

#[test]
fn hevc_record_errors_and_lenient_parse() {
    let (vps, pps) = (unhex(H265_VPS), unhex(H265_PPS));
    assert!(hevc_record(&[&vps], &[&[0x42, 1, 1]], &[&pps]).is_err());
    assert!(hevc_record(&[], &[&unhex(H265_SPS)], &[&pps]).is_err());
    assert!(hevc_record_parameter_sets(&[1, 2, 3]).is_empty());
    assert_eq!(h265_nal_type(&[0x40, 1]), 32);
    assert!(h265_is_irap(19) && h265_is_irap(21) && !h265_is_irap(1));
}

#[test]
fn adts_parse_known_header() {
    // AAC LC, 48 kHz, stereo, 371-byte frame, no CRC.
    let h = parse_adts_header(&[0xFF, 0xF1, 0x4C, 0x80, 0x2E, 0x7F, 0xFC]).unwrap();
    assert_eq!(h.audio_object_type, 2);
    assert_eq!(h.sample_rate(), 48000);
    assert_eq!(h.channel_config, 2);
    assert_eq!(h.frame_len, 371);
    assert_eq!(h.header_len, 7);
    assert_eq!(h.raw_blocks, 1);
    assert_eq!(h.audio_specific_config(), [0x11, 0x90]);
}

#[test]
fn adts_parse_errors() {
    assert_eq!(parse_adts_header(&[0xFF, 0xF1]), Err(CodecError::Truncated));
    assert!(parse_adts_header(&[0xFF, 0xE1, 0x4C, 0x80, 0x2E, 0x7F, 0xFC]).is_err());
    // Sampling index 13 is reserved.
    assert!(parse_adts_header(&[0xFF, 0xF1, 0x74, 0x80, 0x2E, 0x7F, 0xFC]).is_err());
    // CRC present (protection_absent = 0) but only 7 bytes.
    assert_eq!(
        parse_adts_header(&[0xFF, 0xF0, 0x4C, 0x80, 0x2E, 0x7F, 0xFC]),
        Err(CodecError::Truncated)
    );
    // Frame shorter than its header.
    assert!(parse_adts_header(&[0xFF, 0xF1, 0x4C, 0x80, 0x00, 0x1F, 0xFC]).is_err());
}

#[test]
fn adts_header_round_trips() {
    for asc in [
        [0x11, 0x90],
        [0x12, 0x10],
        [0x0A, 0x08],
        [0x14, 0x08],
        [0x13, 0x88],
    ] {
        for len in [0, 1, 371, 8184] {
            let header = adts_header(&asc, len).unwrap();
            let parsed = parse_adts_header(&header).unwrap();
            assert_eq!(parsed.audio_specific_config(), asc, "asc {asc:02x?}");
            assert_eq!(parsed.frame_len, len + 7);
        }
    }
}

#[test]
fn adts_header_he_aac_uses_core_config() {
    // Explicit SBR: aot 5, 24 kHz (6), stereo, ext 48 kHz (3), core aot 2.
    let asc = [0x2B, 0x11, 0x88, 0x00];
    let parsed = parse_adts_header(&adts_header(&asc, 100).unwrap()).unwrap();
    assert_eq!(parsed.audio_object_type, 2);
    assert_eq!(parsed.sample_rate(), 24000);
    assert_eq!(parsed.channel_config, 2);
}

#[test]
fn adts_header_errors() {
    assert_eq!(adts_header(&[], 10), Err(CodecError::Truncated));
    assert!(adts_header(&[0x11, 0x90], 8185).is_err());
    // Explicit 24-bit frequency.
    assert!(adts_header(&[0x17, 0x80, 0, 0, 0], 10).is_err());
    // Object type 39 (ER AAC ELD, escaped) cannot go in ADTS.
    assert!(adts_header(&[0xF8, 0xE6, 0x40], 10).is_err());
}

proptest! {
    #[test]
    fn avcc_annexb_round_trip(units in prop::collection::vec(
        prop::collection::vec(1u8..=255, 1..64), 0..8)) {
        let refs: Vec<&[u8]> = units.iter().map(Vec::as_slice).collect();
        let avcc = nal_units_to_avcc(refs.iter().copied());
        let annexb = avcc_to_annexb(&avcc).unwrap();
        prop_assert_eq!(annexb_nal_units(&annexb), refs);
        prop_assert_eq!(annexb_to_avcc(&annexb), avcc);
    }

    #[test]
    fn parsers_never_panic(data in prop::collection::vec(any::<u8>(), 0..96), n in 0usize..9000) {
        let _ = annexb_nal_units(&data);
        let _ = avcc_nal_units(&data);
        let _ = avcc_to_annexb(&data);
        let _ = avc_record_parameter_sets(&data);
        let _ = hevc_record_parameter_sets(&data);
        let _ = parse_adts_header(&data);
        let _ = adts_header(&data, n);
        let _ = avc_record(&[&data], &[&data]);
        let _ = hevc_record(&[&data], &[&data], &[&data]);
    }
}
