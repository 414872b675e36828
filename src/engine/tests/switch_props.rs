//! Property test of the switch (DESIGN section 3), driven at the
//! [`Source`] level under virtual time over random sequences of feeds
//! joining, leaving, stalling, being reprioritized and sending frames with
//! random timestamps: encoder clocks that wrap at 2^32 (unwrapped per track,
//! as the RTMP demuxer does) or jump forwards or back on the same
//! connection, audio sent ahead of the video, B-frames (PTS above DTS,
//! varying).
//!
//! Asserted on what players receive, not on the source's internals:
//! - output DTS strictly increases per track (video) / never goes back
//!   (audio), and PTS >= DTS;
//! - a feed's codec configurations precede its first frame after every
//!   switch, and no frame of another feed comes between (at most one feed
//!   on air; the view agrees);
//! - while a feed stays on air, every video frame it sends goes out (so a
//!   planned switch, which keeps the old feed on air until the new one's
//!   keyframe, loses no frame), and a planned cut starts the new feed at a
//!   keyframe one frame interval after the old feed's last video frame.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tokio::sync::mpsc;

use super::{
    audio_cfg, audio_off, audio_payload, fid, metadata, settings, tok, video_cfg, video_marker,
    video_off, video_payload, AUDIO_CFG_TAG, VIDEO_CFG_TAG,
};
use crate::domain::{FeedId, Priority};
use crate::engine::source::Source;
use crate::engine::view::ReprioritizeReport;
use crate::engine::{FeedControl, FeedMedia, FeedMeta, PlayerItem, Protocol, SourceKey, WallClock};
use crate::media::{self, Codec, FlvItem, Frame, TimestampUnwrapper, Track};
use crate::metrics::Metrics;

/// Publishing slots: a feed in a slot publishes with the slot's token.
const SLOTS: usize = 3;

/// How one feed publishes.
#[derive(Debug, Clone)]
struct Encoder {
    /// The encoder's clock at its first frame, as sent on the wire (32-bit).
    ts0: u32,
    /// A keyframe every `gop` video frames.
    gop: u32,
    /// Audio sent this far ahead of its time.
    audio_lead_ms: u64,
    /// Composition offsets vary (B-frames) instead of a constant one.
    bframes: bool,
}

#[derive(Debug, Clone)]
enum Op {
    /// A new connection publishes in `slot` (the old one there, if any,
    /// leaves first).
    Join { slot: usize, enc: Encoder },
    /// The feed in `slot` disconnects.
    Leave { slot: usize },
    /// The feed in `slot` sends nothing for `ms`; then it sends what it
    /// held back at once (`burst`, a TCP stall) or skips it (lost).
    Stall { slot: usize, ms: u64, burst: bool },
    /// The encoder's clock jumps by `ms` (forwards or backwards) on the
    /// same connection, both tracks at once (a timeline discontinuity).
    Jump { slot: usize, ms: i32 },
    /// The slot's token gets a new priority.
    Reprioritize {
        slot: usize,
        priority: i32,
        disconnect: bool,
    },
    /// A player joins.
    Play,
    /// Time passes.
    Run { ms: u64 },
}

fn encoder() -> impl Strategy<Value = Encoder> {
    (
        prop_oneof![
            Just(0u32),
            0u32..100_000,
            // Wraps after 1 to 4 seconds of media.
            (1_000u32..4_000).prop_map(|before| u32::MAX - before),
            any::<u32>(),
        ],
        prop_oneof![Just(10u32), Just(30), 5u32..60],
        prop_oneof![Just(0u64), 0u64..400],
        any::<bool>(),
    )
        .prop_map(|(ts0, gop, audio_lead_ms, bframes)| Encoder {
            ts0,
            gop,
            audio_lead_ms,
            bframes,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..SLOTS, encoder()).prop_map(|(slot, enc)| Op::Join { slot, enc }),
        1 => (0..SLOTS).prop_map(|slot| Op::Leave { slot }),
        2 => (0..SLOTS, 50u64..3_000, any::<bool>())
            .prop_map(|(slot, ms, burst)| Op::Stall { slot, ms, burst }),
        2 => (0..SLOTS, 0i32..4, any::<bool>()).prop_map(|(slot, priority, disconnect)| {
            Op::Reprioritize { slot, priority, disconnect }
        }),
        1 => (0..SLOTS, -100_000i32..100_000).prop_map(|(slot, ms)| Op::Jump { slot, ms }),
        1 => Just(Op::Play),
        8 => (1u64..2_500).prop_map(|ms| Op::Run { ms }),
    ]
}

