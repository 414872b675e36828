//! Commands between nodes (control channel) and their answers.
//!
//! Every command is applied by the node that receives the API call first
//! (so a node never needs Redis to act on its own feeds), then sent to the
//! others, one message per operator action; each answers on the sender's
//! ack channel. Both sides carry it out with the same function,
//! [`super::commands::apply_local`]. The sender waits a
//! bounded time and reports who did not answer. Requests and acks travel
//! in signed envelopes; a node that applies a command writes an audit row
//! naming the sending node (and the operator, when the request carries it).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{FeedId, SourceId, StreamName, TokenId};
use crate::engine::{FeedView, ReprioritizeReport};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// The token was disabled or deleted: disconnect its feeds now. No
    /// longer sent (a change is [`Command::TokenChanged`]); still obeyed.
    DisconnectToken { token: TokenId, reason: String },
    /// The token row changed: re-read it and disconnect the live feeds it
    /// no longer allows (answered with those feeds).
    TokenChanged { token: TokenId },
    /// Reprioritize (the row is already updated): switch and disconnect the
    /// token's non-pinned feeds, or re-elect in place.
    Reprioritize {
        token: TokenId,
        priority: Option<i32>,
        disconnect: bool,
    },
    /// Disconnect one feed (whichever node has it).
    Kick { feed: FeedId },
    /// Refuse a token on a source for `ban_seconds` (after a kick).
    Ban {
        token: TokenId,
        stream: StreamName,
        source_id: SourceId,
        ban_seconds: u32,
    },
    /// Drain the named node: it stops taking new work and marks its lease.
    Drain { node: String },
}

impl Command {
    /// The audit action and target of a command applied on this node.
    pub fn audit_action(&self) -> (&'static str, String) {
        match self {
            Command::DisconnectToken { token, .. } => {
                ("token.disconnect", format!("token:{token}"))
            }
            Command::TokenChanged { token } => ("token.changed", format!("token:{token}")),
            Command::Reprioritize { token, .. } => ("token.reprioritize", format!("token:{token}")),
            Command::Kick { feed } => ("feed.kick", format!("feed:{feed}")),
            Command::Ban {
                stream, source_id, ..
            } => ("source.ban", format!("source:{stream}/{source_id}")),
            Command::Drain { node } => ("node.drain", format!("node:{node}")),
        }
    }
}

/// A command as it travels (the body of a signed envelope on the control
/// channel).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: Uuid,
    /// The sending node (must be the envelope's signer).
    pub from: String,
    /// The operator who asked for it on the sending node (its audit actor),
    /// when there is one.
    #[serde(default)]
    pub actor: Option<String>,
    pub command: Command,
}

/// What a node did with a command.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// Feeds this node disconnected or re-elected (reprioritize, revoke, kick).
    pub affected: Vec<FeedView>,
    /// Pinned feeds a reprioritize left alone.
    pub pinned: Vec<FeedView>,
}

impl From<ReprioritizeReport> for Outcome {
    fn from(r: ReprioritizeReport) -> Self {
        Self {
            affected: r.affected,
            pinned: r.pinned,
        }
    }
}

/// An answer on the sender's ack channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ack {
    pub id: Uuid,
    pub node: String,
    pub region: String,
    pub outcome: Outcome,
}

/// A node named in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeRef {
    pub node: String,
    pub region: String,
}

/// The answers to a broadcast command.
#[derive(Debug, Clone, Default)]
pub struct Gathered {
    pub acks: Vec<Ack>,
    /// Live nodes that did not answer within `cluster.ack_timeout_ms`.
    pub missing: Vec<NodeRef>,
}
