//! Publish admission: the check every ingest session calls before a feed
//! may join a source, and the same judgement applied again to a live feed
//! when its token changes.
//!
//! secret → verified claims (no I/O) → token row (cached in memory,
//! invalidatable by token id, each entry remembering the row revision it
//! holds) → decision for (stream, source, client IP, now). The decisions,
//! [`decide`] and [`recheck`], are pure. Refusals are typed; the text sent
//! to an unauthenticated client ([`Refusal::public_message`]) never
//! reveals whether a token exists.
//!
//! The priority rule: a feed's priority is its token's; `priority=` may
//! only lower it (the feed is then pinned), unless the token allows
//! raising ([`Admitted::with_requested_priority`], [`Priority::pinned`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::jwt::{KeySet, VerifiedSecret, VerifyError};
use super::tokens::{CompiledToken, RuleCache};
use crate::domain::{FeedGrant, Priority, SourceId, StreamName, TokenId};
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

    /// Why a live feed is disconnected when its token no longer allows it
    /// (logged, and handed to the session; the encoder was authenticated).
    pub fn revoke_reason(self) -> &'static str {
        match self {
            Refusal::Malformed | Refusal::UnknownKey | Refusal::BadSignature => {
                "token secret no longer verifies"
            }
            Refusal::UnknownToken => "token was deleted",
            Refusal::Revoked => "token secret was refreshed",
            Refusal::Disabled => "token was disabled",
            Refusal::Expired => "token has expired",
            Refusal::StreamNotAllowed => "token no longer allows this stream",
            Refusal::IpNotAllowed => "token no longer allows this address",
            Refusal::InvalidDefinition => "token definition is invalid",
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
    /// The priority the feed is elected with: the token's, or what
    /// [`Admitted::with_requested_priority`] made of a `priority=`.
    pub priority: Priority,
    /// A `priority=` was given (Reprioritize does not disconnect the feed).
    pub pinned: bool,
    pub stream: StreamName,
    pub source: SourceId,
    /// What the token granted, kept with the live feed.
    pub grant: FeedGrant,
}

impl Admitted {
    /// Apply a `priority=` publish parameter: it may only lower the
    /// token's priority, unless the token allows raising; a higher request
    /// is clamped to the token's priority (and logged). Either way the
    /// feed is pinned.
    pub fn with_requested_priority(mut self, requested: Option<i32>) -> Self {
        let Some(r) = requested else {
            return self;
        };
        self.grant.requested = Some(r);
        self.priority = self.grant.effective_priority();
        self.pinned = true;
        if self.grant.clamped() {
            tracing::info!(token_id = %self.token_id, stream = %self.stream, requested = r,
                priority = ?self.priority.0,
                "priority= above the token's priority, which does not allow raising it; clamped");
        }
        self
    }
}

/// Whether `token` (its current row) allows a publish with the secret
/// `verified` on `stream` from `ip` at `now`: the one judgement behind
/// admission and the re-check of live feeds.
fn judge(
    verified: VerifiedSecret,
    token: Option<&CompiledToken>,
    stream: &StreamName,
    ip: IpAddr,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
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
    Ok(())
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
    judge(verified, token, stream, ip, now)?;
    let token = token.ok_or(Refusal::UnknownToken)?;
    Ok(Admitted {
        token_id: TokenId(token.id),
        label: token.label.clone(),
        priority: Priority(token.priority),
        pinned: false,
        stream: stream.clone(),
        source: source.clone(),
        grant: FeedGrant {
            secret_id: verified.secret_id,
            requested: None,
            token_priority: Priority(token.priority),
            may_raise: token.may_raise,
            expires_at: token.expires_at,
            revision: token.revision,
        },
    })
}

/// A token row as this node currently knows it.
#[derive(Debug, Clone)]
pub enum TokenState {
    Found(Arc<CompiledToken>),
    /// No such row (deleted, or never existed).
    Missing,
    /// The stored row cannot be compiled; the revision it was read at.
    Invalid {
        revision: i64,
    },
}

