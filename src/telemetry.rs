//! Logging: `tracing` to stderr, filtered by `PRIMACY_LOG` (or `RUST_LOG`),
//! default `info`; and [`LogLimiter`], which keeps what peers can trigger
//! (refusals, garbage, panics on hostile input) from flooding the log.
//!
//! Invariant: a limited kind of line is written at most `burst` times per
//! interval per peer address; the rest are counted and summed up in one
//! "suppressed N similar lines" line when the interval ends. Metrics are
//! not limited: callers count every event there.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;

/// srt-protocol logs a warning per malformed datagram and per odd
/// handshake, i.e. whenever a peer wants; the gateway counts those in
/// metrics and logs them through a [`LogLimiter`] instead. Added to the
/// filter unless the filter names `srt_protocol` itself.
const QUIET_DEPENDENCIES: &str = "srt_protocol=error";

/// The filter directives in effect for `configured` (`PRIMACY_LOG`).
pub fn filter_directives(configured: Option<&str>) -> String {
    let base = configured.unwrap_or("info");
    if base.contains("srt_protocol") {
        base.to_owned()
    } else {
        format!("{base},{QUIET_DEPENDENCIES}")
    }
}

pub fn init() {
    let configured = std::env::var("PRIMACY_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter_directives(configured.as_deref())))
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or journal gets plain
        // text (`peer=…` greps as written).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Log panics as structured events, at most a few per minute: a panic in
/// one session (a protocol library on hostile input) closes that session
/// only, and a peer that can cause one can cause many.
pub fn install_panic_hook() {
    static LIMITER: OnceLock<LogLimiter> = OnceLock::new();
    std::panic::set_hook(Box::new(|info| {
        let limiter = LIMITER.get_or_init(|| LogLimiter::new(10, Duration::from_secs(60)));
        if limiter.allow("panic", None) {
            tracing::error!(panic = %info, "panic caught; the task that panicked is closed");
        }
    }));
}

/// Lines kept per (kind, peer address) before new ones count into a
/// catch-all entry of their kind (bounds the limiter's memory).
const MAX_ENTRIES: usize = 10_000;

/// Rate limit for log lines that peers can trigger, per kind of line and
/// peer IP address. See the module doc.
pub struct LogLimiter {
    burst: u32,
    interval: Duration,
    entries: Mutex<HashMap<(&'static str, Option<IpAddr>), Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    began: Instant,
    written: u32,
    suppressed: u64,
}

/// Lines a window held back: summed up in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub kind: &'static str,
    pub ip: Option<IpAddr>,
    pub lines: u64,
}

impl LogLimiter {
    /// At most `burst` lines per `interval` for each kind and address.
    pub fn new(burst: u32, interval: Duration) -> Self {
        Self {
            burst,
            interval,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line of `kind` about `ip` may be written now. When not,
    /// it is counted for the summary line.
    pub fn allow(&self, kind: &'static str, ip: Option<IpAddr>) -> bool {
        let (allowed, ended) = self.allow_at(kind, ip, Instant::now());
        if let Some(s) = ended {
            self.write_summary(&s);
        }
        allowed
    }

    /// [`allow`](Self::allow) at `now`; also returns the summary of the
    /// previous window of that key when this call ended it.
    pub fn allow_at(
        &self,
        kind: &'static str,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> (bool, Option<Suppressed>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = if entries.len() >= MAX_ENTRIES && !entries.contains_key(&(kind, ip)) {
            (kind, None)
        } else {
            (kind, ip)
        };
        let w = entries.entry(key).or_insert(Window {
            began: now,
            written: 0,
            suppressed: 0,
        });
        let mut ended = None;
        if now.saturating_duration_since(w.began) >= self.interval {
            if w.suppressed > 0 {
                ended = Some(Suppressed {
                    kind,
                    ip: key.1,
                    lines: w.suppressed,
                });
            }
            *w = Window {
                began: now,
                written: 0,
                suppressed: 0,
            };
        }
        if w.written < self.burst {
            w.written += 1;
            (true, ended)
        } else {
            w.suppressed += 1;
            (false, ended)
        }
    }

    /// End the windows older than the interval: returns the summaries of
    /// those that held lines back, and forgets them all.
    pub fn sweep_at(&self, now: Instant) -> Vec<Suppressed> {
        let mut out = Vec::new();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|&(kind, ip), w| {
            if now.saturating_duration_since(w.began) < self.interval {
                return true;
            }
            if w.suppressed > 0 {
                out.push(Suppressed {
                    kind,
                    ip,
                    lines: w.suppressed,
                });
            }
            false
        });
        out
    }

    /// [`sweep_at`](Self::sweep_at) now, writing the summaries.
    pub fn sweep(&self) {
        for s in self.sweep_at(Instant::now()) {
            self.write_summary(&s);
        }
    }

    fn write_summary(&self, s: &Suppressed) {
        let within_s = self.interval.as_secs_f64();
        match s.ip {
            Some(ip) => tracing::warn!(
                kind = s.kind,
                %ip,
                suppressed = s.lines,
                "suppressed {} similar lines ({}) from {ip} within {within_s} s",
                s.lines,
                s.kind
            ),
            None => tracing::warn!(
                kind = s.kind,
                suppressed = s.lines,
                "suppressed {} similar lines ({}) within {within_s} s",
                s.lines,
                s.kind
            ),
        }
    }

    /// How often [`sweep`](Self::sweep) should run for summaries to be
    /// written about when their window ends.
    pub fn sweep_every(&self) -> Duration {
        (self.interval / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_summary_per_window() {
        let l = LogLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let allowed = (0..10)
            .filter(|_| l.allow_at("refused", Some(a), t0).0)
            .count();
        assert_eq!(allowed, 3);
        // Another address and another kind have their own budgets.
        assert!(l.allow_at("refused", Some(b), t0).0);
        assert!(l.allow_at("garbage", Some(a), t0).0);
        // The next window starts with the summary of the last.
        let (ok, ended) = l.allow_at("refused", Some(a), t0 + Duration::from_secs(11));
        assert!(ok);
        assert_eq!(
            ended,
            Some(Suppressed {
                kind: "refused",
                ip: Some(a),
                lines: 7
            })
        );
    }

    #[test]
    fn sweep_writes_summaries_and_forgets_idle_keys() {
        let l = LogLimiter::new(1, Duration::from_secs(10));
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..5 {
            l.allow_at("refused", Some(a), t0);
        }
        l.allow_at("garbage", None, t0);
        assert!(l.sweep_at(t0 + Duration::from_secs(5)).is_empty());
        let s = l.sweep_at(t0 + Duration::from_secs(10));
        assert_eq!(
            s,
            vec![Suppressed {
                kind: "refused",
                ip: Some(a),
                lines: 4
            }]
        );
        assert!(l.entries.lock().unwrap().is_empty());
    }

    #[test]
    fn memory_is_bounded() {
        let l = LogLimiter::new(1, Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 500) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.allow_at("refused", Some(ip), t0);
        }
        assert_eq!(l.entries.lock().unwrap().len(), MAX_ENTRIES + 1);
    }

    #[test]
    fn srt_protocol_is_quiet_unless_named() {
        assert_eq!(filter_directives(None), "info,srt_protocol=error");
        assert_eq!(filter_directives(Some("debug")), "debug,srt_protocol=error");
        assert_eq!(
            filter_directives(Some("info,srt_protocol=debug")),
            "info,srt_protocol=debug"
        );
    }
}
