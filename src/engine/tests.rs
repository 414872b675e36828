//! Unit tests of one source's switch and fan-out (DESIGN section 3), driven
//! at the [`Source`] level under virtual time: one base `Instant` plus
//! millisecond offsets, no sleeping, no runtime.
//!
//! Feeds are synthetic H.264 + AAC encoders: configurations (and metadata)
//! at join, then video at 30 fps (DTS steps 33/33/34 ms) with a keyframe
//! every `gop` frames and AAC every 21.33 ms. Every payload carries the
//! feed's tag and the frame's index, so the player side (which parses the
//! FLV bodies back with `parse_flv_video` / `parse_flv_audio`) can tell
//! exactly which feed and frame it got, and at which output timestamp.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rml_rtmp::sessions::StreamMetadata;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use uuid::Uuid;

use super::source::Source;
use super::view::{FeedView, ReprioritizeReport, SourceView};
use super::{
    EngineSettings, FeedControl, FeedMedia, FeedMeta, PlayerItem, Protocol, SourceKey, WallClock,
};
use crate::domain::{FeedId, Priority, TokenId};
use crate::election::ElectionParams;
use crate::media::{self, Codec, CodecConfig, FlvItem, Frame, Track};
use crate::metrics::Metrics;

const A: u8 = b'A';
const B: u8 = b'B';
const C: u8 = b'C';
/// Feed A again after a reconnect: a new connection, a new feed id.
const A2: u8 = b'a';
mod loss;
mod remote;
mod switch_props;
mod tokens;

/// A pinned feed (`priority=` publish parameter).
const PIN: u8 = b'P';

fn settings() -> EngineSettings {
    EngineSettings {
        node: "n1".into(),
        region: "r1".into(),
        election: ElectionParams {
            failback_hold: Duration::from_secs(1),
            flap_count: 3,
            flap_window: Duration::from_secs(60),
            flap_hold: Duration::from_secs(30),
        },
        loss: Some(super::loss::LossParams::default()),
        failover_next_keyframe: false,
        planned_max_added_latency_ms: 0,
        switch_deadline: Duration::from_secs(3),
        vacant_hold: Duration::from_secs(5),
        gop_cache_max_bytes: 8 << 20,
        player_queue: 1024,
        changes: Default::default(),
    }
}

fn fid(tag: u8) -> FeedId {
    FeedId(Uuid::from_u128(0xfeed_0000 + u128::from(tag)))
}

fn tok(tag: u8) -> TokenId {
    TokenId(Uuid::from_u128(0x70c0_0000 + u128::from(tag)))
}

// ---------------------------------------------------------------------------
// Synthetic media

/// Offset of video frame `i` from the feed's start (30 fps: 33, 33, 34 ms).
fn video_off(i: u32) -> u64 {
    u64::from(i) * 100 / 3
}

/// Offset of AAC frame `j` from the feed's start (1024 samples at 48 kHz).
fn audio_off(j: u32) -> u64 {
    u64::from(j) * 64 / 3
}

/// A minimal AVCDecoderConfigurationRecord; byte 9 (in the SPS) is the tag.
fn video_cfg(tag: u8) -> CodecConfig {
    CodecConfig {
        track: Track::Video,
        codec: Codec::H264,
        data: Bytes::from(vec![
            0x01, 0x64, 0x00, 0x1f, 0xff, 0xe1, 0x00, 0x02, 0x67, tag, 0x01, 0x00, 0x02, 0x68, tag,
        ]),
    }
}
const VIDEO_CFG_TAG: usize = 9;

/// AAC-LC 48 kHz stereo AudioSpecificConfig plus the tag.
fn audio_cfg(tag: u8) -> CodecConfig {
    CodecConfig {
        track: Track::Audio,
        codec: Codec::Aac,
        data: Bytes::from(vec![0x11, 0x90, tag]),
    }
}
const AUDIO_CFG_TAG: usize = 2;

fn metadata(tag: u8) -> StreamMetadata {
    let mut m = StreamMetadata::new();
    m.video_width = Some(1280);
    m.video_height = Some(720);
    m.encoder = Some(format!("synth-{}", tag as char));
    m
}

/// One length-prefixed NAL unit: IDR (0x65) or non-IDR slice (0x41), then
/// the tag and the frame index.
fn video_payload(tag: u8, idx: u32, key: bool) -> Bytes {
    let mut p = vec![0, 0, 0, 6, if key { 0x65 } else { 0x41 }, tag];
    p.extend_from_slice(&idx.to_be_bytes());
    Bytes::from(p)
}

fn audio_payload(tag: u8, idx: u32) -> Bytes {
    let mut p = vec![0x21, tag];
    p.extend_from_slice(&idx.to_be_bytes());
    Bytes::from(p)
}

/// How a synthetic feed joins.
#[derive(Clone)]
struct Spec {
    tag: u8,
    priority: Option<i32>,
    token: TokenId,
    pinned: bool,
    /// A keyframe every `gop` video frames.
    gop: u32,
    /// The encoder's own clock at its first frame.
    dts0: i64,
    /// Media starts this long after the join (configs come at the join).
    delay_ms: u64,
    metadata: bool,
    /// False: only frame 0 is a keyframe, never another.
    more_keyframes: bool,
    /// Audio frames arrive this much ahead of their time (MPEG-TS muxers
    /// send audio ahead of the video).
    audio_lead_ms: u64,
    /// What its token granted (none: the feed is not re-judged).
    grant: Option<crate::domain::FeedGrant>,
}

fn spec(tag: u8, priority: i32) -> Spec {
    Spec {
        tag,
        priority: Some(priority),
        token: tok(tag),
        pinned: false,
        gop: 30,
        dts0: 0,
        delay_ms: 0,
        metadata: true,
        more_keyframes: true,
        audio_lead_ms: 0,
        grant: None,
    }
}

struct Synth {
    spec: Spec,
    id: FeedId,
    start_ms: u64,
    sending: bool,
    next_video: u32,
    next_audio: u32,
    last_sent_ms: Option<u64>,
    control: mpsc::Receiver<FeedControl>,
}

impl Synth {
    fn is_key(&self, i: u32) -> bool {
        i.is_multiple_of(self.spec.gop) && (i == 0 || self.spec.more_keyframes)
    }

    fn video_due(&self) -> u64 {
        self.start_ms + video_off(self.next_video)
    }

    fn audio_due(&self) -> u64 {
        (self.start_ms + audio_off(self.next_audio)).saturating_sub(self.spec.audio_lead_ms)
    }

    /// The feed's own DTS of video frame `i`.
    fn video_dts(&self, i: u32) -> i64 {
        self.spec.dts0 + video_off(i) as i64
    }
}

/// A frame a synthetic feed sent, in the order the source saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SentFrame {
    ms: u64,
    tag: u8,
    video: bool,
    idx: u32,
    key: bool,
}

// ---------------------------------------------------------------------------
// Player side

/// A player item decoded back to feed tag and frame index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Meta(u8),
    VCfg(u8),
    ACfg(u8),
    V {
        tag: u8,
        idx: u32,
        ts: i64,
        key: bool,
    },
    A {
        tag: u8,
        idx: u32,
        ts: i64,
    },
    Close,
}

impl Got {
    fn is_frame(&self) -> bool {
        matches!(self, Got::V { .. } | Got::A { .. })
    }

    fn tag(&self) -> Option<u8> {
        match self {
            Got::Meta(t) | Got::VCfg(t) | Got::ACfg(t) => Some(*t),
            Got::V { tag, .. } | Got::A { tag, .. } => Some(*tag),
            Got::Close => None,
        }
    }

    fn ts(&self) -> Option<i64> {
        match self {
            Got::V { ts, .. } | Got::A { ts, .. } => Some(*ts),
            _ => None,
        }
    }
}