/// One publishing connection.
struct Feed {
    tag: u8,
    id: FeedId,
    enc: Encoder,
    start_ms: u64,
    next_video: u32,
    next_audio: u32,
    /// Nothing sent before this instant (a stall).
    stalled_until: u64,
    burst: bool,
    video_ts: TimestampUnwrapper,
    audio_ts: TimestampUnwrapper,
    control: mpsc::Receiver<FeedControl>,
}

impl Feed {
    fn video_due(&self) -> u64 {
        self.start_ms + video_off(self.next_video)
    }

    fn audio_due(&self) -> u64 {
        (self.start_ms + audio_off(self.next_audio)).saturating_sub(self.enc.audio_lead_ms)
    }

    /// Skip what fell due before `now_ms` (frames lost in a stall).
    fn skip_to(&mut self, now_ms: u64) {
        while self.video_due() < now_ms {
            self.next_video += 1;
        }
        while self.audio_due() < now_ms {
            self.next_audio += 1;
        }
    }

    /// The next due frame (video first on a tie), as the demuxer hands it
    /// to the engine: wire timestamps unwrapped per track.
    fn next_frame(&mut self, now_ms: u64) -> Option<(Frame, u32)> {
        let (v, a) = (self.video_due(), self.audio_due());
        if v.min(a) > now_ms {
            return None;
        }
        Some(if v <= a {
            let i = self.next_video;
            self.next_video += 1;
            let key = i.is_multiple_of(self.enc.gop);
            let wire = self.enc.ts0.wrapping_add(video_off(i) as u32);
            let dts = self.video_ts.unwrap(wire);
            let cts = if self.enc.bframes {
                [67, 133, 33][(i % 3) as usize]
            } else {
                66
            };
            let frame = Frame {
                track: Track::Video,
                codec: Codec::H264,
                dts,
                pts: dts + cts,
                keyframe: key,
                payload: video_payload(self.tag, i, key),
            };
            (frame, i)
        } else {
            let j = self.next_audio;
            self.next_audio += 1;
            let wire = self.enc.ts0.wrapping_add(audio_off(j) as u32);
            let dts = self.audio_ts.unwrap(wire);
            let frame = Frame {
                track: Track::Audio,
                codec: Codec::Aac,
                dts,
                pts: dts,
                keyframe: true,
                payload: audio_payload(self.tag, j),
            };
            (frame, j)
        })
    }
}

/// What a player received, decoded back to feed tag and frame index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Meta(u8),
    Config {
        track: Track,
        tag: u8,
    },
    Frame {
        track: Track,
        tag: u8,
        idx: u32,
        dts: i64,
        pts: i64,
        key: bool,
    },
    Close,
}

