//! Read-only views of the engine's state for the API (streams, feeds,
//! switches) and the report of a reprioritize.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FeedView {
    pub feed_id: Uuid,
    /// The publish token's id; for a pull feed, the pull input's id.
    pub token_id: Uuid,
    /// The token's label; for a pull feed, `pull ` and the URL it receives
    /// (secrets masked).
    pub label: String,
    pub stream: String,
    pub source_id: String,
    /// Effective priority (`null` = lowest).
    pub priority: Option<i32>,
    /// The feed set `priority=` in its publish parameters: its priority is
    /// min(that value, its token's priority) unless the token allows
    /// raising; Reprioritize does not disconnect it, and caps it.
    pub pinned: bool,
    /// The `priority=` the encoder asked for (a pinned feed of this node);
    /// above `priority` when it was clamped to the token's priority.
    #[serde(default)]
    pub requested_priority: Option<i32>,
    /// `rtmp`, `srt` or `pull`.
    pub protocol: String,
    pub peer: String,
    pub node: String,
    pub region: String,
    pub connected_at: DateTime<Utc>,
    /// `on_air`, `standby`, `starting` (no keyframe yet), `unhealthy`,
    /// `flap_penalty` or `draining`.
    pub state: String,
    pub eligible: bool,
    pub primary: bool,
    pub video_kbps: f64,
    pub audio_kbps: f64,
    pub frames: u64,
    pub keyframes: u64,
    /// Mean distance between the last keyframes.
    pub keyframe_interval_ms: Option<i64>,
    /// Estimated video frame interval.
    pub frame_interval_ms: i64,
    /// How long this feed may be silent before it is declared lost: learned
    /// from its cadence, between `election.loss_floor_ms` and
    /// `election.feed_timeout_ms` (`null`: a feed of another node, or no
    /// media timeout configured).
    #[serde(default)]
    pub loss_window_ms: Option<u64>,
    /// SRT connection statistics (SRT feeds only).
    pub srt: Option<SrtFeedStats>,
    /// A feed of another node: the state of its local mirror
    /// (`connecting`, `live`, `retrying`), `null` when it is not relayed here.
    pub relay: Option<String>,
}

/// SRT statistics of a publishing connection, as last reported by the socket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SrtFeedStats {
    pub rtt_ms: f64,
    pub rx_packets: u64,
    pub rx_loss_packets: u64,
    pub rx_retransmitted_packets: u64,
    pub rx_dropped_packets: u64,
    /// Data held in the receive buffer, in milliseconds of media.
    pub rx_buffer_ms: f64,
    pub rx_buffer_available_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SwitchRecord {
    /// When the new feed went on air (its first frame went out).
    pub at: DateTime<Utc>,
    /// When the election decided the switch; a planned switch then waits
    /// for the new feed's next keyframe (make-before-break).
    pub decided_at: DateTime<Utc>,
    pub from: Option<Uuid>,
    pub to: Option<Uuid>,
    /// `first`, `primary_lost`, `better`, `draining` or `vacant`.
    pub reason: String,
    /// What caused it: `first`, `lost: silent N ms` (silent for its loss
    /// window), `lost: timeout` (silent for `feed_timeout_ms`),
    /// `lost: closed`, `lost: unavailable` (a feed of another node),
    /// `failback`, `reprioritized` or `drained`.
    #[serde(default)]
    pub detail: String,
    pub planned: bool,
    /// Wall-clock time between the old primary's last relayed frame and
    /// the new primary's first (unplanned switches; planned ones have none).
    pub gap_ms: Option<f64>,
    /// Latency this switch added for players that do not catch up (cut to
    /// a cached keyframe).
    pub added_latency_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SourceView {
    pub source_id: String,
    /// The feed on air here (what players of this node receive).
    pub primary: Option<Uuid>,
    /// The feed the (global) election picked. Differs from `primary` while
    /// a planned switch waits for the new feed's keyframe, or while the
    /// elected feed is on another node and not relayed here.
    pub elected: Option<Uuid>,
    /// `on_air`, `switching` or `vacant`.
    pub state: String,
    pub players: usize,
    pub switches: u64,
    pub last_switch: Option<SwitchRecord>,
    /// Best first, by the election order.
    pub feeds: Vec<FeedView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StreamView {
    pub name: String,
    pub sources: Vec<SourceView>,
}

/// The feeds a reprioritize touched on this node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReprioritizeReport {
    pub affected: Vec<FeedView>,
    pub pinned: Vec<FeedView>,
}
