//! What the cluster keeps in Redis and sends on its channels: node leases,
//! feed records, events. All JSON, all under the configured key prefix,
//! each wrapped in a signed envelope ([`super::envelope`]) whose *place* is
//! the key or channel it lives in.
//!
//! Keys (`P` = `redis.key_prefix`): `P:nodes` (set of node ids, a hint
//! only: membership is a verified lease or heartbeat), `P:node:<id>` (the
//! lease, expiring), `P:feeds:<id>` (hash feed id → record; a record's place
//! is `P:feeds:<id>#<feed id>`). Channels: `P:events` (feed changes and
//! heartbeats), `P:control` (commands), `P:ack:<id>` (answers to commands
//! sent by `<id>`).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{FeedId, Priority, SourceId, StreamName, TokenId};
use crate::engine::{FeedMeta, LocalFeed, Protocol, RemoteFeed, SourceKey};

/// Key and channel names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    pub fn lease(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }
    pub fn feeds(&self, node: &str) -> String {
        format!("{}:feeds:{node}", self.prefix)
    }
    /// Where one feed record lives: its hash and field (an envelope's place).
    pub fn feed_place(&self, node: &str, feed: &str) -> String {
        format!("{}:feeds:{node}#{feed}", self.prefix)
    }
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }
    pub fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }
    pub fn ack(&self, node: &str) -> String {
        format!("{}:ack:{node}", self.prefix)
    }
}

/// A node's lease: who it is, where to reach it, whether it takes work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub node: String,
    pub region: String,
    /// `host:port` of the HTTP API, RTMP and SRT listeners.
    pub http: String,
    pub rtmp: String,
    pub srt: String,
    pub draining: bool,
    pub started_at: DateTime<Utc>,
    /// Wall clock of the renewal, Unix milliseconds.
    pub renewed_ms: i64,
    /// When the node last rewrote all its feed records (Unix ms): a record
    /// it signed before that was deleted since, so a copy of it written
    /// back into the hash is a replay.
    pub records_ms: i64,
    pub feeds: usize,
    pub players: i64,
}

/// One feed of a node, as every other node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedRecord {
    pub feed_id: Uuid,
    pub token_id: Uuid,
    pub label: String,
    pub stream: StreamName,
    pub source_id: SourceId,
    pub priority: Option<i32>,
    pub pinned: bool,
    pub protocol: Protocol,
    pub peer: String,
    pub node: String,
    pub region: String,
    pub connected_at: DateTime<Utc>,
    /// Unix milliseconds since when its node counts it eligible; absent
    /// when it is not eligible (starting, unhealthy, in flap penalty).
    pub eligible_since_ms: Option<i64>,
    pub healthy: bool,
    pub draining: bool,
    pub on_air: bool,
}

/// A message on the events channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Upsert {
        record: Box<FeedRecord>,
    },
    Remove {
        node: String,
        feed_id: Uuid,
    },
    Heartbeat {
        lease: Box<Lease>,
    },
    /// The node released its lease (graceful stop): drop its feeds now.
    Leave {
        node: String,
    },
}

pub use crate::clock::wall_ms;

/// An instant of this process as Unix milliseconds.
pub fn instant_to_wall(t: Instant, now: Instant, now_ms: i64) -> i64 {
    if t <= now {
        now_ms - now.duration_since(t).as_millis() as i64
    } else {
        now_ms + t.duration_since(now).as_millis() as i64
    }
}

/// Unix milliseconds as an instant of this process (never in the future).
pub fn wall_to_instant(ms: i64, now: Instant, now_ms: i64) -> Instant {
    let back = Duration::from_millis(now_ms.saturating_sub(ms).max(0) as u64);
    now.checked_sub(back).unwrap_or(now)
}

impl FeedRecord {
    pub fn from_local(f: &LocalFeed, node: &str, region: &str, now: Instant, now_ms: i64) -> Self {
        Self {
            feed_id: f.meta.id.0,
            token_id: f.meta.token_id.0,
            label: f.meta.label.clone(),
            stream: f.key.stream.clone(),
            source_id: f.key.source.clone(),
            priority: f.meta.priority.0,
            pinned: f.meta.pinned,
            protocol: f.meta.protocol,
            peer: f.meta.peer.to_string(),
            node: node.to_owned(),
            region: region.to_owned(),
            connected_at: f.connected_at,
            eligible_since_ms: f.eligible_since.map(|t| instant_to_wall(t, now, now_ms)),
            healthy: f.healthy,
            draining: f.draining,
            on_air: f.on_air,
        }
    }

    pub fn to_remote(&self, now: Instant, now_ms: i64) -> RemoteFeed {
        RemoteFeed {
            key: SourceKey {
                stream: self.stream.clone(),
                source: self.source_id.clone(),
            },
            meta: FeedMeta {
                id: FeedId(self.feed_id),
                token_id: TokenId(self.token_id),
                label: self.label.clone(),
                priority: Priority(self.priority),
                pinned: self.pinned,
                protocol: self.protocol,
                peer: self
                    .peer
                    .parse()
                    .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
                grant: None,
            },
            node: self.node.clone(),
            region: self.region.clone(),
            eligible_since: self
                .eligible_since_ms
                .map(|ms| wall_to_instant(ms, now, now_ms)),
            draining: self.draining,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_round_trip_is_within_a_millisecond() {
        let now = Instant::now();
        let now_ms = wall_ms();
        let t = now - Duration::from_millis(1234);
        let ms = instant_to_wall(t, now, now_ms);
        assert_eq!(ms, now_ms - 1234);
        let back = wall_to_instant(ms, now, now_ms);
        assert!(back.max(t) - back.min(t) <= Duration::from_millis(1));
        // A time reported from the future is clamped to now.
        assert_eq!(wall_to_instant(now_ms + 5_000, now, now_ms), now);
    }

    #[test]
    fn events_round_trip_as_json() {
        let e = Event::Remove {
            node: "n1".into(),
            feed_id: Uuid::nil(),
        };
        let s = serde_json::to_string(&e).unwrap();
        assert!(s.contains("\"kind\":\"remove\""), "{s}");
        assert!(matches!(
            serde_json::from_str::<Event>(&s).unwrap(),
            Event::Remove { .. }
        ));
    }
}
