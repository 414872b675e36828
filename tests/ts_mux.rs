//! The TS muxer against real tools: ffmpeg encodes H.264+AAC into FLV (and
//! H.265 as Annex-B), the test turns that into frames and configs, muxes
//! them with a simulated feed switch halfway, and ffprobe/ffmpeg must find
//! the streams, decode without a single error message and count exactly the
//! packets that were muxed, with the muxed timestamps.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use primacy::media::codec::{annexb_nal_units, h265_is_irap, h265_nal_type, hevc_record};
use primacy::media::ts::mux::{chunk_1316, TsMuxer};
use primacy::media::{parse_flv_audio, parse_flv_video, Codec, CodecConfig, FlvItem, Frame, Track};

fn workdir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("ts_mux")
        .join(name);
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

fn run(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().expect("run ffmpeg/ffprobe (installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?} failed: {stderr}");
    (stdout, stderr)
}

fn encode(dir: &Path, name: &str, video_args: &[&str], format: &str, with_audio: bool) -> PathBuf {
    let path = dir.join(name);
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30"]);
    if with_audio {
        cmd.args(["-f", "lavfi", "-i", "sine=sample_rate=48000"]);
    }
    cmd.args(["-t", "4"])
        .args(video_args)
        .args(["-pix_fmt", "yuv420p", "-g", "30"]);
    if with_audio {
        cmd.args(["-c:a", "aac"]);
    }
    run(cmd.args(["-f", format]).arg(&path));
    path
}

/// Configs and frames of an FLV file, in file order.
fn read_flv(path: &Path) -> Vec<FlvItem> {
    let data = std::fs::read(path).expect("read flv");
    assert_eq!(&data[..3], b"FLV");
    let mut pos = u32::from_be_bytes(data[5..9].try_into().unwrap()) as usize + 4;
    let mut items = Vec::new();
    while pos + 11 <= data.len() {
        let h = &data[pos..pos + 11];
        let size = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
        let ts = (i64::from(h[7]) << 24)
            | (i64::from(h[4]) << 16)
            | (i64::from(h[5]) << 8)
            | i64::from(h[6]);
        let body = &data[pos + 11..pos + 11 + size];
        let item = match h[0] & 0x1F {
            8 => Some(parse_flv_audio(body, ts).expect("audio tag")),
            9 => Some(parse_flv_video(body, ts).expect("video tag")),
            _ => None,
        };
        items.extend(item.filter(|i| !matches!(i, FlvItem::Ignored)));
        pos += 11 + size + 4;
    }
    items
}

/// The H.265 access units (split at the encoder's AUDs) of an Annex-B file
/// as one config and frames at 30 fps.
fn read_hevc(path: &Path) -> (CodecConfig, Vec<Frame>) {
    let data = std::fs::read(path).expect("read hevc");
    let (mut vps, mut sps, mut pps) = (Vec::new(), Vec::new(), Vec::new());
    let mut aus: Vec<Vec<&[u8]>> = Vec::new();
    for nal in annexb_nal_units(&data) {
        match h265_nal_type(nal) {
            32 => vps.push(nal),
            33 => sps.push(nal),
            34 => pps.push(nal),
            35 => aus.push(Vec::new()),
            _ => aus.last_mut().expect("AUD first").push(nal),
        }
    }
    let record = hevc_record(&vps, &sps, &pps).expect("HEVC record");
    let cfg = CodecConfig {
        track: Track::Video,
        codec: Codec::H265,
        data: record,
    };
    let frames = aus
        .iter()
        .enumerate()
        .map(|(i, units)| {
            let t = i as i64 * 100 / 3;
            let mut payload = Vec::new();
            for u in units {
                payload.extend_from_slice(&(u.len() as u32).to_be_bytes());
                payload.extend_from_slice(u);
            }
            Frame {
                track: Track::Video,
                codec: Codec::H265,
                dts: t,
                pts: t,
                keyframe: units.iter().any(|u| h265_is_irap(h265_nal_type(u))),
                payload: Bytes::from(payload),
            }
        })
        .collect();
    (cfg, frames)
}

/// Feed A until its first keyframe at or after `cut_ms`, then a switch to
/// feed B (the same media from its start, rebased to continue at the cut):
/// (TS bytes, muxed frames).
fn mux_with_switch(items: &[FlvItem], cut_ms: i64) -> (Vec<u8>, Vec<Frame>) {
    let configs: Vec<&CodecConfig> = items
        .iter()
        .filter_map(|i| match i {
            FlvItem::Config(c) => Some(c),
            _ => None,
        })
        .collect();
    let frames: Vec<&Frame> = items
        .iter()
        .filter_map(|i| match i {
            FlvItem::Frame(f) => Some(f),
            _ => None,
        })
        .collect();
    let cut = frames
        .iter()
        .find(|f| f.is_video_keyframe() && f.dts >= cut_ms)
        .expect("a keyframe to cut at")
        .dts;
    let mut mux = TsMuxer::new();
    let mut ts = Vec::new();
    let mut muxed = Vec::new();
    configs.iter().for_each(|c| mux.set_config(c));
    for f in frames.iter().filter(|f| f.dts < cut) {
        ts.extend_from_slice(&mux.mux(f));
        muxed.push((*f).clone());
    }
    mux.mark_discontinuity();
    configs.iter().for_each(|c| mux.set_config(c));
    for f in &frames {
        let shifted = Frame {
            dts: f.dts + cut,
            pts: f.pts + cut,
            ..(*f).clone()
        };
        let out = mux.mux(&shifted);
        // Whole SRT messages reassemble to the same bytes.
        let chunks = chunk_1316(&out);
        assert!(chunks.iter().all(|c| c.len() <= 1316 && c.len() % 188 == 0));
        assert_eq!(chunks.concat(), out.to_vec());
        ts.extend_from_slice(&out);
        muxed.push(shifted);
    }
    (ts, muxed)
}

