//! The MPEG-TS demuxer against real ffmpeg output: fixtures are encoded at
//! test time into `CARGO_TARGET_TMPDIR` (nothing binary is committed) and
//! the results compared with ffprobe's view of the same files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use proptest::prelude::*;

use primacy::media::codec::{avc_record_parameter_sets, avcc_nal_units};
use primacy::media::ts::demux::{DemuxEvent, DemuxStats, TsDemuxer};
use primacy::media::{Codec, CodecConfig, Frame, Track};

fn fixture_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ts-demux");
    std::fs::create_dir_all(&dir).expect("create fixture dir");
    dir
}

/// Encode `name` with ffmpeg (once per test binary run).
fn encode(name: &str, args: &[&str]) -> PathBuf {
    let path = fixture_dir().join(name);
    let tmp = fixture_dir().join(format!("{name}.{}.tmp.ts", std::process::id()));
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(&tmp)
        .status()
        .expect("run ffmpeg (is it installed?)");
    assert!(status.success(), "ffmpeg could not encode {name}");
    std::fs::rename(&tmp, &path).expect("move fixture in place");
    path
}

const AV_INPUTS: &[&str] = &[
    "-f",
    "lavfi",
    "-i",
    "testsrc2=size=320x240:rate=30",
    "-f",
    "lavfi",
];

/// 3 s of H.264 (1 s GOP, B-frames) + AAC 48 kHz, default PIDs. The low
/// bitrate keeps keyframes at ~10-20 packets, so some survive the
/// every-50th-packet loss test.
fn main_fixture() -> &'static Path {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| {
        let args = [
            AV_INPUTS,
            &["-i", "sine=frequency=440:sample_rate=48000", "-t", "3"],
            &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
            ],
            &["-g", "30", "-sc_threshold", "0", "-bf", "2", "-b:v", "200k"],
            &["-c:a", "aac", "-f", "mpegts"],
        ]
        .concat();
        encode("main.ts", &args)
    })
}

/// 2 s of a different encode (size, rate, audio) on other PIDs.
fn other_fixture() -> &'static Path {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| {
        let args = [
            &[
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=352x288:rate=25",
                "-f",
                "lavfi",
            ][..],
            &["-i", "sine=frequency=880:sample_rate=44100", "-t", "2"],
            &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                "-g",
                "25",
            ],
            &["-c:a", "aac", "-f", "mpegts"],
            &[
                "-mpegts_pmt_start_pid",
                "0x1200",
                "-mpegts_start_pid",
                "0x300",
            ],
        ]
        .concat();
        encode("other.ts", &args)
    })
}

/// 2 s of HEVC + AAC.
fn hevc_fixture() -> &'static Path {
    static F: OnceLock<PathBuf> = OnceLock::new();
    F.get_or_init(|| {
        let args = [
            AV_INPUTS,
            &["-i", "sine=frequency=440:sample_rate=48000", "-t", "2"],
            &[
                "-c:v",
                "libx265",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                "-g",
                "30",
            ],
            &[
                "-x265-params",
                "log-level=error",
                "-c:a",
                "aac",
                "-f",
                "mpegts",
            ],
        ]
        .concat();
        encode("hevc.ts", &args)
    })
}

fn ffprobe_count(path: &Path, stream: &str) -> usize {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", stream, "-count_packets"])
        .args(["-show_entries", "stream=nb_read_packets", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    // One line per program the stream is in, then one for the stream itself.
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    first
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("ffprobe said {text:?}"))
}

fn ffprobe_keyframes(path: &Path) -> usize {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "packet=flags", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('K'))
        .count()
}

fn demux_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<DemuxEvent>, DemuxStats) {
    let mut d = TsDemuxer::new();
    let mut events = Vec::new();
    for chunk in chunks {
        events.extend(d.push(chunk));
    }
    events.extend(d.finish());
    (events, d.stats().clone())
}

fn demux(data: &[u8]) -> (Vec<DemuxEvent>, DemuxStats) {
    demux_chunks([data])
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

fn configs(events: &[DemuxEvent], track: Track) -> Vec<&CodecConfig> {
    events
        .iter()
        .filter_map(|e| match e {
            DemuxEvent::Config(c) if c.track == track => Some(c),
            _ => None,
        })
        .collect()
}

/// Deterministic chunk sizes in 1..=max (xorshift).
fn chunk_sizes(seed: u64, max: u64) -> impl Iterator<Item = usize> {
    let mut s = seed;
    std::iter::repeat_with(move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (1 + s % max) as usize
    })
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read fixture")
}

