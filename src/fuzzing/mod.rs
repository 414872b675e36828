//! Entry points of the fuzz targets (`fuzz/`), one function per target
//! taking the fuzzer's bytes. They feed the same code the listeners and
//! the cluster shell feed from the network and Redis, and check what that
//! code promises besides not panicking. A stable test
//! (`tests/fuzz_corpus.rs`) replays every committed corpus file through
//! them, so a regression is caught without a nightly toolchain.
//!
//! Not part of the gateway's API.

mod engine_media;
mod rtmp_session;

pub use engine_media::engine_media;
pub use rtmp_session::rtmp_session;

use std::str::FromStr;

use bytes::Bytes;

use crate::auth::cluster::ClusterSecret;
use crate::auth::jwt::KeySet;
use crate::client::url::ClientUrl;
use crate::cluster::control::{Ack, Request};
use crate::cluster::envelope::{Freshness, Kind, ReplayGuard, Signer};
use crate::cluster::registry::{Event, FeedRecord, Lease};
use crate::domain::{FeedId, StreamName};
use crate::media::codec::{
    adts_header, annexb_to_avcc, avc_record_parameter_sets, avcc_nal_units, avcc_to_annexb,
    parse_adts_header,
};
use crate::media::ts::demux::{DemuxEvent, TsDemuxer};
use crate::media::ts::mux::TsMuxer;
use crate::media::{self, Codec, FlvItem, Track};
use crate::server::url::{parse_srt_stream_id, parse_stream_key};
use crate::wire::demux::TsFeedDemux;

