//! Loss of signal: one feed's learned *loss window* (issue 15).
//!
//! A live encoder sends media continuously, so a feed that has been silent
//! for much longer than it ever is when healthy has been lost, well before
//! the fixed `election.feed_timeout_ms`. [`LossEstimator`] learns a feed's
//! inter-arrival times of media frames the way TCP learns its
//! retransmission timeout (RFC 6298: a smoothed mean `srtt` and a mean
//! deviation `rttvar`) and derives the window
//!
//! ```text
//! window = min(feed_timeout, max(floor, srtt + k·rttvar, gap_factor · largest healthy gap))
//! ```
//!
//! where the largest healthy gap is taken over the last `memory`. A jittery
//! or bursty feed (SRT over a bad link, an encoder that sends in bursts)
//! stretches its own window instead of switching falsely; a steady one fails
//! over in a few frame intervals. A gap longer than the window (the feed was
//! declared lost, then came back) is remembered as a gap as long as the
//! window itself, so the next window is at least `gap_factor` times longer:
//! a feed that hiccupped once is trusted less for `memory` (like TCP's
//! backoff).
//!
//! During `warmup` after its first frame a feed has not shown its cadence
//! yet: only `feed_timeout` applies.
//!
//! **Pure.** No clock read: `now` comes in as an argument, so the tests run
//! in virtual time. Memory is bounded ([`MAX_REMEMBERED_GAPS`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// At most this many gaps are remembered for the running maximum (a
/// monotone queue: only gaps larger than every later one are kept, so in
/// practice far fewer).
pub const MAX_REMEMBERED_GAPS: usize = 4096;

/// The loss window's parameters (`[election]` `loss_*` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossParams {
    /// The window is never shorter than this.
    pub floor: Duration,
    /// Deviations above the mean inter-arrival time.
    pub k: u32,
    /// The window is never shorter than this many times the largest
    /// healthy gap seen within `memory`.
    pub gap_factor: u32,
    pub memory: Duration,
    /// After its first frame, a feed is judged by `timeout` alone this long.
    pub warmup: Duration,
    /// The upper bound: `election.feed_timeout_ms`.
    pub timeout: Duration,
}

impl Default for LossParams {
    fn default() -> Self {
        Self {
            floor: Duration::from_millis(150),
            k: 4,
            gap_factor: 3,
            memory: Duration::from_secs(30),
            warmup: Duration::from_secs(2),
            timeout: Duration::from_millis(1500),
        }
    }
}

/// Why a feed was declared lost by its silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Silence {
    /// How long it has been silent.
    pub silent: Duration,
    /// The window it exceeded.
    pub window: Duration,
    /// Silent for `feed_timeout` (in warm-up, a cadence that stretched the
    /// window that far, or a silence that outlasted its window unjudged).
    pub at_timeout: bool,
}

/// One feed's inter-arrival statistics and its loss window.
#[derive(Debug, Clone)]
pub struct LossEstimator {
    params: LossParams,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Smoothed inter-arrival time and its mean deviation, in ms.
    srtt: Option<f64>,
    rttvar: f64,
    /// (when it ended, gap in ms), gaps strictly decreasing from the front.
    gaps: VecDeque<(Instant, f64)>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl LossEstimator {
    pub fn new(params: LossParams) -> Self {
        Self {
            params,
            first: None,
            last: None,
            srtt: None,
            rttvar: 0.0,
            gaps: VecDeque::new(),
        }
    }

    /// A media frame arrived at `now` (`now` never goes backwards).
    pub fn observe(&mut self, now: Instant) {
        let Some(last) = self.last else {
            self.first = Some(now);
            self.last = Some(now);
            return;
        };
        let window = ms(self.window(last));
        let gap = ms(now.saturating_duration_since(last));
        // A gap past the window was a loss, not the feed's cadence: it
        // counts as the window itself (backoff), never more.
        let sample = gap.min(window);
        match self.srtt {
            None => {
                self.srtt = Some(sample);
                self.rttvar = sample / 2.0;
            }
            Some(srtt) => {
                let err = sample - srtt;
                self.srtt = Some(srtt + err / 8.0);
                self.rttvar += (err.abs() - self.rttvar) / 4.0;
            }
        }
        let memory = self.params.memory;
        while self
            .gaps
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > memory)
        {
            self.gaps.pop_front();
        }
        while self.gaps.back().is_some_and(|&(_, g)| g <= sample) {
            self.gaps.pop_back();
        }
        if self.gaps.len() == MAX_REMEMBERED_GAPS {
            self.gaps.pop_front();
        }
        self.gaps.push_back((now, sample));
        self.last = Some(now);
    }

