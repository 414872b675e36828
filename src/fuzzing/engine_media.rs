//! Crafted media after a successful publish: up to four feeds of one
//! source join, send configurations, metadata and frames, and leave, in
//! any order, while players of both formats join, read (or do not) and
//! leave, and time passes. Timestamps jump both ways (each step of a
//! track below 2^31 ms, as the demuxers hand them on) and run past the
//! 32-bit range, composition times go negative, frames are empty or megabytes
//! large, configurations change mid-stream.
//!
//! Empty frames and configurations are not sent: both demuxers drop them
//! before the engine (the `flv_tags` and `ts_demux` targets check that),
//! as they are what a feed's messages become on the way in.
//!
//! What every player must get whatever the feeds did (DESIGN section 3):
//! FLV bodies that parse, video DTS strictly increasing and audio DTS
//! never going back on the output timeline (32-bit RTMP timestamps, so
//! compared modulo 2^32: see `AMBIGUOUS`), whole in-sync MPEG-TS packets; and no panic.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rml_rtmp::sessions::StreamMetadata;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Input;
use crate::domain::{FeedId, Priority, TokenId};
use crate::election::ElectionParams;
use crate::engine::fuzzing::{loopback, SourceHarness};
use crate::engine::{EngineSettings, FeedMedia, FeedMeta, PlayerFormat, PlayerItem, Protocol};
use crate::media::ts::demux::TsDemuxer;
use crate::media::{self, Codec, CodecConfig, FlvItem, Frame, Track};

const FEEDS: usize = 4;
const MAX_STEPS: usize = 512;
/// Frames of 1 MiB or more per input at most (each costs an allocation).
const MAX_HUGE: usize = 4;

fn settings(next_keyframe: bool) -> EngineSettings {
    EngineSettings {
        node: "fuzz".into(),
        region: "fuzz".into(),
        election: ElectionParams {
            failback_hold: Duration::from_millis(500),
            flap_count: 3,
            flap_window: Duration::from_secs(60),
            flap_hold: Duration::from_secs(5),
        },
        loss: Some(crate::engine::loss::LossParams::default()),
        failover_next_keyframe: next_keyframe,
        planned_max_added_latency_ms: 0,
        switch_deadline: Duration::from_secs(3),
        vacant_hold: Duration::from_secs(5),
        gop_cache_max_bytes: 2 << 20,
        player_queue: 64,
        changes: Arc::default(),
    }
}

/// In 32-bit RTMP time a step back cannot be told from a step forward of
/// 2^32 ms less. Each step of a feed's track is below 2^31 ms, but a player
/// that lags skips frames, and between the frames it gets the output may
/// move on by more; so only a step back of up to 2^30 ms (12 days) counts
/// as going back.
const AMBIGUOUS: i32 = 1 << 30;

/// Where a player may have skipped frames (its queue was full when the
/// harness drained it), the step from its last frame to the next one of a
/// track is not checked. Every single step of a feed's track may be up to
/// 2^31 ms here, at no cost in wall-clock time; so while a player skips a
/// dozen frames the output may move on by 2^32 - 2^30 ms or more, and its
/// next frame, in 32-bit RTMP time, is indistinguishable from one that went
/// back. No real feed gets there: its clock runs at wall-clock speed but for
/// a rare step, and a lagging player skips for a moment, not for 37 days of
/// output. The frames after that one are checked again.
fn may_have_skipped(rx: &mpsc::Receiver<PlayerItem>) -> bool {
    rx.len() == rx.max_capacity()
}

/// What one player received so far.
struct Watch {
    id: u64,
    rx: mpsc::Receiver<PlayerItem>,
    format: PlayerFormat,
    last_video: Option<u32>,
    last_audio: Option<u32>,
    ts: TsDemuxer,
}

impl Watch {
    fn drain(&mut self) {
        let skipped = may_have_skipped(&self.rx);
        while let Ok(item) = self.rx.try_recv() {
            self.check(item);
        }
        if skipped {
            // See `may_have_skipped`: the next frame of each track starts over.
            self.last_video = None;
            self.last_audio = None;
        }
    }

