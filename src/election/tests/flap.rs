//! Unit tests of flap damping (DESIGN section 2, rule 6).

use std::time::Duration;

use super::*;

/// Primary 1 (prio 10) flaps; backup 2 (prio 5) is stable.
fn flapping_primary() -> H {
    let mut h = H::new();
    h.up(0, 1, 10);
    h.up(0, 2, 5);
    for i in 0..2u64 {
        let t = 1_000 + i * 10_000;
        assert_eq!(
            h.health(t, 1, false),
            sw(Some(1), 2, false, SwitchReason::PrimaryLost)
        );
        h.health(t + 100, 1, true);
        assert!(!h.state(1).in_flap_penalty, "not before the 3rd loss");
        assert_eq!(
            h.timeout(t + 2_100),
            sw(Some(2), 1, true, SwitchReason::Better)
        );
    }
    // Third loss at 21 000: penalty.
    assert_eq!(
        h.health(21_000, 1, false),
        sw(Some(1), 2, false, SwitchReason::PrimaryLost)
    );
    let s = h.state(1);
    assert!(s.in_flap_penalty && !s.eligible);
    assert_eq!(s.losses_in_window, 3);
    h
}

#[test]
fn flap_damping_enters_penalty_on_the_nth_loss() {
    let mut h = flapping_primary();
    h.health(21_100, 1, true);
    let s = h.state(1);
    assert!(s.healthy && s.in_flap_penalty && !s.eligible && s.eligible_since.is_none());
    // Not elected while another feed is eligible, though higher priority.
    assert_eq!(h.poll_ms(), Some(51_100), "only the flap hold is pending");
    assert!(h.timeout(51_099).is_empty());
    assert_eq!(h.primary(), Some(fid(2)));
}

#[test]
fn flap_penalty_ends_after_flap_hold_stable_then_failback_hold() {
    let mut h = flapping_primary();
    h.health(21_100, 1, true);
    assert!(h.timeout(51_100).is_empty(), "penalty ends, hold starts");
    let s = h.state(1);
    assert!(s.eligible && !s.in_flap_penalty);
    assert_eq!(s.eligible_since, Some(h.t(51_100)));
    assert_eq!(h.poll_ms(), Some(53_100));
    assert_eq!(
        h.timeout(53_100),
        sw(Some(2), 1, true, SwitchReason::Better)
    );
}

#[test]
fn late_call_dates_the_penalty_end_exactly() {
    let mut h = flapping_primary();
    h.health(21_100, 1, true);
    // The shell wakes late: the feed still counts as eligible since 51 100.
    assert_eq!(h.timeout(52_000), vec![]);
    assert_eq!(h.state(1).eligible_since, Some(h.t(51_100)));
    assert_eq!(h.poll_ms(), Some(53_100));
}

#[test]
fn flap_hold_restarts_when_the_penalized_feed_drops_again() {
    let mut h = flapping_primary();
    h.health(21_100, 1, true);
    h.health(40_000, 1, false);
    assert_eq!(
        h.state(1).losses_in_window,
        3,
        "loss while penalized is not counted"
    );
    h.health(41_000, 1, true);
    assert_eq!(h.poll_ms(), Some(71_000));
    assert!(h.timeout(70_999).is_empty());
    assert!(h.state(1).in_flap_penalty);
    h.timeout(71_000);
    assert!(h.state(1).eligible);
}

#[test]
fn penalized_feed_is_elected_when_nothing_else_is() {
    let mut h = flapping_primary();
    assert_eq!(h.leave(21_050, 2), vacate(2));
    assert_eq!(
        h.health(21_100, 1, true),
        sw(None, 1, false, SwitchReason::First)
    );
    assert!(h.state(1).in_flap_penalty);
    // A non-penalized feed appears, even of lower priority: planned after hold.
    assert!(h.up(30_000, 3, 1).is_empty());
    assert_eq!(h.poll_ms(), Some(32_000));
    assert_eq!(
        h.timeout(32_000),
        sw(Some(1), 3, true, SwitchReason::Better)
    );
}

#[test]
fn penalized_feed_is_the_failover_of_last_resort() {
    let mut h = flapping_primary();
    h.health(21_100, 1, true);
    assert_eq!(
        h.leave(22_000, 2),
        sw(Some(2), 1, false, SwitchReason::PrimaryLost)
    );
}

