//! The switch of one source as an explicit state machine (DESIGN section 3).
//!
//! A source is [`SwitchState::Vacant`], [`SwitchState::OnAir`] with one
//! feed, or [`SwitchState::Switching`] to a feed whose cut has not happened
//! yet — with the old feed still on air (make-before-break) or with nothing
//! on air (frozen until the new feed's keyframe). Each phase owns its data,
//! so "a switch pending without a target" or "two feeds on air" cannot be
//! written down.
//!
//! Every transition is one method taking `now` (and, where a switch is
//! stamped, the wall-clock time read at the engine's edge): the election's
//! decisions ([`Switch::decide`]), a frame that may be a cut point
//! ([`Switch::frame`]), the timer ([`Switch::tick`]), the feed on air lost
//! ([`Switch::on_air_lost`]), players coming and going. They read no clock,
//! do no I/O and touch no media: they return [`Action`]s that
//! [`super::source::Source`] carries out (take a feed off the air, cut at a
//! cached keyframe, let the players go), and `Source` reports the outcome of
//! a cut back ([`Switch::put_on_air`], [`Switch::wait`]).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::cause::SwitchCause;
use crate::domain::FeedId;
use crate::election::{Decision, SwitchReason};
use crate::media::Rebase;

/// The feed on air and how its timestamps map onto the source's output.
#[derive(Debug)]
pub(super) struct OnAir {
    pub feed: FeedId,
    pub rebase: Rebase,
    /// The last audio DTS out before this feed went on air: its audio that
    /// lands before it overlaps the previous feed's and is dropped, until
    /// one frame lands after it (`None` from then on).
    pub audio_floor: Option<i64>,
}

/// A switch the election decided, to be cut at a keyframe of `to`.
#[derive(Debug, Clone)]
pub(super) struct Cut {
    pub to: FeedId,
    pub from: Option<FeedId>,
    pub planned: bool,
    pub reason: SwitchReason,
    pub cause: SwitchCause,
    /// When the election decided (the cut may come later, at a keyframe).
    pub decided: DateTime<Utc>,
}

#[derive(Debug)]
pub(super) enum SwitchState {
    /// Nothing on air and nothing awaited. `since`: when players began
    /// waiting for a feed (`None`: nobody waits yet, or they were let go).
    Vacant {
        since: Option<Instant>,
    },
    OnAir(OnAir),
    /// `cut` waits for a keyframe of its target. `on_air`: the old feed,
    /// still relayed until then (a planned switch), or nothing (a freeze).
    /// `deadline`: a planned switch cuts at the cached keyframe then.
    Switching {
        on_air: Option<OnAir>,
        cut: Cut,
        deadline: Option<Instant>,
    },
}

/// What the target of a switch holds, as `Source` sees it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Target {
    /// Something to cut to: a keyframe, or audio of an audio-only feed.
    pub cached: bool,
    /// Nothing at all cached (a remote feed whose mirror has not delivered).
    pub empty: bool,
    /// A planned switch may cut at the cached keyframe at once (recent
    /// enough for `planned_max_added_latency_ms`).
    pub fresh_keyframe: bool,
}

/// What `Source` does for a transition, in order.
#[derive(Debug)]
pub(super) enum Action {
    /// The election decided a switch that changes the air: count it.
    Decided {
        from: Option<FeedId>,
        reason: SwitchReason,
        planned: bool,
        cause: SwitchCause,
    },
    /// `feed` left the air (already out of the state): clear its gauges and
    /// disconnect it if it was waiting for that (a reprioritize with
    /// disconnect: switch first, then disconnect).
    GoOffAir { feed: Option<FeedId> },
    /// Cut to `cut.to` at its cached keyframe: header, then the cache.
    /// `Source` reports back with [`Switch::put_on_air`] or, with nothing
    /// cached, [`Switch::wait`].
    CutAtCache(Cut),
    /// A planned switch keeps the old feed on air until `to`'s keyframe.
    WaitForKeyframe { to: FeedId },
    /// A planned switch's deadline passed: it cuts at the cached keyframe.
    DeadlinePassed { to: FeedId },
    /// No eligible feed: `from` left the air, players wait.
    Vacated {
        from: FeedId,
        cause: Option<SwitchCause>,
    },
    /// The source was vacant for `vacant_hold`: let its players go.
    ReleasePlayers,
}

/// The knobs of the switch (from the engine's settings).
#[derive(Debug, Clone, Copy)]
pub(super) struct SwitchParams {
    pub failover_next_keyframe: bool,
    pub switch_deadline: Duration,
    pub vacant_hold: Duration,
}