fn decode(item: PlayerItem) -> Got {
    match item {
        PlayerItem::Metadata(m) => {
            let enc = m
                .encoder
                .clone()
                .expect("synthetic metadata names its encoder");
            let tag = enc.strip_prefix("synth-").expect("synth-<tag>").as_bytes()[0];
            Got::Meta(tag)
        }
        PlayerItem::Video { ts, body, keyframe } => {
            match media::parse_flv_video(&body.to_bytes(), i64::from(ts))
                .expect("valid FLV video body")
            {
                FlvItem::Config(cfg) => {
                    assert!(keyframe, "a video config goes out as a keyframe tag");
                    assert_eq!(cfg.codec, Codec::H264);
                    Got::VCfg(cfg.data[VIDEO_CFG_TAG])
                }
                FlvItem::Frame(f) => {
                    assert_eq!(f.keyframe, keyframe, "item flag and FLV frame type agree");
                    let (tag, idx, key) = video_marker(&f);
                    assert_eq!(key, f.keyframe, "only IDR payloads go out as keyframes");
                    Got::V {
                        tag,
                        idx,
                        ts: f.dts,
                        key,
                    }
                }
                FlvItem::Ignored => panic!("the engine sent an ignorable video body"),
            }
        }
        PlayerItem::Audio { ts, body } => {
            match media::parse_flv_audio(&body.to_bytes(), i64::from(ts))
                .expect("valid FLV audio body")
            {
                FlvItem::Config(cfg) => Got::ACfg(cfg.data[AUDIO_CFG_TAG]),
                FlvItem::Frame(f) => {
                    assert_eq!(f.payload[0], 0x21);
                    let idx = u32::from_be_bytes(f.payload[2..6].try_into().expect("4 bytes"));
                    Got::A {
                        tag: f.payload[1],
                        idx,
                        ts: f.dts,
                    }
                }
                FlvItem::Ignored => panic!("the engine sent an ignorable audio body"),
            }
        }
        PlayerItem::Close { .. } => Got::Close,
        other @ PlayerItem::Ts { .. } => panic!("an FLV player got {other:?}"),
    }
}

fn video_marker(f: &Frame) -> (u8, u32, bool) {
    let p = &f.payload;
    assert_eq!(&p[..4], &[0, 0, 0, 6], "one 6-byte NAL unit");
    let idx = u32::from_be_bytes(p[6..10].try_into().expect("4 bytes"));
    (p[5], idx, p[4] == 0x65)
}

fn drain(rx: &mut mpsc::Receiver<PlayerItem>) -> Vec<Got> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(item) => out.push(decode(item)),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
        }
    }
}

fn header(tag: u8) -> Vec<Got> {
    vec![Got::Meta(tag), Got::VCfg(tag), Got::ACfg(tag)]
}

/// Video frames of `tag`: (index, output ts, keyframe).
fn videos(got: &[Got], tag: u8) -> Vec<(u32, i64, bool)> {
    got.iter()
        .filter_map(|g| match g {
            Got::V {
                tag: t,
                idx,
                ts,
                key,
            } if *t == tag => Some((*idx, *ts, *key)),
            _ => None,
        })
        .collect()
}

/// Audio frames of `tag`: (index, output ts).
fn audios(got: &[Got], tag: u8) -> Vec<(u32, i64)> {
    got.iter()
        .filter_map(|g| match g {
            Got::A { tag: t, idx, ts } if *t == tag => Some((*idx, *ts)),
            _ => None,
        })
        .collect()
}

fn assert_consecutive(what: &str, idx: &[u32]) {
    for w in idx.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{what}: indices not consecutive: {idx:?}");
    }
}

/// Output video DTS strictly increasing, audio non-decreasing, over the
/// whole log (across switches).
fn assert_monotonic(got: &[Got]) {
    let mut last_v: Option<i64> = None;
    let mut last_a: Option<i64> = None;
    for g in got {
        match g {
            Got::V { ts, .. } => {
                if let Some(l) = last_v {
                    assert!(
                        *ts > l,
                        "video DTS not strictly increasing: {l} then {ts} ({g:?})"
                    );
                }
                last_v = Some(*ts);
            }
            Got::A { ts, .. } => {
                if let Some(l) = last_a {
                    assert!(*ts >= l, "audio DTS went backwards: {l} then {ts} ({g:?})");
                }
                last_a = Some(*ts);
            }
            _ => {}
        }
    }
}

/// Every frame a player receives comes after a header item of its feed
/// (no frame of a new feed before that feed's header).
fn assert_headers_precede_frames(got: &[Got]) {
    let mut current: Option<u8> = None;
    for g in got {
        match g {
            Got::Meta(t) | Got::VCfg(t) | Got::ACfg(t) => current = Some(*t),
            Got::V { tag, .. } | Got::A { tag, .. } => {
                assert_eq!(Some(*tag), current, "frame before its feed's header: {g:?}");
            }
            Got::Close => {}
        }
    }
}

/// Split a log at the first item of `tag`.
fn split_at_tag(got: &[Got], tag: u8) -> (&[Got], &[Got]) {
    let at = got
        .iter()
        .position(|g| g.tag() == Some(tag))
        .unwrap_or(got.len());
    got.split_at(at)
}

fn last_frame_ts(got: &[Got]) -> i64 {
    got.iter()
        .filter_map(Got::ts)
        .max()
        .expect("some frame was received")
}

// ---------------------------------------------------------------------------
// The harness

/// One source under virtual time, fed by synthetic encoders. `step` moves
/// the clock 1 ms: every feed sends what is due, then (every 10 ms, like
/// the engine's TICK) the source's timers run.
struct H {
    base: Instant,
    now_ms: u64,
    src: Source,
    metrics: Arc<Metrics>,
    feeds: Vec<Synth>,
    next_player: u64,
    sent: Vec<SentFrame>,
}

impl H {
    fn new() -> Self {
        Self::with_settings(settings())
    }

    fn with_settings(settings: EngineSettings) -> Self {
        let key = SourceKey {
            stream: "live/test".parse().expect("stream name"),
            source: Default::default(),
        };
        let metrics = Arc::new(Metrics::new());
        let base = Instant::now();
        Self {
            base,
            now_ms: 0,
            src: Source::new(
                key,
                Arc::new(settings),
                metrics.clone(),
                WallClock::new(base, chrono::Utc::now()),
            ),
            metrics,
            feeds: Vec::new(),
            next_player: 0,
            sent: Vec::new(),
        }
    }

    fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms)
    }

    fn view(&self) -> SourceView {
        self.src.view(self.now())
    }

    fn primary(&self) -> Option<u8> {
        let p = self.view().primary?;
        Some(
            (0..=u8::MAX)
                .find(|t| fid(*t).0 == p)
                .expect("primary is a test feed"),
        )
    }

    fn feed_view(&self, tag: u8) -> Option<FeedView> {
        self.view()
            .feeds
            .into_iter()
            .find(|f| f.feed_id == fid(tag).0)
    }

    fn join(&mut self, spec: Spec) -> FeedId {
        let id = fid(spec.tag);
        let now = self.now();
        let (tx, control) = mpsc::channel(4);
        let meta = FeedMeta {
            id,
            token_id: spec.token,
            label: format!("encoder {}", spec.tag as char),
            priority: Priority(spec.priority),
            pinned: spec.pinned,
            protocol: Protocol::Rtmp,
            peer: SocketAddr::from(([192, 0, 2, spec.tag], 40000)),
            grant: spec.grant.clone(),
        };
        self.src.feed_joined(now, meta, tx);
        if spec.metadata {
            self.src
                .feed_media(now, id, FeedMedia::Metadata(Arc::new(metadata(spec.tag))));
        }
        self.src
            .feed_media(now, id, FeedMedia::Config(video_cfg(spec.tag)));
        self.src
            .feed_media(now, id, FeedMedia::Config(audio_cfg(spec.tag)));
        self.feeds.push(Synth {
            start_ms: self.now_ms + spec.delay_ms,
            spec,
            id,
            sending: true,
            next_video: 0,
            next_audio: 0,
            last_sent_ms: None,
            control,
        });
        self.pump();
        id
    }

    fn feed(&self, tag: u8) -> &Synth {
        self.feeds
            .iter()
            .find(|f| f.spec.tag == tag)
            .expect("joined feed")
    }

    fn feed_mut(&mut self, tag: u8) -> &mut Synth {
        self.feeds
            .iter_mut()
            .find(|f| f.spec.tag == tag)
            .expect("joined feed")
    }

    /// The publishing session goes away (the engine's Unpublish).
    fn leave(&mut self, tag: u8) -> Synth {
        let at = self
            .feeds
            .iter()
            .position(|f| f.spec.tag == tag)
            .expect("joined feed");
        let synth = self.feeds.remove(at);
        self.src.feed_left(self.now(), synth.id);
        synth
    }

    fn player(&mut self, capacity: usize) -> mpsc::Receiver<PlayerItem> {
        let (tx, rx) = mpsc::channel(capacity);
        self.next_player += 1;
        self.src.player_joined(self.now(), self.next_player, tx);
        rx
    }

    /// Send every frame due at `now_ms`, each feed in timestamp order.
    fn pump(&mut self) {
        let now = self.now();
        for f in &mut self.feeds {
            if !f.sending {
                continue;
            }
            loop {
                let (v, a) = (f.video_due(), f.audio_due());
                let video = v <= a;
                if v.min(a) > self.now_ms {
                    break;
                }
                let (frame, idx, key) = if video {
                    let i = f.next_video;
                    f.next_video += 1;
                    let key = f.is_key(i);
                    let dts = f.video_dts(i);
                    let frame = Frame {
                        track: Track::Video,
                        codec: Codec::H264,
                        dts,
                        pts: dts + 66,
                        keyframe: key,
                        payload: video_payload(f.spec.tag, i, key),
                    };
                    (frame, i, key)
                } else {
                    let j = f.next_audio;
                    f.next_audio += 1;
                    let dts = f.spec.dts0 + audio_off(j) as i64;
                    let frame = Frame {
                        track: Track::Audio,
                        codec: Codec::Aac,
                        dts,
                        pts: dts,
                        keyframe: true,
                        payload: audio_payload(f.spec.tag, j),
                    };
                    (frame, j, true)
                };
                f.last_sent_ms = Some(self.now_ms);
                self.sent.push(SentFrame {
                    ms: self.now_ms,
                    tag: f.spec.tag,
                    video,
                    idx,
                    key: video && key,
                });
                self.src.feed_media(now, f.id, FeedMedia::Frame(frame));
            }
        }
    }

    fn step(&mut self) {
        self.now_ms += 1;
        self.pump();
        if self.now_ms.is_multiple_of(10) {
            self.src.on_tick(self.now());
        }
    }

    fn run_to(&mut self, ms: u64) {
        assert!(ms >= self.now_ms, "virtual time never goes backwards");
        while self.now_ms < ms {
            self.step();
        }
    }

    /// Step until `cond` holds; panics after `max_ms`.
    fn run_until(&mut self, max_ms: u64, mut cond: impl FnMut(&Self) -> bool) {
        let limit = self.now_ms + max_ms;
        while !cond(self) {
            assert!(self.now_ms < limit, "condition not met within {max_ms} ms");
            self.step();
        }
    }

    /// Frames of `tag` the feed sent (whatever went on air), in order.
    fn sent_of(&self, tag: u8, video: bool) -> Vec<SentFrame> {
        self.sent
            .iter()
            .filter(|s| s.tag == tag && s.video == video)
            .copied()
            .collect()
    }

    fn reprioritize(
        &mut self,
        token: TokenId,
        priority: Option<i32>,
        disconnect: bool,
    ) -> ReprioritizeReport {
        let mut report = ReprioritizeReport::default();
        self.src
            .reprioritize(self.now(), token, priority, disconnect, &mut report);
        report
    }
}

fn no_control(synth: &mut Synth) {
    match synth.control.try_recv() {
        Err(TryRecvError::Empty) => {}
        other => panic!(
            "feed {} got a control message: {other:?}",
            synth.spec.tag as char
        ),
    }
}

fn disconnected(synth: &mut Synth) -> String {
    match synth.control.try_recv() {
        Ok(FeedControl::Disconnect { reason }) => reason,
        other => panic!(
            "feed {} expected a Disconnect, got {other:?}",
            synth.spec.tag as char
        ),
    }
}

// ---------------------------------------------------------------------------
// 1. First feed

#[test]
fn first_feed_goes_on_air_at_its_first_keyframe_with_header_first() {
    let mut h = H::new();
    let mut early = h.player(1024);
    h.join(Spec {
        delay_ms: 100,
        ..spec(A, 100)
    });
    // Configs and metadata alone put nothing on air.
    let v = h.view();
    assert_eq!(v.state, "vacant");
    assert_eq!(v.primary, None);
    assert_eq!(h.feed_view(A).expect("A").state, "starting");
    h.run_to(99);
    assert!(drain(&mut early).is_empty());

    // Frame 0 (a keyframe) at t = 100: on air at once.
    h.run_to(100);
    assert_eq!(h.primary(), Some(A));
    let v = h.view();
    assert_eq!(v.state, "on_air");
    assert_eq!(v.switches, 1);
    let sw = v.last_switch.expect("a switch record");
    assert_eq!(sw.reason, "first");
    assert!(!sw.planned);
    assert_eq!(sw.from, None);
    assert_eq!(sw.to, Some(fid(A).0));
    let got = drain(&mut early);
    assert_eq!(&got[..3], &header(A)[..], "header first: {got:?}");
    assert_eq!(
        got[3],
        Got::V {
            tag: A,
            idx: 0,
            ts: 0,
            key: true
        },
        "the first frame is the keyframe, at output time 0"
    );
    assert_eq!(
        got[4],
        Got::A {
            tag: A,
            idx: 0,
            ts: 0
        }
    );
    assert_eq!(got.len(), 5);

    // 1.5 s later a second player joins mid-GOP (keyframes at 0, 1000, 2000 ms).
    h.run_to(1600);
    let mut got_early = got;
    got_early.extend(drain(&mut early));
    let mut late = h.player(1024);
    let got_late = drain(&mut late);
    assert_eq!(&got_late[..3], &header(A)[..], "late joiner: header first");
    let gop_start = Got::V {
        tag: A,
        idx: 30,
        ts: 1000,
        key: true,
    };
    assert_eq!(
        got_late[3], gop_start,
        "late joiner starts at the cached keyframe"
    );
    // It gets the cached GOP, at the very output timestamps the early player got.
    let start = got_early
        .iter()
        .position(|g| *g == gop_start)
        .expect("early player got frame 30");
    assert_eq!(&got_late[3..], &got_early[start..]);
    assert_eq!(
        videos(&got_late, A).last().map(|v| v.0),
        Some(h.feed(A).next_video - 1)
    );

    // From now on both get the same live frames.
    h.run_to(2500);
    let more_early = drain(&mut early);
    let more_late = drain(&mut late);
    assert!(!more_early.is_empty());
    assert_eq!(more_early, more_late);
    got_early.extend(more_early);
    assert_consecutive(
        "A video",
        &videos(&got_early, A)
            .iter()
            .map(|v| v.0)
            .collect::<Vec<_>>(),
    );
    assert_consecutive(
        "A audio",
        &audios(&got_early, A)
            .iter()
            .map(|a| a.0)
            .collect::<Vec<_>>(),
    );
    assert_monotonic(&got_early);
    assert_eq!(h.view().players, 2);
}

