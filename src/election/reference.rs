//! A naive reference model of the election and a property test of
//! [`SourceElection`] against it.
//!
//! The model keeps only raw history (every health and drain event of every
//! feed, times as plain milliseconds) and the primary; at every step it
//! replays each feed's whole history from scratch to know its state. The
//! driver advances virtual time one millisecond at a time, so a deadline the
//! real core forgets to report through `poll_timeout` shows up as a
//! difference.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use super::sim::check_invariants;
use super::tests::fid;
use super::*;

#[derive(Debug, Clone, Copy)]
struct RParams {
    hold: u64,
    count: u32,
    window: u64,
    flap_hold: u64,
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Health(bool),
    Drain,
}

#[derive(Debug)]
struct RFeed {
    id: FeedId,
    priority: Priority,
    events: Vec<(u64, Ev)>,
}

/// A feed's state, recomputed from its history.
#[derive(Debug, Default)]
struct RStatus {
    healthy: bool,
    draining: bool,
    penalized: bool,
    healthy_since: Option<u64>,
    eligible_since: Option<u64>,
    losses: Vec<u64>,
}

impl RStatus {
    fn available(&self) -> bool {
        self.healthy && !self.draining
    }

    fn eligible(&self) -> bool {
        self.available() && !self.penalized
    }

    /// A penalty ends once the feed has been healthy (and not draining) for
    /// `flap_hold`; it counts as eligible from that instant.
    fn end_penalty(&mut self, p: &RParams, t: u64) {
        if self.penalized && self.available() {
            let end = self.healthy_since.unwrap() + p.flap_hold;
            if end <= t {
                self.penalized = false;
                self.eligible_since = Some(end);
            }
        }
    }
}

impl RFeed {
    fn status(&self, p: &RParams, now: u64) -> RStatus {
        let mut s = RStatus::default();
        for &(t, ev) in self.events.iter().filter(|(t, _)| *t <= now) {
            s.end_penalty(p, t);
            match ev {
                Ev::Health(true) if !s.healthy => {
                    s.healthy = true;
                    s.healthy_since = Some(t);
                    if !s.draining && !s.penalized {
                        s.eligible_since = Some(t);
                    }
                }
                Ev::Health(false) if s.healthy => {
                    let was_eligible = !s.draining && !s.penalized;
                    s.healthy = false;
                    s.healthy_since = None;
                    s.eligible_since = None;
                    if was_eligible {
                        s.losses.push(t);
                        let recent = s.losses.iter().filter(|&&l| l + p.window > t).count();
                        if p.count > 0 && recent >= p.count as usize {
                            s.penalized = true;
                        }
                    }
                }
                Ev::Health(_) => {}
                Ev::Drain => {
                    s.draining = true;
                    s.eligible_since = None;
                }
            }
        }
        s.end_penalty(p, now);
        s
    }
}

struct Snapshot {
    id: FeedId,
    priority: Priority,
    s: RStatus,
}

/// Is `a` strictly better than `b` in the election order?
fn better(a: &Snapshot, b: &Snapshot) -> bool {
    let tier = |x: &Snapshot| {
        if x.s.eligible() {
            0
        } else if x.s.available() {
            1
        } else {
            2
        }
    };
    if tier(a) != tier(b) {
        return tier(a) < tier(b);
    }
    if a.priority != b.priority {
        return a.priority > b.priority;
    }
    let since = |x: &Snapshot| match tier(x) {
        0 => x.s.eligible_since,
        1 => x.s.healthy_since,
        _ => None,
    };
    if since(a) != since(b) {
        return since(a) < since(b);
    }
    a.id < b.id
}

struct Reference {
    p: RParams,
    feeds: Vec<RFeed>,
    primary: Option<FeedId>,
}

impl Reference {
    fn input(&mut self, now: u64, input: &Input) -> Vec<Decision> {
        let find = |feeds: &mut Vec<RFeed>, id: FeedId| feeds.iter_mut().position(|f| f.id == id);
        match *input {
            Input::Joined { feed, priority } => match find(&mut self.feeds, feed) {
                Some(i) => self.feeds[i].priority = priority,
                None => self.feeds.push(RFeed {
                    id: feed,
                    priority,
                    events: Vec::new(),
                }),
            },
            Input::Left { feed } => self.feeds.retain(|f| f.id != feed),
            Input::Health { feed, healthy } => {
                if let Some(i) = find(&mut self.feeds, feed) {
                    self.feeds[i].events.push((now, Ev::Health(healthy)));
                }
            }
            Input::PriorityChanged { feed, priority } => {
                if let Some(i) = find(&mut self.feeds, feed) {
                    self.feeds[i].priority = priority;
                }
            }
            Input::Drain { feed } => {
                if let Some(i) = find(&mut self.feeds, feed) {
                    self.feeds[i].events.push((now, Ev::Drain));
                }
            }
            // Remote feeds are not generated by the property tests; their
            // ranking is covered by the unit tests of `Input::Remote`.
            Input::Remote { .. } => unreachable!("not generated"),
        }
        self.step(now)
    }

