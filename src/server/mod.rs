//! The RTMP and SRT servers: the listeners and every session they accept,
//! publishers (encoders, and other nodes relaying a feed here) and players
//! alike ([`rtmp`], [`srt`]).
//!
//! A publish: socket → session → admission (`auth::publish`, behind the
//! [`throttle`]) → engine. A play: socket → session → `EngineHandle::play`
//! → the player's queue → socket. Sessions never touch election state; they
//! send the engine commands and media.
//!
//! What an unauthenticated peer may hold is bounded here: connections per
//! address and in all ([`ConnectionLimits`], one per protocol), buffered
//! partial input ([`BufferBudget`]), failed admissions ([`throttle`]), and
//! log lines (`telemetry::LogLimiter`).

pub mod rtmp;
pub mod srt;
pub mod throttle;
pub mod url;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::auth::publish::{Admission, AdmitError, Admitted, Refusal};
use crate::config::{RtmpConfig, SrtConfig};
use crate::domain::{SourceId, StreamName};
use crate::engine::EngineHandle;
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::telemetry::LogLimiter;
use throttle::{Blocked, Key, Throttle};

pub use crate::supervise::panic_message;

/// What every ingest session needs.
pub struct IngestContext {
    pub engine: EngineHandle,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub rtmp: RtmpConfig,
    pub srt: SrtConfig,
    /// RTMP connections.
    pub limits: ConnectionLimits,
    /// SRT connections (from their access-control request on).
    pub srt_limits: ConnectionLimits,
    /// Repeated failed admissions.
    pub throttle: Throttle,
    /// Lines about refusals and malformed input.
    pub log: Arc<LogLimiter>,
    /// Partial RTMP messages of connections that are not publishing.
    pub buffered: BufferBudget,
    /// Verifies the credentials of cluster peers that relay a feed.
    pub cluster_secret: Option<crate::auth::cluster::ClusterSecret>,
}

/// Why [`IngestContext::admit`] refused.
#[derive(Debug)]
pub enum AdmitFailure {
    /// Refused at once: too many failed attempts from this address or
    /// with this token.
    Throttled(Blocked),
    Check(AdmitError),
}

impl AdmitFailure {
    /// What the client is told (never whether a token exists).
    pub fn public_message(&self) -> &'static str {
        match self {
            AdmitFailure::Throttled(_) => "too many failed attempts; retry later",
            AdmitFailure::Check(AdmitError::Refused(r)) => r.public_message(),
            AdmitFailure::Check(AdmitError::Unavailable(_)) => "token check unavailable; retry",
        }
    }
}

impl IngestContext {
    /// The admission check behind the throttle: an address or token that
    /// failed too often is refused without verifying or reading the token
    /// (counted in `admission_throttled_total` and as refusal reason
    /// `throttled`); a refusal is counted against the address (no valid
    /// token) or the token (validly signed, refused).
    pub async fn admit(
        &self,
        token: &str,
        stream: &StreamName,
        source: &SourceId,
        ip: IpAddr,
    ) -> Result<Admitted, AdmitFailure> {
        let token_key = self.throttle.token_key(token, None);
        let token_ip_key = self.throttle.token_key(token, Some(ip));
        if let Err(b) = self
            .throttle
            .check(&[Key::Ip(ip), token_key, token_ip_key], Instant::now())
        {
            self.metrics
                .admission_throttled
                .with_label_values(&[b.key.kind()])
                .inc();
            self.metrics
                .admission_refusals
                .with_label_values(&["throttled"])
                .inc();
            return Err(AdmitFailure::Throttled(b));
        }
        match self
            .admission
            .check(token, stream, source, ip, chrono::Utc::now())
            .await
        {
            Ok(a) => Ok(a),
            Err(AdmitError::Refused(r)) => {
                let key = match r {
                    Refusal::Malformed | Refusal::UnknownKey | Refusal::BadSignature => Key::Ip(ip),
                    // Depend on who asks: a stolen secret used from
                    // elsewhere must not lock its owner out.
                    Refusal::StreamNotAllowed | Refusal::IpNotAllowed => token_ip_key,
                    _ => token_key,
                };
                if let Some(block) = self.throttle.failed(key, Instant::now()) {
                    if self.log.allow("admission_throttle", Some(ip)) {
                        tracing::info!(
                            %ip,
                            blocked = key.kind(),
                            block_ms = block.as_millis() as u64,
                            "repeated failed admissions: refusing further attempts at once"
                        );
                    }
                }
                Err(AdmitFailure::Check(AdmitError::Refused(r)))
            }
            Err(e) => Err(AdmitFailure::Check(e)),
        }
    }

