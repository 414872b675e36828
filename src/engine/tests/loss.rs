//! Loss of signal at the source level (issue 15): a silent primary fails
//! over within its learned loss window, a shorter hiccup moves nothing, a
//! primary back within the failback hold counts as a false switch and
//! widens its own window, and every switch says why.

use super::*;

fn switches_by_cause(h: &H, reason: &str, planned: &str, cause: &str) -> u64 {
    h.metrics
        .switches
        .with_label_values(&[reason, planned, cause])
        .get()
}

#[test]
fn a_silent_primary_fails_over_within_its_learned_window() {
    let (mut h, mut p) = two_feeds();
    h.run_to(3000);
    let a = h.feed_view(A).expect("A");
    assert_eq!(
        a.loss_window_ms,
        Some(150),
        "a steady 30 fps feed gets the floor"
    );
    h.feed_mut(A).sending = false;
    let last_a = h.feed(A).last_sent_ms.expect("A sent");
    drain(&mut p);
    h.run_to(last_a + 149);
    assert_eq!(h.primary(), Some(A), "still inside its window");
    h.run_until(30, |h| h.primary() == Some(B));
    let switched = h.now_ms;
    assert!(
        (last_a + 150..=last_a + 160).contains(&switched),
        "failover at {switched}, A's last media at {last_a}: within the window plus one tick"
    );
    let sw = h.view().last_switch.expect("switch");
    assert_eq!(sw.reason, "primary_lost");
    assert!(!sw.planned);
    let silent: u64 = sw
        .detail
        .strip_prefix("lost: silent ")
        .and_then(|r| r.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("detail {:?}", sw.detail));
    assert!((150..=160).contains(&silent), "{}", sw.detail);
    assert_eq!(switches_by_cause(&h, "primary_lost", "false", "silent"), 1);
    let cut = drain(&mut p);
    assert_eq!(&cut[..3], &header(B)[..]);
    assert_eq!(h.feed_view(A).expect("A").state, "unhealthy");
}

#[test]
fn during_warmup_only_feed_timeout_applies() {
    let (mut h, _p) = two_feeds();
    // A's first frame at 0: warm-up until 2000.
    h.run_to(1_200);
    assert_eq!(h.feed_view(A).expect("A").loss_window_ms, Some(1500));
    h.feed_mut(A).sending = false;
    // Silent past the floor, inside the warm-up: still on air.
    h.run_to(1_900);
    assert_eq!(h.primary(), Some(A));
    // Once warm, its learned window applies to the silence in progress.
    h.run_until(200, |h| h.primary() == Some(B));
    assert!(h.now_ms >= 2_000 && h.now_ms <= 2_010, "at {}", h.now_ms);
    let detail = h.view().last_switch.expect("switch").detail;
    assert!(detail.starts_with("lost: silent"), "{detail}");
}

#[test]
fn a_hiccup_shorter_than_the_window_does_not_switch() {
    let (mut h, _p) = two_feeds();
    h.run_to(3000);
    let switches = h.view().switches;
    for _ in 0..5 {
        h.feed_mut(A).sending = false;
        h.run_to(h.now_ms + 120);
        h.feed_mut(A).sending = true;
        h.run_to(h.now_ms + 500);
    }
    assert_eq!(h.primary(), Some(A));
    assert_eq!(h.view().switches, switches, "no switch");
    assert_eq!(h.metrics.false_switches.get(), 0);
    // The hiccups stretched A's window: 3 × 120 ms.
    let w = h.feed_view(A).expect("A").loss_window_ms.expect("window");
    assert!(w >= 360, "window {w} ms");
}

#[test]
fn a_primary_back_within_the_hold_is_a_false_switch_and_does_not_ping_pong() {
    let (mut h, _p) = two_feeds();
    h.run_to(3000);
    h.feed_mut(A).sending = false;
    h.run_until(200, |h| h.primary() == Some(B));
    assert_eq!(h.metrics.false_switches.get(), 0);
    h.run_to(h.now_ms + 100);
    h.feed_mut(A).sending = true;
    h.run_to(h.now_ms + 20);
    assert_eq!(
        h.metrics.false_switches.get(),
        1,
        "back 100 ms after the switch"
    );
    assert_eq!(h.primary(), Some(B), "the failback hold still applies");
    // A takes the air back after its keyframe and the failback hold.
    h.run_until(6_000, |h| h.primary() == Some(A));
    let sw = h.view().last_switch.expect("switch");
    assert_eq!(sw.detail, "failback");
    assert_eq!(switches_by_cause(&h, "better", "true", "failback"), 1);
    // Its window backed off: 3 × the window it overran.
    let w = h.feed_view(A).expect("A").loss_window_ms.expect("window");
    assert!(w >= 450, "window {w} ms");
    // The same stall again moves nothing.
    let switches = h.view().switches;
    h.feed_mut(A).sending = false;
    h.run_to(h.now_ms + 300);
    h.feed_mut(A).sending = true;
    h.run_to(h.now_ms + 200);
    assert_eq!(h.primary(), Some(A));
    assert_eq!(h.view().switches, switches);
    assert_eq!(h.metrics.false_switches.get(), 1);
}

