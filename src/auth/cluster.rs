//! Cluster credentials for node-to-node relay: a node proves to another
//! that it belongs to the cluster when it pulls a feed, without any publish
//! token. The credential is `NODE:EXPIRY_MS:NONCE:MAC`, where MAC is the hex
//! HMAC-SHA256 of the requesting node, the feed, the expiry and the nonce,
//! keyed with a key derived from `cluster.secret` for this purpose only
//! (never the raw secret, which also keys the envelopes of the cluster's
//! Redis traffic under another derived key).
//!
//! A credential is good for one feed, once, for a short time:
//! - its expiry is capped on verification: one that claims to be good for
//!   longer than [`CREDENTIAL_TTL_MS`] plus the clock skew allowance is
//!   refused, whoever made it;
//! - it is single-use: the verifier remembers every credential it accepted
//!   until its expiry, and refuses it a second time. The relay issues a
//!   fresh one (a new nonce) for every connection attempt.
//!
//! Single use was chosen over binding a credential to the requesting
//! node's address: the address a lease advertises is where a node
//! *listens* (`cluster.public_rtmp`, often a host name, a load balancer or
//! a NAT address), not the source address its outgoing connections come
//! from, so a binding would refuse genuine relays in ordinary deployments
//! and need the listener to consult the cluster view. A credential seen by
//! someone else (a log, a capture of the plaintext RTMP connection) is
//! worthless once its relay has used it, and in any case a minute later.
//!
//! Invariants: no key appears in `Debug` or logs; verification compares
//! MACs in constant time; only credentials with a valid MAC are
//! remembered, so someone without the secret cannot fill the memory.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::FeedId;

type HmacSha256 = Hmac<Sha256>;

/// A key for one purpose, derived from the cluster secret: the HMAC-SHA256
/// of the purpose label keyed with the secret (a PRF; distinct labels give
/// independent keys, and neither reveals the secret).
pub fn derive_key(secret: &[u8], purpose: &str) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"primacy key derivation\n");
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().into()
}

/// How long an issued credential is good for.
pub const CREDENTIAL_TTL_MS: i64 = 60_000;
/// Clock skew allowed between nodes when `cluster.max_skew_ms` is not given.
pub const DEFAULT_MAX_SKEW_MS: i64 = 5_000;
/// Most credentials remembered at once (relays connect a few times a
/// minute each; far below this).
const MAX_REMEMBERED: usize = 100_000;

/// Issues and verifies relay credentials. Clones share the memory of used
/// credentials.
#[derive(Clone)]
pub struct ClusterSecret {
    key: [u8; 32],
    max_skew_ms: i64,
    used: Arc<Mutex<Used>>,
}

#[derive(Default)]
struct Used {
    /// MAC → expiry.
    seen: HashMap<[u8; 32], i64>,
    pruned_at: i64,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("malformed cluster credential")]
    Malformed,
    #[error("cluster credential expired")]
    Expired,
    #[error("cluster credential does not verify")]
    BadMac,
    #[error("cluster credential claims a lifetime beyond the allowed one")]
    TooLong,
    #[error("cluster credential already used")]
    Reused,
    #[error("too many cluster credentials in use")]
    Overload,
}

/// A credential whose MAC, feed and lifetime check out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Checked {
    node: String,
    expiry: i64,
    tag: [u8; 32],
}