// ---------------------------------------------------------------------------
// 2. Unplanned failover

/// A fixed media timeout of 1.5 s (the loss window's floor at
/// `feed_timeout`), as before loss windows were learned.
fn fixed_timeout() -> EngineSettings {
    let timeout = Duration::from_millis(1500);
    EngineSettings {
        loss: Some(super::loss::LossParams {
            floor: timeout,
            timeout,
            ..Default::default()
        }),
        ..settings()
    }
}

/// A (100) on air from t = 0, B (50) flowing from t = 500 on its own clock.
fn two_feeds() -> (H, mpsc::Receiver<PlayerItem>) {
    two_feeds_with(settings())
}

fn two_feeds_with(settings: EngineSettings) -> (H, mpsc::Receiver<PlayerItem>) {
    let mut h = H::with_settings(settings);
    let player = h.player(1024);
    h.join(Spec {
        gop: 60,
        dts0: 90_000,
        ..spec(A, 100)
    });
    h.run_to(500);
    h.join(Spec {
        gop: 60,
        dts0: 5_000_000,
        ..spec(B, 50)
    });
    assert_eq!(h.primary(), Some(A));
    (h, player)
}

#[test]
fn primary_lost_mid_gop_cuts_to_the_backups_cached_gop() {
    let (mut h, mut p) = two_feeds();
    // A leaves right after its frame 100 (mid-GOP: its keyframes are every 60).
    h.run_until(5000, |h| h.feed(A).next_video == 101);
    let before = drain(&mut p);
    assert_eq!(&before[..3], &header(A)[..]);
    assert!(
        before.iter().all(|g| g.tag() == Some(A)),
        "only A while A is on air"
    );
    let a_video = videos(&before, A);
    assert_eq!(
        a_video.iter().map(|v| v.0).collect::<Vec<_>>(),
        (0..=100).collect::<Vec<_>>()
    );
    let last_a_video_ts = a_video.last().expect("A video").1;
    let last_a_ts = last_frame_ts(&before);
    assert_eq!(
        h.feed(B).next_video,
        86,
        "B sent frames 0..=85 (keyframe at 60)"
    );
    let b_sent_audio = h.sent_of(B, false);

    h.leave(A);

    let v = h.view();
    assert_eq!(h.primary(), Some(B));
    assert_eq!(v.switches, 2);
    let sw = v.last_switch.expect("switch record");
    assert_eq!(sw.reason, "primary_lost");
    assert!(!sw.planned);
    assert_eq!(sw.from, Some(fid(A).0));
    assert_eq!(sw.to, Some(fid(B).0));
    let gap = sw.gap_ms.expect("an unplanned switch reports its gap");
    assert!((0.0..34.0).contains(&gap), "gap {gap} ms");
    // B's cached GOP is 25 frames (~833 ms) behind B's live edge.
    assert_eq!(
        sw.added_latency_ms,
        Some(h.feed(B).video_dts(85) - h.feed(B).video_dts(60))
    );
    assert!(v.feeds.iter().all(|f| f.feed_id != fid(A).0));

    // At once: B's header, B's cached keyframe, the rest of B's cached GOP.
    let cut = drain(&mut p);
    assert_eq!(&cut[..3], &header(B)[..], "B's header first: {cut:?}");
    let Got::V {
        idx: 60,
        ts: first_b,
        key: true,
        tag: B,
    } = cut[3]
    else {
        panic!("expected B's cached keyframe 60, got {:?}", cut[3]);
    };
    assert!(cut[3..].iter().all(|g| g.is_frame() && g.tag() == Some(B)));
    let b_video = videos(&cut, B);
    assert_eq!(
        b_video.iter().map(|v| v.0).collect::<Vec<_>>(),
        (60..=85).collect::<Vec<_>>()
    );
    // Rebased: one offset, so B's own spacing is kept.
    let b = h.feed(B);
    for (idx, ts, _) in &b_video {
        assert_eq!(*ts - first_b, b.video_dts(*idx) - b.video_dts(60));
    }
    // Audio of the GOP: everything B sent after its keyframe, up to now.
    let b_audio: Vec<u32> = audios(&cut, B).iter().map(|a| a.0).collect();
    let kf_ms = h
        .sent
        .iter()
        .find(|s| s.tag == B && s.video && s.idx == 60)
        .expect("B keyframe 60")
        .ms;
    let expected: Vec<u32> = b_sent_audio
        .iter()
        .filter(|s| s.ms >= kf_ms && b.spec.dts0 + audio_off(s.idx) as i64 >= b.video_dts(60))
        .map(|s| s.idx)
        .collect();
    assert_eq!(b_audio, expected);
    // The output continues one frame interval after the last frame out.
    assert!(
        (33..=34).contains(&(first_b - last_a_ts)),
        "first B {first_b}, last out {last_a_ts}"
    );
    assert!(
        (33..=34 + 22).contains(&(first_b - last_a_video_ts)),
        "first B {first_b}, last A video {last_a_video_ts}"
    );

    // Then B live, on the same timeline.
    h.run_to(h.now_ms + 500);
    let live = drain(&mut p);
    assert!(live.iter().all(|g| g.tag() == Some(B) && g.is_frame()));
    let mut all = before;
    all.extend(cut);
    all.extend(live);
    assert_monotonic(&all);
    assert_headers_precede_frames(&all);
    let b_all: Vec<u32> = videos(&all, B).iter().map(|v| v.0).collect();
    assert_consecutive("B video", &b_all);
    assert_eq!(b_all.last().copied(), Some(h.feed(B).next_video - 1));
    assert_consecutive(
        "B audio",
        &audios(&all, B).iter().map(|a| a.0).collect::<Vec<_>>(),
    );
}

// ---------------------------------------------------------------------------
// 3. Feed timeout

#[test]
fn primary_without_media_for_feed_timeout_fails_over() {
    let (mut h, mut p) = two_feeds_with(fixed_timeout());
    h.run_to(2000);
    h.feed_mut(A).sending = false;
    let last_a = h.feed(A).last_sent_ms.expect("A sent");
    let before = drain(&mut p);
    let last_a_ts = last_frame_ts(&before);

    // Still A (frozen) just before the timeout; nothing goes out meanwhile.
    h.run_to(last_a + 1499);
    assert_eq!(h.primary(), Some(A));
    assert!(drain(&mut p).is_empty());

    h.run_until(20, |h| h.primary() == Some(B));
    let switched = h.now_ms;
    assert!(
        (last_a + 1500..last_a + 1510).contains(&switched),
        "failover at {switched}, A's last media at {last_a}"
    );
    let sw = h.view().last_switch.expect("switch");
    assert_eq!(sw.reason, "primary_lost");
    assert_eq!(sw.detail, "lost: timeout");
    assert!(!sw.planned);
    let gap = sw.gap_ms.expect("gap");
    assert!((1500.0..1510.0).contains(&gap), "gap {gap}");
    // A stays connected but is no longer eligible.
    let a = h.feed_view(A).expect("A still joined");
    assert_eq!(a.state, "unhealthy");
    assert!(!a.eligible && !a.primary);
    no_control(h.feed_mut(A));

    let cut = drain(&mut p);
    assert_eq!(&cut[..3], &header(B)[..]);
    assert!(
        matches!(
            cut[3],
            Got::V {
                tag: B,
                key: true,
                ..
            }
        ),
        "{:?}",
        cut[3]
    );
    let first_b = cut[3].ts().expect("frame");
    assert!((33..=34).contains(&(first_b - last_a_ts)));
    let mut all = before;
    all.extend(cut);
    h.run_to(h.now_ms + 300);
    all.extend(drain(&mut p));
    assert_monotonic(&all);
    assert_headers_precede_frames(&all);
}