#[test]
fn h264_aac_fixture_matches_ffprobe() {
    let path = main_fixture();
    let (events, stats) = demux(&read(path));
    let video = frames(&events, Track::Video);
    let audio = frames(&events, Track::Audio);

    assert_eq!(video.len(), ffprobe_count(path, "v:0"));
    assert!(
        (85..=95).contains(&video.len()),
        "{} video frames",
        video.len()
    );
    let keyframes = video.iter().filter(|f| f.keyframe).count();
    assert_eq!(keyframes, ffprobe_keyframes(path));
    assert_eq!(keyframes, 3);
    assert!(video[0].keyframe);

    assert_eq!(audio.len(), ffprobe_count(path, "a:0"));
    let expected_audio = 3.0 * 48000.0 / 1024.0;
    assert!(
        (audio.len() as f64 - expected_audio).abs() < 5.0,
        "{} audio frames",
        audio.len()
    );

    // Configs come before the frames that need them.
    let first_video = events
        .iter()
        .position(|e| matches!(e, DemuxEvent::Frame(f) if f.track == Track::Video));
    let video_cfg = events
        .iter()
        .position(|e| matches!(e, DemuxEvent::Config(c) if c.codec == Codec::H264));
    assert!(video_cfg.unwrap() < first_video.unwrap());
    let vcfg = configs(&events, Track::Video);
    assert_eq!(vcfg.len(), 1);
    let (sps, pps) = avc_record_parameter_sets(&vcfg[0].data);
    assert_eq!((sps.len(), pps.len()), (1, 1));
    let acfg = configs(&events, Track::Audio);
    assert_eq!(acfg.len(), 1);
    assert_eq!(acfg[0].data.as_ref(), &[0x11, 0x88], "AAC LC, 48 kHz, mono");

    // Timestamps: DTS strictly increasing, PTS >= DTS, B-frames reorder.
    assert!(video.windows(2).all(|w| w[1].dts > w[0].dts));
    assert!(video.iter().all(|f| f.pts >= f.dts));
    assert!(video.iter().any(|f| f.pts > f.dts));
    assert!(audio.windows(2).all(|w| w[1].dts > w[0].dts));
    let span = video.last().unwrap().dts - video[0].dts;
    assert!((2900..=3000).contains(&span), "video spans {span} ms");
    assert!((audio[0].dts - video[0].dts).abs() < 200);

    // Payloads are AVCC, without AUD/SPS/PPS; the first starts with a length.
    let len = u32::from_be_bytes(video[0].payload[..4].try_into().unwrap()) as usize;
    assert!(len + 4 <= video[0].payload.len());
    for f in &video {
        let nals = avcc_nal_units(&f.payload).expect("well-formed AVCC");
        assert!(nals.iter().all(|n| !matches!(n[0] & 0x1F, 7..=9)));
    }
    assert_eq!(
        stats.continuity_errors + stats.resyncs + stats.pes_errors,
        0
    );
    assert!(stats.packets > 0);
}

#[test]
fn random_chunking_gives_the_same_events() {
    let data = read(main_fixture());
    let (whole, _) = demux(&data);
    for seed in [1u64, 0x9E37_79B9_7F4A_7C15, 42] {
        let mut chunks = Vec::new();
        let mut rest = &data[..];
        for size in chunk_sizes(seed, 2000) {
            if rest.is_empty() {
                break;
            }
            let (a, b) = rest.split_at(size.min(rest.len()));
            chunks.push(a);
            rest = b;
        }
        let (chunked, stats) = demux_chunks(chunks);
        assert!(chunked == whole, "seed {seed}: events differ");
        assert_eq!(stats.resyncs, 0);
    }
    // SRT message sizes: libsrt (1316) and srt-live-transmit (1456).
    for size in [1316, 1456] {
        assert!(
            demux_chunks(data.chunks(size)).0 == whole,
            "chunks of {size}"
        );
    }
}

