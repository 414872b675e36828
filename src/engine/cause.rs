//! Why a switch happened, beyond the election's [`SwitchReason`]: what the
//! engine saw (a feed silent for its loss window, a closed connection, an
//! operator's reprioritize). Shown as `detail` in the streams API and the
//! log, and as the `cause` label of `primacy_switches_total`.

use crate::election::SwitchReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchCause {
    /// The first feed of a source (or the first after a vacancy).
    First,
    /// The primary was silent for its learned loss window.
    Silent { silent_ms: u64 },
    /// The primary was silent for `feed_timeout` (warm-up, or a cadence
    /// that stretched its window that far).
    Timeout,
    /// The primary's connection closed (TCP close, SRT shutdown, kick).
    Closed,
    /// A feed of another node became unavailable (its node or its relay).
    Unavailable,
    /// A better feed finished its failback hold.
    Failback,
    /// An operator changed a token's priority.
    Reprioritized,
    /// The primary was drained (planned switch before a disconnect).
    Drained,
}

impl SwitchCause {
    /// The low-cardinality metric label.
    pub fn label(self) -> &'static str {
        match self {
            SwitchCause::First => "first",
            SwitchCause::Silent { .. } => "silent",
            SwitchCause::Timeout => "timeout",
            SwitchCause::Closed => "closed",
            SwitchCause::Unavailable => "unavailable",
            SwitchCause::Failback => "failback",
            SwitchCause::Reprioritized => "reprioritized",
            SwitchCause::Drained => "drained",
        }
    }

    /// The text of the streams API's `detail` and of the log line.
    pub fn detail(self) -> String {
        match self {
            SwitchCause::Silent { silent_ms } => format!("lost: silent {silent_ms} ms"),
            SwitchCause::Timeout => "lost: timeout".into(),
            SwitchCause::Closed => "lost: closed".into(),
            SwitchCause::Unavailable => "lost: unavailable".into(),
            other => other.label().into(),
        }
    }

    /// A loss by silence: the feed may come back on the same connection
    /// (a false switch when it does within the failback hold).
    pub fn is_silence(self) -> bool {
        matches!(self, SwitchCause::Silent { .. } | SwitchCause::Timeout)
    }

    /// The cause of a switch the election decided for `reason`, given what
    /// the engine was handling when it decided (`seen`).
    pub fn of(reason: SwitchReason, seen: Option<SwitchCause>) -> Self {
        match reason {
            SwitchReason::First => SwitchCause::First,
            SwitchReason::PrimaryLost => seen
                .filter(|c| {
                    !matches!(
                        c,
                        SwitchCause::Failback | SwitchCause::Reprioritized | SwitchCause::First
                    )
                })
                .unwrap_or(SwitchCause::Closed),
            SwitchReason::Better => match seen {
                Some(SwitchCause::Reprioritized) => SwitchCause::Reprioritized,
                _ => SwitchCause::Failback,
            },
            SwitchReason::Draining => match seen {
                Some(SwitchCause::Reprioritized) => SwitchCause::Reprioritized,
                _ => SwitchCause::Drained,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_and_labels() {
        let c = SwitchCause::of(
            SwitchReason::PrimaryLost,
            Some(SwitchCause::Silent { silent_ms: 187 }),
        );
        assert_eq!(c.detail(), "lost: silent 187 ms");
        assert_eq!(c.label(), "silent");
        assert!(c.is_silence());
        assert_eq!(
            SwitchCause::of(SwitchReason::PrimaryLost, None).detail(),
            "lost: closed"
        );
        assert_eq!(
            SwitchCause::of(SwitchReason::Better, None).detail(),
            "failback"
        );
        assert_eq!(
            SwitchCause::of(SwitchReason::Draining, Some(SwitchCause::Reprioritized)).label(),
            "reprioritized"
        );
        assert_eq!(SwitchCause::of(SwitchReason::First, None).detail(), "first");
    }
}