/// Reads a fuzzer's bytes as a sequence of small decisions; runs dry as
/// zeros, so every input decodes to something.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length byte, then that many bytes.
    pub(crate) fn short(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.take(n)
    }

    /// A 16-bit length, then that many bytes.
    pub(crate) fn long(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.take(n)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// Splits `data` into chunks of the sizes a seed picks (1 byte at a time,
/// odd sizes, whole packets), as reads from a socket would.
pub(crate) fn chunks(data: &[u8], seed: u8) -> impl Iterator<Item = &[u8]> {
    let size = match seed % 4 {
        0 => data.len().max(1),
        1 => 1,
        2 => usize::from(seed) + 1,
        _ => 188 * (usize::from(seed >> 2) % 8 + 1),
    };
    data.chunks(size)
}

/// FLV tag bodies (RTMP audio and video messages) and the codec
/// configurations and payloads inside them; what parses must write back
/// and parse again to the same thing.
pub fn flv_tags(data: &[u8]) {
    let mut input = Input::new(data);
    let track = if input.u8() & 1 == 0 {
        Track::Video
    } else {
        Track::Audio
    };
    let dts = i64::from(input.u32() as i32);
    let body = input.rest();
    let parsed = match track {
        Track::Video => media::parse_flv_video(body, dts),
        Track::Audio => media::parse_flv_audio(body, dts),
    };
    let reparse = |b: &[u8], dts: i64| match track {
        Track::Video => media::parse_flv_video(b, dts),
        Track::Audio => media::parse_flv_audio(b, dts),
    };
    match parsed {
        Ok(FlvItem::Config(cfg)) => {
            assert_eq!(cfg.track, track);
            assert!(!cfg.data.is_empty(), "an empty configuration");
            match cfg.codec {
                Codec::H264 => {
                    let _ = avc_record_parameter_sets(&cfg.data);
                }
                Codec::H265 => {
                    let _ = media::codec::hevc_record_parameter_sets(&cfg.data);
                }
                Codec::Aac => {
                    let _ = adts_header(&cfg.data, body.len());
                }
            }
            let out = media::flv_config(&cfg);
            match reparse(&out, dts) {
                Ok(FlvItem::Config(again)) => assert_eq!(again, cfg, "a written config reads back"),
                other => panic!("a written config does not read back: {other:?}"),
            }
        }
        Ok(FlvItem::Frame(frame)) => {
            assert_eq!(frame.track, track);
            assert!(!frame.payload.is_empty(), "an empty frame");
            assert_eq!(frame.codec.track(), track);
            if track == Track::Video {
                if let Ok(units) = avcc_nal_units(&frame.payload) {
                    let annexb = avcc_to_annexb(&frame.payload).expect("units split once");
                    assert!(annexb.len() >= units.len() * 4);
                    let _ = annexb_to_avcc(&annexb);
                }
            } else {
                let _ = parse_adts_header(&frame.payload);
            }
            let out = media::flv_frame(&frame).to_bytes();
            match reparse(&out, frame.dts) {
                Ok(FlvItem::Frame(again)) => {
                    assert_eq!(again.payload, frame.payload, "a written frame reads back");
                    assert_eq!(again.dts, frame.dts);
                    assert_eq!(again.keyframe, frame.keyframe);
                }
                other => panic!("a written frame does not read back: {other:?}"),
            }
        }
        Ok(FlvItem::Ignored) | Err(_) => {}
    }
}

/// An MPEG-TS byte stream (SRT publishers, pulled SRT inputs) in the
/// chunks a seed picks; every frame it yields muxes again, and the
/// result demuxes again.
pub fn ts_demux(data: &[u8]) {
    let mut input = Input::new(data);
    let seed = input.u8();
    let stream = input.rest();
    let mut demux = TsDemuxer::new();
    let mut feed = TsFeedDemux::new();
    let mut events = Vec::new();
    for chunk in chunks(stream, seed) {
        events.extend(demux.push(chunk));
        let _ = feed.push(chunk).count();
    }
    events.extend(demux.finish());
    let stats = demux.stats();
    assert!(stats.packets <= (stream.len() / 188) as u64 + 1);
    let mut mux = TsMuxer::new();
    let mut out = Vec::new();
    for ev in &events {
        // What the engine is promised (the `engine_media` target relies
        // on it): no empty configuration, no empty frame.
        match ev {
            DemuxEvent::Config(cfg) => {
                assert!(!cfg.data.is_empty(), "an empty configuration");
                assert_eq!(cfg.codec.track(), cfg.track);
                mux.set_config(cfg)
            }
            DemuxEvent::Frame(f) => {
                assert!(!f.payload.is_empty(), "an empty frame");
                assert_eq!(f.codec.track(), f.track);
                out.extend_from_slice(&mux.mux(f));
            }
        }
    }
    assert_eq!(out.len() % 188, 0, "the muxer writes whole packets");
    assert!(
        out.chunks(188).all(|p| p[0] == 0x47),
        "every packet is in sync"
    );
    let mut again = TsDemuxer::new();
    let _ = again.push(&out);
    let _ = again.finish();
}

/// SRT stream ids as callers send them (`#!::` key-value form or
/// `name?query`); the URL form of a parsed request redacts its secrets.
pub fn srt_stream_id(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let raw = (!data.is_empty()).then_some(raw.as_ref());
    if let Ok((_mode, req)) = parse_srt_stream_id(raw) {
        check_request(&req.stream, req.priority);
    }
}

fn check_request(stream: &StreamName, _priority: Option<i32>) {
    let s = stream.as_str();
    assert!(!s.is_empty() && s.len() <= StreamName::MAX_LEN);
    assert!(
        StreamName::from_str(s).is_ok(),
        "a parsed name parses again"
    );
}

/// RTMP stream keys (`name?token=…&priority=…`), client URLs of pull
/// inputs and outputs (`rtmp://`, `srt://`) and their redacted forms.
pub fn urls(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(req) = parse_stream_key(&text) {
        check_request(&req.stream, req.priority);
    }
    if let Ok(url) = ClientUrl::from_str(&text) {
        let redacted = url.redacted();
        let _ = (
            url.to_string(),
            format!("{url:?}"),
            url.authority(),
            url.scheme(),
        );
        if let ClientUrl::Srt(u) = &url {
            if let Some(p) = &u.passphrase {
                if p.len() >= 10 && text.matches(p).count() == 1 {
                    assert!(!redacted.contains(p), "a passphrase shows in {redacted:?}");
                    assert!(
                        !format!("{url:?}").contains(p),
                        "a passphrase shows in Debug"
                    );
                }
            }
        }
        // A redacted URL is for showing only; it still parses as a URL.
        let _ = ClientUrl::from_str(&redacted);
    }
    let _ = crate::redact::url(&text);
}

/// Publish-token strings as presented in stream keys and stream ids: the
/// JWT check, and the cluster's relay credentials.
pub fn publish_token(data: &[u8]) {
    const SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-32";
    let text = String::from_utf8_lossy(data);
    let keys = KeySet::hs256("k1", SECRET);
    if let Ok(v) = keys.verify(&text) {
        panic!("a token no one signed was accepted: {:?}", v.token_id);
    }
    // A token that was signed, then cut or changed, is refused.
    let now = chrono::Utc::now().timestamp();
    let token_id = uuid::Uuid::from_u128(1);
    let signed = keys
        .sign(token_id, uuid::Uuid::from_u128(2), now)
        .expect("an HS256 key signs");
    let verified = keys.verify(&signed).expect("a fresh token verifies");
    assert_eq!(verified.token_id, token_id);
    if !data.is_empty() {
        let mut bytes = signed.clone().into_bytes();
        let at = usize::from(data[0]) % bytes.len();
        let by = data.get(1).copied().unwrap_or(1).max(1);
        bytes[at] = bytes[at].wrapping_add(by);
        if let Ok(changed) = String::from_utf8(bytes) {
            if let Ok(v) = keys.verify(&changed) {
                // Base64 padding bits: a change that decodes the same.
                assert_eq!(v.token_id, token_id, "a changed token names another token");
            }
        }
    }
    let creds = ClusterSecret::new(SECRET);
    let feed = FeedId(uuid::Uuid::from_u128(3));
    let now_ms = now * 1000;
    if creds.verify(&text, feed, now_ms).is_ok() {
        panic!("a relay credential no one issued was accepted");
    }
}

/// Cluster messages read from Redis: the envelope of anything (refused
/// unless signed with the cluster secret), and bodies of every kind that
/// were signed (a node holding the secret, or a bug on one) parsed into
/// what the receiving side parses them into.
pub fn cluster_message(data: &[u8]) {
    const NOW: i64 = 1_700_000_000_000;
    let signer = Signer::new(b"fuzzing-cluster-secret-0123456789");
    let mut input = Input::new(data);
    let kind = match input.u8() % 5 {
        0 => Kind::Lease,
        1 => Kind::Feed,
        2 => Kind::Event,
        3 => Kind::Command,
        _ => Kind::Ack,
    };
    let sign = input.u8() & 1 == 1;
    let skew = i64::from(input.u16() as i16);
    let node = String::from_utf8_lossy(input.short()).into_owned();
    let text = String::from_utf8_lossy(input.rest()).into_owned();
    let fresh = Freshness::message(5_000);
    let place = "fuzz/place";
    let envelope = if sign && !node.is_empty() {
        let mut nonce = [0u8; 16];
        nonce[..2].copy_from_slice(&skew.to_be_bytes()[6..]);
        signer.seal_text(kind, place, &node, NOW + skew, nonce, text.clone())
    } else {
        text.clone()
    };
    let opened = match signer.open(kind, place, Some(&node), &envelope, NOW, fresh) {
        Ok(o) => o,
        Err(_) => {
            assert!(
                !(sign && !node.is_empty() && node.len() <= 64 && skew.abs() <= 5_000),
                "a fresh envelope this node signed was refused"
            );
            return;
        }
    };
    assert!(sign, "an envelope no one signed was accepted");
    assert_eq!(opened.node, node);
    let mut replay = ReplayGuard::new(5_000, 16);
    assert!(replay.admit(&opened, NOW).is_ok());
    assert!(replay.admit(&opened, NOW).is_err(), "a replay is refused");
    match kind {
        Kind::Lease => {
            let _ = opened.parse::<Lease>();
        }
        Kind::Feed => {
            let _ = opened.parse::<FeedRecord>();
        }
        Kind::Event => {
            let _ = opened.parse::<Event>();
        }
        Kind::Command => {
            let _ = opened.parse::<Request>();
        }
        Kind::Ack => {
            let _ = opened.parse::<Ack>();
        }
    }
    let _ = Bytes::from(text);
}

/// A fuzz target: the fuzzer's bytes in, a panic on a finding.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay test.
pub const TARGETS: &[(&str, Target)] = &[
    ("rtmp_session", rtmp_session),
    ("flv_tags", flv_tags),
    ("ts_demux", ts_demux),
    ("srt_stream_id", srt_stream_id),
    ("urls", urls),
    ("publish_token", publish_token),
    ("cluster_message", cluster_message),
    ("engine_media", engine_media),
];
