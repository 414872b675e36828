//! Publish admission: the check every ingest session calls before a feed
//! may join a source.
//!
//! secret → verified claims (no I/O) → token row (cached in memory,
//! invalidatable by token id) → decision for (stream, source, client IP,
//! now). The decision itself, [`decide`], is pure. Refusals are typed; the
//! text sent to an unauthenticated client ([`Refusal::public_message`])
//! never reveals whether a token exists.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::jwt::{KeySet, VerifiedSecret, VerifyError};
use super::tokens::CompiledToken;
use crate::domain::{Priority, SourceId, StreamName, TokenId};
use crate::store::{self, Db, StoreError};

/// Why a publish was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not a compact JWT, or claims of the wrong shape.
    Malformed,
    /// The `kid` names no configured key.
    UnknownKey,
    /// Signature does not verify (tampered, or signed with another key).
    BadSignature,
    /// Validly signed, but the row no longer exists (deleted).
    UnknownToken,
    /// Validly signed, but refreshed away: the row has a newer secret.
    Revoked,
    Disabled,
    Expired,
    StreamNotAllowed,
    IpNotAllowed,
    /// The stored row cannot be compiled (edited outside the API).
    InvalidDefinition,
}

impl Refusal {
    pub const ALL: [Refusal; 10] = [
        Refusal::Malformed,
        Refusal::UnknownKey,
        Refusal::BadSignature,
        Refusal::UnknownToken,
        Refusal::Revoked,
        Refusal::Disabled,
        Refusal::Expired,
        Refusal::StreamNotAllowed,
        Refusal::IpNotAllowed,
        Refusal::InvalidDefinition,
    ];

    /// Stable machine-readable code (logs, metrics).
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::UnknownToken => "unknown_token",
            Refusal::Revoked => "revoked",
            Refusal::Disabled => "disabled",
            Refusal::Expired => "expired",
            Refusal::StreamNotAllowed => "stream_not_allowed",
            Refusal::IpNotAllowed => "ip_not_allowed",
            Refusal::InvalidDefinition => "invalid_definition",
        }
    }

    /// What the encoder is told. Everything that could reveal whether a
    /// token exists to someone without a valid secret says "invalid token".
    pub fn public_message(self) -> &'static str {
        match self {
            Refusal::Malformed
            | Refusal::UnknownKey
            | Refusal::BadSignature
            | Refusal::UnknownToken => "invalid token",
            Refusal::Revoked => "token secret was refreshed; use the new secret",
            Refusal::Disabled | Refusal::InvalidDefinition => "token is disabled",
            Refusal::Expired => "token has expired",
            Refusal::StreamNotAllowed => "token may not publish this stream",
            Refusal::IpNotAllowed => "token may not publish from this address",
        }
    }
}

impl From<VerifyError> for Refusal {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Malformed => Refusal::Malformed,
            VerifyError::UnknownKey => Refusal::UnknownKey,
            VerifyError::BadSignature => Refusal::BadSignature,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("refused: {}", .0.code())]
    Refused(Refusal),
    /// The row could not be read: the caller should answer "try again".
    #[error("token store unavailable: {0}")]
    Unavailable(String),
}

/// An admitted publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub token_id: TokenId,
    pub label: String,
    /// The token's priority at admission (a pinned `priority=` overrides it
    /// later, in ingest).
    pub priority: Priority,
    pub stream: StreamName,
    pub source: SourceId,
}

/// The pure decision once the secret verified and the row is known.
pub fn decide(
    verified: VerifiedSecret,
    token: Option<&CompiledToken>,
    stream: &StreamName,
    source: &SourceId,
    ip: IpAddr,
    now: DateTime<Utc>,
) -> Result<Admitted, Refusal> {
    let token = token.ok_or(Refusal::UnknownToken)?;
    if token.secret_id != verified.secret_id {
        return Err(Refusal::Revoked);
    }
    if !token.enabled {
        return Err(Refusal::Disabled);
    }
    if token.expires_at.is_some_and(|e| e <= now) {
        return Err(Refusal::Expired);
    }
    if !token.rules.allows_stream(stream) {
        return Err(Refusal::StreamNotAllowed);
    }
    if !token.rules.allows_ip(ip) {
        return Err(Refusal::IpNotAllowed);
    }
    Ok(Admitted {
        token_id: TokenId(token.id),
        label: token.label.clone(),
        priority: Priority(token.priority),
        stream: stream.clone(),
        source: source.clone(),
    })
}