    /// The largest gap that ended within `memory` before `now`.
    fn largest_gap(&self, now: Instant) -> f64 {
        self.gaps
            .iter()
            .find(|(at, _)| now.saturating_duration_since(*at) <= self.params.memory)
            .map_or(0.0, |&(_, g)| g)
    }

    /// The loss window at `now`.
    pub fn window(&self, now: Instant) -> Duration {
        let p = &self.params;
        let warm = self
            .first
            .is_some_and(|f| now.saturating_duration_since(f) >= p.warmup);
        let Some(srtt) = self.srtt.filter(|_| warm) else {
            return p.timeout;
        };
        let learned = (srtt + f64::from(p.k) * self.rttvar)
            .max(f64::from(p.gap_factor) * self.largest_gap(now));
        if learned >= ms(p.timeout) {
            return p.timeout;
        }
        Duration::from_secs_f64(learned.max(0.0) / 1000.0)
            .max(p.floor)
            .min(p.timeout)
    }

    /// How long the feed has been silent (`None` before its first frame).
    pub fn silent_for(&self, now: Instant) -> Option<Duration> {
        self.last.map(|l| now.saturating_duration_since(l))
    }

    /// `Some` when the feed has been silent for its whole window.
    pub fn lost(&self, now: Instant) -> Option<Silence> {
        let silent = self.silent_for(now)?;
        if silent < self.params.floor.min(self.params.timeout) {
            // The window is never shorter: skip computing it (every tick).
            return None;
        }
        let window = self.window(now);
        (silent >= window).then_some(Silence {
            silent,
            window,
            at_timeout: window >= self.params.timeout || silent >= self.params.timeout,
        })
    }

