//! [`SourceElection`]: the state machine of one source's election.
//!
//! Owns the per-feed facts and the primary; every public entry point first
//! brings time-driven bookkeeping up to `now` (penalties that ended, losses
//! that left the window), then applies its input, then re-evaluates the
//! primary. Feeds live in a `BTreeMap` so iteration, and so every decision,
//! is deterministic.

use std::cmp::Reverse;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::{Decision, ElectionParams, FeedState, Input, SwitchReason};
use crate::domain::{FeedId, Priority};

/// Upper bound of remembered losses per feed, so a huge configured
/// `flap_window` cannot grow memory without bound. Only `losses_in_window`
/// (a diagnostic) can be capped by it when `flap_count` is smaller.
const MAX_LOSSES: usize = 1024;

#[derive(Debug, Clone)]
struct Feed {
    priority: Priority,
    healthy: bool,
    draining: bool,
    in_penalty: bool,
    /// Start of the current continuously healthy stretch; `Some` iff healthy.
    healthy_since: Option<Instant>,
    /// When it last became eligible; `Some` iff eligible.
    eligible_since: Option<Instant>,
    /// Instants of losses, oldest first.
    losses: VecDeque<Instant>,
}

impl Feed {
    fn new(priority: Priority) -> Self {
        Self {
            priority,
            healthy: false,
            draining: false,
            in_penalty: false,
            healthy_since: None,
            eligible_since: None,
            losses: VecDeque::new(),
        }
    }

    fn available(&self) -> bool {
        self.healthy && !self.draining
    }

    fn eligible(&self) -> bool {
        self.available() && !self.in_penalty
    }

    /// When the running flap penalty ends if the feed stays healthy.
    fn penalty_ends(&self, flap_hold: Duration) -> Option<Instant> {
        if self.in_penalty && self.available() {
            self.healthy_since?.checked_add(flap_hold)
        } else {
            None
        }
    }

    fn losses_in_window(&self, window: Duration, now: Instant) -> usize {
        self.losses
            .iter()
            .filter(|&&t| in_window(t, window, now))
            .count()
    }
}

/// Is a loss at `t` inside the trailing window `(now - window, now]`?
fn in_window(t: Instant, window: Duration, now: Instant) -> bool {
    t <= now && t.checked_add(window).is_none_or(|end| end > now)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    Eligible,
    /// Available but in flap penalty: elected only when nothing is eligible.
    LastResort,
    Unavailable,
}

/// Position in the election order; smaller is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    tier: Tier,
    priority: Reverse<Priority>,
    since: Option<Instant>,
    feed: FeedId,
}

fn rank(id: FeedId, f: &Feed) -> Rank {
    let (tier, since) = if f.eligible() {
        (Tier::Eligible, f.eligible_since)
    } else if f.available() {
        (Tier::LastResort, f.healthy_since)
    } else {
        (Tier::Unavailable, None)
    };
    Rank {
        tier,
        priority: Reverse(f.priority),
        since,
        feed: id,
    }
}

/// Election of ONE source.
#[derive(Debug, Clone)]
pub struct SourceElection {
    params: ElectionParams,
    feeds: BTreeMap<FeedId, Feed>,
    primary: Option<FeedId>,
    /// The latest `now` seen (for `losses_in_window` in views).
    now: Option<Instant>,
}

impl SourceElection {
    pub fn new(params: ElectionParams) -> Self {
        Self {
            params,
            feeds: BTreeMap::new(),
            primary: None,
            now: None,
        }
    }

    pub fn params(&self) -> &ElectionParams {
        &self.params
    }

    /// Apply one event at `now`; the decisions to carry out, in order (at
    /// most one in practice).
    pub fn handle_input(&mut self, now: Instant, input: Input) -> Vec<Decision> {
        self.advance(now);
        match input {
            Input::Joined { feed, priority } => {
                self.feeds
                    .entry(feed)
                    .and_modify(|f| f.priority = priority)
                    .or_insert_with(|| Feed::new(priority));
            }
            Input::Left { feed } => {
                self.feeds.remove(&feed);
            }
            Input::Health { feed, healthy } => self.set_health(now, feed, healthy),
            Input::PriorityChanged { feed, priority } => {
                if let Some(f) = self.feeds.get_mut(&feed) {
                    f.priority = priority;
                }
            }
            Input::Drain { feed } => {
                if let Some(f) = self.feeds.get_mut(&feed) {
                    f.draining = true;
                    f.eligible_since = None;
                }
            }
            Input::Remote { feed, since } => {
                if let Some(f) = self.feeds.get_mut(&feed) {
                    f.in_penalty = false;
                    f.losses.clear();
                    match since {
                        Some(since) => {
                            let since = since.min(now);
                            f.healthy = true;
                            f.healthy_since = Some(since);
                            f.eligible_since = (!f.draining).then_some(since);
                        }
                        None => {
                            f.healthy = false;
                            f.healthy_since = None;
                            f.eligible_since = None;
                        }
                    }
                }
            }
        }
        // A zero `flap_hold` ends a penalty the instant the feed is healthy.
        self.advance(now);
        self.evaluate(now)
    }