/// The pure re-check of a live feed against its token's current row: the
/// admission judgement again, for the secret, stream and address the feed
/// was admitted with. `Ok` carries the grant brought up to date (expiry,
/// whether `priority=` may raise, revision); the token's priority in it is
/// left as it was (a plain update applies at the next connection).
pub fn recheck(
    token_id: TokenId,
    state: &TokenState,
    grant: &FeedGrant,
    stream: &StreamName,
    ip: IpAddr,
    now: DateTime<Utc>,
) -> Result<FeedGrant, Refusal> {
    let token = match state {
        TokenState::Found(t) => Some(t.as_ref()),
        TokenState::Missing => None,
        TokenState::Invalid { .. } => return Err(Refusal::InvalidDefinition),
    };
    let verified = VerifiedSecret {
        token_id: token_id.0,
        secret_id: grant.secret_id,
    };
    judge(verified, token, stream, ip, now)?;
    let token = token.ok_or(Refusal::UnknownToken)?;
    Ok(FeedGrant {
        may_raise: token.may_raise,
        expires_at: token.expires_at,
        revision: token.revision,
        ..grant.clone()
    })
}

impl TokenState {
    /// The revision this state was read at (`None`: no row).
    fn revision(&self) -> Option<i64> {
        match self {
            TokenState::Found(t) => Some(t.revision),
            TokenState::Missing => None,
            TokenState::Invalid { revision } => Some(*revision),
        }
    }
}

type Cached = TokenState;

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

    /// Every cached row with the revision it holds.
    fn revisions(&self) -> Vec<(Uuid, i64)> {
        let map = self.entries.read().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter_map(|(id, e)| e.value.revision().map(|r| (*id, r)))
            .collect()
    }
}

/// How many ids one revision query asks about.
const REVISION_CHUNK: usize = 1_000;