impl ClusterSecret {
    /// `secret`: `cluster.secret`; the credential key is derived from it.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: derive_key(secret, "relay credential v2"),
            max_skew_ms: DEFAULT_MAX_SKEW_MS,
            used: Arc::new(Mutex::new(Used::default())),
        }
    }

    /// With `cluster.max_skew_ms` as the clock skew allowance.
    pub fn with_max_skew_ms(mut self, ms: u64) -> Self {
        self.max_skew_ms = i64::try_from(ms).unwrap_or(i64::MAX);
        self
    }

    fn mac(&self, node: &str, feed: FeedId, expiry_ms: i64, nonce: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(format!("primacy-relay\n{node}\n{feed}\n{expiry_ms}\n{nonce}").as_bytes());
        mac
    }

    /// A credential for `node` to pull `feed` once, until
    /// `now_ms + CREDENTIAL_TTL_MS`.
    pub fn issue(&self, node: &str, feed: FeedId, now_ms: i64) -> String {
        self.issue_with_nonce(node, feed, now_ms, rand::random())
    }

    fn issue_with_nonce(&self, node: &str, feed: FeedId, now_ms: i64, nonce: [u8; 16]) -> String {
        let expiry = now_ms.saturating_add(CREDENTIAL_TTL_MS);
        let nonce = hex::encode(nonce);
        let tag = self.mac(node, feed, expiry, &nonce).finalize().into_bytes();
        format!("{node}:{expiry}:{nonce}:{}", hex::encode(tag))
    }

    /// Everything but the single use (pure).
    fn check(
        &self,
        credential: &str,
        feed: FeedId,
        now_ms: i64,
    ) -> Result<Checked, CredentialError> {
        let mut parts = credential.split(':');
        let (Some(node), Some(expiry), Some(nonce), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(CredentialError::Malformed);
        };
        let expiry: i64 = expiry.parse().map_err(|_| CredentialError::Malformed)?;
        if node.is_empty() || node.len() > 64 || nonce.len() != 32 {
            return Err(CredentialError::Malformed);
        }
        let tag: [u8; 32] = hex::decode(tag)
            .ok()
            .and_then(|t| t.try_into().ok())
            .ok_or(CredentialError::Malformed)?;
        self.mac(node, feed, expiry, nonce)
            .verify_slice(&tag)
            .map_err(|_| CredentialError::BadMac)?;
        if expiry < now_ms {
            return Err(CredentialError::Expired);
        }
        let cap = now_ms
            .saturating_add(CREDENTIAL_TTL_MS)
            .saturating_add(self.max_skew_ms);
        if expiry > cap {
            return Err(CredentialError::TooLong);
        }
        Ok(Checked {
            node: node.to_owned(),
            expiry,
            tag,
        })
    }

    /// Check a credential for `feed` and use it up; returns the node that
    /// presented it.
    pub fn verify(
        &self,
        credential: &str,
        feed: FeedId,
        now_ms: i64,
    ) -> Result<String, CredentialError> {
        let c = self.check(credential, feed, now_ms)?;
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if now_ms.saturating_sub(used.pruned_at) >= 1_000 || used.seen.len() >= MAX_REMEMBERED {
            used.seen.retain(|_, expiry| *expiry >= now_ms);
            used.pruned_at = now_ms;
        }
        if used.seen.contains_key(&c.tag) {
            return Err(CredentialError::Reused);
        }
        if used.seen.len() >= MAX_REMEMBERED {
            return Err(CredentialError::Overload);
        }
        used.seen.insert(c.tag, c.expiry);
        Ok(c.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn issue_and_verify() {
        let s = ClusterSecret::new(SECRET);
        let feed = FeedId::new_random();
        let c = s.issue("ap-1", feed, 1_000);
        // Another feed, another secret, a late use, a tampered node: refused.
        assert_eq!(
            s.verify(&c, FeedId::new_random(), 2_000),
            Err(CredentialError::BadMac)
        );
        let other = ClusterSecret::new(b"another-secret-another-secret-xx");
        assert_eq!(other.verify(&c, feed, 2_000), Err(CredentialError::BadMac));
        assert_eq!(
            s.verify(&c, feed, 1_000 + CREDENTIAL_TTL_MS + 1),
            Err(CredentialError::Expired)
        );
        let forged = c.replacen("ap-1", "eu-1", 1);
        assert_eq!(s.verify(&forged, feed, 2_000), Err(CredentialError::BadMac));
        assert_eq!(
            s.verify("garbage", feed, 2_000),
            Err(CredentialError::Malformed)
        );
        // None of the refusals used it up.
        assert_eq!(s.verify(&c, feed, 2_000), Ok("ap-1".to_owned()));
        assert!(!format!("{s:?}").contains("0123"));
    }

    #[test]
    fn a_credential_is_good_once_also_through_a_clone() {
        let s = ClusterSecret::new(SECRET);
        let feed = FeedId::new_random();
        let c = s.issue("ap-1", feed, 1_000);
        assert_eq!(s.clone().verify(&c, feed, 1_500), Ok("ap-1".to_owned()));
        assert_eq!(s.verify(&c, feed, 1_600), Err(CredentialError::Reused));
        // Two issued in the same millisecond differ (nonce): both good once.
        let a = s.issue("ap-1", feed, 5_000);
        let b = s.issue("ap-1", feed, 5_000);
        assert_ne!(a, b);
        assert!(s.verify(&a, feed, 5_000).is_ok());
        assert!(s.verify(&b, feed, 5_000).is_ok());
        // Forgotten only after its expiry, when it is refused anyway.
        assert_eq!(
            s.verify(&a, feed, 5_000 + CREDENTIAL_TTL_MS + 2_000),
            Err(CredentialError::Expired)
        );
    }

    #[test]
    fn expiry_is_capped_to_ttl_plus_skew() {
        let s = ClusterSecret::new(SECRET).with_max_skew_ms(2_000);
        let feed = FeedId::new_random();
        // Issued by a node whose clock is 2 s ahead: still good.
        let ahead = s.issue("ap-1", feed, 12_000);
        assert!(s.verify(&ahead, feed, 10_000).is_ok());
        // 2.001 s ahead: refused, as is one good until the year 3000.
        let too_far = s.issue("ap-1", feed, 12_001);
        assert_eq!(
            s.verify(&too_far, feed, 10_000),
            Err(CredentialError::TooLong)
        );
        let year_3000 = s.issue("ap-1", feed, 32_503_680_000_000);
        assert_eq!(
            s.verify(&year_3000, feed, 10_000),
            Err(CredentialError::TooLong)
        );
    }

    #[test]
    fn the_raw_secret_does_not_make_credentials() {
        // The pre-derivation recipe: HMAC keyed with the raw secret.
        let feed = FeedId::new_random();
        let nonce = "00".repeat(16);
        let expiry = 61_000;
        let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
        mac.update(format!("primacy-relay\nap-1\n{feed}\n{expiry}\n{nonce}").as_bytes());
        let tag = hex::encode(mac.finalize().into_bytes());
        let c = format!("ap-1:{expiry}:{nonce}:{tag}");
        assert_eq!(
            ClusterSecret::new(SECRET).verify(&c, feed, 1_000),
            Err(CredentialError::BadMac)
        );
        let good = ClusterSecret::new(SECRET).issue_with_nonce("ap-1", feed, 1_000, [0; 16]);
        assert_ne!(good, c);
    }
}
