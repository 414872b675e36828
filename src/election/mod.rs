//! The election core (DESIGN section 2): which feed of one source is primary.
//!
//! Owns, per source, the election facts of every feed (effective priority,
//! health, draining, flap history, since when it is eligible) and the current
//! primary. Nothing else: no media, no sockets, no timers of its own.
//!
//! **Pure.** No tokio, sockets, diesel, redis, and no clock read: `now` is an
//! argument and decisions come out as data ([`Decision`]). The same inputs at
//! the same instants always give the same decisions.
//!
//! # Driving contract (the shell's run loop)
//!
//! 1. For every event call [`SourceElection::handle_input`]`(now, input)` and
//!    apply the returned decisions in order.
//! 2. After every call ask [`SourceElection::poll_timeout`]; when the clock
//!    reaches that instant call [`SourceElection::handle_timeout`]`(now)` and
//!    apply its decisions. After any call, `poll_timeout` is `None` or later
//!    than that call's `now`, so the loop never spins.
//! 3. `now` never goes backwards.
//!
//! # Rules (normative text: DESIGN section 2)
//!
//! - *available* = joined, healthy (media flowing, no health condition) and
//!   not draining. *eligible* = available and not in flap penalty.
//! - Election order, best first: eligible feeds by higher [`Priority`], then
//!   earliest `eligible_since`, then lowest [`FeedId`]; then available feeds in
//!   flap penalty ("last resort") by higher priority, earliest time they became
//!   healthy, lowest id; then the rest.
//! - No primary and something available: the best takes the air at once
//!   ([`SwitchReason::First`], unplanned).
//! - The primary leaves or turns unhealthy: at once to the best available
//!   ([`SwitchReason::PrimaryLost`], unplanned), or [`Decision::Vacate`].
//! - The primary is drained: at once to the best other available
//!   ([`SwitchReason::Draining`], planned), or [`Decision::Vacate`]. A drained
//!   feed is never elected again.
//! - Failback: an eligible feed strictly better than the primary by the order
//!   (every eligible feed is better than a penalized primary) takes the air
//!   once `now >= eligible_since + failback_hold` ([`SwitchReason::Better`],
//!   planned). If several are due at once, the best of those due wins; a
//!   better feed still inside its hold takes the air when its own hold ends.
//!   Feeds in flap penalty never preempt a primary.
//! - Flap damping: each time an eligible feed turns unhealthy is a *loss*
//!   (leaving and draining are not). At a loss, if at least `flap_count`
//!   losses lie in the trailing `flap_window` (`(now - window, now]`), the feed
//!   enters penalty; it leaves penalty once continuously healthy for
//!   `flap_hold`, and then counts as eligible since that instant. Losses while
//!   in penalty are not counted (the feed was not eligible) but restart the
//!   `flap_hold` clock. `flap_count == 0` turns damping off.
//!
//! # Invariants (checked by the tests in this module)
//!
//! - At most one primary; a primary exists iff some feed is available.
//! - The primary is available; it is in penalty only while no eligible feed
//!   has finished its failback hold.
//! - Every `Switch` goes to an available feed, to a penalized one only when no
//!   eligible feed exists; `from` is always the previous primary.
//! - No eligible feed better than the primary has been eligible for
//!   `failback_hold` (it would have taken the air).

mod state;

#[cfg(test)]
mod reference;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use crate::domain::{FeedId, Priority};

pub use state::SourceElection;

/// Timing and damping parameters of the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionParams {
    /// How long a better feed must be eligible before it preempts the primary.
    pub failback_hold: Duration,
    /// Losses within `flap_window` that put a feed into flap penalty (0: off).
    pub flap_count: u32,
    pub flap_window: Duration,
    /// How long a penalized feed must stay healthy to leave the penalty.
    pub flap_hold: Duration,
}

impl Default for ElectionParams {
    fn default() -> Self {
        Self {
            failback_hold: Duration::from_secs(2),
            flap_count: 3,
            flap_window: Duration::from_secs(60),
            flap_hold: Duration::from_secs(30),
        }
    }
}

/// Why a feed took the air.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchReason {
    /// First election of a source (or after vacancy): immediate.
    First,
    /// The primary left or became unhealthy: unplanned, immediate.
    PrimaryLost,
    /// A better feed has been eligible for `failback_hold`: planned.
    Better,
    /// The primary is being drained (reprioritize/kick with planned switch):
    /// planned, immediate.
    Draining,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `to` takes the air. `from` is the previous primary (None on first
    /// election / after vacancy).
    Switch {
        from: Option<FeedId>,
        to: FeedId,
        planned: bool,
        reason: SwitchReason,
    },
    /// No eligible feed remains; `from` was the primary.
    Vacate { from: FeedId },
}

/// An event about one feed of the source. Inputs naming an unknown feed are
/// ignored (except `Joined`); a `Joined` of a known feed only updates its
/// priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An authenticated feed joined the source. Not eligible until
    /// `Health { healthy: true }`.
    Joined {
        feed: FeedId,
        priority: Priority,
    },
    Left {
        feed: FeedId,
    },
    /// Media flowing and no health condition active (true) or not (false).
    Health {
        feed: FeedId,
        healthy: bool,
    },
    PriorityChanged {
        feed: FeedId,
        priority: Priority,
    },
    /// Take this feed off the air with a planned switch and never elect it
    /// again (it will be disconnected).
    Drain {
        feed: FeedId,
    },
    /// A feed whose eligibility another node decides (a remote feed of the
    /// global election): eligible since `since` (as that node reported it,
    /// so every node ranks it the same), or not available (`None`). No flap
    /// accounting here: the owning node does it and reports the result.
    Remote {
        feed: FeedId,
        since: Option<Instant>,
    },
}

/// A feed as the election sees it (for views and tests).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FeedState {
    pub feed: FeedId,
    pub priority: Priority,
    pub healthy: bool,
    pub draining: bool,
    /// `healthy && !draining && !in_flap_penalty`.
    pub eligible: bool,
    pub in_flap_penalty: bool,
    /// When it last became eligible; `Some` iff `eligible`.
    #[serde(skip)]
    pub eligible_since: Option<Instant>,
    /// Losses in the trailing `flap_window`, as of the last call's `now`.
    pub losses_in_window: u32,
}
