//! The failover rule for a **balance group of ordered groups** (DESIGN
//! section 8), as a pure state machine: push outputs, the Director's
//! answers and the load generator's encoders all follow it.
//!
//! Targets are `groups[g][i]`. A cycle starts in the start group (chosen at
//! random by the caller, to spread load), tries its targets in order, then
//! the following groups in turn (wrapping), each in order; when every
//! target was tried once without success the answer is [`Step::Wait`]
//! (the caller waits its reconnect delay and calls [`Failover::waited`]),
//! and the next cycle starts again in the start group. When an established
//! connection drops, the same target is retried once first; then the cycle
//! goes on from there through every other target.
//!
//! No clock, no I/O: the caller reports what happened and is told what to
//! do next.

/// A target's position: `groups[group][index]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TargetRef {
    pub group: usize,
    pub index: usize,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Connect to this target.
    Try(TargetRef),
    /// Every target failed in this cycle: wait the reconnect delay, then
    /// call [`Failover::waited`].
    Wait,
}

/// Why a shape cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("at least one group of targets is needed")]
    NoGroups,
    #[error("group {0} is empty")]
    EmptyGroup(usize),
}

/// The rule's state for one client.
#[derive(Debug, Clone)]
pub struct Failover {
    /// Number of targets in each group (all > 0).
    shape: Vec<usize>,
    start: usize,
    current: TargetRef,
    /// Targets tried in the current cycle (the one being tried included).
    tried: usize,
    total: usize,
}

impl Failover {
    /// `shape[g]` = number of targets in group `g`; `start_group` is taken
    /// modulo the number of groups.
    pub fn new(shape: &[usize], start_group: usize) -> Result<Self, ShapeError> {
        if shape.is_empty() {
            return Err(ShapeError::NoGroups);
        }
        if let Some(g) = shape.iter().position(|n| *n == 0) {
            return Err(ShapeError::EmptyGroup(g));
        }
        let start = start_group % shape.len();
        Ok(Self {
            shape: shape.to_vec(),
            start,
            current: TargetRef {
                group: start,
                index: 0,
            },
            tried: 0,
            total: shape.iter().sum(),
        })
    }

    /// The shape of a list of groups.
    pub fn shape_of<T>(groups: &[Vec<T>]) -> Vec<usize> {
        groups.iter().map(Vec::len).collect()
    }

    pub fn start_group(&self) -> usize {
        self.start
    }

    /// The target of the last [`Step::Try`].
    pub fn current(&self) -> TargetRef {
        self.current
    }

    /// The first attempt.
    pub fn first(&mut self) -> Step {
        self.waited()
    }

    /// Start a new cycle (after [`Step::Wait`]).
    pub fn waited(&mut self) -> Step {
        self.current = TargetRef {
            group: self.start,
            index: 0,
        };
        self.tried = 1;
        Step::Try(self.current)
    }

    /// The last tried target did not connect.
    pub fn failed(&mut self) -> Step {
        if self.tried >= self.total {
            self.tried = 0;
            return Step::Wait;
        }
        self.current = self.after(self.current);
        self.tried += 1;
        Step::Try(self.current)
    }

    /// The last tried target connected.
    pub fn connected(&mut self) {
        self.tried = 0;
    }

    /// The established connection dropped: retry the same target once.
    pub fn dropped(&mut self) -> Step {
        self.tried = 1;
        Step::Try(self.current)
    }

    /// The target after `t` in cycle order.
    fn after(&self, t: TargetRef) -> TargetRef {
        if t.index + 1 < self.shape[t.group] {
            TargetRef {
                group: t.group,
                index: t.index + 1,
            }
        } else {
            TargetRef {
                group: (t.group + 1) % self.shape.len(),
                index: 0,
            }
        }
    }