    /// Forget idle throttle entries and write the summaries of suppressed
    /// log lines, until `stop`.
    pub async fn housekeeping(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.log.sweep_every());
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.log.sweep();
                    self.throttle.sweep(Instant::now());
                }
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// Bytes held in partial messages by connections, against one budget.
pub struct BufferBudget {
    max: usize,
    used: AtomicUsize,
}

/// One connection's part of a [`BufferBudget`]; given back on drop.
pub struct BufferShare<'a> {
    budget: &'a BufferBudget,
    held: usize,
}

/// Growing a [`BufferShare`] would exceed its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

impl BufferBudget {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            used: AtomicUsize::new(0),
        }
    }

    pub fn share(&self) -> BufferShare<'_> {
        BufferShare {
            budget: self,
            held: 0,
        }
    }

    /// Bytes held by all shares.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl BufferShare<'_> {
    /// Hold `bytes` from now on (more or fewer than before). Growing past
    /// the budget fails and keeps what was held.
    pub fn set(&mut self, bytes: usize) -> Result<(), OverBudget> {
        if bytes <= self.held {
            self.budget
                .used
                .fetch_sub(self.held - bytes, Ordering::AcqRel);
            self.held = bytes;
            return Ok(());
        }
        let more = bytes - self.held;
        self.budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more).filter(|n| *n <= self.budget.max)
            })
            .map_err(|_| OverBudget)?;
        self.held = bytes;
        Ok(())
    }
}

impl Drop for BufferShare<'_> {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// Global and per-IP connection counting. A slot is released when its
/// guard drops.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

pub struct ConnectionSlot<'a> {
    limits: &'a ConnectionLimits,
    ip: IpAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    Total,
    PerIp,
}

impl LimitExceeded {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            LimitExceeded::Total => "total",
            LimitExceeded::PerIp => "per_ip",
        }
    }
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            counts: Mutex::new((0, HashMap::new())),
        }
    }

    pub fn acquire(&self, ip: IpAddr) -> Result<ConnectionSlot<'_>, LimitExceeded> {
        let mut g = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if g.0 >= self.max_total {
            return Err(LimitExceeded::Total);
        }
        let n = g.1.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(LimitExceeded::PerIp);
        }
        *n += 1;
        g.0 += 1;
        Ok(ConnectionSlot { limits: self, ip })
    }
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        let mut g = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_shares_stay_within_the_budget() {
        let b = BufferBudget::new(100);
        let mut x = b.share();
        let mut y = b.share();
        assert_eq!(x.set(60), Ok(()));
        assert_eq!(y.set(50), Err(OverBudget));
        assert_eq!(y.set(40), Ok(()));
        assert_eq!(b.used(), 100);
        assert_eq!(x.set(10), Ok(()));
        assert_eq!(y.set(90), Ok(()));
        drop(y);
        assert_eq!(b.used(), 10);
        drop(x);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn connection_limits_per_ip_and_in_all() {
        let l = ConnectionLimits::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).err(), Some(LimitExceeded::PerIp));
        let _s3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).err(), Some(LimitExceeded::Total));
        drop(s1);
        assert!(l.acquire(a).is_ok());
    }
}