    fn snapshot(&self, now: u64) -> Vec<Snapshot> {
        let mut v: Vec<Snapshot> = self
            .feeds
            .iter()
            .map(|f| Snapshot {
                id: f.id,
                priority: f.priority,
                s: f.status(&self.p, now),
            })
            .collect();
        // Insertion sort by `better`: obviously right, and n is tiny.
        for i in 1..v.len() {
            let mut j = i;
            while j > 0 && better(&v[j], &v[j - 1]) {
                v.swap(j, j - 1);
                j -= 1;
            }
        }
        v
    }

    /// Who is on the air at `now`, from the state rebuilt from scratch.
    fn step(&mut self, now: u64) -> Vec<Decision> {
        let snap = self.snapshot(now);
        let best_other = |except: Option<FeedId>| {
            snap.iter()
                .find(|x| x.s.available() && Some(x.id) != except)
                .map(|x| x.id)
        };
        let mut out = Vec::new();
        match self.primary {
            None => {
                if let Some(to) = best_other(None) {
                    out.push(Decision::Switch {
                        from: None,
                        to,
                        planned: false,
                        reason: SwitchReason::First,
                    });
                }
            }
            Some(p) => {
                let ps = snap.iter().find(|x| x.id == p);
                let lost = match ps {
                    None => Some((false, SwitchReason::PrimaryLost)),
                    Some(x) if !x.s.healthy => Some((false, SwitchReason::PrimaryLost)),
                    Some(x) if x.s.draining => Some((true, SwitchReason::Draining)),
                    Some(_) => None,
                };
                if let Some((planned, reason)) = lost {
                    out.push(match best_other(Some(p)) {
                        Some(to) => Decision::Switch {
                            from: Some(p),
                            to,
                            planned,
                            reason,
                        },
                        None => Decision::Vacate { from: p },
                    });
                } else {
                    let ps = ps.unwrap();
                    let due = snap.iter().find(|c| {
                        c.id != p
                            && c.s.eligible()
                            && (!ps.s.eligible() || better(c, ps))
                            && c.s.eligible_since.unwrap() + self.p.hold <= now
                    });
                    if let Some(c) = due {
                        out.push(Decision::Switch {
                            from: Some(p),
                            to: c.id,
                            planned: true,
                            reason: SwitchReason::Better,
                        });
                    }
                }
            }
        }
        for d in &out {
            self.primary = match d {
                Decision::Switch { to, .. } => Some(*to),
                Decision::Vacate { .. } => None,
            };
        }
        out
    }

    /// What `SourceElection::feeds` must answer at `now` (times in ms).
    fn views(&self, now: u64) -> Vec<View> {
        self.snapshot(now)
            .into_iter()
            .map(|x| View {
                feed: x.id,
                priority: x.priority,
                healthy: x.s.healthy,
                draining: x.s.draining,
                eligible: x.s.eligible(),
                in_flap_penalty: x.s.penalized,
                eligible_since: x.s.eligible_since,
                losses_in_window: x
                    .s
                    .losses
                    .iter()
                    .filter(|&&l| l <= now && l + self.p.window > now)
                    .count() as u32,
            })
            .collect()
    }
}

#[derive(Debug, PartialEq, Eq)]
struct View {
    feed: FeedId,
    priority: Priority,
    healthy: bool,
    draining: bool,
    eligible: bool,
    in_flap_penalty: bool,
    eligible_since: Option<u64>,
    losses_in_window: u32,
}

