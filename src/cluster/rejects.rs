//! What the cluster shell does with what it drops: every lease, record,
//! event, command or ack that fails [`super::envelope`]'s checks is counted
//! in `primacy_cluster_rejected_total{kind,reason}` and logged at most
//! once per [`LOG_EVERY`] for each (kind, reason), with the number of
//! rejections the log left out since, so a hostile writer cannot flood the
//! log. What the writer claimed (a key, a node name) is logged escaped and
//! capped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntCounterVec;

use super::envelope::{Kind, Reject};

/// Shortest interval between two log lines for the same (kind, reason).
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// Longest claimed string logged.
const MAX_LOGGED: usize = 80;

/// Allows one log line per key per interval and counts the rest.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    /// Last line written, and rejections not logged since, by (kind
    /// label, reason).
    last: HashMap<(&'static str, Reject), (Instant, u64)>,
}

impl LogLimiter {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: HashMap::new(),
        }
    }

    /// `Some(suppressed)` when a line may be written now (`suppressed`:
    /// how many were left out since the previous line); `None` when this
    /// one is to be left out.
    pub fn allow(&mut self, key: (&'static str, Reject), now: Instant) -> Option<u64> {
        match self.last.get_mut(&key) {
            Some((at, suppressed)) if now.duration_since(*at) < self.every => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// `s` cut to at most [`MAX_LOGGED`] bytes (on a character boundary).
fn capped(s: &str) -> &str {
    if s.len() <= MAX_LOGGED {
        return s;
    }
    let mut end = MAX_LOGGED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The metric and the rate-limited log of the shell's rejections.
pub(super) struct Rejections {
    counter: IntCounterVec,
    log: Mutex<LogLimiter>,
}

impl Rejections {
    pub fn new(counter: IntCounterVec) -> Self {
        Self {
            counter,
            log: Mutex::new(LogLimiter::new(LOG_EVERY)),
        }
    }

    /// Count (and maybe log) one rejection; `at`: the key or channel it
    /// was read from, `claimed`: the node it claimed to come from (as read,
    /// untrusted; worked out only when the line is logged).
    pub fn reject(&self, kind: Kind, reason: Reject, at: &str, claimed: impl FnOnce() -> String) {
        self.counter
            .with_label_values(&[kind.as_str(), reason.as_str()])
            .inc();
        let allowed = self
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow((kind.as_str(), reason), Instant::now());
        if let Some(suppressed) = allowed {
            let claimed = claimed();
            tracing::warn!(kind = kind.as_str(), reason = reason.as_str(), at = ?capped(at),
                claimed = ?capped(&claimed), suppressed,
                "dropped cluster data read from redis: {reason}");
        }
    }
}

/// Counts (kind `pubsub`, reason `overload`) and logs, rate-limited,
/// messages dropped unread because the subscriber's queue was full (a
/// flood on the cluster's channels). Cheap: runs on the client library's
/// reader for every message.
pub(super) struct PushOverflow {
    counter: prometheus::IntCounter,
    log: Mutex<LogLimiter>,
}

impl PushOverflow {
    pub fn new(counter: &IntCounterVec) -> Self {
        Self {
            counter: counter.with_label_values(&["pubsub", Reject::Overload.as_str()]),
            log: Mutex::new(LogLimiter::new(LOG_EVERY)),
        }
    }

    pub fn dropped(&self) {
        self.counter.inc();
        let allowed = self
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allow(("pubsub", Reject::Overload), Instant::now());
        if let Some(suppressed) = allowed {
            tracing::warn!(suppressed,
                "cluster channel flooded: messages dropped unread (the next resync repairs missed events)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_per_kind_and_reason() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let k = (Kind::Command.as_str(), Reject::BadMac);
        assert_eq!(l.allow(k, t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(l.allow(k, t0 + Duration::from_millis(i)), None);
        }
        // Another reason is logged on its own.
        assert_eq!(l.allow(("command", Reject::Replay), t0), Some(0));
        // After the interval: one line, saying how many were left out.
        assert_eq!(l.allow(k, t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(l.allow(k, t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn claimed_strings_are_capped_on_a_character_boundary() {
        assert_eq!(capped("eu-1"), "eu-1");
        let long = "é".repeat(100);
        let c = capped(&long);
        assert!(c.len() <= MAX_LOGGED && c.chars().all(|ch| ch == 'é'));
    }
}
