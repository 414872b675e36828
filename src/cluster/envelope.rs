//! The signed envelope around everything the cluster keeps in Redis or
//! sends through it: leases, feed records, events, commands and acks.
//! Redis is a bus, not a trust anchor: whoever can write to it cannot
//! make a node accept anything without `cluster.secret`.
//!
//! On the wire an envelope is one JSON object:
//! `{"v":1,"kind":"command","node":"eu-1","ts":1712345678901,"nonce":"<32 hex>","body":"<JSON text>","mac":"<64 hex>"}`.
//! `mac` is the HMAC-SHA256, keyed with a key derived from the cluster
//! secret for this purpose only ([`derive_key`]), of the version, the kind,
//! the *place* (the Redis key or channel it lives in, so a record cannot be
//! moved to another node's key or a message to another channel), the
//! sending node, the timestamp, the nonce and the body's exact bytes, each
//! length-prefixed. The body is carried as a string so the MAC covers the
//! bytes that are parsed, not a re-serialization.
//!
//! Pure: no clock, no randomness, no I/O; `now` and the nonce come in as
//! arguments. The shell opens every envelope with [`Signer::open`] before it
//! uses the body, and drops (and counts) whatever fails.
//!
//! Invariants: the key never appears in `Debug` or logs; MACs are compared
//! in constant time; the freshness window is checked only after the MAC
//! (so unsigned junk is reported as such, not as stale).

use std::collections::HashMap;
use std::fmt;

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub use crate::auth::cluster::derive_key;

type HmacSha256 = Hmac<Sha256>;

/// The envelope format version. Every node of a cluster runs the same
/// version (no rolling upgrade across versions).
pub const VERSION: u8 = 1;
/// Longest node id accepted in an envelope.
pub const MAX_NODE_LEN: usize = 64;
/// Longest envelope text read (an ack listing many feeds is the largest).
pub const MAX_ENVELOPE_BYTES: usize = 4 << 20;
/// Nonce length in bytes.
pub const NONCE_LEN: usize = 16;

pub type Nonce = [u8; NONCE_LEN];

/// What an envelope carries; part of the MAC, so a signed ack cannot pass
/// for a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Lease,
    Feed,
    Event,
    Command,
    Ack,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Lease => "lease",
            Kind::Feed => "feed",
            Kind::Event => "event",
            Kind::Command => "command",
            Kind::Ack => "ack",
        }
    }
}

/// Why something read from Redis was dropped: the `reason` label of
/// `primacy_cluster_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    /// Not an envelope at all (e.g. plain JSON written by someone without
    /// the secret), or one with missing or malformed fields.
    #[error("not a signed envelope")]
    Unsigned,
    #[error("envelope version not supported")]
    Version,
    #[error("larger than any envelope the cluster writes")]
    TooLarge,
    /// The MAC does not verify: forged, tampered with, or signed with
    /// another secret, for another kind or another place.
    #[error("MAC does not verify")]
    BadMac,
    /// Outside the accepted window: older than allowed (a late replay, a
    /// leftover) or too far in the future (clock skew).
    #[error("timestamp outside the accepted window")]
    Stale,
    /// Signed by one node, claiming to be (or to speak for) another.
    #[error("signer does not match the node it speaks for")]
    SenderMismatch,
    /// A command or ack from a node without a live lease here.
    #[error("sender has no live lease")]
    UnknownSender,
    /// The same envelope seen before.
    #[error("seen before (replay)")]
    Replay,
    /// Too many recent envelopes to remember: refused rather than risk
    /// accepting a replay.
    #[error("replay memory full")]
    Overload,
    /// Signed, but the body does not parse (a bug, or another version).
    #[error("signed body does not parse")]
    Malformed,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Unsigned => "unsigned",
            Reject::Version => "version",
            Reject::TooLarge => "too_large",
            Reject::BadMac => "bad_mac",
            Reject::Stale => "stale",
            Reject::SenderMismatch => "sender_mismatch",
            Reject::UnknownSender => "unknown_sender",
            Reject::Replay => "replay",
            Reject::Overload => "overload",
            Reject::Malformed => "malformed",
        }
    }
}

/// How old (or how far ahead) an envelope's timestamp may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// `now - ts` at most this.
    pub max_age_ms: i64,
    /// `ts - now` at most this (clock skew).
    pub max_ahead_ms: i64,
}

impl Freshness {
    /// A message on a channel: within the skew either way.
    pub fn message(skew_ms: i64) -> Self {
        Self {
            max_age_ms: skew_ms,
            max_ahead_ms: skew_ms,
        }
    }

    /// A stored record renewed at least every `max_age_ms` (minus skew).
    pub fn stored(max_age_ms: i64, skew_ms: i64) -> Self {
        Self {
            max_age_ms: max_age_ms.saturating_add(skew_ms),
            max_ahead_ms: skew_ms,
        }
    }