#[derive(Clone)]
enum Cached {
    Found(Arc<CompiledToken>),
    Missing,
    Invalid,
}

struct Entry {
    value: Cached,
    fetched: Instant,
}

/// Token rows by id. Entries expire after the TTL; writers invalidate.
struct TokenCache {
    entries: RwLock<HashMap<Uuid, Entry>>,
    /// Bumped by every invalidation; a fetch that raced one is not cached.
    generation: AtomicU64,
    ttl: Duration,
}

const CACHE_MAX_ENTRIES: usize = 100_000;

impl TokenCache {
    fn get(&self, id: &Uuid) -> Option<Cached> {
        let map = self.entries.read().unwrap_or_else(|p| p.into_inner());
        map.get(id)
            .filter(|e| e.fetched.elapsed() < self.ttl)
            .map(|e| e.value.clone())
    }

    fn put(&self, id: Uuid, value: Cached, generation: u64) {
        let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if map.len() >= CACHE_MAX_ENTRIES {
            map.clear();
        }
        map.insert(
            id,
            Entry {
                value,
                fetched: Instant::now(),
            },
        );
    }

    fn invalidate(&self, id: &Uuid) {
        let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        map.remove(id);
    }
}

/// The admission check with its key set, cache and database.
pub struct Admission {
    keys: Arc<KeySet>,
    cache: TokenCache,
    db: Db,
}

impl Admission {
    pub fn new(keys: Arc<KeySet>, db: Db, cache_ttl: Duration) -> Self {
        Self {
            keys,
            cache: TokenCache {
                entries: RwLock::new(HashMap::new()),
                generation: AtomicU64::new(0),
                ttl: cache_ttl,
            },
            db,
        }
    }

    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    /// Forget the cached row of a token (after any write to it).
    pub fn invalidate(&self, token: TokenId) {
        self.cache.invalidate(&token.0);
    }

    /// The whole check. `stream` and `source` are already parsed names.
    pub async fn check(
        &self,
        secret: &str,
        stream: &StreamName,
        source: &SourceId,
        ip: IpAddr,
        now: DateTime<Utc>,
    ) -> Result<Admitted, AdmitError> {
        let verified = self
            .keys
            .verify(secret)
            .map_err(|e| AdmitError::Refused(e.into()))?;
        let cached = match self.cache.get(&verified.token_id) {
            Some(c) => c,
            None => self.fetch(verified.token_id).await?,
        };
        let token = match &cached {
            Cached::Found(t) => Some(t.as_ref()),
            Cached::Missing => None,
            Cached::Invalid => return Err(AdmitError::Refused(Refusal::InvalidDefinition)),
        };
        decide(verified, token, stream, source, ip, now).map_err(AdmitError::Refused)
    }