/// ffprobe's streams: (codec_type, codec_name, width, height, nb_read_packets).
fn probe_streams(ts: &Path) -> Vec<(String, String, u64, u64, u64)> {
    let (out, _) = run(Command::new("ffprobe")
        .args(["-v", "error", "-count_packets"])
        .args([
            "-show_entries",
            "stream=codec_type,codec_name,width,height,nb_read_packets",
            "-of",
            "json",
        ])
        .arg(ts));
    let json: serde_json::Value = serde_json::from_str(&out).expect("ffprobe json");
    json["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|s| {
            let num = |k: &str| match &s[k] {
                serde_json::Value::String(v) => v.parse().unwrap_or(0),
                v => v.as_u64().unwrap_or(0),
            };
            let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
            (
                text("codec_type"),
                text("codec_name"),
                num("width"),
                num("height"),
                num("nb_read_packets"),
            )
        })
        .collect()
}

/// ffprobe's (pts, dts) per packet of one stream type, in 90 kHz units.
fn probe_timestamps(ts: &Path, stream: &str) -> Vec<(i64, Option<i64>)> {
    let (out, _) = run(Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", stream])
        .args(["-show_entries", "packet=pts,dts", "-of", "csv=p=0"])
        .arg(ts));
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut it = l.split(',');
            let pts = it.next().unwrap().parse().unwrap();
            let dts = it.next().and_then(|d| d.parse().ok());
            (pts, dts)
        })
        .collect()
}

/// `ffmpeg -v error -i ts -f null -` prints nothing: it decodes cleanly.
fn assert_decodes_cleanly(ts: &Path) {
    let (_, stderr) = run(Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(ts)
        .args(["-f", "null", "-"]));
    assert!(stderr.trim().is_empty(), "decode errors:\n{stderr}");
}

fn check_h264_aac(name: &str, video_args: &[&str]) {
    let dir = workdir(name);
    let flv = encode(&dir, "in.flv", video_args, "flv", true);
    let items = read_flv(&flv);
    let (ts, muxed) = mux_with_switch(&items, 2000);
    assert_eq!(ts.len() % 188, 0);
    let out = dir.join("out.ts");
    std::fs::write(&out, &ts).expect("write ts");

    let count = |t: Track| muxed.iter().filter(|f| f.track == t).count() as u64;
    let streams = probe_streams(&out);
    let video = streams
        .iter()
        .find(|s| s.0 == "video")
        .expect("video stream");
    let audio = streams
        .iter()
        .find(|s| s.0 == "audio")
        .expect("audio stream");
    assert_eq!(
        (video.1.as_str(), video.2, video.3),
        ("h264", 320, 240),
        "{streams:?}"
    );
    assert_eq!(audio.1, "aac", "{streams:?}");
    assert_eq!(video.4, count(Track::Video), "video packets");
    assert_eq!(audio.4, count(Track::Audio), "audio packets");
    assert!(count(Track::Video) > 150, "both halves muxed");

    let expect: Vec<(i64, Option<i64>)> = muxed
        .iter()
        .filter(|f| f.track == Track::Video)
        .map(|f| (f.pts * 90, Some(f.dts * 90)))
        .collect();
    assert_eq!(probe_timestamps(&out, "v:0"), expect, "video timestamps");
    assert_decodes_cleanly(&out);
}

#[test]
fn h264_aac_with_switch_decodes_cleanly() {
    check_h264_aac("plain", &["-c:v", "libx264", "-preset", "ultrafast"]);
}

#[test]
fn h264_with_b_frames_and_aac_decodes_cleanly() {
    check_h264_aac(
        "bframes",
        &["-c:v", "libx264", "-preset", "ultrafast", "-bf", "2"],
    );
}

#[test]
fn h265_with_switch_decodes_cleanly() {
    let dir = workdir("hevc");
    let x265 = "aud=1:bframes=0:keyint=30:min-keyint=30:scenecut=0:log-level=error";
    let hevc = encode(
        &dir,
        "in.hevc",
        &["-c:v", "libx265", "-x265-params", x265],
        "hevc",
        false,
    );
    let (cfg, frames) = read_hevc(&hevc);
    assert!(frames.len() >= 100);
    let items: Vec<FlvItem> = std::iter::once(FlvItem::Config(cfg))
        .chain(frames.into_iter().map(FlvItem::Frame))
        .collect();
    let (ts, muxed) = mux_with_switch(&items, 2000);
    let out = dir.join("out.ts");
    std::fs::write(&out, &ts).expect("write ts");
    let streams = probe_streams(&out);
    assert_eq!(streams.len(), 1, "{streams:?}");
    let s = &streams[0];
    assert_eq!((s.1.as_str(), s.2, s.3), ("hevc", 320, 240), "{streams:?}");
    assert_eq!(s.4, muxed.len() as u64, "video packets");
    assert_decodes_cleanly(&out);
}
