//! Unit tests: one or more per rule of DESIGN section 2, under virtual time
//! (one base `Instant` plus offsets in milliseconds).

use std::time::{Duration, Instant};

use uuid::Uuid;

use super::*;

mod flap;

pub(super) fn fid(n: u128) -> FeedId {
    FeedId(Uuid::from_u128(n))
}

fn pr(n: i32) -> Priority {
    Priority(Some(n))
}

fn sw(from: Option<u128>, to: u128, planned: bool, reason: SwitchReason) -> Vec<Decision> {
    vec![Decision::Switch {
        from: from.map(fid),
        to: fid(to),
        planned,
        reason,
    }]
}

fn vacate(from: u128) -> Vec<Decision> {
    vec![Decision::Vacate { from: fid(from) }]
}

/// A source under virtual time; `ms` arguments are offsets from `base`.
struct H {
    el: SourceElection,
    base: Instant,
}

impl H {
    fn new() -> Self {
        Self::with(ElectionParams::default())
    }

    fn with(params: ElectionParams) -> Self {
        Self {
            el: SourceElection::new(params),
            base: Instant::now(),
        }
    }

    fn t(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    fn ms(&self, t: Instant) -> u64 {
        t.duration_since(self.base).as_millis() as u64
    }

    fn input(&mut self, ms: u64, input: Input) -> Vec<Decision> {
        let d = self.el.handle_input(self.t(ms), input);
        if let Some(next) = self.el.poll_timeout() {
            assert!(next > self.t(ms), "poll_timeout not in the future");
        }
        d
    }

    fn join(&mut self, ms: u64, n: u128, p: Priority) -> Vec<Decision> {
        self.input(
            ms,
            Input::Joined {
                feed: fid(n),
                priority: p,
            },
        )
    }

    fn health(&mut self, ms: u64, n: u128, healthy: bool) -> Vec<Decision> {
        self.input(
            ms,
            Input::Health {
                feed: fid(n),
                healthy,
            },
        )
    }

    /// Join and turn healthy at the same instant; the decisions of both.
    fn up(&mut self, ms: u64, n: u128, p: i32) -> Vec<Decision> {
        let mut d = self.join(ms, n, pr(p));
        d.extend(self.health(ms, n, true));
        d
    }

    fn leave(&mut self, ms: u64, n: u128) -> Vec<Decision> {
        self.input(ms, Input::Left { feed: fid(n) })
    }

    fn prio(&mut self, ms: u64, n: u128, p: i32) -> Vec<Decision> {
        self.input(
            ms,
            Input::PriorityChanged {
                feed: fid(n),
                priority: pr(p),
            },
        )
    }

    fn drain(&mut self, ms: u64, n: u128) -> Vec<Decision> {
        self.input(ms, Input::Drain { feed: fid(n) })
    }

    fn timeout(&mut self, ms: u64) -> Vec<Decision> {
        let d = self.el.handle_timeout(self.t(ms));
        if let Some(next) = self.el.poll_timeout() {
            assert!(next > self.t(ms), "poll_timeout not in the future");
        }
        d
    }

    fn poll_ms(&self) -> Option<u64> {
        self.el.poll_timeout().map(|t| self.ms(t))
    }

    fn primary(&self) -> Option<FeedId> {
        self.el.primary()
    }

    fn state(&self, n: u128) -> FeedState {
        self.el
            .feeds()
            .into_iter()
            .find(|s| s.feed == fid(n))
            .expect("known feed")
    }
}

#[test]
fn first_election_is_immediate() {
    let mut h = H::new();
    assert!(h.el.is_empty());
    assert!(
        h.join(0, 1, pr(5)).is_empty(),
        "not eligible before healthy"
    );
    assert_eq!(h.primary(), None);
    assert!(!h.el.is_empty());
    assert_eq!(
        h.health(10, 1, true),
        sw(None, 1, false, SwitchReason::First)
    );
    assert_eq!(h.primary(), Some(fid(1)));
    assert_eq!(h.poll_ms(), None);
}

#[test]
fn first_election_picks_the_best_of_simultaneous_feeds() {
    let mut h = H::new();
    h.join(0, 1, pr(1));
    h.join(0, 2, pr(9));
    h.health(0, 1, true);
    // Feed 1 took the air first; feed 2 must serve the hold to preempt.
    assert_eq!(h.primary(), Some(fid(1)));
    assert!(h.health(0, 2, true).is_empty());
    assert_eq!(h.poll_ms(), Some(2_000));
    assert_eq!(h.timeout(2_000), sw(Some(1), 2, true, SwitchReason::Better));
}

#[test]
fn primary_lost_fails_over_at_once_to_the_best() {
    let mut h = H::new();
    h.up(0, 1, 10);
    h.up(0, 2, 5);
    h.up(0, 3, 7);
    assert_eq!(h.primary(), Some(fid(1)));
    assert_eq!(
        h.leave(100, 1),
        sw(Some(1), 3, false, SwitchReason::PrimaryLost)
    );
    assert_eq!(
        h.leave(200, 3),
        sw(Some(3), 2, false, SwitchReason::PrimaryLost)
    );
}

#[test]
fn unhealthy_primary_is_primary_lost() {
    let mut h = H::new();
    h.up(0, 1, 10);
    h.up(0, 2, 5);
    assert_eq!(
        h.health(50, 1, false),
        sw(Some(1), 2, false, SwitchReason::PrimaryLost)
    );
    assert!(!h.state(1).eligible);
    assert_eq!(h.state(1).losses_in_window, 1);
}

#[test]
fn failover_ignores_the_hold_of_the_replacement() {
    let mut h = H::new();
    h.up(0, 1, 10);
    h.up(1_000, 2, 5); // eligible for only 1 ms when the primary dies
    assert_eq!(
        h.leave(1_001, 1),
        sw(Some(1), 2, false, SwitchReason::PrimaryLost)
    );
}

#[test]
fn better_feed_waits_for_failback_hold() {
    let mut h = H::new();
    h.up(0, 1, 5);
    assert!(h.up(10_000, 2, 10).is_empty(), "no preemption at once");
    assert_eq!(h.poll_ms(), Some(12_000));
    assert!(h.timeout(11_999).is_empty(), "not before the hold");
    assert_eq!(h.primary(), Some(fid(1)));
    assert_eq!(
        h.timeout(12_000),
        sw(Some(1), 2, true, SwitchReason::Better)
    );
    assert_eq!(h.poll_ms(), None);
}

#[test]
fn better_feed_switch_happens_late_if_polled_late() {
    let mut h = H::new();
    h.up(0, 1, 5);
    h.up(10_000, 2, 10);
    assert_eq!(
        h.timeout(15_000),
        sw(Some(1), 2, true, SwitchReason::Better)
    );
}

#[test]
fn failback_hold_restarts_when_the_better_feed_drops() {
    let mut h = H::new();
    h.up(0, 1, 5);
    h.up(1_000, 2, 10);
    h.health(2_500, 2, false);
    assert_eq!(h.poll_ms(), None);
    assert!(h.timeout(3_000).is_empty());
    h.health(4_000, 2, true);
    assert_eq!(h.poll_ms(), Some(6_000));
    assert!(h.timeout(5_999).is_empty());
    assert_eq!(h.timeout(6_000), sw(Some(1), 2, true, SwitchReason::Better));
}

#[test]
fn better_feed_is_also_taken_by_an_input_after_its_hold() {
    let mut h = H::new();
    h.up(0, 1, 5);
    h.up(1_000, 2, 10);
    // Any call at or after the deadline applies it, not only handle_timeout.
    assert_eq!(
        h.up(3_500, 3, 1),
        sw(Some(1), 2, true, SwitchReason::Better)
    );
}

#[test]
fn equal_priority_newcomer_never_preempts() {
    let mut h = H::new();
    h.up(0, 5, 7);
    assert!(h.up(1_000, 1, 7).is_empty());
    assert_eq!(
        h.poll_ms(),
        None,
        "no hold pending: the newcomer is not better"
    );
    assert!(h.timeout(3_600_000).is_empty());
    assert_eq!(h.primary(), Some(fid(5)));
}

#[test]
fn lower_priority_newcomer_never_preempts() {
    let mut h = H::new();
    h.up(0, 1, 7);
    assert!(h.up(0, 2, 3).is_empty());
    assert_eq!(h.poll_ms(), None);
}

#[test]
fn ties_break_by_eligible_since_then_feed_id() {
    let mut h = H::new();
    h.up(0, 9, 10);
    h.up(100, 3, 5); // eligible first among the backups
    h.up(200, 1, 5);
    h.up(200, 2, 5);
    let order: Vec<FeedId> = h.el.feeds().iter().map(|s| s.feed).collect();
    assert_eq!(order, vec![fid(9), fid(3), fid(1), fid(2)]);
    // The longest-eligible backup wins despite its higher id.
    assert_eq!(
        h.leave(300, 9),
        sw(Some(9), 3, false, SwitchReason::PrimaryLost)
    );
    // Equal priority and eligible_since: the lowest id wins.
    assert_eq!(
        h.leave(400, 3),
        sw(Some(3), 1, false, SwitchReason::PrimaryLost)
    );
}

#[test]
fn none_priority_is_lowest() {
    let mut h = H::new();
    h.up(0, 1, i32::MIN);
    h.join(0, 2, Priority(None));
    h.health(0, 2, true);
    h.leave(10, 1);
    h.join(20, 1, pr(i32::MIN));
    h.health(20, 1, true);
    assert_eq!(h.primary(), Some(fid(2)));
    assert_eq!(h.timeout(2_020), sw(Some(2), 1, true, SwitchReason::Better));
}

#[test]
fn drain_of_primary_is_a_planned_immediate_switch() {
    let mut h = H::new();
    h.up(0, 1, 10);
    h.up(1_000, 2, 5); // fresh: its hold does not matter for a drain
    assert_eq!(
        h.drain(1_001, 1),
        sw(Some(1), 2, true, SwitchReason::Draining)
    );
    let s = h.state(1);
    assert!(s.draining && !s.eligible && s.healthy);
    assert_eq!(s.losses_in_window, 0, "a drain is not a loss");
    // Never elected again, even though it is healthy and better.
    assert_eq!(h.poll_ms(), None);
    assert!(h.timeout(100_000).is_empty());
    assert_eq!(h.leave(100_001, 1), vec![]);
}

#[test]
fn drain_of_last_primary_vacates() {
    let mut h = H::new();
    h.up(0, 1, 10);
    assert_eq!(h.drain(10, 1), vacate(1));
    assert_eq!(h.primary(), None);
    assert!(!h.el.is_empty(), "drained feed stays until it leaves");
    assert!(h.health(20, 1, false).is_empty());
    assert!(h.health(30, 1, true).is_empty());
    assert_eq!(h.primary(), None);
    h.leave(40, 1);
    assert!(h.el.is_empty());
}

#[test]
fn drain_of_non_primary_is_silent_and_never_elected() {
    let mut h = H::new();
    h.up(0, 1, 5);
    h.up(0, 2, 10);
    assert!(h.drain(500, 2).is_empty());
    assert_eq!(h.poll_ms(), None, "drained feed's hold is gone");
    assert!(h.timeout(5_000).is_empty());
    assert_eq!(h.primary(), Some(fid(1)));
    assert!(h.prio(6_000, 2, 100).is_empty());
    assert_eq!(
        h.leave(7_000, 1),
        vacate(1),
        "healthy drained feed is not elected"
    );
    assert_eq!(h.primary(), None);
}

#[test]
fn vacate_when_last_feed_leaves_then_first_again() {
    let mut h = H::new();
    h.up(0, 1, 5);
    assert_eq!(h.leave(10, 1), vacate(1));
    assert_eq!(h.primary(), None);
    assert!(h.el.is_empty());
    // Re-election after vacancy is First and immediate, even at low priority.
    assert_eq!(h.up(20, 2, -3), sw(None, 2, false, SwitchReason::First));
}

#[test]
fn vacate_when_last_feed_turns_unhealthy() {
    let mut h = H::new();
    h.up(0, 1, 5);
    assert_eq!(h.health(10, 1, false), vacate(1));
    assert_eq!(
        h.health(20, 1, true),
        sw(None, 1, false, SwitchReason::First)
    );
}

#[test]
fn priority_raise_of_fresh_feed_waits_for_its_hold() {
    let mut h = H::new();
    h.up(0, 1, 5);
    h.up(1_000, 2, 1);
    assert_eq!(h.poll_ms(), None);
    assert!(h.prio(1_500, 2, 10).is_empty(), "eligible only 500 ms");
    assert_eq!(
        h.poll_ms(),
        Some(3_000),
        "hold measured from eligible_since"
    );
    assert_eq!(h.timeout(3_000), sw(Some(1), 2, true, SwitchReason::Better));
}

#[test]
fn priority_raise_of_long_eligible_feed_switches_at_once() {
    let mut h = H::new();
    h.up(0, 1, 5);
    h.up(0, 2, 1);
    assert_eq!(
        h.prio(60_000, 2, 10),
        sw(Some(1), 2, true, SwitchReason::Better)
    );
}

#[test]
fn priority_drop_of_primary_below_long_eligible_feed_switches_at_once() {
    let mut h = H::new();
    h.up(0, 1, 10);
    h.up(0, 2, 5);
    assert_eq!(
        h.prio(60_000, 1, 1),
        sw(Some(1), 2, true, SwitchReason::Better)
    );
}

#[test]
fn priority_drop_of_primary_below_fresh_feed_waits_for_hold() {
    let mut h = H::new();
    h.up(0, 1, 10);
    h.up(5_000, 2, 5);
    assert!(h.prio(5_500, 1, 1).is_empty());
    assert_eq!(h.poll_ms(), Some(7_000));
    assert_eq!(h.timeout(7_000), sw(Some(1), 2, true, SwitchReason::Better));
}

#[test]
fn priority_change_back_before_hold_cancels() {
    let mut h = H::new();
    h.up(0, 1, 5);
    h.up(0, 2, 1);
    h.prio(60_000, 1, 0); // 2 is better and long eligible
    assert_eq!(h.primary(), Some(fid(2)));
    h.up(70_000, 3, 9);
    assert_eq!(h.poll_ms(), Some(72_000));
    assert!(h.prio(71_000, 3, 1).is_empty());
    assert_eq!(h.poll_ms(), None);
}

#[test]
fn two_better_feeds_the_due_one_first_then_the_best() {
    let mut h = H::new();
    h.up(0, 1, 1);
    h.up(10_000, 2, 5);
    h.up(11_000, 3, 9);
    assert_eq!(h.poll_ms(), Some(12_000));
    assert_eq!(
        h.timeout(12_000),
        sw(Some(1), 2, true, SwitchReason::Better)
    );
    assert_eq!(h.poll_ms(), Some(13_000));
    assert_eq!(
        h.timeout(13_000),
        sw(Some(2), 3, true, SwitchReason::Better)
    );
}

#[test]
fn two_better_feeds_due_together_best_wins() {
    let mut h = H::new();
    h.up(0, 1, 1);
    h.up(10_000, 2, 5);
    h.up(11_000, 3, 9);
    assert_eq!(
        h.timeout(20_000),
        sw(Some(1), 3, true, SwitchReason::Better)
    );
    assert_eq!(h.poll_ms(), None);
}

#[test]
fn zero_failback_hold_preempts_at_once() {
    let params = ElectionParams {
        failback_hold: Duration::ZERO,
        ..ElectionParams::default()
    };
    let mut h = H::with(params);
    h.up(0, 1, 5);
    assert_eq!(h.up(10, 2, 6), sw(Some(1), 2, true, SwitchReason::Better));
}

#[test]
fn unknown_feeds_and_repeated_inputs_are_ignored() {
    let mut h = H::new();
    assert!(h.health(0, 7, true).is_empty());
    assert!(h.leave(0, 7).is_empty());
    assert!(h.drain(0, 7).is_empty());
    assert!(h.prio(0, 7, 1).is_empty());
    assert!(h.el.is_empty());
    h.up(10, 1, 5);
    assert!(h.health(20, 1, true).is_empty());
    assert_eq!(
        h.state(1).eligible_since,
        Some(h.t(10)),
        "repeat keeps since"
    );
    assert!(
        h.join(30, 1, pr(8)).is_empty(),
        "re-join updates priority only"
    );
    let s = h.state(1);
    assert_eq!((s.priority, s.healthy), (pr(8), true));
}

#[test]
fn feeds_are_listed_best_first() {
    let mut h = H::new();
    h.join(0, 1, pr(99)); // never healthy
    h.up(0, 2, 1);
    h.up(0, 3, 5);
    h.up(0, 4, 7);
    h.drain(1, 4);
    let order: Vec<FeedId> = h.el.feeds().iter().map(|s| s.feed).collect();
    assert_eq!(order, vec![fid(3), fid(2), fid(1), fid(4)]);
}

#[test]
fn params_default() {
    let d = ElectionParams::default();
    assert_eq!(
        (d.failback_hold, d.flap_count, d.flap_window, d.flap_hold),
        (
            Duration::from_secs(2),
            3,
            Duration::from_secs(60),
            Duration::from_secs(30)
        )
    );
}

#[test]
fn serialization() {
    assert_eq!(
        serde_json::to_string(&SwitchReason::PrimaryLost).unwrap(),
        "\"primary_lost\""
    );
    let mut h = H::new();
    h.up(0, 1, 5);
    let v = serde_json::to_value(h.state(1)).unwrap();
    assert_eq!(v["eligible"], true);
    assert_eq!(v["priority"], 5);
    assert!(v.get("eligible_since").is_none());
}

/// Global election: two nodes that learn of the same two equal-priority
/// feeds in opposite orders end up with the same primary, because a remote
/// feed is ranked by the instant its own node reported it eligible.
#[test]
fn remote_feeds_rank_by_reported_since_so_nodes_agree() {
    let remote = |h: &mut H, ms: u64, n: u128, since: Option<u64>| {
        let since = since.map(|s| h.t(s));
        h.input(
            ms,
            Input::Remote {
                feed: fid(n),
                since,
            },
        )
    };
    // Node A: feed 1 is local (eligible at 0), feed 2 remote (eligible at 100, heard at 300).
    let mut a = H::new();
    assert_eq!(a.up(0, 1, 50), sw(None, 1, false, SwitchReason::First));
    a.join(300, 2, pr(50));
    assert_eq!(remote(&mut a, 300, 2, Some(100)), vec![]);
    assert_eq!(a.timeout(5_000), vec![]);
    // Node B: feed 2 is local (eligible at 100), feed 1 remote (eligible at 0, heard at 400).
    let mut b = H::new();
    assert_eq!(b.up(100, 2, 50), sw(None, 2, false, SwitchReason::First));
    b.join(400, 1, pr(50));
    assert_eq!(remote(&mut b, 400, 1, Some(0)), vec![]);
    // Feed 1 has been eligible longer: it takes the air once its hold (from
    // the reported instant) has passed, and both nodes agree.
    assert_eq!(b.poll_ms(), Some(2_000));
    assert_eq!(b.timeout(2_000), sw(Some(2), 1, true, SwitchReason::Better));
    assert_eq!(a.primary(), b.primary());
    // The remote feed turns unavailable: at once to the next (unplanned).
    assert_eq!(
        remote(&mut b, 2_500, 1, None),
        sw(Some(1), 2, false, SwitchReason::PrimaryLost)
    );
    // A remote feed never reported eligible in the future of `now`.
    assert_eq!(remote(&mut b, 2_600, 1, Some(9_999)), vec![]);
    assert!(b.state(1).eligible_since.is_some_and(|s| s <= b.t(2_600)));
}