#[test]
fn dropped_packets_count_continuity_errors_and_frames_survive() {
    let data = read(main_fixture());
    let (whole, _) = demux(&data);
    let damaged: Vec<u8> = data
        .chunks(188)
        .enumerate()
        .filter(|(i, _)| i % 50 != 49)
        .flat_map(|(_, p)| p.iter().copied())
        .collect();
    let (events, stats) = demux_chunks(damaged.chunks(1316));
    assert!(stats.continuity_errors > 0, "{stats:?}");
    let video = frames(&events, Track::Video);
    let whole_video = frames(&whole, Track::Video);
    assert!(
        video.len() * 2 > whole_video.len(),
        "{} of {}",
        video.len(),
        whole_video.len()
    );
    assert!(video.len() < whole_video.len());
    // Every frame emitted is one of the undamaged originals.
    for f in &video {
        assert!(whole_video.contains(f), "corrupted frame at dts {}", f.dts);
    }
    let audio = frames(&events, Track::Audio);
    assert!(!audio.is_empty());
    assert!(audio
        .iter()
        .all(|f| frames(&whole, Track::Audio).contains(f)));
}

#[test]
fn concatenated_encodes_on_different_pids_yield_both() {
    let (a, b) = (main_fixture(), other_fixture());
    let data = [read(a), read(b)].concat();
    let (events, _) = demux_chunks(data.chunks(1456));
    let video = frames(&events, Track::Video);
    let expected = ffprobe_count(a, "v:0") + ffprobe_count(b, "v:0");
    assert_eq!(video.len(), expected);
    // Both encodes' decoder configs, in order.
    let vcfg = configs(&events, Track::Video);
    assert_eq!(vcfg.len(), 2);
    assert_ne!(vcfg[0].data, vcfg[1].data);
    let acfg = configs(&events, Track::Audio);
    assert_eq!(acfg.len(), 2);
    assert_eq!(
        acfg[1].data.as_ref(),
        &[0x12, 0x08],
        "AAC LC, 44.1 kHz, mono"
    );
    let audio = frames(&events, Track::Audio).len();
    let expected_audio = ffprobe_count(a, "a:0") + ffprobe_count(b, "a:0");
    assert_eq!(audio, expected_audio);
}

#[test]
fn hevc_passes_through_with_an_hvcc_record() {
    let path = hevc_fixture();
    let (events, stats) = demux(&read(path));
    let vcfg = configs(&events, Track::Video);
    assert_eq!(vcfg.len(), 1);
    assert_eq!(vcfg[0].codec, Codec::H265);
    assert_eq!(vcfg[0].data[0], 1, "HEVCDecoderConfigurationRecord version");
    let units = primacy::media::codec::hevc_record_parameter_sets(&vcfg[0].data);
    assert_eq!(units.len(), 3, "VPS, SPS, PPS");
    let video = frames(&events, Track::Video);
    assert_eq!(video.len(), ffprobe_count(path, "v:0"));
    assert!(video.iter().all(|f| f.codec == Codec::H265));
    assert!(video[0].keyframe);
    assert!(video.iter().filter(|f| f.keyframe).count() >= 2);
    assert!(video.windows(2).all(|w| w[1].dts > w[0].dts));
    assert!(video.iter().all(|f| avcc_nal_units(&f.payload).is_ok()));
    assert_eq!(stats.continuity_errors + stats.pes_errors, 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..5000)) {
        let mut d = TsDemuxer::new();
        for chunk in data.chunks(333) {
            d.push(chunk);
        }
        d.finish();
    }

    #[test]
    fn sync_bytes_with_arbitrary_content_never_panic(
        data in prop::collection::vec(any::<u8>(), 0..188 * 40),
    ) {
        let mut data = data;
        for i in (0..data.len()).step_by(188) {
            data[i] = 0x47;
        }
        let mut d = TsDemuxer::new();
        d.push(&data);
        d.finish();
    }

    #[test]
    fn corrupted_fixture_never_panics(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..200),
        seed in any::<u64>(),
    ) {
        let mut data = read(main_fixture());
        let len = data.len();
        for (at, v) in edits {
            data[at % len] = v;
        }
        let mut d = TsDemuxer::new();
        let mut rest = &data[..];
        for size in chunk_sizes(seed | 1, 3000) {
            if rest.is_empty() {
                break;
            }
            let (a, b) = rest.split_at(size.min(rest.len()));
            d.push(a);
            rest = b;
        }
        d.finish();
    }
}