    async fn fetch(&self, id: Uuid) -> Result<Cached, AdmitError> {
        let generation = self.cache.generation.load(Ordering::Acquire);
        let row = self
            .db
            .run(move |c| match store::tokens::find(c, id) {
                Ok(r) => Ok(Some(r)),
                Err(StoreError::NotFound) => Ok(None),
                Err(e) => Err(e),
            })
            .await
            .map_err(|e| AdmitError::Unavailable(e.to_string()))?;
        let value = match row {
            None => Cached::Missing,
            Some(row) => match CompiledToken::from_row(&row) {
                Ok(t) => Cached::Found(Arc::new(t)),
                Err(e) => {
                    tracing::error!(token_id = %id, error = %e, "stored publish token cannot be compiled; refusing it");
                    Cached::Invalid
                }
            },
        };
        self.cache.put(id, value.clone(), generation);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tokens::{StreamRule, TokenRules};
    use proptest::prelude::*;

    fn token(secret_id: Uuid) -> CompiledToken {
        CompiledToken {
            id: Uuid::new_v4(),
            label: "t".into(),
            priority: Some(10),
            enabled: true,
            expires_at: None,
            secret_id,
            rules: TokenRules::compile(
                &[
                    StreamRule {
                        name: "match1".into(),
                        is_regex: false,
                    },
                    StreamRule {
                        name: "ev/[a-z]+".into(),
                        is_regex: true,
                    },
                ],
                &["127.0.0.0/8".into()],
            )
            .unwrap(),
        }
    }

    fn v(t: &CompiledToken) -> VerifiedSecret {
        VerifiedSecret {
            token_id: t.id,
            secret_id: t.secret_id,
        }
    }

    #[test]
    fn decisions() {
        let now = Utc::now();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let s: StreamName = "match1".parse().unwrap();
        let src = SourceId::default();
        let t = token(Uuid::new_v4());
        let ok = decide(v(&t), Some(&t), &s, &src, ip, now).unwrap();
        assert_eq!(ok.priority, Priority(Some(10)));
        assert_eq!(
            decide(v(&t), None, &s, &src, ip, now),
            Err(Refusal::UnknownToken)
        );
        let stale = VerifiedSecret {
            secret_id: Uuid::new_v4(),
            ..v(&t)
        };
        assert_eq!(
            decide(stale, Some(&t), &s, &src, ip, now),
            Err(Refusal::Revoked)
        );
        let mut d = t.clone();
        d.enabled = false;
        assert_eq!(
            decide(v(&d), Some(&d), &s, &src, ip, now),
            Err(Refusal::Disabled)
        );
        let mut e = t.clone();
        e.expires_at = Some(now - chrono::Duration::seconds(1));
        assert_eq!(
            decide(v(&e), Some(&e), &s, &src, ip, now),
            Err(Refusal::Expired)
        );
        let other: StreamName = "match2".parse().unwrap();
        assert_eq!(
            decide(v(&t), Some(&t), &other, &src, ip, now),
            Err(Refusal::StreamNotAllowed)
        );
        assert!(decide(v(&t), Some(&t), &"ev/abc".parse().unwrap(), &src, ip, now).is_ok());
        let far: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            decide(v(&t), Some(&t), &s, &src, far, now),
            Err(Refusal::IpNotAllowed)
        );
    }

    #[test]
    fn public_messages_do_not_reveal_existence() {
        let hidden = [
            Refusal::Malformed,
            Refusal::UnknownKey,
            Refusal::BadSignature,
            Refusal::UnknownToken,
        ];
        for r in hidden {
            assert_eq!(r.public_message(), "invalid token");
        }
        let codes: std::collections::HashSet<_> = Refusal::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Refusal::ALL.len());
    }

    proptest! {
        /// Arbitrary secrets never panic verification, and arbitrary stream
        /// names either fail to parse or get a decision.
        #[test]
        fn arbitrary_input_never_panics(secret in ".{0,300}", stream in ".{0,200}", raw in proptest::collection::vec(any::<u8>(), 0..400)) {
            let ks = KeySet::hs256("k", b"0123456789abcdef0123456789abcdef");
            let _ = ks.verify(&secret);
            let _ = ks.verify(&String::from_utf8_lossy(&raw));
            let t = token(Uuid::new_v4());
            if let Ok(name) = stream.parse::<StreamName>() {
                let _ = decide(v(&t), Some(&t), &name, &SourceId::default(), "127.0.0.1".parse().unwrap(), Utc::now());
            }
        }

        /// Dotted garbage shaped like a JWT never verifies.
        #[test]
        fn jwt_shaped_garbage_is_refused(a in "[A-Za-z0-9_-]{0,60}", b in "[A-Za-z0-9_-]{0,200}", c in "[A-Za-z0-9_-]{0,60}") {
            let ks = KeySet::hs256("k", b"0123456789abcdef0123456789abcdef");
            let garbage = format!("{a}.{b}.{c}");
            prop_assert!(ks.verify(&garbage).is_err());
        }
    }
}