#[test]
fn penalized_primary_leaving_penalty_stays_on_air() {
    let mut h = flapping_primary();
    h.leave(21_050, 2);
    h.health(21_100, 1, true);
    assert!(h.timeout(51_100).is_empty());
    assert!(h.state(1).eligible);
    assert_eq!(h.primary(), Some(fid(1)));
    assert_eq!(h.poll_ms(), None);
}

#[test]
fn penalized_feeds_do_not_preempt_each_other() {
    let params = ElectionParams {
        flap_count: 1,
        ..ElectionParams::default()
    };
    let mut h = H::with(params);
    h.up(0, 1, 1);
    h.up(0, 2, 9);
    h.health(10, 1, false); // one loss each: both penalized
    h.health(10, 2, false);
    h.health(20, 1, true);
    assert_eq!(h.primary(), Some(fid(1)));
    assert!(h.health(30, 2, true).is_empty());
    assert_eq!(h.poll_ms(), Some(30_020), "only penalty ends are pending");
    assert!(
        h.timeout(30_020).is_empty(),
        "1 leaves penalty, stays on air"
    );
    assert_eq!(h.poll_ms(), Some(30_030));
    assert!(
        h.timeout(30_030).is_empty(),
        "2 leaves penalty, hold starts"
    );
    assert_eq!(h.poll_ms(), Some(32_030));
    assert_eq!(
        h.timeout(32_030),
        sw(Some(1), 2, true, SwitchReason::Better)
    );
}

#[test]
fn last_resort_ties_break_by_healthy_since_then_feed_id() {
    let params = ElectionParams {
        flap_count: 1,
        ..ElectionParams::default()
    };
    let mut h = H::with(params);
    h.up(0, 9, 9);
    for n in [1, 2, 3] {
        h.up(0, n, 5);
        h.health(10, n, false); // one loss: penalized
    }
    h.health(100, 3, true);
    h.health(200, 1, true);
    h.health(200, 2, true);
    let order: Vec<FeedId> = h.el.feeds().iter().map(|s| s.feed).collect();
    assert_eq!(order, vec![fid(9), fid(3), fid(1), fid(2)]);
    // Healthy the longest wins despite its higher id.
    assert_eq!(
        h.leave(300, 9),
        sw(Some(9), 3, false, SwitchReason::PrimaryLost)
    );
    // Equal priority and healthy_since: the lowest id wins.
    assert_eq!(
        h.leave(400, 3),
        sw(Some(3), 1, false, SwitchReason::PrimaryLost)
    );
}

#[test]
fn losses_outside_the_window_do_not_count() {
    let mut h = H::new();
    h.up(0, 1, 5);
    for t in [1_000u64, 40_000, 70_000] {
        h.health(t, 1, false);
        h.health(t + 10, 1, true);
    }
    // Losses at 1 000 and 40 000 and 70 000: the first left the window.
    assert!(!h.state(1).in_flap_penalty);
    assert_eq!(h.state(1).losses_in_window, 2);
    h.health(80_000, 1, false);
    assert!(h.state(1).in_flap_penalty);
}

#[test]
fn leaving_and_draining_are_not_losses() {
    let mut h = H::new();
    h.up(0, 1, 5);
    h.health(1, 1, false);
    h.health(2, 1, true);
    h.health(3, 1, false);
    h.health(4, 1, true);
    h.drain(5, 1);
    h.health(6, 1, false); // draining: not eligible, not a loss
    let s = h.state(1);
    assert_eq!(s.losses_in_window, 2);
    assert!(!s.in_flap_penalty);
}

#[test]
fn flap_count_zero_turns_damping_off() {
    let params = ElectionParams {
        flap_count: 0,
        ..ElectionParams::default()
    };
    let mut h = H::with(params);
    h.up(0, 1, 5);
    for t in 1..20u64 {
        h.health(t * 10, 1, false);
        h.health(t * 10 + 5, 1, true);
    }
    assert!(!h.state(1).in_flap_penalty);
    assert_eq!(h.primary(), Some(fid(1)));
}

#[test]
fn zero_flap_hold_ends_penalty_when_healthy() {
    let params = ElectionParams {
        flap_count: 1,
        flap_hold: Duration::ZERO,
        ..ElectionParams::default()
    };
    let mut h = H::with(params);
    h.up(0, 1, 5);
    h.health(10, 1, false);
    assert!(h.state(1).in_flap_penalty);
    assert_eq!(
        h.health(20, 1, true),
        sw(None, 1, false, SwitchReason::First)
    );
    assert!(h.state(1).eligible);
}