// ---------------------------------------------------------------------------
// 4. Planned failback

#[test]
fn failback_waits_for_the_hold_then_cuts_at_the_next_keyframe_losing_nothing() {
    let (mut h, mut p) = two_feeds();
    h.run_to(2000);
    drain(&mut p);
    h.leave(A);
    assert_eq!(h.primary(), Some(B));
    h.run_to(3000);
    let mut log = drain(&mut p);
    assert_eq!(&log[..3], &header(B)[..]);

    // A reconnects (a new feed) with its clock restarted; keyframes every
    // 600 ms: at 3000 (inside the hold), 3600 (inside), 4200 (after).
    h.join(Spec {
        gop: 18,
        dts0: 0,
        token: tok(A),
        ..spec(A2, 100)
    });
    assert_eq!(
        h.primary(),
        Some(B),
        "a better feed waits for failback_hold"
    );
    h.run_to(4100);
    assert_eq!(
        h.primary(),
        Some(B),
        "the hold ran out at 4000; waiting for a keyframe"
    );
    assert_eq!(h.view().last_switch.expect("switch").reason, "primary_lost");
    let sw_count = h.view().switches;

    h.run_until(200, |h| h.feed(A2).next_video == 37);
    assert_eq!(h.now_ms, 4200);
    assert_eq!(h.primary(), Some(A2));
    let v = h.view();
    assert_eq!(v.switches, sw_count + 1);
    let sw = v.last_switch.expect("switch");
    assert_eq!(sw.reason, "better");
    assert!(sw.planned);
    assert_eq!(sw.gap_ms, None);
    assert_eq!(sw.added_latency_ms, None);
    assert_eq!(sw.from, Some(fid(B).0));
    assert_eq!(sw.to, Some(fid(A2).0));
    assert!(sw.decided_at <= sw.at);

    log.extend(drain(&mut p));
    let (b_part, a_part) = split_at_tag(&log, A2);
    // Until the cut: B only, every frame B sent (zero lost).
    assert!(b_part.iter().all(|g| g.tag() == Some(B)));
    let b_video: Vec<u32> = videos(b_part, B).iter().map(|v| v.0).collect();
    let b_audio: Vec<u32> = audios(b_part, B).iter().map(|a| a.0).collect();
    assert_consecutive("B video", &b_video);
    assert_consecutive("B audio", &b_audio);
    let cut_at = h
        .sent
        .iter()
        .position(|s| s.tag == A2 && s.video && s.idx == 36)
        .expect("A2 keyframe 36");
    assert!(h.sent[cut_at].key);
    let last_b_video = h.sent[..cut_at]
        .iter()
        .rev()
        .find(|s| s.tag == B && s.video);
    let last_b_audio = h.sent[..cut_at]
        .iter()
        .rev()
        .find(|s| s.tag == B && !s.video);
    assert_eq!(b_video.last().copied(), last_b_video.map(|s| s.idx));
    assert_eq!(b_audio.last().copied(), last_b_audio.map(|s| s.idx));

    // The cut: A2's header, then its keyframe 36 (not the cached 0 or 18).
    assert_eq!(&a_part[..3], &header(A2)[..], "{a_part:?}");
    let Got::V {
        idx: 36,
        key: true,
        ts: first_a,
        ..
    } = a_part[3]
    else {
        panic!("expected A2's keyframe 36, got {:?}", a_part[3]);
    };
    let last_b_ts = last_frame_ts(b_part);
    assert!(
        (33..=34).contains(&(first_a - last_b_ts)),
        "first A2 {first_a}, last B {last_b_ts}"
    );
    let last_b_video_ts = videos(b_part, B).last().expect("B video").1;
    assert!((33..=34 + 22).contains(&(first_a - last_b_video_ts)));

    // After the cut: A2 only, live.
    h.run_to(4800);
    log.extend(drain(&mut p));
    let (_, a_part) = split_at_tag(&log, A2);
    assert!(a_part.iter().all(|g| g.tag() == Some(A2)));
    let a_video: Vec<u32> = videos(a_part, A2).iter().map(|v| v.0).collect();
    assert_eq!(a_video.first(), Some(&36));
    assert_consecutive("A2 video", &a_video);
    assert_monotonic(&log);
    assert_headers_precede_frames(&log);
    // B stays connected as a standby.
    let b = h.feed_view(B).expect("B");
    assert_eq!(b.state, "standby");
    assert!(b.eligible && !b.primary);
    no_control(h.feed_mut(B));
}

/// Audio arriving ahead of the video (as from MPEG-TS encoders): the
/// planned cut still puts the new feed's keyframe one frame after the last
/// video out, and only the new feed's audio that overlaps audio already out
/// is dropped; both tracks stay monotonic.
#[test]
fn planned_cut_keeps_the_video_cadence_when_audio_leads() {
    let lead = 70;
    let mut h = H::new();
    let mut p = h.player(1024);
    h.join(Spec {
        gop: 60,
        dts0: 5_000_000,
        audio_lead_ms: lead,
        ..spec(B, 50)
    });
    h.run_to(1000);
    h.join(Spec {
        gop: 18,
        dts0: 0,
        audio_lead_ms: lead,
        ..spec(A, 100)
    });
    h.run_until(3000, |h| {
        h.primary() == Some(A) && h.feed(A).next_video > 40
    });
    let log = drain(&mut p);
    let (b_part, a_part) = split_at_tag(&log, A);
    let last_b_video = videos(b_part, B).last().expect("B video").1;
    let last_b_audio = audios(b_part, B).last().expect("B audio").1;
    assert!(
        last_b_audio - last_b_video > 33,
        "audio leads: video {last_b_video}, audio {last_b_audio}"
    );
    let a_video = videos(a_part, A);
    let first_a = a_video.first().expect("A video");
    assert!(first_a.2, "A starts at a keyframe");
    assert!(
        (33..=34).contains(&(first_a.1 - last_b_video)),
        "first A video {}, last B video {last_b_video}",
        first_a.1
    );
    let a_audio = audios(a_part, A);
    let first_audio = a_audio.first().expect("A audio");
    assert!(
        first_audio.1 >= last_b_audio,
        "{first_audio:?} after {last_b_audio}"
    );
    // Dropped: only A's audio that would land before B's last audio, so
    // the first one kept is less than one AAC frame (21.3 ms) after it.
    assert!(
        first_audio.1 - last_b_audio <= 22,
        "{first_audio:?} vs {last_b_audio}"
    );
    assert_consecutive("A audio", &a_audio.iter().map(|a| a.0).collect::<Vec<_>>());
    assert_consecutive("A video", &a_video.iter().map(|v| v.0).collect::<Vec<_>>());
    assert_monotonic(&log);
    assert_headers_precede_frames(&log);
}

// ---------------------------------------------------------------------------
// 5. Lagging player