#[derive(Debug)]
pub(super) struct Switch {
    params: SwitchParams,
    state: SwitchState,
}

impl Switch {
    pub fn new(params: SwitchParams) -> Self {
        Self {
            params,
            state: SwitchState::Vacant { since: None },
        }
    }

    /// The feed players receive now.
    pub fn on_air(&self) -> Option<&OnAir> {
        match &self.state {
            SwitchState::OnAir(on) => Some(on),
            SwitchState::Switching { on_air, .. } => on_air.as_ref(),
            SwitchState::Vacant { .. } => None,
        }
    }

    pub fn on_air_mut(&mut self) -> Option<&mut OnAir> {
        match &mut self.state {
            SwitchState::OnAir(on) => Some(on),
            SwitchState::Switching { on_air, .. } => on_air.as_mut(),
            SwitchState::Vacant { .. } => None,
        }
    }

    pub fn on_air_feed(&self) -> Option<FeedId> {
        self.on_air().map(|o| o.feed)
    }

    pub fn is_on_air(&self, feed: FeedId) -> bool {
        self.on_air_feed() == Some(feed)
    }

    /// The switch waiting for a keyframe, if any.
    pub fn pending(&self) -> Option<&Cut> {
        match &self.state {
            SwitchState::Switching { cut, .. } => Some(cut),
            _ => None,
        }
    }