/// The admission check with its key set, cache and database.
pub struct Admission {
    keys: Arc<KeySet>,
    cache: TokenCache,
    rules: Arc<RuleCache>,
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
            rules: Arc::new(RuleCache::default()),
            db,
        }
    }

    /// Compiled regex rules, shared with the token listing.
    pub fn rules(&self) -> &Arc<RuleCache> {
        &self.rules
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
            Cached::Invalid { .. } => return Err(AdmitError::Refused(Refusal::InvalidDefinition)),
        };
        decide(verified, token, stream, source, ip, now).map_err(AdmitError::Refused)
    }

    /// The token's row as it is now in the database (cached for the
    /// admissions that follow).
    pub async fn current(&self, token: TokenId) -> Result<TokenState, AdmitError> {
        self.cache.invalidate(&token.0);
        self.fetch(token.0).await
    }

    /// Compare revisions with the database: drop every cached row that is
    /// no longer current, and return those of `live` (tokens of live feeds,
    /// with the revision each feed was judged against) whose row changed
    /// or is gone. One query per thousand ids.
    pub async fn stale(&self, live: &[(TokenId, i64)]) -> Result<Vec<TokenId>, AdmitError> {
        let cached = self.cache.revisions();
        let mut ids: Vec<Uuid> = cached
            .iter()
            .map(|(id, _)| *id)
            .chain(live.iter().map(|(t, _)| t.0))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut current: HashMap<Uuid, i64> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(REVISION_CHUNK) {
            let chunk = chunk.to_vec();
            let rows = self
                .db
                .run(move |c| store::tokens::revisions(c, &chunk))
                .await
                .map_err(|e| AdmitError::Unavailable(e.to_string()))?;
            current.extend(rows);
        }
        for (id, rev) in cached {
            if current.get(&id) != Some(&rev) {
                self.cache.invalidate(&id);
            }
        }
        let mut stale: Vec<TokenId> = live
            .iter()
            .filter(|(t, rev)| current.get(&t.0) != Some(rev))
            .map(|(t, _)| *t)
            .collect();
        stale.sort_unstable_by_key(|t| t.0);
        stale.dedup();
        Ok(stale)
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
            Some(row) => {
                // Regex rules may take a while to compile the first time:
                // off the async workers, and never while holding a
                // database connection.
                let rules = self.rules.clone();
                let revision = row.revision;
                let compiled = tokio::task::spawn_blocking(move || {
                    CompiledToken::from_row(&row, Some(&rules))
                })
                .await
                .map_err(|e| AdmitError::Unavailable(format!("token compile task failed: {e}")))?;
                match compiled {
                    Ok(t) => Cached::Found(Arc::new(t)),
                    Err(e) => {
                        tracing::error!(token_id = %id, error = %e, "stored publish token cannot be compiled; refusing it");
                        Cached::Invalid { revision }
                    }
                }
            }
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
            may_raise: false,
            enabled: true,
            expires_at: None,
            secret_id,
            revision: 1,
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
    fn priority_requests_may_only_lower_unless_the_token_allows_raising() {
        let now = Utc::now();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let s: StreamName = "match1".parse().unwrap();
        let src = SourceId::default();
        let t = token(Uuid::new_v4());
        let plain = decide(v(&t), Some(&t), &s, &src, ip, now).unwrap();
        assert!(!plain.pinned);
        let same = plain.clone().with_requested_priority(None);
        assert_eq!(same, plain);
        let raised = plain.clone().with_requested_priority(Some(i32::MAX));
        assert_eq!(
            raised.priority,
            Priority(Some(10)),
            "clamped to the token's"
        );
        assert!(raised.pinned);
        assert_eq!(raised.grant.requested, Some(i32::MAX));
        let lowered = plain.clone().with_requested_priority(Some(-5));
        assert_eq!(lowered.priority, Priority(Some(-5)));
        let mut may = t.clone();
        may.may_raise = true;
        let allowed = decide(v(&may), Some(&may), &s, &src, ip, now)
            .unwrap()
            .with_requested_priority(Some(i32::MAX));
        assert_eq!(allowed.priority, Priority(Some(i32::MAX)));
    }

    #[test]
    fn recheck_is_the_admission_judgement_for_a_live_feed() {
        let now = Utc::now();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let s: StreamName = "match1".parse().unwrap();
        let t = token(Uuid::new_v4());
        let id = TokenId(t.id);
        let admitted = decide(v(&t), Some(&t), &s, &SourceId::default(), ip, now)
            .unwrap()
            .with_requested_priority(Some(5));
        let grant = admitted.grant;
        let found = |t: &CompiledToken| TokenState::Found(Arc::new(t.clone()));
        // Unchanged: kept, grant as it was.
        assert_eq!(
            recheck(id, &found(&t), &grant, &s, ip, now),
            Ok(grant.clone())
        );
        // Changed expiry, override and revision follow; priority does not.
        let mut changed = t.clone();
        changed.expires_at = Some(now + chrono::Duration::hours(1));
        changed.may_raise = true;
        changed.revision = 7;
        changed.priority = Some(99);
        let kept = recheck(id, &found(&changed), &grant, &s, ip, now).unwrap();
        assert_eq!(kept.expires_at, changed.expires_at);
        assert!(kept.may_raise);
        assert_eq!(kept.revision, 7);
        assert_eq!(
            kept.token_priority,
            Priority(Some(10)),
            "a plain update waits for the next connection"
        );
        assert_eq!(kept.requested, Some(5));
        // Refreshed, disabled, expired, stream or address removed, deleted, invalid.
        let mut refreshed = t.clone();
        refreshed.secret_id = Uuid::new_v4();
        let mut disabled = t.clone();
        disabled.enabled = false;
        let mut expired = t.clone();
        expired.expires_at = Some(now);
        let mut moved = t.clone();
        moved.rules = TokenRules::compile(
            &[StreamRule {
                name: "other".into(),
                is_regex: false,
            }],
            &["127.0.0.0/8".into()],
        )
        .unwrap();
        let mut far = t.clone();
        far.rules = TokenRules::compile(
            &[StreamRule {
                name: "match1".into(),
                is_regex: false,
            }],
            &["10.0.0.0/8".into()],
        )
        .unwrap();
        for (state, want) in [
            (found(&refreshed), Refusal::Revoked),
            (found(&disabled), Refusal::Disabled),
            (found(&expired), Refusal::Expired),
            (found(&moved), Refusal::StreamNotAllowed),
            (found(&far), Refusal::IpNotAllowed),
            (TokenState::Missing, Refusal::UnknownToken),
            (
                TokenState::Invalid { revision: 3 },
                Refusal::InvalidDefinition,
            ),
        ] {
            assert_eq!(recheck(id, &state, &grant, &s, ip, now), Err(want));
            assert!(!want.revoke_reason().is_empty());
        }
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