    fn admits(self, ts: i64, now_ms: i64) -> bool {
        let age = now_ms.saturating_sub(ts);
        age <= self.max_age_ms && age >= -self.max_ahead_ms
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u8,
    kind: String,
    node: String,
    ts: i64,
    nonce: String,
    body: String,
    mac: String,
}

/// A verified envelope: who signed it, when, and its body's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub node: String,
    pub ts: i64,
    pub nonce: Nonce,
    pub body: String,
}

impl Opened {
    /// The body as `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Reject> {
        serde_json::from_str(&self.body).map_err(|_| Reject::Malformed)
    }
}

/// Seals and opens envelopes with the cluster's envelope key.
#[derive(Clone)]
pub struct Signer {
    key: [u8; 32],
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    /// `secret`: `cluster.secret`; the envelope key is derived from it.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: derive_key(secret, "cluster envelope v1"),
        }
    }

    fn mac(
        &self,
        kind: Kind,
        place: &str,
        node: &str,
        ts: i64,
        nonce: &Nonce,
        body: &str,
    ) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        let ts = ts.to_string();
        for part in [
            b"primacy cluster envelope".as_slice(),
            &[VERSION],
            kind.as_str().as_bytes(),
            place.as_bytes(),
            node.as_bytes(),
            ts.as_bytes(),
            nonce.as_slice(),
            body.as_bytes(),
        ] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// `body` (already serialized) signed by `node` at `ts` for `place`.
    pub fn seal_text(
        &self,
        kind: Kind,
        place: &str,
        node: &str,
        ts: i64,
        nonce: Nonce,
        body: String,
    ) -> String {
        let tag = self.mac(kind, place, node, ts, &nonce, &body).finalize();
        let wire = Wire {
            v: VERSION,
            kind: kind.as_str().to_owned(),
            node: node.to_owned(),
            ts,
            nonce: hex::encode(nonce),
            mac: hex::encode(tag.into_bytes()),
            body,
        };
        serde_json::to_string(&wire).expect("an envelope serializes")
    }

    /// `body` serialized and signed by `node` at `ts` for `place`.
    pub fn seal<T: Serialize>(
        &self,
        kind: Kind,
        place: &str,
        node: &str,
        ts: i64,
        nonce: Nonce,
        body: &T,
    ) -> String {
        let body = serde_json::to_string(body).expect("a cluster body serializes");
        self.seal_text(kind, place, node, ts, nonce, body)
    }

    /// Verify an envelope read from `place`: its shape, its MAC, that it
    /// is a `kind`, that `sender` (when given) signed it, and that its
    /// timestamp is within `fresh` of `now_ms`.
    pub fn open(
        &self,
        kind: Kind,
        place: &str,
        sender: Option<&str>,
        text: &str,
        now_ms: i64,
        fresh: Freshness,
    ) -> Result<Opened, Reject> {
        if text.len() > MAX_ENVELOPE_BYTES {
            return Err(Reject::TooLarge);
        }
        let wire: Wire = serde_json::from_str(text).map_err(|_| Reject::Unsigned)?;
        if wire.v != VERSION {
            return Err(Reject::Version);
        }
        if wire.node.is_empty() || wire.node.len() > MAX_NODE_LEN {
            return Err(Reject::Unsigned);
        }
        // Lower-case hex only: one envelope has one spelling.
        let canonical = |h: &str| !h.bytes().any(|b| b.is_ascii_uppercase());
        if !canonical(&wire.nonce) || !canonical(&wire.mac) {
            return Err(Reject::Unsigned);
        }
        let nonce: Nonce = hex::decode(&wire.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(Reject::Unsigned)?;
        let tag = hex::decode(&wire.mac).map_err(|_| Reject::Unsigned)?;
        if tag.len() != 32 {
            return Err(Reject::Unsigned);
        }
        // A kind this version does not write fails the MAC below, as does
        // the right kind read from the wrong place.
        if wire.kind != kind.as_str() {
            return Err(Reject::BadMac);
        }
        self.mac(kind, place, &wire.node, wire.ts, &nonce, &wire.body)
            .verify_slice(&tag)
            .map_err(|_| Reject::BadMac)?;
        if !fresh.admits(wire.ts, now_ms) {
            return Err(Reject::Stale);
        }
        if sender.is_some_and(|s| s != wire.node) {
            return Err(Reject::SenderMismatch);
        }
        Ok(Opened {
            node: wire.node,
            ts: wire.ts,
            nonce,
            body: wire.body,
        })
    }
}