#[test]
fn lagging_player_skips_to_a_keyframe_without_holding_up_others() {
    let mut h = H::new();
    h.join(spec(A, 100)); // keyframes every 1000 ms
    h.run_to(100);
    let mut normal = h.player(1024);
    let mut lagging = h.player(4);
    assert_eq!(h.metrics.player_skips.get(), 0);

    let mut got = drain(&mut normal);
    for _ in 0..1890 {
        h.step();
        got.extend(drain(&mut normal));
    }
    assert_eq!(h.now_ms, 1990);
    // The normal player got everything.
    assert_eq!(&got[..3], &header(A)[..]);
    let v: Vec<u32> = videos(&got, A).iter().map(|v| v.0).collect();
    assert_eq!(v, (0..h.feed(A).next_video).collect::<Vec<_>>());
    let a: Vec<u32> = audios(&got, A).iter().map(|a| a.0).collect();
    assert_eq!(a, (0..h.feed(A).next_audio).collect::<Vec<_>>());
    assert!(
        h.metrics.player_skips.get() > 0,
        "the lagging player skipped"
    );

    // What the lagging player has: its queue's worth from the join.
    let stale = drain(&mut lagging);
    assert_eq!(stale.len(), 4);
    assert_eq!(&stale[..3], &header(A)[..]);
    assert!(matches!(
        stale[3],
        Got::V {
            idx: 0,
            key: true,
            ..
        }
    ));

    // Drained from now on: it resumes only at the next keyframe (60 at
    // 2000 ms), with the header again first.
    let mut resumed = Vec::new();
    for _ in 0..300 {
        h.step();
        resumed.extend(drain(&mut lagging));
        got.extend(drain(&mut normal));
    }
    assert_eq!(&resumed[..3], &header(A)[..], "{resumed:?}");
    assert!(
        matches!(
            resumed[3],
            Got::V {
                idx: 60,
                key: true,
                ..
            }
        ),
        "{:?}",
        resumed[3]
    );
    let rv: Vec<u32> = videos(&resumed, A).iter().map(|v| v.0).collect();
    assert_eq!(rv, (60..h.feed(A).next_video).collect::<Vec<_>>());
    assert_consecutive(
        "resumed audio",
        &audios(&resumed, A).iter().map(|a| a.0).collect::<Vec<_>>(),
    );
    // Same frames, same timestamps as the normal player.
    let from = got
        .iter()
        .position(|g| matches!(g, Got::V { idx: 60, .. }))
        .expect("normal got 60");
    assert_eq!(&resumed[3..], &got[from..]);
    let audio_before_kf = resumed[3..]
        .iter()
        .filter(|g| matches!(g, Got::A { .. }))
        .all(|g| g.ts() >= resumed[3].ts());
    assert!(audio_before_kf, "nothing from before the keyframe");

    // A player that went away is dropped at the next frame.
    drop(lagging);
    assert_eq!(h.view().players, 2);
    h.run_to(h.now_ms + 40);
    assert_eq!(h.view().players, 1);
    assert_eq!(h.metrics.players.get(), 1);
}

// ---------------------------------------------------------------------------
// 6. Vacant

#[test]
fn vacant_source_keeps_players_and_the_timeline_until_vacant_hold() {
    let mut h = H::new();
    let mut p = h.player(1024);
    h.join(spec(A, 100));
    h.run_to(1000);
    let mut log = drain(&mut p);
    let last_a_ts = last_frame_ts(&log);
    h.leave(A);
    let v = h.view();
    assert_eq!(v.state, "vacant");
    assert_eq!(v.primary, None);
    let sw = v.last_switch.expect("vacate record");
    assert_eq!(sw.reason, "vacant");
    assert_eq!(sw.from, Some(fid(A).0));
    assert_eq!(sw.to, None);

    // 3 s without any feed: players stay, nothing is sent.
    h.run_to(4000);
    assert!(drain(&mut p).is_empty());
    assert_eq!(h.view().players, 1);

    // A feed comes back (its own clock far away): the timeline continues.
    h.join(Spec {
        dts0: 123_456_789,
        ..spec(C, 10)
    });
    assert_eq!(h.primary(), Some(C));
    assert_eq!(h.view().last_switch.expect("switch").reason, "first");
    let back = drain(&mut p);
    assert_eq!(&back[..3], &header(C)[..]);
    assert!(matches!(
        back[3],
        Got::V {
            tag: C,
            idx: 0,
            key: true,
            ..
        }
    ));
    let first_c = back[3].ts().expect("frame");
    assert!(
        (33..=34).contains(&(first_c - last_a_ts)),
        "{first_c} after {last_a_ts}"
    );
    log.extend(back);
    h.run_to(5000);
    log.extend(drain(&mut p));
    assert_monotonic(&log);
    assert_headers_precede_frames(&log);

    // Vacant again at 5000: the hold counts from there, not from 1000.
    h.leave(C);
    h.run_to(9990);
    assert!(drain(&mut p).is_empty(), "no Close before vacant_hold");
    assert_eq!(h.view().players, 1);
    h.run_to(10_000);
    assert_eq!(drain(&mut p), vec![Got::Close]);
    assert_eq!(h.view().players, 0);
    assert_eq!(h.metrics.players.get(), 0);
    assert!(h.src.is_idle());
}

// ---------------------------------------------------------------------------
// 7. Reprioritize

/// A (token TA, 100) on air, PIN (token TA too, pinned at 10) and B (token
/// TB, 50) standing by; B's keyframes at 250 + n·1000 ms.
fn reprioritize_setup() -> (H, mpsc::Receiver<PlayerItem>) {
    let mut h = H::new();
    let p = h.player(1024);
    h.join(spec(A, 100));
    h.join(Spec {
        pinned: true,
        token: tok(A),
        ..spec(PIN, 10)
    });
    h.run_to(250);
    h.join(spec(B, 50));
    h.run_to(2000);
    assert_eq!(h.primary(), Some(A));
    (h, p)
}

#[test]
fn reprioritize_with_disconnect_switches_first_then_disconnects() {
    let (mut h, mut p) = reprioritize_setup();
    let report = h.reprioritize(tok(A), Some(10), true);
    assert_eq!(report.affected.len(), 1);
    let a = &report.affected[0];
    assert_eq!(a.feed_id, fid(A).0);
    assert!(a.primary, "reported as on air when the call arrived");
    assert_eq!(a.priority, Some(100));
    assert_eq!(report.pinned.len(), 1);
    assert_eq!(report.pinned[0].feed_id, fid(PIN).0);
    assert!(report.pinned[0].pinned);

    // A stays on air (and connected) until B's next keyframe at 2250.
    while h.now_ms < 2249 {
        h.step();
        assert_eq!(h.primary(), Some(A), "at {}", h.now_ms);
        no_control(h.feed_mut(A));
    }
    h.step();
    assert_eq!(h.primary(), Some(B));
    let reason = disconnected(h.feed_mut(A));
    assert!(reason.contains("reprioritized"), "{reason}");
    let sw = h.view().last_switch.expect("switch");
    assert_eq!(sw.reason, "draining");
    assert!(sw.planned);
    assert_eq!(sw.from, Some(fid(A).0));
    assert_eq!(sw.to, Some(fid(B).0));

    let log = drain(&mut p);
    let (a_part, b_part) = split_at_tag(&log, B);
    let a_video: Vec<u32> = videos(a_part, A).iter().map(|v| v.0).collect();
    let a_sent: Vec<u32> = h.sent_of(A, true).iter().map(|s| s.idx).collect();
    assert_eq!(a_video, a_sent, "every A frame until the cut went out");
    assert_eq!(&b_part[..3], &header(B)[..]);
    assert!(
        matches!(
            b_part[3],
            Got::V {
                tag: B,
                idx: 60,
                key: true,
                ..
            }
        ),
        "{:?}",
        b_part[3]
    );
    assert_monotonic(&log);

    // A drains: not eligible, not elected again; its session then goes.
    let av = h.feed_view(A).expect("A still connected");
    assert_eq!(av.state, "draining");
    assert!(!av.eligible);
    let switches = h.view().switches;
    h.leave(A);
    h.run_to(3000);
    assert_eq!(h.view().switches, switches);
    assert_eq!(h.primary(), Some(B));

    // The pinned feed was left alone.
    no_control(h.feed_mut(PIN));
    let pin = h.feed_view(PIN).expect("pinned");
    assert_eq!(pin.priority, Some(10));
    assert_eq!(pin.state, "standby");
    no_control(h.feed_mut(B));
}

