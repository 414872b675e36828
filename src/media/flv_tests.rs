//! Tests of the FLV tag body parsers and builders.

use proptest::prelude::*;

use super::*;
use crate::media::Track;

const AVC_RECORD: &[u8] = &[
    0x01, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0x00, 0x04, 0x67, 0x64, 0x00, 0x1f,
];
const HEVC_RECORD: &[u8] = &[0x01, 0x01, 0x60, 0x00, 0x00, 0x00, 0x90, 0x00];
const ASC: &[u8] = &[0x12, 0x10];
const NALUS: &[u8] = &[0x00, 0x00, 0x00, 0x02, 0x65, 0x88];

fn body(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn video_frame(item: FlvItem) -> Frame {
    match item {
        FlvItem::Frame(f) => f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn video_config(codec: Codec, data: &'static [u8]) -> CodecConfig {
    CodecConfig {
        track: codec.track(),
        codec,
        data: Bytes::from_static(data),
    }
}

#[test]
fn avc_sequence_header() {
    let b = body(&[&[0x17, 0x00, 0x00, 0x00, 0x00], AVC_RECORD]);
    assert_eq!(
        parse_flv_video(&b, 0),
        Ok(FlvItem::Config(video_config(Codec::H264, AVC_RECORD)))
    );
}

#[test]
fn avc_keyframe_with_positive_cts() {
    let b = body(&[&[0x17, 0x01, 0x00, 0x00, 0x43], NALUS]);
    let f = video_frame(parse_flv_video(&b, 1000).unwrap());
    assert_eq!(
        f,
        Frame {
            track: Track::Video,
            codec: Codec::H264,
            dts: 1000,
            pts: 1067,
            keyframe: true,
            payload: Bytes::from_static(NALUS),
        }
    );
}

#[test]
fn avc_inter_frame_with_negative_cts() {
    let b = body(&[&[0x27, 0x01, 0xff, 0xff, 0xf6], NALUS]);
    let f = video_frame(parse_flv_video(&b, 1000).unwrap());
    assert_eq!((f.dts, f.pts, f.keyframe), (1000, 990, false));
    let b = body(&[&[0x27, 0x01, 0x80, 0x00, 0x00], NALUS]);
    assert_eq!(
        video_frame(parse_flv_video(&b, 0).unwrap()).cts(),
        -(1 << 23)
    );
    let b = body(&[&[0x27, 0x01, 0x7f, 0xff, 0xff], NALUS]);
    assert_eq!(
        video_frame(parse_flv_video(&b, 0).unwrap()).cts(),
        (1 << 23) - 1
    );
}

#[test]
fn avc_end_of_sequence_and_command_frames_are_ignored() {
    assert_eq!(
        parse_flv_video(&[0x17, 0x02, 0x00, 0x00, 0x00], 5),
        Ok(FlvItem::Ignored)
    );
    assert_eq!(parse_flv_video(&[0x17, 0x02], 5), Ok(FlvItem::Ignored));
    assert_eq!(parse_flv_video(&[0x57, 0x00], 5), Ok(FlvItem::Ignored));
    // Empty coded frame.
    assert_eq!(
        parse_flv_video(&[0x27, 0x01, 0x00, 0x00, 0x00], 5),
        Ok(FlvItem::Ignored)
    );
}

#[test]
fn hevc_enhanced_sequence_start() {
    let b = body(&[&[0x90], b"hvc1", HEVC_RECORD]);
    assert_eq!(
        parse_flv_video(&b, 0),
        Ok(FlvItem::Config(video_config(Codec::H265, HEVC_RECORD)))
    );
}

#[test]
fn hevc_enhanced_coded_frames_and_x() {
    let b = body(&[&[0x91], b"hvc1", &[0x00, 0x00, 0x21], NALUS]);
    let f = video_frame(parse_flv_video(&b, 40).unwrap());
    assert_eq!(
        (f.track, f.codec, f.dts, f.pts, f.keyframe),
        (Track::Video, Codec::H265, 40, 73, true)
    );
    assert_eq!(f.payload, NALUS);

    let b = body(&[&[0xa3], b"hvc1", NALUS]);
    let f = video_frame(parse_flv_video(&b, 40).unwrap());
    assert_eq!(
        (f.codec, f.dts, f.pts, f.keyframe),
        (Codec::H265, 40, 40, false)
    );
    assert_eq!(f.payload, NALUS);

    let b = body(&[&[0xa1], b"hvc1", &[0xff, 0xff, 0xdf], NALUS]);
    assert_eq!(video_frame(parse_flv_video(&b, 40).unwrap()).pts, 7);
}

#[test]
fn enhanced_avc1_is_h264() {
    let b = body(&[&[0x90], b"avc1", AVC_RECORD]);
    assert_eq!(
        parse_flv_video(&b, 0),
        Ok(FlvItem::Config(video_config(Codec::H264, AVC_RECORD)))
    );
    let b = body(&[&[0x93], b"avc1", NALUS]);
    let f = video_frame(parse_flv_video(&b, 7).unwrap());
    assert_eq!((f.codec, f.keyframe, f.pts), (Codec::H264, true, 7));
}

#[test]
fn enhanced_other_packet_types_are_ignored() {
    assert_eq!(
        parse_flv_video(&body(&[&[0x92], b"hvc1"]), 0),
        Ok(FlvItem::Ignored)
    ); // SequenceEnd
    assert_eq!(
        parse_flv_video(&body(&[&[0x94], b"hvc1", &[2, 0]]), 0),
        Ok(FlvItem::Ignored)
    ); // Metadata
    assert_eq!(parse_flv_video(&[0x95], 0), Ok(FlvItem::Ignored)); // MPEG-2 TS sequence start
    assert_eq!(parse_flv_video(&[0x96, 0x00], 0), Ok(FlvItem::Ignored)); // Multitrack
    assert_eq!(parse_flv_video(&[0xd1, 0x00], 0), Ok(FlvItem::Ignored)); // command frame
}

#[test]
fn legacy_codec_12_is_hevc() {
    let b = body(&[&[0x1c, 0x00, 0x00, 0x00, 0x00], HEVC_RECORD]);
    assert_eq!(
        parse_flv_video(&b, 0),
        Ok(FlvItem::Config(video_config(Codec::H265, HEVC_RECORD)))
    );
    let b = body(&[&[0x2c, 0x01, 0x00, 0x00, 0x10], NALUS]);
    let f = video_frame(parse_flv_video(&b, 100).unwrap());
    assert_eq!(
        (f.codec, f.dts, f.pts, f.keyframe),
        (Codec::H265, 100, 116, false)
    );
}

#[test]
fn aac_config_and_frame() {
    assert_eq!(
        parse_flv_audio(&body(&[&[0xaf, 0x00], ASC]), 0),
        Ok(FlvItem::Config(video_config(Codec::Aac, ASC)))
    );
    let f = video_frame(parse_flv_audio(&[0xaf, 0x01, 0x21, 0x00, 0x49], 23).unwrap());
    assert_eq!(
        f,
        Frame {
            track: Track::Audio,
            codec: Codec::Aac,
            dts: 23,
            pts: 23,
            keyframe: true,
            payload: Bytes::from_static(&[0x21, 0x00, 0x49]),
        }
    );
    // Other rate/size/channel bits than the canonical 0xAF are accepted.
    assert!(matches!(
        parse_flv_audio(&[0xa2, 0x01, 0x21], 0),
        Ok(FlvItem::Frame(_))
    ));
    assert_eq!(parse_flv_audio(&[0xaf, 0x01], 0), Ok(FlvItem::Ignored));
}

#[test]
fn truncated_inputs() {
    for b in [
        &[][..],
        &[0x17],
        &[0x17, 0x01],
        &[0x17, 0x01, 0x00, 0x00],
        &[0x17, 0x00, 0x00],
        &[0x90, b'h', b'v', b'c'],
        &[0x91, b'h', b'v', b'c', b'1'],
        &[0x91, b'h', b'v', b'c', b'1', 0x00, 0x00],
    ] {
        assert_eq!(parse_flv_video(b, 0), Err(FlvError::Truncated), "{b:02x?}");
    }
    assert_eq!(parse_flv_audio(&[], 0), Err(FlvError::Truncated));
    assert_eq!(parse_flv_audio(&[0xaf], 0), Err(FlvError::Truncated));
}

#[test]
fn unsupported_codecs() {
    assert_eq!(
        parse_flv_video(&[0x12, 0x00], 0),
        Err(FlvError::UnsupportedCodec(2))
    ); // Sorenson H.263
    assert_eq!(
        parse_flv_video(&[0x14, 0x00], 0),
        Err(FlvError::UnsupportedCodec(4))
    ); // VP6
    assert_eq!(
        parse_flv_video(&[0x1d], 0),
        Err(FlvError::UnsupportedCodec(13))
    );
    let av1 = body(&[&[0x90], b"av01", &[0x81]]);
    assert_eq!(
        parse_flv_video(&av1, 0),
        Err(FlvError::UnsupportedCodec(UNSUPPORTED_FOURCC))
    );
    assert_eq!(
        parse_flv_audio(&[0x2f, 0xff, 0xfb], 0),
        Err(FlvError::UnsupportedCodec(2))
    ); // MP3
    assert_eq!(
        parse_flv_audio(&[0x90, 0x00], 0),
        Err(FlvError::UnsupportedCodec(9))
    ); // enhanced audio
    let msg = FlvError::UnsupportedCodec(UNSUPPORTED_FOURCC).to_string();
    assert!(msg.contains("FourCC"), "{msg}");
    assert_eq!(
        FlvError::UnsupportedCodec(2).to_string(),
        "unsupported codec: FLV codec id 2"
    );
}

#[test]
fn malformed_inputs() {
    assert!(matches!(
        parse_flv_video(&[0x17, 0x05, 0, 0, 0], 0),
        Err(FlvError::Malformed(_))
    ));
    assert!(matches!(
        parse_flv_video(&[0x17, 0x00, 0, 0, 0], 0),
        Err(FlvError::Malformed(_))
    ));
    assert!(matches!(
        parse_flv_video(&body(&[&[0x90], b"hvc1"]), 0),
        Err(FlvError::Malformed(_))
    ));
    assert!(matches!(
        parse_flv_audio(&[0xaf, 0x02, 0x00], 0),
        Err(FlvError::Malformed(_))
    ));
    assert!(matches!(
        parse_flv_audio(&[0xaf, 0x00], 0),
        Err(FlvError::Malformed(_))
    ));
}

#[test]
fn builders_lay_out_bytes_as_expected() {
    let avc = flv_video_config(&video_config(Codec::H264, AVC_RECORD));
    assert_eq!(avc[..], body(&[&[0x17, 0, 0, 0, 0], AVC_RECORD])[..]);
    let hevc = flv_video_config(&video_config(Codec::H265, HEVC_RECORD));
    assert_eq!(hevc[..], body(&[&[0x90], b"hvc1", HEVC_RECORD])[..]);
    let asc = flv_audio_config(&video_config(Codec::Aac, ASC));
    assert_eq!(asc[..], body(&[&[0xaf, 0x00], ASC])[..]);

    let mut f = Frame {
        track: Track::Video,
        codec: Codec::H264,
        dts: 100,
        pts: 90,
        keyframe: false,
        payload: Bytes::from_static(NALUS),
    };
    assert_eq!(
        flv_video_frame(&f).to_bytes()[..],
        body(&[&[0x27, 1, 0xff, 0xff, 0xf6], NALUS])[..]
    );
    f.codec = Codec::H265;
    f.keyframe = true;
    f.pts = 133;
    assert_eq!(
        flv_video_frame(&f).to_bytes()[..],
        body(&[&[0x91], b"hvc1", &[0, 0, 33], NALUS])[..]
    );
    let a = Frame {
        track: Track::Audio,
        codec: Codec::Aac,
        dts: 1,
        pts: 1,
        keyframe: true,
        payload: Bytes::from_static(&[0x21, 0x00]),
    };
    assert_eq!(flv_audio_frame(&a).to_bytes()[..], [0xaf, 0x01, 0x21, 0x00]);
}

#[test]
fn builder_clamps_cts_to_24_bits() {
    let mut f = Frame {
        track: Track::Video,
        codec: Codec::H264,
        dts: 0,
        pts: 10_000_000,
        keyframe: true,
        payload: Bytes::from_static(NALUS),
    };
    assert_eq!(flv_video_frame(&f).to_bytes()[2..5], [0x7f, 0xff, 0xff]);
    f.pts = -10_000_000;
    assert_eq!(flv_video_frame(&f).to_bytes()[2..5], [0x80, 0x00, 0x00]);
    f.codec = Codec::H265;
    assert_eq!(flv_video_frame(&f).to_bytes()[5..8], [0x80, 0x00, 0x00]);
}

#[test]
fn config_round_trips() {
    for (codec, data) in [
        (Codec::H264, AVC_RECORD),
        (Codec::H265, HEVC_RECORD),
        (Codec::Aac, ASC),
    ] {
        let cfg = video_config(codec, data);
        let parsed = match codec {
            Codec::Aac => parse_flv_audio(&flv_audio_config(&cfg), 0),
            _ => parse_flv_video(&flv_video_config(&cfg), 0),
        };
        assert_eq!(parsed, Ok(FlvItem::Config(cfg)));
    }
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        prop_oneof![Just(Codec::H264), Just(Codec::H265), Just(Codec::Aac)],
        -(1i64 << 40)..(1i64 << 40),
        -(1i64 << 23)..(1i64 << 23),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 1..64),
    )
        .prop_map(|(codec, dts, cts, keyframe, payload)| {
            let audio = codec == Codec::Aac;
            Frame {
                track: codec.track(),
                codec,
                dts,
                pts: if audio { dts } else { dts + cts },
                keyframe: audio || keyframe,
                payload: Bytes::from(payload),
            }
        })
}

fn parse(codec: Codec, body: &[u8], dts: i64) -> Result<FlvItem, FlvError> {
    match codec.track() {
        Track::Video => parse_flv_video(body, dts),
        Track::Audio => parse_flv_audio(body, dts),
    }
}

proptest! {
    #[test]
    fn frame_round_trips(frame in arb_frame()) {
        let body = match frame.track {
            Track::Video => flv_video_frame(&frame),
            Track::Audio => flv_audio_frame(&frame),
        };
        // The payload is the frame's own buffer, not a copy.
        prop_assert_eq!(body.payload().as_ptr(), frame.payload.as_ptr());
        prop_assert_eq!(parse(frame.codec, &body.to_bytes(), frame.dts), Ok(FlvItem::Frame(frame)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        dts in any::<i64>(),
    ) {
        for item in [parse_flv_video(&bytes, dts), parse_flv_audio(&bytes, dts)].into_iter().flatten() {
            match item {
                FlvItem::Frame(f) => {
                    prop_assert_eq!(f.track, f.codec.track());
                    prop_assert!(!f.payload.is_empty());
                    prop_assert_eq!(f.dts, dts);
                }
                FlvItem::Config(c) => {
                    prop_assert_eq!(c.track, c.codec.track());
                    prop_assert!(!c.data.is_empty());
                }
                FlvItem::Ignored => {}
            }
        }
    }

    /// Plausible headers followed by noise reach the deeper branches.
    #[test]
    fn plausible_headers_never_panic(
        b0 in prop::sample::select(vec![0x17u8, 0x27, 0x1c, 0x2c, 0x57, 0x90, 0x91, 0x92, 0x93, 0xa1, 0xd1, 0xaf]),
        fourcc in prop::sample::select(vec![*b"hvc1", *b"avc1", *b"av01"]),
        rest in proptest::collection::vec(any::<u8>(), 0..16),
        dts in any::<i64>(),
    ) {
        let mut bytes = vec![b0];
        if b0 & 0x80 != 0 {
            bytes.extend_from_slice(&fourcc);
        }
        bytes.extend_from_slice(&rest);
        for cut in 0..=bytes.len() {
            let _ = parse_flv_video(&bytes[..cut], dts);
            let _ = parse_flv_audio(&bytes[..cut], dts);
        }
    }
}