#[test]
fn a_primary_back_after_the_hold_is_not_a_false_switch() {
    let (mut h, _p) = two_feeds();
    h.run_to(3000);
    h.feed_mut(A).sending = false;
    h.run_until(200, |h| h.primary() == Some(B));
    // failback_hold is 1 s in these settings.
    h.run_to(h.now_ms + 1_100);
    h.feed_mut(A).sending = true;
    h.run_to(h.now_ms + 100);
    assert_eq!(h.metrics.false_switches.get(), 0);
}

#[test]
fn every_switch_says_why() {
    let (mut h, _p) = two_feeds();
    assert_eq!(h.view().last_switch.expect("first").detail, "first");
    assert_eq!(switches_by_cause(&h, "first", "false", "first"), 1);
    h.run_to(1000);
    h.leave(A);
    let sw = h.view().last_switch.expect("switch");
    assert_eq!(sw.detail, "lost: closed");
    assert_eq!(switches_by_cause(&h, "primary_lost", "false", "closed"), 1);
    // A back (a new connection), failback, then a reprioritize moves it away.
    h.join(Spec {
        gop: 15,
        token: tok(A),
        ..spec(A2, 100)
    });
    h.run_until(4_000, |h| h.primary() == Some(A2));
    assert_eq!(h.view().last_switch.expect("switch").detail, "failback");
    h.reprioritize(tok(A), Some(10), true);
    h.run_until(4_000, |h| h.primary() == Some(B));
    let sw = h.view().last_switch.expect("switch");
    assert_eq!(sw.reason, "draining");
    assert_eq!(sw.detail, "reprioritized");
    // The only feed goes silent: with nothing to switch to, only
    // feed_timeout applies, and the vacancy says so.
    h.run_to(h.now_ms + 3_000);
    h.feed_mut(B).sending = false;
    let last_b = h.feed(B).last_sent_ms.expect("B sent");
    h.run_until(2_000, |h| h.primary().is_none());
    assert!(h.now_ms >= last_b + 1_500, "vacant at {}", h.now_ms);
    let sw = h.view().last_switch.expect("vacate");
    assert_eq!(sw.reason, "vacant");
    assert_eq!(sw.detail, "lost: timeout");
}

#[test]
fn every_feed_silent_at_once_waits_for_feed_timeout() {
    // The gateway (or its host) stalled: no feed's media arrives.
    let (mut h, _p) = two_feeds();
    h.run_to(3000);
    h.feed_mut(A).sending = false;
    h.feed_mut(B).sending = false;
    let last = h.feed(A).last_sent_ms.expect("A sent");
    h.run_to(last + 1_000);
    assert_eq!(h.primary(), Some(A), "nothing switches on a learned window");
    assert_eq!(h.view().switches, 1);
    // Media again before feed_timeout: nothing happened at all.
    h.feed_mut(A).sending = true;
    h.feed_mut(B).sending = true;
    h.run_to(h.now_ms + 500);
    assert_eq!(h.primary(), Some(A));
    assert_eq!(h.view().switches, 1);
    assert_eq!(h.feed_view(B).expect("B").state, "standby");
}

#[test]
fn a_stall_longer_than_a_backups_window_switches_nothing() {
    let (mut h, _p) = two_feeds();
    // B (warm from 2500) hiccups for 300 ms: declared lost, its window
    // backs off to 3 × 150 ms; healthy again at its keyframe at 4500.
    h.run_to(2_600);
    h.feed_mut(B).sending = false;
    h.run_to(2_900);
    h.feed_mut(B).sending = true;
    h.run_to(5_000);
    assert_eq!(h.feed_view(B).expect("B").state, "standby");
    let wb = h.feed_view(B).expect("B").loss_window_ms.expect("window");
    assert!(wb >= 450, "B's window {wb} ms");
    assert_eq!(h.primary(), Some(A));
    let switches = h.view().switches;
    // Then everything stalls for 400 ms: past A's window, inside B's. B is
    // as silent as A: not alive, so nothing switches.
    h.feed_mut(A).sending = false;
    h.feed_mut(B).sending = false;
    h.run_to(5_400);
    h.feed_mut(A).sending = true;
    h.feed_mut(B).sending = true;
    h.run_to(5_600);
    assert_eq!(h.primary(), Some(A));
    assert_eq!(h.view().switches, switches);
    assert_eq!(h.feed_view(B).expect("B").state, "standby");
}

#[test]
fn a_silent_backup_loses_eligibility_while_the_primary_flows() {
    let (mut h, _p) = two_feeds();
    h.run_to(3000);
    h.feed_mut(B).sending = false;
    h.run_to(h.now_ms + 200);
    assert_eq!(h.feed_view(B).expect("B").state, "unhealthy");
    assert_eq!(h.primary(), Some(A));
    // Then the primary dies too: nothing alive to switch to, so it stays
    // on air (frozen) until feed_timeout.
    h.feed_mut(A).sending = false;
    let last_a = h.feed(A).last_sent_ms.expect("A sent");
    h.run_to(last_a + 1_000);
    assert_eq!(h.primary(), Some(A));
    h.run_until(600, |h| h.primary().is_none());
}