    /// `on_air`, `switching` or `vacant` (the streams API's source state).
    pub fn label(&self) -> &'static str {
        match &self.state {
            _ if self.on_air().is_some() => "on_air",
            SwitchState::Switching { .. } => "switching",
            _ => "vacant",
        }
    }

    /// Forget a pending switch (keeping what is on air).
    fn settle(&mut self) {
        if let SwitchState::Switching { .. } = self.state {
            let SwitchState::Switching { on_air, .. } =
                std::mem::replace(&mut self.state, SwitchState::Vacant { since: None })
            else {
                unreachable!("matched just above");
            };
            if let Some(on) = on_air {
                self.state = SwitchState::OnAir(on);
            }
        }
    }

    /// Take the feed on air off (a pending switch stays pending).
    fn take_off_air(&mut self, from: Option<FeedId>) -> Action {
        let gone = match &mut self.state {
            SwitchState::OnAir(_) => {
                match std::mem::replace(&mut self.state, SwitchState::Vacant { since: None }) {
                    SwitchState::OnAir(on) => Some(on.feed),
                    _ => None,
                }
            }
            SwitchState::Switching { on_air, .. } => on_air.take().map(|o| o.feed),
            SwitchState::Vacant { .. } => None,
        };
        Action::GoOffAir {
            feed: gone.or(from),
        }
    }

    /// Wait for `to`'s keyframe with nothing on air (or with what is on air
    /// still on, for a planned switch: `deadline`).
    fn switch_to(&mut self, cut: Cut, deadline: Option<Instant>) {
        let on_air = match std::mem::replace(&mut self.state, SwitchState::Vacant { since: None }) {
            SwitchState::OnAir(on) => Some(on),
            SwitchState::Switching { on_air, .. } => on_air,
            SwitchState::Vacant { .. } => None,
        };
        self.state = SwitchState::Switching {
            on_air,
            cut,
            deadline,
        };
    }

    /// One decision of the election. `seen`: what the engine was handling
    /// when the election decided; `watched`: someone here receives the
    /// source (players, or a peer relaying the feed on air); `target`: what
    /// the new feed holds.
    pub fn decide(
        &mut self,
        now: Instant,
        wall: DateTime<Utc>,
        decision: Decision,
        seen: Option<SwitchCause>,
        watched: bool,
        target: Target,
    ) -> Vec<Action> {
        match decision {
            Decision::Switch {
                from,
                to,
                planned,
                reason,
            } => {
                if self.is_on_air(to) {
                    // Back to the feed still on air (the target of a
                    // pending planned switch left or failed before its
                    // keyframe): nothing changes on air, nothing to cut.
                    self.settle();
                    return Vec::new();
                }
                let cause = SwitchCause::of(reason, seen);
                let mut actions = vec![Action::Decided {
                    from,
                    reason,
                    planned,
                    cause,
                }];
                let cut = Cut {
                    to,
                    from,
                    planned,
                    reason,
                    cause,
                    decided: wall,
                };
                let current = self.on_air_feed();
                if !target.cached && !watched {
                    // Nobody watches here (typically: the new primary is a
                    // feed of another node): the old feed goes off the air
                    // now, so a feed waiting for that is released.
                    actions.push(self.take_off_air(from));
                    self.switch_to(cut, None);
                } else if planned && current.is_some() && !target.fresh_keyframe {
                    // Make-before-break: the old feed stays on air until
                    // the new keyframe.
                    self.switch_to(cut, Some(now + self.params.switch_deadline));
                    actions.push(Action::WaitForKeyframe { to });
                } else if target.cached
                    && (!self.params.failover_next_keyframe || reason == SwitchReason::First)
                {
                    self.settle();
                    actions.push(Action::CutAtCache(cut));
                } else {
                    // Freeze until the new feed's next keyframe.
                    actions.push(self.take_off_air(from));
                    self.switch_to(cut, None);
                }
                actions
            }
            Decision::Vacate { from } => {
                self.settle();
                let off = self.take_off_air(Some(from));
                self.state = SwitchState::Vacant { since: Some(now) };
                vec![off, Action::Vacated { from, cause: seen }]
            }
        }
    }

    /// A frame of `feed` arrived; `cut_point`: a video keyframe, or audio of
    /// a feed without video. The pending switch to `feed` cuts here.
    pub fn frame(&mut self, feed: FeedId, cut_point: bool) -> Option<Cut> {
        match &self.state {
            SwitchState::Switching { cut, .. } if cut_point && cut.to == feed => {
                let cut = cut.clone();
                self.settle();
                Some(cut)
            }
            _ => None,
        }
    }

    /// `feed` left or timed out. While a planned switch away from it waits
    /// for the new feed's keyframe, the election already counts the new
    /// feed as primary and decides nothing: this is the decision to fail
    /// over now (unplanned) instead of freezing until that keyframe or the
    /// deadline.
    pub fn on_air_lost(&mut self, feed: FeedId) -> Option<Decision> {
        match &self.state {
            SwitchState::Switching {
                on_air: Some(on),
                cut,
                ..
            } if on.feed == feed => {
                let to = cut.to;
                self.settle();
                Some(Decision::Switch {
                    from: Some(feed),
                    to,
                    planned: false,
                    reason: SwitchReason::PrimaryLost,
                })
            }
            _ => None,
        }
    }

    /// The timers: a planned switch's deadline, the vacant hold.
    /// `target`: what the pending switch's target holds.
    pub fn tick(&mut self, now: Instant, target: Target) -> Vec<Action> {
        match &self.state {
            SwitchState::Switching {
                cut,
                deadline: Some(d),
                ..
            } if *d <= now => {
                let cut = Cut {
                    planned: false,
                    ..cut.clone()
                };
                self.settle();
                let mut actions = vec![Action::DeadlinePassed { to: cut.to }];
                if target.empty {
                    // Nothing to cut to yet (a remote feed whose mirror has
                    // not delivered): the old feed goes now, players wait.
                    actions.push(self.take_off_air(cut.from));
                }
                actions.push(Action::CutAtCache(cut));
                actions
            }
            SwitchState::Vacant { since: Some(s) }
                if now.duration_since(*s) >= self.params.vacant_hold =>
            {
                self.state = SwitchState::Vacant { since: None };
                vec![Action::ReleasePlayers]
            }
            _ => Vec::new(),
        }
    }

    /// A player joined: with nothing on air and nothing awaited, the
    /// vacant hold starts counting.
    pub fn player_joined(&mut self, now: Instant) {
        if let SwitchState::Vacant { since: None } = self.state {
            self.state = SwitchState::Vacant { since: Some(now) };
        }
    }

    /// Nobody here watches `feed` any more. If it is on air while a switch
    /// to a feed with nothing cached waits, it goes off the air now (and a
    /// feed waiting for that is released).
    pub fn unwatched(&mut self, feed: FeedId, target: Target) -> Option<Action> {
        match &self.state {
            SwitchState::Switching {
                on_air: Some(on), ..
            } if on.feed == feed && target.empty => Some(self.take_off_air(Some(feed))),
            _ => None,
        }
    }

    /// Carrying out [`Action::CutAtCache`]: `on` is on air now; returns the
    /// feed it replaced.
    pub fn put_on_air(&mut self, on: OnAir) -> Option<FeedId> {
        let old = self.on_air_feed();
        self.state = SwitchState::OnAir(on);
        old
    }

    /// Carrying out [`Action::CutAtCache`] with nothing cached yet: wait for
    /// a keyframe of `cut.to`, with what is on air still on.
    pub fn wait(&mut self, cut: Cut) {
        self.switch_to(cut, None);
    }

    /// The feed on air is gone (no slot): take it off the air.
    pub fn drop_on_air(&mut self, from: Option<FeedId>) -> Action {
        self.take_off_air(from)
    }
}
