//! The admission throttle: repeated failed admissions from one IP address
//! (no valid token) or of one token (validly signed but refused) block
//! further attempts with that key for a growing time, so they are refused
//! at once, before the token is verified or its row read.
//!
//! Pure state with `now` passed in; `server` consults it around every
//! admission check (RTMP and SRT, publish and play). Invariants: an entry
//! is blocked only after `failures` refusals within `window` (or, within
//! `window` after its last block ended, after one); a block lasts
//! `block × 2^strikes`, at most `max_block`; memory is bounded by
//! [`MAX_ENTRIES`] (beyond it new keys are not tracked: the throttle saves
//! work, the token signature is what keeps attackers out).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::AdmissionConfig;

/// Keys tracked at most.
pub const MAX_ENTRIES: usize = 100_000;

/// What a failure is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// A caller presenting no valid token (garbage, bad signature).
    Ip(IpAddr),
    /// A validly signed token that was refused, by a keyed hash of its
    /// secret (and, for refusals that depend on the caller, its address).
    Token(u64),
}

impl Key {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Key::Ip(_) => "ip",
            Key::Token(_) => "token",
        }
    }
}

/// An attempt refused by the throttle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    pub key: Key,
    pub retry_in: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
    strikes: u32,
}

pub struct Throttle {
    failures: u32,
    window: Duration,
    block: Duration,
    max_block: Duration,
    hasher: std::collections::hash_map::RandomState,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl Throttle {
    pub fn new(c: &AdmissionConfig) -> Self {
        Self {
            failures: c.throttle_failures,
            window: Duration::from_millis(c.throttle_window_ms),
            block: Duration::from_millis(c.throttle_block_ms),
            max_block: Duration::from_millis(c.throttle_max_block_ms),
            hasher: std::collections::hash_map::RandomState::new(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn enabled(&self) -> bool {
        self.failures > 0
    }

    /// The key of a token secret (with the caller's address when
    /// `with_ip`): a hash keyed per process, so it says nothing about the
    /// secret and cannot be aimed at another token's key.
    pub fn token_key(&self, secret: &str, with_ip: Option<IpAddr>) -> Key {
        let mut h = self.hasher.build_hasher();
        secret.hash(&mut h);
        with_ip.hash(&mut h);
        Key::Token(h.finish())
    }

    /// Whether an attempt with these keys may go ahead at `now`.
    pub fn check(&self, keys: &[Key], now: Instant) -> Result<(), Blocked> {
        if !self.enabled() {
            return Ok(());
        }
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if let Some(until) = entries.get(key).and_then(|e| e.blocked_until) {
                if until > now {
                    return Err(Blocked {
                        key: *key,
                        retry_in: until - now,
                    });
                }
            }
        }
        Ok(())
    }

    /// A refusal counted against `key` at `now`. Returns the block it
    /// started, if it started one.
    pub fn failed(&self, key: Key, now: Instant) -> Option<Duration> {
        if !self.enabled() {
            return None;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            return None;
        }
        let e = entries.entry(key).or_insert(Entry {
            window_start: now,
            failures: 0,
            blocked_until: None,
            strikes: 0,
        });
        if let Some(until) = e.blocked_until {
            if now >= until + self.window {
                // Quiet for a window after the last block: forgiven.
                e.strikes = 0;
                e.blocked_until = None;
            }
        }
        if now.saturating_duration_since(e.window_start) >= self.window {
            e.window_start = now;
            e.failures = 0;
        }
        e.failures += 1;
        let threshold = if e.strikes > 0 { 1 } else { self.failures };
        if e.failures < threshold {
            return None;
        }
        let block = self
            .block
            .saturating_mul(1u32.checked_shl(e.strikes).unwrap_or(u32::MAX))
            .min(self.max_block);
        e.blocked_until = Some(now + block);
        e.strikes = e.strikes.saturating_add(1);
        e.failures = 0;
        e.window_start = now;
        Some(block)
    }

    /// Forget keys that are neither blocked nor remembered for a strike.
    pub fn sweep(&self, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let window = self.window;
        entries.retain(|_, e| match e.blocked_until {
            Some(until) => now < until + window,
            None => now.saturating_duration_since(e.window_start) < window,
        });
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> Throttle {
        Throttle::new(&AdmissionConfig {
            throttle_failures: 3,
            throttle_window_ms: 10_000,
            throttle_block_ms: 1_000,
            throttle_max_block_ms: 5_000,
        })
    }

    const IP: Key = Key::Ip(IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)));

    #[test]
    fn blocks_after_n_failures_then_doubles_per_further_failure() {
        let t = throttle();
        let t0 = Instant::now();
        assert_eq!(t.failed(IP, t0), None);
        assert_eq!(t.failed(IP, t0), None);
        assert!(t.check(&[IP], t0).is_ok());
        assert_eq!(t.failed(IP, t0), Some(Duration::from_secs(1)));
        let b = t.check(&[IP], t0).unwrap_err();
        assert_eq!(b.key, IP);
        assert_eq!(b.retry_in, Duration::from_secs(1));
        let t1 = t0 + Duration::from_millis(1_100);
        assert!(t.check(&[IP], t1).is_ok());
        // One more failure soon after: blocked again, twice as long, …
        assert_eq!(t.failed(IP, t1), Some(Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(3);
        assert_eq!(t.failed(IP, t2), Some(Duration::from_secs(4)));
        let t3 = t2 + Duration::from_secs(5);
        // … up to the maximum.
        assert_eq!(t.failed(IP, t3), Some(Duration::from_secs(5)));
        // Quiet for a window after the block: back to counting.
        let t4 = t3 + Duration::from_secs(5) + Duration::from_secs(10);
        assert_eq!(t.failed(IP, t4), None);
        assert!(t.check(&[IP], t4).is_ok());
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let t = throttle();
        let t0 = Instant::now();
        for i in 0..10u64 {
            assert_eq!(t.failed(IP, t0 + Duration::from_secs(6 * i)), None);
        }
    }

    #[test]
    fn keys_are_independent_and_token_keys_opaque() {
        let t = throttle();
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let dead = t.token_key("secret-a", None);
        assert_ne!(dead, t.token_key("secret-b", None));
        assert_ne!(dead, t.token_key("secret-a", Some(ip)));
        assert_eq!(dead, t.token_key("secret-a", None));
        for _ in 0..3 {
            t.failed(dead, t0);
        }
        assert!(t.check(&[Key::Ip(ip), dead], t0).is_err());
        assert!(t
            .check(&[Key::Ip(ip), t.token_key("secret-b", None)], t0)
            .is_ok());
    }

    #[test]
    fn off_when_failures_is_zero_and_memory_is_bounded() {
        let off = Throttle::new(&AdmissionConfig {
            throttle_failures: 0,
            ..AdmissionConfig::default()
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(off.failed(IP, t0), None);
        }
        assert!(off.check(&[IP], t0).is_ok());

        let t = throttle();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            t.failed(Key::Ip(IpAddr::from(std::net::Ipv4Addr::from(i))), t0);
        }
        assert_eq!(t.len(), MAX_ENTRIES);
        t.sweep(t0 + Duration::from_secs(11));
        assert_eq!(t.len(), 0);
    }
}