    /// Every target in the order one cycle tries them.
    pub fn cycle_order(&self) -> Vec<TargetRef> {
        let mut t = TargetRef {
            group: self.start,
            index: 0,
        };
        let mut out = Vec::with_capacity(self.total);
        for _ in 0..self.total {
            out.push(t);
            t = self.after(t);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(group: usize, index: usize) -> Step {
        Step::Try(TargetRef { group, index })
    }

    #[test]
    fn walks_groups_in_order_then_waits() {
        // [[a1, a2], [b1]] starting in group a.
        let mut f = Failover::new(&[2, 1], 0).unwrap();
        assert_eq!(f.first(), t(0, 0));
        assert_eq!(f.failed(), t(0, 1));
        assert_eq!(f.failed(), t(1, 0));
        assert_eq!(f.failed(), Step::Wait);
        assert_eq!(f.waited(), t(0, 0));
        // Starting in group b: b1, then a1, a2.
        let mut f = Failover::new(&[2, 1], 1).unwrap();
        assert_eq!(
            f.cycle_order(),
            vec![
                TargetRef { group: 1, index: 0 },
                TargetRef { group: 0, index: 0 },
                TargetRef { group: 0, index: 1 }
            ]
        );
        assert_eq!(f.first(), t(1, 0));
        assert_eq!(f.failed(), t(0, 0));
        assert_eq!(f.failed(), t(0, 1));
        assert_eq!(f.failed(), Step::Wait);
    }

    #[test]
    fn a_drop_retries_the_same_target_once_then_moves_on() {
        let mut f = Failover::new(&[2, 1], 0).unwrap();
        assert_eq!(f.first(), t(0, 0));
        f.connected();
        // a1 dies: retry a1, then a2.
        assert_eq!(f.dropped(), t(0, 0));
        assert_eq!(f.failed(), t(0, 1));
        f.connected();
        // a2 dies too: retry a2, then b1.
        assert_eq!(f.dropped(), t(0, 1));
        assert_eq!(f.failed(), t(1, 0));
        f.connected();
        // Everything dies: b1 again, a1, a2, then wait.
        assert_eq!(f.dropped(), t(1, 0));
        assert_eq!(f.failed(), t(0, 0));
        assert_eq!(f.failed(), t(0, 1));
        assert_eq!(f.failed(), Step::Wait);
        assert_eq!(f.waited(), t(0, 0));
        // A retry that connects keeps the target.
        f.connected();
        assert_eq!(f.dropped(), t(0, 0));
        f.connected();
        assert_eq!(f.current(), TargetRef { group: 0, index: 0 });
    }

    #[test]
    fn refuses_empty_shapes() {
        assert_eq!(Failover::new(&[], 0).unwrap_err(), ShapeError::NoGroups);
        assert_eq!(
            Failover::new(&[1, 0], 0).unwrap_err(),
            ShapeError::EmptyGroup(1)
        );
        assert_eq!(Failover::new(&[1], 7).unwrap().start_group(), 0);
    }

    proptest! {
        /// Between two waits (or a drop and a wait) every target is tried
        /// exactly once, and a wait comes after at most `total` failures.
        #[test]
        fn every_target_once_per_cycle(
            shape in proptest::collection::vec(1usize..4, 1..5),
            start in 0usize..8,
            events in proptest::collection::vec(0u8..3, 1..60),
        ) {
            let total: usize = shape.iter().sum();
            let mut f = Failover::new(&shape, start).unwrap();
            let mut seen = std::collections::HashSet::new();
            let mut step = f.first();
            for e in events {
                match step {
                    Step::Try(r) => {
                        prop_assert!(r.group < shape.len() && r.index < shape[r.group]);
                        prop_assert!(seen.insert(r), "target tried twice in one cycle");
                        if e == 0 {
                            // Connected, then dropped: a new cycle from
                            // the same target.
                            f.connected();
                            seen.clear();
                            step = f.dropped();
                            prop_assert_eq!(step, Step::Try(r));
                        } else {
                            step = f.failed();
                        }
                    }
                    Step::Wait => {
                        prop_assert_eq!(seen.len(), total);
                        seen.clear();
                        step = f.waited();
                    }
                }
            }
        }
    }
}