    fn check(&mut self, item: PlayerItem) {
        match item {
            PlayerItem::Video { ts, body, keyframe } => {
                assert_eq!(self.format, PlayerFormat::Flv);
                match media::parse_flv_video(&body.to_bytes(), i64::from(ts)) {
                    Ok(FlvItem::Config(_)) => {}
                    Ok(FlvItem::Frame(f)) => {
                        assert_eq!(f.keyframe, keyframe, "tag flag and frame type agree");
                        if let Some(last) = self.last_video {
                            let step = ts.wrapping_sub(last) as i32;
                            assert!(
                                !(-AMBIGUOUS..=0).contains(&step),
                                "video DTS not increasing: {last} then {ts}"
                            );
                        }
                        self.last_video = Some(ts);
                    }
                    other => panic!("a player got a video body that does not parse: {other:?}"),
                }
            }
            PlayerItem::Audio { ts, body } => {
                assert_eq!(self.format, PlayerFormat::Flv);
                match media::parse_flv_audio(&body.to_bytes(), i64::from(ts)) {
                    Ok(FlvItem::Config(_)) => {}
                    Ok(FlvItem::Frame(_)) => {
                        if let Some(last) = self.last_audio {
                            let step = ts.wrapping_sub(last) as i32;
                            assert!(
                                !(-AMBIGUOUS..0).contains(&step),
                                "audio DTS went back: {last} then {ts}"
                            );
                        }
                        self.last_audio = Some(ts);
                    }
                    other => panic!("a player got an audio body that does not parse: {other:?}"),
                }
            }
            PlayerItem::Ts { data, .. } => {
                assert_eq!(self.format, PlayerFormat::Ts);
                assert_eq!(data.len() % 188, 0, "whole TS packets");
                assert!(data.chunks(188).all(|p| p[0] == 0x47), "TS packets in sync");
                let _ = self.ts.push(&data);
            }
            PlayerItem::Metadata(_) | PlayerItem::Close { .. } => {}
        }
    }
}

struct Feed {
    id: FeedId,
    /// The feed's own clock per track (video, audio), unwrapped as ingest
    /// hands it on.
    dts: [i64; 2],
}

fn video_config(input: &mut Input) -> CodecConfig {
    let kind = input.u8();
    let tag = input.u8();
    let (codec, data) = match kind % 4 {
        // A plausible AVC record (1 SPS, 1 PPS) whose contents vary.
        0 => (
            Codec::H264,
            vec![
                0x01, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0x00, 0x02, 0x67, tag, 0x01, 0x00, 0x02, 0x68,
                tag,
            ],
        ),
        1 => (Codec::H264, input.short().to_vec()),
        2 => (Codec::H265, input.short().to_vec()),
        _ => (Codec::H264, Vec::new()),
    };
    CodecConfig {
        track: Track::Video,
        codec,
        data: Bytes::from(data),
    }
}

fn audio_config(input: &mut Input) -> CodecConfig {
    let data = match input.u8() % 3 {
        0 => vec![0x11, 0x90],
        1 => input.short().to_vec(),
        _ => Vec::new(),
    };
    CodecConfig {
        track: Track::Audio,
        codec: Codec::Aac,
        data: Bytes::from(data),
    }
}

/// The next DTS of a track of a feed: small steps, repeats, jumps either
/// way up to the largest step ingest can hand on. Demuxers unwrap 32-bit
/// RTMP timestamps (and 33-bit MPEG-TS ones, in milliseconds less than
/// 2^31) by the signed difference, so one step of a track is below 2^31 ms
/// either way; over many steps the clock passes the 32-bit range.
fn next_dts(input: &mut Input, dts: i64) -> i64 {
    const MAX_STEP: i64 = (1 << 31) - 1;
    let mode = input.u8();
    let v = input.u16();
    let step = match mode % 8 {
        0..=3 => i64::from(v % 100),
        4 => -i64::from(v),
        5 => i64::from(v) << 12,
        6 => MAX_STEP,
        _ => i64::from(v as i16) << 16,
    };
    dts.saturating_add(step.clamp(-MAX_STEP, MAX_STEP))
}

fn payload(input: &mut Input, huge: &mut usize, track: Track) -> Bytes {
    match input.u8() % 8 {
        0 => Bytes::new(),
        1 if *huge < MAX_HUGE => {
            *huge += 1;
            let n = (1 << 20) + usize::from(input.u16()) * 16;
            Bytes::from(vec![0u8; n])
        }
        2 => Bytes::copy_from_slice(input.short()),
        _ => match track {
            // One 4-byte-length NAL unit (IDR or not, by its type byte).
            Track::Video => {
                let t = input.u8();
                Bytes::from(vec![0, 0, 0, 2, t, 0x80])
            }
            Track::Audio => Bytes::from_static(&[0x21, 0x00, 0x49]),
        },
    }
}