    /// Earliest instant at which handle_timeout may produce a decision
    /// (failback hold or flap hold ending), if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let penalties = self
            .feeds
            .values()
            .filter_map(|f| f.penalty_ends(self.params.flap_hold));
        let holds = self.primary_rank().into_iter().flat_map(|pr| {
            self.feeds
                .iter()
                .filter(move |(id, f)| f.eligible() && rank(**id, f) < pr)
                .filter_map(|(_, f)| f.eligible_since?.checked_add(self.params.failback_hold))
        });
        penalties.chain(holds).min()
    }

    /// Let time pass up to `now` (call it once `poll_timeout` is due).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Decision> {
        self.advance(now);
        self.evaluate(now)
    }

    /// The feed on the air, per the decisions returned so far.
    pub fn primary(&self) -> Option<FeedId> {
        self.primary
    }

    /// Every feed, sorted best-first by the election order (see the module
    /// doc): eligible, then penalized-but-available, then the rest.
    pub fn feeds(&self) -> Vec<FeedState> {
        let mut v: Vec<(Rank, FeedState)> = self
            .feeds
            .iter()
            .map(|(&id, f)| {
                let losses = match self.now {
                    Some(now) => f.losses_in_window(self.params.flap_window, now),
                    None => 0,
                };
                let state = FeedState {
                    feed: id,
                    priority: f.priority,
                    healthy: f.healthy,
                    draining: f.draining,
                    eligible: f.eligible(),
                    in_flap_penalty: f.in_penalty,
                    eligible_since: f.eligible_since,
                    losses_in_window: u32::try_from(losses).unwrap_or(u32::MAX),
                };
                (rank(id, f), state)
            })
            .collect();
        v.sort_by_key(|a| a.0);
        v.into_iter().map(|(_, s)| s).collect()
    }

    /// No feeds at all (drained feeds count until they leave).
    pub fn is_empty(&self) -> bool {
        self.feeds.is_empty()
    }

    /// Apply everything time alone changes, up to `now`: penalties whose
    /// `flap_hold` has run out end (at that exact instant), and losses that
    /// left the window are forgotten.
    fn advance(&mut self, now: Instant) {
        self.now = Some(self.now.map_or(now, |n| n.max(now)));
        let ElectionParams {
            flap_hold,
            flap_window,
            ..
        } = self.params;
        for f in self.feeds.values_mut() {
            if let Some(end) = f.penalty_ends(flap_hold) {
                if end <= now {
                    f.in_penalty = false;
                    f.eligible_since = Some(end);
                }
            }
            while f
                .losses
                .front()
                .is_some_and(|&t| t <= now && !in_window(t, flap_window, now))
            {
                f.losses.pop_front();
            }
        }
    }

    fn set_health(&mut self, now: Instant, id: FeedId, healthy: bool) {
        let params = &self.params;
        let Some(f) = self.feeds.get_mut(&id) else {
            return;
        };
        if f.healthy == healthy {
            return;
        }
        if healthy {
            f.healthy = true;
            f.healthy_since = Some(now);
            if !f.draining && !f.in_penalty {
                f.eligible_since = Some(now);
            }
            return;
        }
        let was_eligible = f.eligible();
        f.healthy = false;
        f.healthy_since = None;
        f.eligible_since = None;
        if was_eligible {
            if f.losses.len() == MAX_LOSSES {
                f.losses.pop_front();
            }
            f.losses.push_back(now);
            let n = f.losses_in_window(params.flap_window, now);
            if params.flap_count > 0 && n >= params.flap_count as usize {
                f.in_penalty = true;
            }
        }
    }

    fn primary_rank(&self) -> Option<Rank> {
        let p = self.primary?;
        self.feeds.get(&p).map(|f| rank(p, f))
    }

    /// The best available feed other than `except`.
    fn best_available(&self, except: Option<FeedId>) -> Option<FeedId> {
        self.feeds
            .iter()
            .filter(|(id, f)| f.available() && Some(**id) != except)
            .map(|(&id, f)| rank(id, f))
            .min()
            .map(|r| r.feed)
    }

    /// Decide who is on the air at `now`, given the state already updated.
    fn evaluate(&mut self, now: Instant) -> Vec<Decision> {
        let Some(p) = self.primary else {
            return match self.best_available(None) {
                Some(to) => self.switch(None, to, false, SwitchReason::First),
                None => Vec::new(),
            };
        };
        let lost = match self.feeds.get(&p) {
            None => Some((false, SwitchReason::PrimaryLost)),
            Some(f) if !f.healthy => Some((false, SwitchReason::PrimaryLost)),
            Some(f) if f.draining => Some((true, SwitchReason::Draining)),
            Some(_) => None,
        };
        if let Some((planned, reason)) = lost {
            return match self.best_available(Some(p)) {
                Some(to) => self.switch(Some(p), to, planned, reason),
                None => {
                    self.primary = None;
                    vec![Decision::Vacate { from: p }]
                }
            };
        }
        // Failback: the best of the eligible feeds that are better than the
        // primary and have served their hold.
        let Some(pr) = self.primary_rank() else {
            return Vec::new();
        };
        let hold = self.params.failback_hold;
        let due = self
            .feeds
            .iter()
            .filter(|(_, f)| {
                f.eligible()
                    && f.eligible_since
                        .and_then(|s| s.checked_add(hold))
                        .is_some_and(|end| end <= now)
            })
            .map(|(&id, f)| rank(id, f))
            .filter(|r| *r < pr)
            .min();
        match due {
            Some(r) => self.switch(Some(p), r.feed, true, SwitchReason::Better),
            None => Vec::new(),
        }
    }

    fn switch(
        &mut self,
        from: Option<FeedId>,
        to: FeedId,
        planned: bool,
        reason: SwitchReason,
    ) -> Vec<Decision> {
        self.primary = Some(to);
        vec![Decision::Switch {
            from,
            to,
            planned,
            reason,
        }]
    }
}
