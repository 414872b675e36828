//! Typed identifiers and names shared by every layer.
//!
//! Invariant: a value of these types is always valid. Parsing is the only way
//! in from the outside (`FromStr` / `TryFrom<String>` / serde), and it checks
//! the rules of DESIGN section 1, so no layer re-validates a `StreamName`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a name or id was refused. The message is safe to show to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is longer than {max} characters")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} contains {found:?}; allowed are A-Z a-z 0-9 . _ ~ -{slash}")]
    BadChar {
        what: &'static str,
        found: char,
        slash: &'static str,
    },
}

fn check_chars(what: &'static str, s: &str, allow_slash: bool) -> Result<(), NameError> {
    for c in s.chars() {
        let ok = c.is_ascii_alphanumeric()
            || matches!(c, '.' | '_' | '~' | '-')
            || (allow_slash && c == '/');
        if !ok {
            return Err(NameError::BadChar {
                what,
                found: c,
                slash: if allow_slash { " and /" } else { "" },
            });
        }
    }
    Ok(())
}

/// What players ask for: 1–128 characters of `[A-Za-z0-9._~-]` and `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(String);

impl StreamName {
    pub const MAX_LEN: usize = 128;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for StreamName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "stream name";
        if s.is_empty() {
            return Err(NameError::Empty { what: WHAT });
        }
        if s.len() > Self::MAX_LEN {
            return Err(NameError::TooLong {
                what: WHAT,
                max: Self::MAX_LEN,
            });
        }
        check_chars(WHAT, s, true)?;
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for StreamName {
    type Error = NameError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<StreamName> for String {
    fn from(n: StreamName) -> Self {
        n.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A slot inside a stream; empty is the default source. 0–64 characters of
/// `[A-Za-z0-9._~-]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceId(String);

impl SourceId {
    pub const MAX_LEN: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for SourceId {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const WHAT: &str = "source id";
        if s.len() > Self::MAX_LEN {
            return Err(NameError::TooLong {
                what: WHAT,
                max: Self::MAX_LEN,
            });
        }
        check_chars(WHAT, s, false)?;
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for SourceId {
    type Error = NameError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SourceId> for String {
    fn from(n: SourceId) -> Self {
        n.0
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! uuid_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A publish token row id (the JWT `sub`).
    TokenId
);
uuid_id!(
    /// One publishing connection.
    FeedId
);
uuid_id!(
    /// An operator API key row id.
    ApiKeyId
);

/// Effective priority of a feed. `None` (no priority set) is the lowest,
/// ordered like `i32::MIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Priority(pub Option<i32>);

impl Priority {
    /// The value used for ordering: absent is `i32::MIN`.
    pub fn rank(self) -> i32 {
        self.0.unwrap_or(i32::MIN)
    }

    /// The effective priority of a feed that asked for `priority=requested`
    /// on a token of priority `token`: the request may only lower the
    /// token's priority (`min`), unless the token allows raising it.
    pub fn pinned(requested: i32, token: Priority, may_raise: bool) -> Priority {
        let asked = Priority(Some(requested));
        if may_raise {
            asked
        } else {
            asked.min(token)
        }
    }
}

/// What a publish token granted a live feed when it was admitted, kept
/// beside the feed so that a later change to the token can be judged
/// against it (secret refreshed, expiry, streams, addresses, priority
/// rules). Feeds that no token governs on this node (pull inputs, feeds of
/// other nodes) have none. `Debug` leaves out the secret id.
#[derive(Clone, PartialEq, Eq)]
pub struct FeedGrant {
    /// The secret id (`jti`) the encoder presented.
    pub secret_id: Uuid,
    /// The `priority=` publish parameter, if any (the feed is then pinned).
    pub requested: Option<i32>,
    /// The token's priority as it applies to this feed: the row's at
    /// admission, then whatever a Reprioritize set (a plain update applies
    /// at the next connection).
    pub token_priority: Priority,
    /// The token lets `priority=` raise the feed above `token_priority`.
    pub may_raise: bool,
    /// When the token expires; the feed is disconnected then.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The token row revision this grant was last judged against.
    pub revision: i64,
}

impl fmt::Debug for FeedGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeedGrant")
            .field("requested", &self.requested)
            .field("token_priority", &self.token_priority)
            .field("may_raise", &self.may_raise)
            .field("expires_at", &self.expires_at)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl FeedGrant {
    /// The priority the feed is elected with.
    pub fn effective_priority(&self) -> Priority {
        match self.requested {
            Some(r) => Priority::pinned(r, self.token_priority, self.may_raise),
            None => self.token_priority,
        }
    }

    /// Whether `priority=` asked for more than the token gives.
    pub fn clamped(&self) -> bool {
        self.requested
            .is_some_and(|r| Priority(Some(r)) != self.effective_priority())
    }
}

impl PartialOrd for Priority {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Priority {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Absent sorts below an explicit i32::MIN so the order is total and stable.
        (self.rank(), self.0.is_some()).cmp(&(other.rank(), other.0.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        assert!("match1".parse::<StreamName>().is_ok());
        assert!("event/cam-1.hd~x_y".parse::<StreamName>().is_ok());
        assert!(matches!(
            "".parse::<StreamName>(),
            Err(NameError::Empty { .. })
        ));
        assert!(matches!(
            "a b".parse::<StreamName>(),
            Err(NameError::BadChar { found: ' ', .. })
        ));
        assert!("a".repeat(128).parse::<StreamName>().is_ok());
        assert!(matches!(
            "a".repeat(129).parse::<StreamName>(),
            Err(NameError::TooLong { .. })
        ));
        assert!("é".parse::<StreamName>().is_err());
    }

    #[test]
    fn source_ids() {
        assert!("".parse::<SourceId>().unwrap().is_default());
        assert!("cam2".parse::<SourceId>().is_ok());
        assert!("a/b".parse::<SourceId>().is_err());
        assert!("x".repeat(65).parse::<SourceId>().is_err());
    }

    #[test]
    fn pinned_priority_may_only_lower_unless_allowed() {
        let token = Priority(Some(50));
        assert_eq!(Priority::pinned(i32::MAX, token, false), token);
        assert_eq!(Priority::pinned(20, token, false), Priority(Some(20)));
        assert_eq!(
            Priority::pinned(i32::MAX, token, true),
            Priority(Some(i32::MAX))
        );
        // A token without priority (the lowest) cannot be raised from.
        assert_eq!(Priority::pinned(5, Priority(None), false), Priority(None));
        assert_eq!(
            Priority::pinned(i32::MIN, Priority(None), false),
            Priority(None)
        );
        let g = FeedGrant {
            secret_id: Uuid::nil(),
            requested: Some(90),
            token_priority: Priority(Some(100)),
            may_raise: false,
            expires_at: None,
            revision: 1,
        };
        assert_eq!(g.effective_priority(), Priority(Some(90)));
        assert!(!g.clamped());
        let lowered = FeedGrant {
            token_priority: Priority(Some(10)),
            ..g.clone()
        };
        assert_eq!(lowered.effective_priority(), Priority(Some(10)));
        assert!(lowered.clamped());
        let unpinned = FeedGrant {
            requested: None,
            ..g
        };
        assert_eq!(unpinned.effective_priority(), Priority(Some(100)));
    }

    #[test]
    fn priority_order() {
        assert!(Priority(Some(100)) > Priority(Some(50)));
        assert!(Priority(None) < Priority(Some(i32::MIN)));
        assert_eq!(Priority(None).rank(), i32::MIN);
    }
}