/// One script; see the module documentation.
pub fn engine_media(data: &[u8]) {
    let mut input = Input::new(data);
    let mut h = SourceHarness::new(settings(input.u8() & 1 == 1));
    let mut feeds: [Option<Feed>; FEEDS] = Default::default();
    let mut watches: Vec<Watch> = Vec::new();
    let mut now_ms: u64 = 0;
    let mut next_id: u128 = 1;
    let mut huge = 0;
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        let slot = usize::from(input.u8()) % FEEDS;
        match op % 12 {
            0 => {
                if let Some(f) = feeds[slot].take() {
                    h.feed_left(now_ms, f.id);
                }
                let id = FeedId(Uuid::from_u128(next_id));
                next_id += 1;
                let p = input.u8();
                let meta = FeedMeta {
                    id,
                    token_id: TokenId(Uuid::from_u128(0x70c0 + slot as u128)),
                    label: format!("feed {slot}"),
                    priority: Priority((p != 0).then_some(i32::from(p as i8))),
                    pinned: p & 0x80 != 0,
                    protocol: Protocol::Rtmp,
                    peer: loopback(),
                    grant: None,
                };
                h.feed_joined(now_ms, meta);
                let start = i64::from(input.u32());
                feeds[slot] = Some(Feed {
                    id,
                    dts: [start; 2],
                });
            }
            1 => {
                if let Some(f) = feeds[slot].take() {
                    h.feed_left(now_ms, f.id);
                }
            }
            2 | 3 => {
                let cfg = if op % 12 == 2 {
                    video_config(&mut input)
                } else {
                    audio_config(&mut input)
                };
                if let Some(f) = feeds[slot].as_ref().filter(|_| !cfg.data.is_empty()) {
                    h.feed_media(now_ms, f.id, FeedMedia::Config(cfg));
                }
            }
            4 | 5 => {
                let track = if op % 12 == 4 {
                    Track::Video
                } else {
                    Track::Audio
                };
                let codec = match (track, input.u8() & 1) {
                    (Track::Audio, _) => Codec::Aac,
                    (Track::Video, 0) => Codec::H264,
                    (Track::Video, _) => Codec::H265,
                };
                let keyframe = track == Track::Video && input.u8() & 1 == 1;
                let cts = i64::from(input.u16() as i16);
                let body = payload(&mut input, &mut huge, track);
                if let Some(f) = feeds[slot].as_mut().filter(|_| !body.is_empty()) {
                    let clock = &mut f.dts[usize::from(track == Track::Audio)];
                    *clock = next_dts(&mut input, *clock);
                    let dts = *clock;
                    let frame = Frame {
                        track,
                        codec,
                        dts,
                        pts: dts.saturating_add(cts),
                        keyframe,
                        payload: body,
                    };
                    h.feed_media(now_ms, f.id, FeedMedia::Frame(frame));
                }
            }
            6 => {
                let mut m = StreamMetadata::new();
                m.video_width = Some(input.u32());
                if let Some(f) = &feeds[slot] {
                    h.feed_media(now_ms, f.id, FeedMedia::Metadata(Arc::new(m)));
                }
            }
            7 => {
                now_ms += u64::from(input.u16() % 5000);
                h.tick(now_ms);
            }
            8 => {
                let format = if input.u8() & 1 == 0 {
                    PlayerFormat::Flv
                } else {
                    PlayerFormat::Ts
                };
                let queue = usize::from(input.u8() % 64) + 1;
                let id = next_id as u64;
                next_id += 1;
                let rx = h.player_joined(now_ms, id, format, queue);
                watches.push(Watch {
                    id,
                    rx,
                    format,
                    last_video: None,
                    last_audio: None,
                    ts: TsDemuxer::new(),
                });
            }
            9 => {
                if !watches.is_empty() {
                    let w = watches.remove(slot % watches.len());
                    h.player_left(now_ms, w.id);
                }
            }
            10 => {
                if let Some(f) = feeds[slot].take() {
                    h.kick(now_ms, f.id);
                }
            }
            _ => watches.iter_mut().for_each(Watch::drain),
        }
        // A feed the engine told to go is gone (its session would close).
        for (id, _) in h.drain_controls() {
            if let Some(s) = feeds
                .iter_mut()
                .find(|s| s.as_ref().is_some_and(|f| f.id == id))
            {
                *s = None;
                h.feed_left(now_ms, id);
            }
        }
        if let Some(p) = h.primary(now_ms) {
            assert!(
                feeds.iter().flatten().any(|f| f.id.0 == p),
                "the feed on air is one that is connected"
            );
        }
    }
    watches.iter_mut().for_each(Watch::drain);
    for f in feeds.iter().flatten() {
        h.feed_left(now_ms, f.id);
    }
    now_ms += 60_000;
    h.tick(now_ms);
    watches.iter_mut().for_each(Watch::drain);
}
