//! Whether this node accepts work: its place in its life (starting,
//! ready, draining) and the state of its listeners. A leaf: the API
//! answers `/api/ready` from it, the listeners and the cluster read the
//! drain token, the lifecycle moves it forward.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::supervise::Listeners;

/// Where this node is in its life: starting, ready, or draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Start-up has not finished: `/api/ready` answers 503.
    Starting,
    /// Accepting publishes and plays.
    Ready,
    /// Refusing new publishes and plays; existing sessions finish or are
    /// closed at `shutdown.max_wait_ms`, then the process exits.
    Draining,
}

/// Whether this node accepts work. Start-up ends in `Ready`; a drain (a
/// signal or `POST /api/v1/node/drain`) moves to `Draining` for good and
/// cancels [`Readiness::drain_token`], which the engine and the lifecycle
/// watch. Only the lifecycle and the drain endpoint write the state; the
/// listeners' supervisors write [`Readiness::listeners`]. The node is
/// ready when its state is `Ready` and every listener is up.
#[derive(Debug, Default)]
pub struct Readiness {
    state: AtomicU8,
    drain: CancellationToken,
    drain_started: OnceLock<Instant>,
    listeners: Arc<Listeners>,
}

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Readiness {
    /// Start-up finished. A drain that began during start-up wins.
    pub fn set_ready(&self) {
        let _ = self
            .state
            .compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Begin the drain: not ready from now on, new sessions refused.
    /// Returns true for the call that began it (later calls change nothing).
    pub fn begin_drain(&self) -> bool {
        let first = self.drain_started.set(Instant::now()).is_ok();
        self.state.store(DRAINING, Ordering::Release);
        self.drain.cancel();
        first
    }

    /// Ready for work: started, not draining, every listener up.
    pub fn is_ready(&self) -> bool {
        self.state() == NodeState::Ready && self.listeners.all_up()
    }

    /// The node's listeners and their state.
    pub fn listeners(&self) -> &Arc<Listeners> {
        &self.listeners
    }

    pub fn is_draining(&self) -> bool {
        self.state() == NodeState::Draining
    }

    pub fn state(&self) -> NodeState {
        match self.state.load(Ordering::Acquire) {
            STARTING => NodeState::Starting,
            READY => NodeState::Ready,
            _ => NodeState::Draining,
        }
    }

    /// Cancelled when the drain begins.
    pub fn drain_token(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// How long the drain has been going on, if it began.
    pub fn draining_for(&self) -> Option<std::time::Duration> {
        self.drain_started.get().map(Instant::elapsed)
    }

    /// Why the node is (not) ready.
    pub fn reason(&self) -> String {
        match (self.state(), self.listeners.problems()) {
            (NodeState::Starting, _) => "starting up".into(),
            (NodeState::Draining, _) => "draining".into(),
            (NodeState::Ready, Some(problem)) => problem,
            (NodeState::Ready, None) => "ready".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{NodeState, Readiness};
    use std::time::Instant;

    #[test]
    fn readiness_moves_forward_only() {
        let r = Readiness::default();
        assert_eq!(r.state(), NodeState::Starting);
        assert!(!r.is_ready() && r.draining_for().is_none());
        r.set_ready();
        assert!(r.is_ready());
        assert!(!r.drain_token().is_cancelled());
        assert!(r.begin_drain(), "the first call begins the drain");
        assert!(!r.begin_drain(), "later calls change nothing");
        assert!(r.is_draining() && r.drain_token().is_cancelled());
        assert!(r.draining_for().is_some());
        r.set_ready();
        assert_eq!(r.state(), NodeState::Draining, "a drain is never undone");
    }

    #[test]
    fn a_drain_during_start_up_wins_over_ready() {
        let r = Readiness::default();
        r.begin_drain();
        r.set_ready();
        assert_eq!(r.state(), NodeState::Draining);
        assert_eq!(r.reason(), "draining");
    }

    #[test]
    fn a_listener_that_is_not_up_makes_the_node_not_ready() {
        let r = Readiness::default();
        let rtmp = r
            .listeners()
            .register("rtmp", "127.0.0.1:1935".parse().unwrap());
        r.set_ready();
        assert!(r.is_ready());
        rtmp.set_failing("Too many open files (os error 24)".into(), Instant::now());
        assert_eq!(r.state(), NodeState::Ready);
        assert!(!r.is_ready());
        assert!(
            r.reason().contains("RTMP listener on 127.0.0.1:1935"),
            "{}",
            r.reason()
        );
        assert!(r.reason().contains("Too many open files"), "{}", r.reason());
        rtmp.clear_failing();
        assert!(r.is_ready());
    }
}
