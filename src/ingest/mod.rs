//! Ingest: protocol sessions that turn sockets into admitted feeds.
//!
//! socket → session → admission (`auth::publish`) → engine. Sessions never
//! touch election state; they send the engine commands and media.

pub mod demux;
pub mod pull;
pub mod rtmp;
pub mod srt;
pub mod url;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::api::Readiness;
use crate::auth::publish::Admission;
use crate::config::{RtmpConfig, SrtConfig};
use crate::engine::EngineHandle;
use crate::metrics::Metrics;

/// The text of a caught panic (protocol libraries are run under
/// `catch_unwind` so that malformed peer input closes one session only).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// What every ingest session needs.
pub struct IngestContext {
    pub engine: EngineHandle,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub rtmp: RtmpConfig,
    pub srt: SrtConfig,
    pub limits: ConnectionLimits,
    /// Verifies the credentials of cluster peers that relay a feed.
    pub cluster_secret: Option<crate::cluster::credential::ClusterSecret>,
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