    /// Forget the cadence (the feed starts over, as after a reconnect).
    pub fn reset(&mut self) {
        *self = Self::new(self.params);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params() -> LossParams {
        LossParams::default()
    }

    /// Feed frames at the offsets (ms from `t0`); returns the estimator.
    fn fed(t0: Instant, offsets: impl IntoIterator<Item = u64>) -> LossEstimator {
        let mut e = LossEstimator::new(params());
        for o in offsets {
            e.observe(t0 + Duration::from_millis(o));
        }
        e
    }

    #[test]
    fn only_feed_timeout_before_and_during_warmup() {
        let t0 = Instant::now();
        let e = LossEstimator::new(params());
        assert_eq!(e.window(t0), params().timeout);
        assert_eq!(e.lost(t0 + Duration::from_secs(60)), None, "no frame yet");
        // 0.5 s of 30 fps, then silence: judged by feed_timeout alone while
        // the warm-up (2 s from the first frame) runs.
        let e = fed(t0, (0..15).map(|i| i * 100 / 3));
        let last = t0 + Duration::from_millis(466);
        assert_eq!(e.window(last), params().timeout);
        assert_eq!(e.lost(last + Duration::from_millis(1_400)), None);
        let lost = e.lost(last + Duration::from_millis(1_500)).expect("lost");
        assert!(lost.at_timeout);
    }

    #[test]
    fn a_steady_30fps_feed_gets_the_floor() {
        let t0 = Instant::now();
        let e = fed(t0, (0..=90).map(|i| i * 100 / 3));
        let now = t0 + Duration::from_millis(3_000);
        assert_eq!(e.window(now), params().floor);
        assert_eq!(e.lost(now + Duration::from_millis(149)), None);
        let l = e.lost(now + Duration::from_millis(150)).expect("lost");
        assert_eq!(l.window, params().floor);
        assert!(!l.at_timeout);
    }

    #[test]
    fn bursts_stretch_the_window_and_memory_forgets_them() {
        let t0 = Instant::now();
        // 30 fps with one 120 ms stall every second.
        let mut offsets = Vec::new();
        let mut t = 0;
        for i in 0..150u64 {
            t += if i % 30 == 29 { 120 } else { 33 };
            offsets.push(t);
        }
        let e = fed(t0, offsets.iter().copied());
        let now = t0 + Duration::from_millis(t);
        let w = e.window(now);
        assert!(w >= Duration::from_millis(360), "3 × 120 ms: {w:?}");
        assert_eq!(e.lost(now + Duration::from_millis(300)), None);
        // Steady for longer than the memory: back to the floor-ish window.
        let mut e = e;
        for i in 1..=(35_000 / 33) {
            e.observe(now + Duration::from_millis(i * 33));
        }
        let later = now + Duration::from_millis(35_000 / 33 * 33);
        assert!(
            e.window(later) < Duration::from_millis(200),
            "{:?}",
            e.window(later)
        );
    }

    #[test]
    fn a_loss_backs_the_window_off() {
        let t0 = Instant::now();
        let mut e = fed(t0, (0..=90).map(|i| i * 100 / 3));
        let now = t0 + Duration::from_millis(3_000);
        assert_eq!(e.window(now), Duration::from_millis(150));
        // Silent 400 ms (lost), then back.
        e.observe(now + Duration::from_millis(400));
        let w = e.window(now + Duration::from_millis(400));
        assert!((ms(w) - 450.0).abs() < 0.01, "3 × the 150 ms window: {w:?}");
        e.reset();
        assert_eq!(e.window(now), params().timeout);
    }

    #[test]
    fn the_window_never_exceeds_feed_timeout() {
        let t0 = Instant::now();
        // One frame a second (a slideshow): 3 × 1000 ms is capped.
        let e = fed(t0, (0..10).map(|i| i * 1_000));
        let now = t0 + Duration::from_secs(9);
        assert_eq!(e.window(now), params().timeout);
        assert!(e.lost(now + params().timeout).unwrap().at_timeout);
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        // Strictly decreasing gaps would all be kept by the monotone queue.
        let mut e = LossEstimator::new(LossParams {
            memory: Duration::from_secs(3_600),
            ..params()
        });
        let mut t = Duration::ZERO;
        for i in 0..(MAX_REMEMBERED_GAPS as u64 + 100) {
            t += Duration::from_micros(100_000 - i * 10);
            e.observe(t0 + t);
        }
        assert!(e.gaps.len() <= MAX_REMEMBERED_GAPS);
    }

    /// Arrival offsets (ms) of a jittery feed: base interval plus jitter.
    fn jittery() -> impl Strategy<Value = Vec<u64>> {
        (
            10u64..=100,
            0u64..=60,
            prop::collection::vec(0u64..=1_000, 100..160),
        )
            .prop_map(|(base, jitter, rolls)| {
                let mut t = 0;
                rolls
                    .into_iter()
                    .map(|r| {
                        t += base + r * jitter / 1_000;
                        t
                    })
                    .collect()
            })
    }

    proptest! {
        /// A feed whose gaps never exceed what it showed in warm-up and
        /// within the memory never times out: every gap stays below the
        /// window in force when it happens.
        #[test]
        fn jittery_feed_never_times_out_below_its_window(offsets in jittery()) {
            let t0 = Instant::now();
            let p = params();
            let mut e = LossEstimator::new(p);
            let mut prev: Option<u64> = None;
            let mut largest = 0u64;
            for &o in &offsets {
                let now = t0 + Duration::from_millis(o);
                if let Some(pr) = prev {
                    let gap = o - pr;
                    // A gap no larger than one already seen (within the
                    // memory: the whole run is shorter than it) is healthy.
                    if gap <= largest {
                        let just_before = now - Duration::from_millis(1);
                        prop_assert!(e.lost(just_before).is_none(),
                            "gap {gap} ms (largest before {largest}) declared lost, window {:?}",
                            e.window(just_before));
                    }
                    largest = largest.max(gap);
                }
                e.observe(now);
                prev = Some(o);
            }
        }

        /// A feed that goes silent is always declared lost by its window,
        /// which is never above feed_timeout, and never before the floor
        /// (after warm-up) or before feed_timeout (during it).
        #[test]
        fn silent_feed_is_always_lost_by_its_bound(offsets in jittery(), extra in 0u64..3_000) {
            let t0 = Instant::now();
            let p = params();
            let e = fed(t0, offsets.iter().copied());
            let last = t0 + Duration::from_millis(*offsets.last().unwrap());
            let w = e.window(last);
            prop_assert!(w <= p.timeout);
            let warm = offsets.last().unwrap() - offsets[0] >= 2_000;
            let in_bounds = if warm { w >= p.floor } else { w == p.timeout };
            prop_assert!(in_bounds, "window {:?}, warm {}", w, warm);
            prop_assert!(e.lost(last + p.timeout + Duration::from_millis(extra)).is_some());
            prop_assert!(e.lost(last + w).is_some());
            if warm {
                prop_assert!(e.lost(last + w - Duration::from_millis(1)).is_none());
            }
        }
    }
}