fn sut_views(el: &SourceElection, base: Instant) -> Vec<View> {
    el.feeds()
        .into_iter()
        .map(|s| View {
            feed: s.feed,
            priority: s.priority,
            healthy: s.healthy,
            draining: s.draining,
            eligible: s.eligible,
            in_flap_penalty: s.in_flap_penalty,
            eligible_since: s
                .eligible_since
                .map(|t| t.duration_since(base).as_millis() as u64),
            losses_in_window: s.losses_in_window,
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    Join(u128, Option<i32>),
    Leave(u128),
    Health(u128, bool),
    Prio(u128, Option<i32>),
    Drain(u128),
}

impl Op {
    fn input(&self) -> Input {
        match *self {
            Op::Join(n, p) => Input::Joined {
                feed: fid(n),
                priority: Priority(p),
            },
            Op::Leave(n) => Input::Left { feed: fid(n) },
            Op::Health(n, healthy) => Input::Health {
                feed: fid(n),
                healthy,
            },
            Op::Prio(n, p) => Input::PriorityChanged {
                feed: fid(n),
                priority: Priority(p),
            },
            Op::Drain(n) => Input::Drain { feed: fid(n) },
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let feed = 1..=5u128;
    // Few distinct priorities, so ties are common.
    let prio = prop_oneof![Just(None), (0..3i32).prop_map(Some)];
    prop_oneof![
        2 => (feed.clone(), prio.clone()).prop_map(|(n, p)| Op::Join(n, p)),
        1 => feed.clone().prop_map(Op::Leave),
        8 => (feed.clone(), any::<bool>()).prop_map(|(n, h)| Op::Health(n, h)),
        1 => (feed.clone(), prio).prop_map(|(n, p)| Op::Prio(n, p)),
        1 => feed.prop_map(Op::Drain),
    ]
}

fn params() -> impl Strategy<Value = RParams> {
    (0..25u64, 0..5u32, 0..150u64, 0..60u64).prop_map(|(hold, count, window, flap_hold)| RParams {
        hold,
        count,
        window,
        flap_hold,
    })
}

fn run(p: RParams, steps: Vec<(u64, Op)>) -> Result<(), TestCaseError> {
    let ms = Duration::from_millis;
    let params = ElectionParams {
        failback_hold: ms(p.hold),
        flap_count: p.count,
        flap_window: ms(p.window),
        flap_hold: ms(p.flap_hold),
    };
    let base = Instant::now();
    let mut sut = SourceElection::new(params.clone());
    let mut model = Reference {
        p,
        feeds: Vec::new(),
        primary: None,
    };
    let mut t = 0u64;
    let check = |sut: &SourceElection,
                 model: &Reference,
                 t: u64,
                 prev: Option<FeedId>,
                 got: &[Decision]|
     -> Result<(), TestCaseError> {
        let now = base + ms(t);
        if let Err(e) = check_invariants(sut, &params, now, prev, got) {
            return Err(TestCaseError::fail(format!("at {t} ms: {e}")));
        }
        prop_assert_eq!(sut_views(sut, base), model.views(t), "views at {} ms", t);
        Ok(())
    };
    for (dt, op) in steps {
        for _ in 0..dt {
            t += 1;
            let prev = sut.primary();
            let now = base + ms(t);
            let due = sut.poll_timeout().is_some_and(|x| x <= now);
            let got = if due {
                sut.handle_timeout(now)
            } else {
                Vec::new()
            };
            let want = model.step(t);
            prop_assert_eq!(&got, &want, "timeout at {} ms", t);
            prop_assert_eq!(sut.primary(), model.primary);
            if due {
                check(&sut, &model, t, prev, &got)?;
            }
        }
        let input = op.input();
        let prev = sut.primary();
        let got = sut.handle_input(base + ms(t), input.clone());
        let want = model.input(t, &input);
        prop_assert_eq!(&got, &want, "{:?} at {} ms", input, t);
        prop_assert_eq!(sut.primary(), model.primary);
        check(&sut, &model, t, prev, &got)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // At least 512; PROPTEST_CASES may ask for more.
        cases: ProptestConfig::default().cases.max(512),
        // Keep shrunk failures beside the code, to be replayed first.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "src/election/proptest-regressions.txt"
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn matches_naive_reference(p in params(), steps in prop::collection::vec((0..30u64, op()), 1..80)) {
        run(p, steps)?;
    }
}

#[test]
fn reference_sanity() {
    // The model itself on a hand-checked scenario: failover, then failback.
    let mut m = Reference {
        p: RParams {
            hold: 10,
            count: 3,
            window: 100,
            flap_hold: 50,
        },
        feeds: Vec::new(),
        primary: None,
    };
    let switch = |from: Option<u128>, to: u128, planned: bool, reason: SwitchReason| {
        vec![Decision::Switch {
            from: from.map(fid),
            to: fid(to),
            planned,
            reason,
        }]
    };
    assert!(m.input(0, &Op::Join(1, Some(2)).input()).is_empty());
    assert_eq!(
        m.input(0, &Op::Health(1, true).input()),
        switch(None, 1, false, SwitchReason::First)
    );
    m.input(0, &Op::Join(2, Some(1)).input());
    assert!(m.input(0, &Op::Health(2, true).input()).is_empty());
    assert_eq!(
        m.input(5, &Op::Health(1, false).input()),
        switch(Some(1), 2, false, SwitchReason::PrimaryLost)
    );
    assert!(m.input(10, &Op::Health(1, true).input()).is_empty());
    assert!(m.step(19).is_empty());
    assert_eq!(m.step(20), switch(Some(2), 1, true, SwitchReason::Better));
    assert_eq!(
        m.input(30, &Op::Leave(1).input()),
        switch(Some(1), 2, false, SwitchReason::PrimaryLost)
    );
}
