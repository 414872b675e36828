//! Cluster credentials for node-to-node relay: a node proves to another
//! that it belongs to the cluster when it pulls a feed, without any publish
//! token. The credential is `NODE:EXPIRY_MS:MAC`, where MAC is the hex
//! HMAC-SHA256, keyed with `cluster.secret`, of the requesting node, the
//! feed and the expiry. It is good for one feed, for a short time.
//!
//! Invariants: the secret never appears in `Debug` or logs; verification
//! compares MACs in constant time.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::FeedId;

type HmacSha256 = Hmac<Sha256>;

/// How long an issued credential is good for.
pub const CREDENTIAL_TTL_MS: i64 = 60_000;

#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

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
}

impl ClusterSecret {
    pub fn new(secret: &[u8]) -> Self {
        Self(secret.to_vec())
    }

    fn mac(&self, node: &str, feed: FeedId, expiry_ms: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(format!("primacy-relay\n{node}\n{feed}\n{expiry_ms}").as_bytes());
        mac
    }

    /// A credential for `node` to pull `feed` until `now_ms + CREDENTIAL_TTL_MS`.
    pub fn issue(&self, node: &str, feed: FeedId, now_ms: i64) -> String {
        let expiry = now_ms + CREDENTIAL_TTL_MS;
        let tag = self.mac(node, feed, expiry).finalize().into_bytes();
        format!("{node}:{expiry}:{}", hex::encode(tag))
    }

    /// Check a credential for `feed`; returns the node that presented it.
    pub fn verify(
        &self,
        credential: &str,
        feed: FeedId,
        now_ms: i64,
    ) -> Result<String, CredentialError> {
        let mut parts = credential.split(':');
        let (Some(node), Some(expiry), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CredentialError::Malformed);
        };
        let expiry: i64 = expiry.parse().map_err(|_| CredentialError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| CredentialError::Malformed)?;
        if node.is_empty() || node.len() > 64 {
            return Err(CredentialError::Malformed);
        }
        self.mac(node, feed, expiry)
            .verify_slice(&tag)
            .map_err(|_| CredentialError::BadMac)?;
        if expiry < now_ms {
            return Err(CredentialError::Expired);
        }
        Ok(node.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_and_verify() {
        let s = ClusterSecret::new(b"0123456789abcdef0123456789abcdef");
        let feed = FeedId::new_random();
        let c = s.issue("ap-1", feed, 1_000);
        assert_eq!(s.verify(&c, feed, 2_000), Ok("ap-1".to_owned()));
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
        assert!(!format!("{s:?}").contains("0123"));
    }
}