#[test]
fn reprioritize_cuts_at_a_fresh_cached_keyframe_when_allowed() {
    let mut h = H::with_settings(EngineSettings {
        planned_max_added_latency_ms: 1000,
        ..settings()
    });
    let mut p = h.player(1024);
    h.join(spec(A, 100));
    h.run_to(250);
    h.join(spec(B, 50));
    h.run_to(2100);
    assert_eq!(h.primary(), Some(A));
    let before = drain(&mut p);

    // B's cached GOP starts at its keyframe sent at 1250 (idx 30): at most
    // 1000 ms old, so the switch happens in the same step, not at 2250.
    h.reprioritize(tok(A), Some(10), true);
    assert_eq!(h.primary(), Some(B), "cut at once");
    let reason = disconnected(h.feed_mut(A));
    assert!(reason.contains("reprioritized"), "{reason}");
    let sw = h.view().last_switch.expect("switch");
    assert!(sw.planned);
    let added = sw.added_latency_ms.expect("added latency reported");
    assert!((800..=1000).contains(&added), "added {added} ms");

    let cut = drain(&mut p);
    let (a_tail, b_part) = split_at_tag(&cut, B);
    let mut all = before;
    all.extend(a_tail.iter().cloned());
    let a_video: Vec<u32> = videos(&all, A).iter().map(|v| v.0).collect();
    let a_sent: Vec<u32> = h.sent_of(A, true).iter().map(|s| s.idx).collect();
    assert_eq!(a_video, a_sent, "every A frame until the cut went out");
    assert_eq!(&b_part[..3], &header(B)[..]);
    assert!(matches!(
        b_part[3],
        Got::V {
            tag: B,
            idx: 30,
            key: true,
            ..
        }
    ));
    all.extend(b_part.iter().cloned());
    h.run_to(2600);
    all.extend(drain(&mut p));
    assert_monotonic(&all);
    assert_headers_precede_frames(&all);
}

#[test]
fn planned_switch_waits_for_the_next_keyframe_when_the_cache_is_too_old() {
    let mut h = H::with_settings(EngineSettings {
        planned_max_added_latency_ms: 100,
        ..settings()
    });
    h.join(spec(A, 100));
    h.run_to(250);
    h.join(spec(B, 50));
    h.run_to(2100);
    h.reprioritize(tok(A), Some(10), true);
    // B's keyframe is 850 ms old: make-before-break at its next one (2250).
    while h.now_ms < 2249 {
        h.step();
        assert_eq!(h.primary(), Some(A), "at {}", h.now_ms);
    }
    h.step();
    assert_eq!(h.primary(), Some(B));
    assert_eq!(h.view().last_switch.expect("switch").added_latency_ms, None);
}

#[test]
fn reprioritize_without_disconnect_changes_priority_in_place() {
    let (mut h, mut p) = reprioritize_setup();
    let report = h.reprioritize(tok(B), Some(200), false);
    assert_eq!(report.affected.len(), 1);
    assert_eq!(report.affected[0].feed_id, fid(B).0);
    assert!(!report.affected[0].primary);
    assert!(report.pinned.is_empty());
    assert_eq!(h.feed_view(B).expect("B").priority, Some(200));
    assert_eq!(
        h.view().feeds[0].feed_id,
        fid(B).0,
        "B first in the election order"
    );

    // B has been eligible for longer than the hold: planned switch at its next keyframe.
    h.run_to(2249);
    assert_eq!(h.primary(), Some(A));
    h.step();
    assert_eq!(h.primary(), Some(B));
    let sw = h.view().last_switch.expect("switch");
    assert_eq!(sw.reason, "better");
    assert!(sw.planned);
    let log = drain(&mut p);
    let (a_part, b_part) = split_at_tag(&log, B);
    let a_video: Vec<u32> = videos(a_part, A).iter().map(|v| v.0).collect();
    let a_sent: Vec<u32> = h.sent_of(A, true).iter().map(|s| s.idx).collect();
    assert_eq!(a_video, a_sent);
    assert_eq!(&b_part[..3], &header(B)[..]);
    assert!(matches!(
        b_part[3],
        Got::V {
            tag: B,
            idx: 60,
            key: true,
            ..
        }
    ));

    // Nobody is disconnected; A is a standby now.
    h.run_to(4000);
    no_control(h.feed_mut(A));
    no_control(h.feed_mut(B));
    no_control(h.feed_mut(PIN));
    assert_eq!(h.feed_view(A).expect("A").state, "standby");
    assert_eq!(h.primary(), Some(B));
}

// ---------------------------------------------------------------------------
// 8. Switch deadline

#[test]
fn planned_switch_cuts_to_the_cached_keyframe_at_the_deadline() {
    let mut h = H::new();
    let mut p = h.player(1024);
    h.join(spec(B, 50));
    h.run_to(1000);
    // A better feed whose only keyframe is its first.
    h.join(Spec {
        more_keyframes: false,
        dts0: 40_000,
        ..spec(A, 100)
    });
    // Hold ends at 2000; the deadline is 3 s after that.
    h.run_to(4990);
    assert_eq!(h.primary(), Some(B));
    let before = drain(&mut p);
    assert!(before.iter().all(|g| g.tag() == Some(B)));
    h.run_until(10, |h| h.primary() == Some(A));
    assert_eq!(h.now_ms, 5000);
    let sw = h.view().last_switch.expect("switch");
    assert_eq!(sw.reason, "better");
    assert!(!sw.planned, "a deadline cut is a cut to a cached keyframe");
    assert_eq!(sw.from, Some(fid(B).0));
    assert_eq!(
        sw.added_latency_ms,
        Some(4000),
        "the cache spans A's 4 s since its keyframe"
    );

    let cut = drain(&mut p);
    let (b_tail, a_part) = split_at_tag(&cut, A);
    assert!(b_tail.iter().all(|g| g.tag() == Some(B)));
    let mut all = before;
    all.extend(b_tail.iter().cloned());
    let b_video: Vec<u32> = videos(&all, B).iter().map(|v| v.0).collect();
    assert_eq!(b_video, (0..h.feed(B).next_video).collect::<Vec<_>>());
    assert_eq!(&a_part[..3], &header(A)[..]);
    assert!(matches!(
        a_part[3],
        Got::V {
            tag: A,
            idx: 0,
            key: true,
            ..
        }
    ));
    let a_video: Vec<u32> = videos(a_part, A).iter().map(|v| v.0).collect();
    assert_eq!(
        a_video,
        (0..h.feed(A).next_video).collect::<Vec<_>>(),
        "the whole cached GOP"
    );
    let first_a = a_part[3].ts().expect("frame");
    assert!((33..=34).contains(&(first_a - last_frame_ts(&all))));
    all.extend(a_part.iter().cloned());
    h.run_to(5500);
    all.extend(drain(&mut p));
    assert_monotonic(&all);
    assert_headers_precede_frames(&all);
}

// ---------------------------------------------------------------------------
// 9. Kick

#[test]
fn kick_disconnects_at_once_and_fails_over() {
    let (mut h, mut p) = two_feeds();
    h.run_to(2000);
    drain(&mut p);
    let at = h.feeds.iter().position(|f| f.spec.tag == A).expect("A");
    let mut a = h.feeds.remove(at);
    let view = h.src.kick(h.now(), a.id).expect("A is known");
    assert_eq!(view.feed_id, fid(A).0);
    assert!(view.primary);
    assert!(disconnected(&mut a).contains("kicked"));

    let v = h.view();
    assert!(
        v.feeds.iter().all(|f| f.feed_id != fid(A).0),
        "A gone from the view"
    );
    assert_eq!(h.primary(), Some(B));
    let sw = v.last_switch.expect("switch");
    assert_eq!(sw.reason, "primary_lost");
    assert!(!sw.planned);
    let cut = drain(&mut p);
    assert_eq!(&cut[..3], &header(B)[..]);
    assert!(matches!(
        cut[3],
        Got::V {
            tag: B,
            key: true,
            ..
        }
    ));
    // Kicking an unknown (or already gone) feed is a no-op.
    assert!(h.src.kick(h.now(), a.id).is_none());
    no_control(h.feed_mut(B));
}