/// Remembers the (node, nonce) of every message accepted within the skew
/// window, so a message published again is dropped. An entry can be
/// forgotten once its timestamp is older than the window: a replay of it
/// fails the freshness check instead. Only verified envelopes enter, so
/// an attacker without the secret cannot fill it; if the cluster's own
/// traffic ever did, new messages are refused ([`Reject::Overload`])
/// rather than old ones forgotten early.
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: i64,
    capacity: usize,
    seen: HashMap<(String, Nonce), i64>,
    pruned_at: i64,
}

impl ReplayGuard {
    pub fn new(window_ms: i64, capacity: usize) -> Self {
        Self {
            window_ms,
            capacity,
            seen: HashMap::new(),
            pruned_at: i64::MIN,
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn prune(&mut self, now_ms: i64) {
        let oldest = now_ms.saturating_sub(self.window_ms);
        self.seen.retain(|_, ts| *ts >= oldest);
        self.pruned_at = now_ms;
    }

    /// Accept `opened` once; the same (node, nonce) again is a replay.
    pub fn admit(&mut self, opened: &Opened, now_ms: i64) -> Result<(), Reject> {
        if now_ms.saturating_sub(self.pruned_at) >= self.window_ms / 2 {
            self.prune(now_ms);
        }
        let key = (opened.node.clone(), opened.nonce);
        if self.seen.contains_key(&key) {
            return Err(Reject::Replay);
        }
        if self.seen.len() >= self.capacity {
            self.prune(now_ms);
            if self.seen.len() >= self.capacity {
                return Err(Reject::Overload);
            }
        }
        // Kept until the latest instant a replay would still be fresh.
        self.seen.insert(key, opened.ts.max(now_ms));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: i64 = 1_700_000_000_000;
    const FRESH: Freshness = Freshness {
        max_age_ms: 5_000,
        max_ahead_ms: 5_000,
    };

    fn sealed() -> String {
        Signer::new(SECRET).seal(
            Kind::Command,
            "p:control",
            "eu-1",
            NOW,
            [7; NONCE_LEN],
            &serde_json::json!({"cmd": "kick", "feed": "f"}),
        )
    }

    #[test]
    fn seal_and_open() {
        let s = Signer::new(SECRET);
        let o = s
            .open(
                Kind::Command,
                "p:control",
                Some("eu-1"),
                &sealed(),
                NOW + 10,
                FRESH,
            )
            .unwrap();
        assert_eq!(o.node, "eu-1");
        assert_eq!(o.ts, NOW);
        let v: serde_json::Value = o.parse().unwrap();
        assert_eq!(v["cmd"], "kick");
        assert_eq!(o.parse::<u32>(), Err(Reject::Malformed));
    }

    #[test]
    fn wrong_secret_kind_place_or_sender_is_refused() {
        let text = sealed();
        let other = Signer::new(b"another-secret-another-secret-xx");
        let open = |s: &Signer, kind, place, sender| s.open(kind, place, sender, &text, NOW, FRESH);
        let s = Signer::new(SECRET);
        assert_eq!(
            open(&other, Kind::Command, "p:control", None),
            Err(Reject::BadMac)
        );
        assert_eq!(open(&s, Kind::Ack, "p:control", None), Err(Reject::BadMac));
        assert_eq!(
            open(&s, Kind::Command, "q:control", None),
            Err(Reject::BadMac)
        );
        assert_eq!(
            open(&s, Kind::Command, "p:control", Some("ap-1")),
            Err(Reject::SenderMismatch)
        );
    }

    #[test]
    fn raw_secret_is_not_the_envelope_key() {
        // A MAC computed with the raw secret (as the credentials used to
        // be) does not verify: keys are derived per purpose.
        assert_ne!(derive_key(SECRET, "cluster envelope v1").as_slice(), SECRET);
        assert_ne!(
            derive_key(SECRET, "cluster envelope v1"),
            derive_key(SECRET, "relay credential v2")
        );
        assert!(!format!("{:?}", Signer::new(SECRET)).contains("0123"));
    }

    #[test]
    fn unsigned_and_malformed_text_is_unsigned() {
        let s = Signer::new(SECRET);
        for text in [
            "",
            "garbage",
            r#"{"id":"x","from":"ap-1","command":{"cmd":"drain","node":"eu-1"}}"#,
            r#"{"v":1,"kind":"command","node":"eu-1","ts":1,"nonce":"zz","body":"{}","mac":"00"}"#,
        ] {
            assert_eq!(
                s.open(Kind::Command, "p:control", None, text, NOW, FRESH),
                Err(Reject::Unsigned),
                "{text}"
            );
        }
        let v2 = sealed().replacen("\"v\":1", "\"v\":2", 1);
        assert_eq!(
            s.open(Kind::Command, "p:control", None, &v2, NOW, FRESH),
            Err(Reject::Version)
        );
        let huge = "x".repeat(MAX_ENVELOPE_BYTES + 1);
        assert_eq!(
            s.open(Kind::Command, "p:control", None, &huge, NOW, FRESH),
            Err(Reject::TooLarge)
        );
    }

    #[test]
    fn clock_skew_beyond_the_window_is_stale() {
        let s = Signer::new(SECRET);
        let text = sealed();
        let at = |now| s.open(Kind::Command, "p:control", None, &text, now, FRESH);
        assert!(at(NOW + 5_000).is_ok());
        assert!(at(NOW - 5_000).is_ok());
        assert_eq!(at(NOW + 5_001), Err(Reject::Stale));
        assert_eq!(at(NOW - 5_001), Err(Reject::Stale));
        // A stored record: its own age against the lease TTL.
        let stored = Freshness::stored(5_000, 1_000);
        let open = |now| s.open(Kind::Command, "p:control", None, &text, now, stored);
        assert!(open(NOW + 6_000).is_ok());
        assert_eq!(open(NOW + 6_001), Err(Reject::Stale));
        assert_eq!(open(NOW - 1_001), Err(Reject::Stale));
    }

    #[test]
    fn replays_are_refused_until_they_are_stale() {
        let s = Signer::new(SECRET);
        let mut guard = ReplayGuard::new(5_000, 100);
        let o = s
            .open(Kind::Command, "p:control", None, &sealed(), NOW, FRESH)
            .unwrap();
        assert_eq!(guard.admit(&o, NOW), Ok(()));
        assert_eq!(guard.admit(&o, NOW + 1), Err(Reject::Replay));
        assert_eq!(guard.admit(&o, NOW + 5_000), Err(Reject::Replay));
        // Forgotten (lazily) once older than the window, where freshness
        // refuses it anyway.
        let later = NOW + 7_600;
        let mut other = o.clone();
        other.nonce = [8; NONCE_LEN];
        other.ts = later;
        assert_eq!(guard.admit(&other, later), Ok(()));
        assert_eq!(guard.len(), 1);
        assert_eq!(
            s.open(Kind::Command, "p:control", None, &sealed(), later, FRESH),
            Err(Reject::Stale)
        );
        // The same nonce from another node is another message.
        let mut elsewhere = other.clone();
        elsewhere.node = "us-1".into();
        assert_eq!(guard.admit(&elsewhere, later), Ok(()));
        assert_eq!(guard.admit(&elsewhere, later), Err(Reject::Replay));
    }

    #[test]
    fn a_full_replay_memory_refuses_instead_of_forgetting() {
        let mut guard = ReplayGuard::new(5_000, 3);
        let msg = |n: u8| Opened {
            node: "eu-1".into(),
            ts: NOW,
            nonce: [n; NONCE_LEN],
            body: String::new(),
        };
        for n in 0..3 {
            assert_eq!(guard.admit(&msg(n), NOW), Ok(()));
        }
        assert_eq!(guard.admit(&msg(9), NOW), Err(Reject::Overload));
        assert_eq!(guard.admit(&msg(0), NOW), Err(Reject::Replay));
        // Once the window has passed there is room again.
        assert_eq!(guard.admit(&msg(9), NOW + 5_001), Ok(()));
    }

    proptest! {
        /// Changing any one byte of a sealed envelope makes it fail.
        #[test]
        fn any_tampered_byte_is_refused(index in 0usize..10_000, delta in 1u8..=255) {
            let s = Signer::new(SECRET);
            let mut bytes = sealed().into_bytes();
            let i = index % bytes.len();
            bytes[i] = bytes[i].wrapping_add(delta);
            // Not UTF-8 any more: it could not even be read as text.
            if let Ok(text) = String::from_utf8(bytes) {
                let r = s.open(Kind::Command, "p:control", None, &text, NOW, FRESH);
                prop_assert!(r.is_err(), "tampered byte {i} accepted: {text}");
            }
        }

        /// Whatever body, node, time and nonce: what is sealed opens to
        /// exactly itself, and only at the place it was sealed for.
        #[test]
        fn round_trip(body in ".{0,200}", node in "[a-z0-9-]{1,64}", ts in 0i64..4_000_000_000_000,
                      nonce in any::<[u8; 16]>(), place in "[a-z:]{1,20}") {
            let s = Signer::new(SECRET);
            let text = s.seal_text(Kind::Feed, &place, &node, ts, nonce, body.clone());
            let o = s.open(Kind::Feed, &place, Some(&node), &text, ts, FRESH).unwrap();
            prop_assert_eq!(&o.body, &body);
            prop_assert_eq!(o.nonce, nonce);
            let elsewhere = format!("{place}x");
            prop_assert_eq!(
                s.open(Kind::Feed, &elsewhere, None, &text, ts, FRESH),
                Err(Reject::BadMac)
            );
        }
    }
}