fn decode(item: PlayerItem) -> Out {
    match item {
        PlayerItem::Metadata(m) => {
            let enc = m.encoder.clone().unwrap_or_default();
            Out::Meta(enc.as_bytes().get(6).copied().unwrap_or(0))
        }
        PlayerItem::Video { ts, body, .. } => {
            match media::parse_flv_video(&body.to_bytes(), i64::from(ts)) {
                Ok(FlvItem::Config(cfg)) => Out::Config {
                    track: Track::Video,
                    tag: cfg.data[VIDEO_CFG_TAG],
                },
                Ok(FlvItem::Frame(f)) => {
                    let (tag, idx, key) = video_marker(&f);
                    assert_eq!(key, f.keyframe, "only IDR payloads go out as keyframes");
                    Out::Frame {
                        track: Track::Video,
                        tag,
                        idx,
                        dts: f.dts,
                        pts: f.pts,
                        key,
                    }
                }
                other => panic!("a player got an unexpected video body: {other:?}"),
            }
        }
        PlayerItem::Audio { ts, body } => {
            match media::parse_flv_audio(&body.to_bytes(), i64::from(ts)) {
                Ok(FlvItem::Config(cfg)) => Out::Config {
                    track: Track::Audio,
                    tag: cfg.data[AUDIO_CFG_TAG],
                },
                Ok(FlvItem::Frame(f)) => Out::Frame {
                    track: Track::Audio,
                    tag: f.payload[1],
                    idx: u32::from_be_bytes(f.payload[2..6].try_into().expect("4 bytes")),
                    dts: f.dts,
                    pts: f.pts,
                    key: true,
                },
                other => panic!("a player got an unexpected audio body: {other:?}"),
            }
        }
        PlayerItem::Close { .. } => Out::Close,
        other @ PlayerItem::Ts { .. } => panic!("an FLV player got {other:?}"),
    }
}

/// A player and what it checked so far.
struct Watcher {
    rx: mpsc::Receiver<PlayerItem>,
    closed: bool,
    /// The feed of the last header item, and the configurations since.
    header_of: Option<u8>,
    configs: HashMap<Track, u8>,
    last_dts: HashMap<Track, i64>,
    /// The last video frame out: (tag, index, dts).
    last_video: Option<(u8, u32, i64)>,
}

impl Watcher {
    fn new(rx: mpsc::Receiver<PlayerItem>) -> Self {
        Self {
            rx,
            closed: false,
            header_of: None,
            configs: HashMap::new(),
            last_dts: HashMap::new(),
            last_video: None,
        }
    }

    /// Take what arrived and check it; returns the items.
    fn take(&mut self) -> Vec<Out> {
        let mut got = Vec::new();
        while let Ok(item) = self.rx.try_recv() {
            got.push(decode(item));
        }
        for g in &got {
            assert!(!self.closed, "an item after Close: {g:?}");
            match g {
                Out::Meta(tag) => self.header(*tag),
                Out::Config { track, tag } => {
                    self.header(*tag);
                    self.configs.insert(*track, *tag);
                }
                Out::Frame {
                    track,
                    tag,
                    idx,
                    dts,
                    pts,
                    ..
                } => {
                    assert_eq!(
                        self.header_of,
                        Some(*tag),
                        "a frame of a feed whose header did not come last: {g:?}"
                    );
                    assert_eq!(
                        self.configs.get(track),
                        Some(tag),
                        "a frame before its feed's configuration: {g:?}"
                    );
                    assert!(pts >= dts, "PTS below DTS: {g:?}");
                    if let Some(last) = self.last_dts.get(track) {
                        match track {
                            Track::Video => {
                                assert!(dts > last, "video DTS {dts} after {last}: {g:?}")
                            }
                            Track::Audio => {
                                assert!(dts >= last, "audio DTS {dts} after {last}: {g:?}")
                            }
                        }
                    }
                    self.last_dts.insert(*track, *dts);
                    if *track == Track::Video {
                        self.last_video = Some((*tag, *idx, *dts));
                    }
                }
                Out::Close => self.closed = true,
            }
        }
        got
    }

    /// A header item of `tag`: a new header starts unless it continues one.
    fn header(&mut self, tag: u8) {
        if self.header_of != Some(tag) {
            self.configs.clear();
        }
        self.header_of = Some(tag);
    }
}

struct Sim {
    base: Instant,
    now_ms: u64,
    src: Source,
    slots: [Option<Feed>; SLOTS],
    priorities: [i32; SLOTS],
    next_tag: u8,
    watchers: Vec<Watcher>,
    next_player: u64,
}