// ---------------------------------------------------------------------------
// A planned switch that does not complete

/// B (50) on air from t = 0; A (100) joins at 1000 with keyframes every
/// 2 s (1000, 3000, …); the hold ends at 2000, so from then on a planned
/// switch to A waits for A's keyframe at 3000.
fn pending_setup() -> (H, mpsc::Receiver<PlayerItem>) {
    let mut h = H::new();
    let p = h.player(1024);
    h.join(spec(B, 50));
    h.run_to(1000);
    h.join(Spec {
        gop: 60,
        dts0: 70_000,
        ..spec(A, 100)
    });
    h.run_to(2500);
    assert_eq!(h.primary(), Some(B), "A's keyframe at 3000 not reached yet");
    (h, p)
}

/// The player saw one uninterrupted B: one header, every frame once.
fn assert_b_uninterrupted(h: &H, log: &[Got]) {
    assert_eq!(&log[..3], &header(B)[..]);
    assert!(
        log[3..].iter().all(|g| g.is_frame() && g.tag() == Some(B)),
        "{log:?}"
    );
    let v: Vec<u32> = videos(log, B).iter().map(|v| v.0).collect();
    assert_eq!(
        v,
        (0..h.feed(B).next_video).collect::<Vec<_>>(),
        "no B frame repeated or lost"
    );
    let a: Vec<u32> = audios(log, B).iter().map(|a| a.0).collect();
    assert_eq!(a, (0..h.feed(B).next_audio).collect::<Vec<_>>());
    assert_monotonic(log);
}

#[test]
fn target_leaving_before_its_keyframe_keeps_the_primary_on_air_untouched() {
    let (mut h, mut p) = pending_setup();
    let switches = h.view().switches;
    h.leave(A);
    assert_eq!(h.primary(), Some(B));
    h.run_to(4000);
    let v = h.view();
    assert_eq!(
        v.switches, switches,
        "nothing changed on air: no switch recorded"
    );
    assert_eq!(v.last_switch.expect("first").reason, "first");
    assert_b_uninterrupted(&h, &drain(&mut p));
}

#[test]
fn target_timing_out_before_its_keyframe_keeps_the_primary_on_air_untouched() {
    let (mut h, mut p) = pending_setup();
    let switches = h.view().switches;
    h.feed_mut(A).sending = false;
    // A times out at 4000 (its last media at 2500).
    h.run_to(4500);
    assert_eq!(h.primary(), Some(B));
    assert_eq!(h.feed_view(A).expect("A").state, "unhealthy");
    assert_eq!(h.view().switches, switches);
    assert_b_uninterrupted(&h, &drain(&mut p));
}

#[test]
fn primary_leaving_while_a_planned_switch_waits_cuts_at_once() {
    let (mut h, mut p) = pending_setup();
    let before = drain(&mut p);
    h.leave(B);
    // Unplanned now: to A's cached keyframe at once, no freeze until 3000.
    assert_eq!(h.primary(), Some(A));
    let sw = h.view().last_switch.expect("switch");
    assert_eq!(sw.reason, "primary_lost");
    assert!(!sw.planned);
    assert!(sw.gap_ms.is_some());
    assert_eq!(sw.from, Some(fid(B).0));
    let cut = drain(&mut p);
    assert_eq!(&cut[..3], &header(A)[..]);
    assert!(
        matches!(
            cut[3],
            Got::V {
                tag: A,
                idx: 0,
                key: true,
                ..
            }
        ),
        "{:?}",
        cut[3]
    );
    assert!((33..=34).contains(&(cut[3].ts().expect("frame") - last_frame_ts(&before))));
    let mut all = before;
    all.extend(cut);
    h.run_to(3500);
    all.extend(drain(&mut p));
    let a: Vec<u32> = videos(&all, A).iter().map(|v| v.0).collect();
    assert_eq!(a, (0..h.feed(A).next_video).collect::<Vec<_>>());
    assert_monotonic(&all);
    assert_headers_precede_frames(&all);
}

#[test]
fn primary_timing_out_while_a_planned_switch_waits_cuts_at_once() {
    let mut h = H::with_settings(fixed_timeout());
    let mut p = h.player(1024);
    h.join(spec(B, 50));
    h.run_to(1000);
    // Keyframes every 5 s: the planned switch decided at 2000 would wait
    // for 6000, bounded by the deadline at 5000.
    h.join(Spec {
        gop: 150,
        ..spec(A, 100)
    });
    h.run_to(2100);
    h.feed_mut(B).sending = false;
    let before = drain(&mut p);
    // B's last media at 2100: it times out at 3600, and A takes the air then.
    h.run_to(3599);
    assert_eq!(h.primary(), Some(B));
    h.run_to(3600);
    assert_eq!(h.primary(), Some(A));
    let sw = h.view().last_switch.expect("switch");
    assert_eq!(sw.reason, "primary_lost");
    assert!(!sw.planned);
    let cut = drain(&mut p);
    assert_eq!(&cut[..3], &header(A)[..]);
    assert!(
        matches!(
            cut[3],
            Got::V {
                tag: A,
                idx: 0,
                key: true,
                ..
            }
        ),
        "{:?}",
        cut[3]
    );
    let mut all = before;
    all.extend(cut);
    assert_monotonic(&all);
    assert_headers_precede_frames(&all);
}

#[test]
fn draining_the_pending_target_keeps_the_primary_on_air_untouched() {
    let (mut h, mut p) = pending_setup();
    let switches = h.view().switches;
    let report = h.reprioritize(tok(A), Some(1), true);
    assert_eq!(report.affected.len(), 1);
    assert!(!report.affected[0].primary);
    // Not on air: disconnected at once.
    assert!(disconnected(h.feed_mut(A)).contains("reprioritized"));
    h.run_to(3500);
    assert_eq!(h.primary(), Some(B));
    assert_eq!(h.view().switches, switches);
    no_control(h.feed_mut(B));
    assert_b_uninterrupted(&h, &drain(&mut p));
}

#[test]
fn an_on_air_feed_whose_clock_steps_back_keeps_going_out() {
    // A feed on air since frame 0 (input DTS 0) whose encoder restarts its
    // timeline on the same connection: 40 ms back, below its cut point,
    // in the middle of a GOP. Its frames keep going out, continuing the
    // output timeline, instead of being dropped as "before the cut".
    let mut h = H::new();
    let mut p = h.player(1 << 16);
    h.join(spec(A, 100));
    h.run_to(1_010);
    assert_eq!(h.primary(), Some(A));
    let mut log = drain(&mut p);
    let before = videos(&log, A).len();
    h.feed_mut(A).spec.dts0 -= 1_040;
    h.run_to(2_000);
    log.extend(drain(&mut p));
    let v = videos(&log, A);
    assert!(
        v.len() > before + 25,
        "frames after the step went out: {v:?}"
    );
    assert_consecutive(
        "A's video",
        &v.iter().map(|(i, _, _)| *i).collect::<Vec<_>>(),
    );
    assert_monotonic(&log);
    assert_headers_precede_frames(&log);
    // The output continues one frame interval after the last frame out.
    let step = v[before].1 - v[before - 1].1;
    assert!(
        (1..=40).contains(&step),
        "output step at the jump: {step} ms"
    );
}
