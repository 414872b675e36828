//! The request and response bodies of `/api/v1/tokens` (and what their
//! fields mean, which the OpenAPI document shows).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::tokens::StreamRule;
use crate::store::tokens::TokenRow;

/// A publish token as operators see it (never with its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: Uuid,
    #[schema(example = "venue-a primary")]
    pub label: String,
    /// Higher wins; `null` is the lowest priority.
    #[schema(example = 100)]
    pub priority: Option<i32>,
    /// Whether a `priority=` publish parameter may raise a feed above
    /// `priority`. When false (the default) it may only lower it: a higher
    /// value is clamped to `priority`.
    pub allow_priority_override: bool,
    pub streams: Vec<StreamRule>,
    /// CIDRs the encoder may publish from; empty means any address. An
    /// IPv4-mapped IPv6 entry (`::ffff:10.0.0.1`) is stored as the IPv4
    /// network it maps, and matches that IPv4 address.
    #[schema(example = json!(["203.0.113.0/24"]))]
    pub allowed_ips: Vec<String>,
    /// Feeds of the token are disconnected at this instant.
    pub expires_at: Option<DateTime<Utc>>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Token {
    pub fn from_row(row: &TokenRow) -> Self {
        Self {
            id: row.id,
            label: row.label.clone(),
            priority: row.priority,
            allow_priority_override: row.allow_priority_override,
            streams: serde_json::from_value(row.streams.clone()).unwrap_or_default(),
            allowed_ips: row.allowed_ips.iter().flatten().cloned().collect(),
            expires_at: row.expires_at,
            enabled: row.enabled,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    pub(super) fn audit_value(row: &TokenRow) -> serde_json::Value {
        serde_json::to_value(Self::from_row(row)).unwrap_or(serde_json::Value::Null)
    }
}

/// A token with its publish secret: returned once, by create and refresh.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenWithSecret {
    pub token: Token,
    /// The secret encoders put in `?token=` (RTMP) or `s=` (SRT). Shown only
    /// now; refresh issues a new one and invalidates this one.
    #[schema(
        example = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiIuLi4ifQ.c2ln"
    )]
    pub secret: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1–128 characters.
    #[schema(example = "venue-a primary")]
    pub label: String,
    #[serde(default)]
    #[schema(example = 100)]
    pub priority: Option<i32>,
    /// Let `priority=` raise a feed above `priority` (default false: it
    /// may only lower it; a higher value is clamped).
    #[serde(default)]
    pub allow_priority_override: bool,
    /// 1–64 entries.
    pub streams: Vec<StreamRule>,
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    /// Absolute expiry. Exclusive with `expires_in_seconds`.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Expiry relative to now. Exclusive with `expires_at`.
    #[serde(default)]
    #[schema(example = 86400)]
    pub expires_in_seconds: Option<u32>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// Distinguish an absent field (`None`) from an explicit `null`
/// (`Some(None)`).
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Every field is optional; absent fields are left as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateToken {
    pub label: Option<String>,
    /// A new priority, or `null` for the lowest. Applies at each feed's next
    /// connection; use reprioritize to apply it now.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>)]
    pub priority: Option<Option<i32>>,
    /// Whether `priority=` may raise a feed above the token's priority.
    /// Applies to live feeds at once (a raised feed falls back to the
    /// token's priority when it is turned off).
    pub allow_priority_override: Option<bool>,
    /// Entries to allow in addition (same rules as `streams`).
    pub add_streams: Option<Vec<StreamRule>>,
    /// Live feeds on streams no longer allowed are disconnected at once.
    pub remove_streams: Option<Vec<StreamRule>>,
    /// Replaces the allow-list; `[]` allows any address. Live feeds from
    /// addresses no longer allowed are disconnected at once.
    pub allowed_ips: Option<Vec<String>>,
    /// A new expiry, or `null` for none. Live feeds are disconnected at
    /// the new instant.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// `false` disconnects the token's live feeds at once.
    pub enabled: Option<bool>,
}

impl UpdateToken {
    pub(super) fn is_empty(&self) -> bool {
        self.label.is_none()
            && self.priority.is_none()
            && self.allow_priority_override.is_none()
            && self.add_streams.is_none()
            && self.remove_streams.is_none()
            && self.allowed_ips.is_none()
            && self.expires_at.is_none()
            && self.enabled.is_none()
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reprioritize {
    /// The new priority (`null` for the lowest). Required.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, example = 50)]
    pub priority: Option<Option<i32>>,
    /// `true` (default): disconnect the token's non-pinned feeds so they
    /// reconnect with the new priority (planned switch first when on air).
    /// `false`: re-elect in place without reconnecting. Pinned feeds are
    /// never disconnected; their priority becomes min(their `priority=`,
    /// the new priority) unless the token allows raising.
    #[serde(default = "yes")]
    pub disconnect: bool,
}

/// A live feed touched by a reprioritize.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AffectedFeed {
    pub feed_id: Uuid,
    pub stream: String,
    pub source_id: String,
    pub node: String,
    pub region: String,
    /// `rtmp`, `srt` or `pull`.
    pub protocol: String,
    /// Whether the feed was on air when the call arrived.
    pub was_primary: bool,
}

impl AffectedFeed {
    pub fn from_view(v: &crate::engine::FeedView) -> Self {
        Self {
            feed_id: v.feed_id,
            stream: v.stream.clone(),
            source_id: v.source_id.clone(),
            node: v.node.clone(),
            region: v.region.clone(),
            protocol: v.protocol.clone(),
            was_primary: v.primary,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReprioritizeResult {
    pub token: Token,
    pub previous_priority: Option<i32>,
    pub disconnect: bool,
    /// Feeds switched and disconnected (or re-elected in place).
    pub affected: Vec<AffectedFeed>,
    /// Feeds of this token with a `priority=` publish parameter: not
    /// disconnected, re-elected in place at min(their `priority=`, the new
    /// priority) unless the token allows raising.
    pub pinned: Vec<AffectedFeed>,
    /// Live nodes of the cluster that did not answer within
    /// `cluster.ack_timeout_ms` (their feeds are not in the lists).
    pub unanswered: Vec<crate::cluster::NodeRef>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TokenListQuery {
    /// Case-insensitive substring of the label (at most 128 characters, no
    /// control characters).
    pub label: Option<String>,
    /// Only tokens allowed to publish this stream name (exact or regex
    /// entry). Regex matching is bounded in concurrency
    /// (`api.stream_filter_concurrency`); beyond it the answer is 503
    /// `busy` with `Retry-After`.
    pub stream: Option<String>,
    pub enabled: Option<bool>,
    /// 1-based page number (default 1).
    pub page: Option<u32>,
    /// Items per page (default 50, at most the server's `api.max_per_page`).
    pub per_page: Option<u32>,
}