impl Sim {
    fn new() -> Self {
        let key = SourceKey {
            stream: "live/props".parse().expect("stream name"),
            source: Default::default(),
        };
        let base = Instant::now();
        let mut sim = Self {
            base,
            now_ms: 0,
            src: Source::new(
                key,
                Arc::new(settings()),
                Arc::new(Metrics::new()),
                WallClock::new(base, chrono::Utc::now()),
            ),
            slots: Default::default(),
            priorities: [3, 2, 1],
            next_tag: 1,
            watchers: Vec::new(),
            next_player: 0,
        };
        sim.play();
        sim
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms)
    }

    fn play(&mut self) {
        let (tx, rx) = mpsc::channel(1 << 16);
        self.next_player += 1;
        self.src.player_joined(self.now(), self.next_player, tx);
        self.watchers.push(Watcher::new(rx));
        self.check();
    }

    /// The feed on air as the source's view says, checked for agreement.
    fn on_air(&self) -> Option<u8> {
        let view = self.src.view(self.now());
        let flagged: Vec<_> = view.feeds.iter().filter(|f| f.primary).collect();
        assert!(flagged.len() <= 1, "two feeds on air: {flagged:?}");
        assert_eq!(view.primary, flagged.first().map(|f| f.feed_id));
        assert_eq!(
            view.state == "on_air",
            view.primary.is_some(),
            "state {}",
            view.state
        );
        view.primary.map(|p| {
            (0..=u8::MAX)
                .find(|t| fid(*t).0 == p)
                .expect("on air: a feed of this test")
        })
    }

    fn check(&mut self) -> Vec<Vec<Out>> {
        self.watchers.iter_mut().map(Watcher::take).collect()
    }

    fn join(&mut self, slot: usize, enc: Encoder) {
        self.leave(slot);
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1).max(1);
        let id = fid(tag);
        let now = self.now();
        let (tx, control) = mpsc::channel(4);
        let meta = FeedMeta {
            id,
            token_id: tok(slot as u8),
            label: format!("slot {slot}"),
            priority: Priority(Some(self.priorities[slot])),
            pinned: false,
            protocol: Protocol::Rtmp,
            peer: SocketAddr::from(([192, 0, 2, tag], 40000)),
            grant: None,
        };
        self.src.feed_joined(now, meta, tx);
        self.src
            .feed_media(now, id, FeedMedia::Metadata(Arc::new(metadata(tag))));
        self.src
            .feed_media(now, id, FeedMedia::Config(video_cfg(tag)));
        self.src
            .feed_media(now, id, FeedMedia::Config(audio_cfg(tag)));
        self.slots[slot] = Some(Feed {
            tag,
            id,
            enc,
            start_ms: self.now_ms,
            next_video: 0,
            next_audio: 0,
            stalled_until: 0,
            burst: true,
            video_ts: TimestampUnwrapper::new(),
            audio_ts: TimestampUnwrapper::new(),
            control,
        });
        self.check();
    }

    fn leave(&mut self, slot: usize) {
        if let Some(feed) = self.slots[slot].take() {
            self.src.feed_left(self.now(), feed.id);
            self.check();
        }
    }

    /// Every feed sends what is due, one frame at a time, each checked.
    fn pump(&mut self) {
        let mut sent = true;
        while sent {
            sent = false;
            for slot in 0..SLOTS {
                let now_ms = self.now_ms;
                let Some(feed) = self.slots[slot].as_mut() else {
                    continue;
                };
                if now_ms < feed.stalled_until {
                    continue;
                }
                if !feed.burst {
                    feed.skip_to(feed.stalled_until);
                    feed.burst = true;
                }
                let Some((frame, idx)) = feed.next_frame(now_ms) else {
                    continue;
                };
                sent = true;
                let (id, tag) = (feed.id, feed.tag);
                self.send(id, tag, frame, idx);
            }
        }
    }

    fn send(&mut self, id: FeedId, tag: u8, frame: Frame, idx: u32) {
        let before = self.on_air();
        let switches = self.src.view(self.now()).switches;
        let video = frame.track == Track::Video;
        let key = frame.keyframe;
        let last_video = self.watchers[0].last_video;
        self.src.feed_media(self.now(), id, FeedMedia::Frame(frame));
        let view = self.src.view(self.now());
        let after = self.on_air();
        let got = self.check();
        if !video || self.watchers[0].closed {
            return;
        }
        let frames_of_first: Vec<(u8, u32, i64, bool)> = got[0]
            .iter()
            .filter_map(|g| match g {
                Out::Frame {
                    track: Track::Video,
                    tag,
                    idx,
                    dts,
                    key,
                    ..
                } => Some((*tag, *idx, *dts, *key)),
                _ => None,
            })
            .collect();
        if before == Some(tag) && after == Some(tag) && view.switches == switches {
            // On air before and after, no switch: this frame goes out.
            assert!(
                frames_of_first
                    .iter()
                    .any(|(t, i, ..)| *t == tag && *i == idx),
                "feed {tag} on air sent video frame {idx}; players got {frames_of_first:?}"
            );
        }
        let planned_cut = view.switches != switches
            && after == Some(tag)
            && before.is_some_and(|b| b != tag)
            && view.last_switch.as_ref().is_some_and(|r| r.planned);
        if planned_cut {
            // Make-before-break: the new feed starts at this keyframe, one
            // frame interval after the old feed's last video frame.
            assert!(
                key,
                "a planned switch cut at a frame that is not a keyframe"
            );
            let (first_tag, first_idx, first_dts, first_key) = frames_of_first[0];
            assert_eq!((first_tag, first_key), (tag, true));
            assert!(first_idx <= idx);
            if let Some((old_tag, _, old_dts)) = last_video {
                assert_eq!(Some(old_tag), before);
                assert!(
                    first_dts - old_dts <= 100,
                    "planned switch left a gap: {old_dts} then {first_dts}"
                );
            }
        }
    }

    fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.now_ms += 1;
            self.pump();
            if self.now_ms.is_multiple_of(10) {
                self.src.on_tick(self.now());
                self.check();
            }
            // A session told to go goes.
            for slot in 0..SLOTS {
                let told = self.slots[slot].as_mut().is_some_and(|f| {
                    matches!(f.control.try_recv(), Ok(FeedControl::Disconnect { .. }))
                });
                if told {
                    self.leave(slot);
                }
            }
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Join { slot, enc } => self.join(slot, enc),
            Op::Leave { slot } => self.leave(slot),
            Op::Stall { slot, ms, burst } => {
                if let Some(f) = self.slots[slot].as_mut() {
                    f.stalled_until = self.now_ms + ms;
                    f.burst = burst;
                }
            }
            Op::Reprioritize {
                slot,
                priority,
                disconnect,
            } => {
                self.priorities[slot] = priority;
                let mut report = ReprioritizeReport::default();
                self.src.reprioritize(
                    self.now(),
                    tok(slot as u8),
                    Some(priority),
                    disconnect,
                    &mut report,
                );
                self.check();
            }
            Op::Jump { slot, ms } => {
                if let Some(f) = self.slots[slot].as_mut() {
                    f.enc.ts0 = f.enc.ts0.wrapping_add_signed(ms);
                }
            }
            Op::Play => {
                if self.watchers.len() < 4 {
                    self.play();
                }
            }
            Op::Run { ms } => self.run(ms),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn players_get_one_continuous_valid_stream(ops in proptest::collection::vec(op(), 1..32)) {
        let mut sim = Sim::new();
        for op in ops {
            sim.apply(op);
        }
        // Let every pending switch, deadline and hold play out.
        sim.run(6_000);
    }
}
