//! Encoders: publish a fixture at real-time pace with the gateway's own
//! client ([`primacy::client::push`]), reconnecting by the balance-of-
//! ordered-groups rule (DESIGN section 8) across one or more URLs.
//!
//! An encoder is one tokio task, no per-frame allocation: the fixture's
//! tags are shared `Bytes`, and a frame item is built from a clone of them.
//! Timestamps continue across reconnects (the encoder's clock starts at its
//! birth), as a real encoder's do. It can be made to stall (keep the
//! connection open, send nothing), be killed (the connection just drops), or
//! stop cleanly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use primacy::client::{self, ClientOptions, ClientUrl, Failover, PushSession, Step};
use primacy::engine::PlayerItem;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::fixtures::Fixture;

/// What an encoder is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Run,
    /// Keep the connection, send nothing.
    Stall,
    /// Close the connection and end.
    Stop,
}

/// Live counters of an encoder.
#[derive(Debug, Default)]
pub struct EncoderStats {
    /// Sessions that were accepted.
    pub connects: AtomicU64,
    /// Attempts the server refused (bad token, shutting down…).
    pub refused: AtomicU64,
    /// Attempts that failed otherwise (connect, timeout).
    pub failures: AtomicU64,
    /// Accepted sessions that later broke.
    pub drops: AtomicU64,
    pub publishing: AtomicBool,
    pub last_error: Mutex<Option<String>>,
}

/// How an encoder publishes.
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    /// A balance group of ordered groups of URLs (usually one URL).
    pub groups: Vec<Vec<ClientUrl>>,
    pub fixture: Fixture,
    pub reconnect_delay: Duration,
    /// Frames due within this much are sent together (fewer wake-ups when
    /// thousands of encoders run); zero = each frame at its own time.
    pub batch: Duration,
    /// Give up after this many consecutive refusals (0 = never).
    pub max_refusals: u64,
}

impl EncoderConfig {
    pub fn new(url: ClientUrl, fixture: Fixture) -> Self {
        Self {
            groups: vec![vec![url]],
            fixture,
            reconnect_delay: Duration::from_millis(200),
            batch: Duration::ZERO,
            max_refusals: 0,
        }
    }
}

/// A running encoder.
pub struct Encoder {
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
    pub stats: Arc<EncoderStats>,
}

impl Encoder {
    /// Start publishing on the current tokio runtime.
    pub fn spawn(rt: &tokio::runtime::Handle, cfg: EncoderConfig) -> Self {
        let (tx, rx) = watch::channel(Mode::Run);
        let stats = Arc::new(EncoderStats::default());
        let task = rt.spawn(run(cfg, rx, stats.clone()));
        Self {
            mode: tx,
            task,
            stats,
        }
    }

    pub fn stall(&self) {
        let _ = self.mode.send(Mode::Stall);
    }

    /// Drop the connection at once, as a killed encoder process would.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Close the session cleanly and wait (bounded) for the task to end.
    pub async fn stop(self) {
        let _ = self.mode.send(Mode::Stop);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }

    pub fn is_publishing(&self) -> bool {
        self.stats.publishing.load(Ordering::Relaxed)
    }
}

fn note_error(stats: &EncoderStats, e: &client::ClientError) {
    if let Ok(mut g) = stats.last_error.lock() {
        *g = Some(e.to_string());
    }
}

async fn run(cfg: EncoderConfig, mut mode: watch::Receiver<Mode>, stats: Arc<EncoderStats>) {
    let birth = Instant::now();
    let shape = Failover::shape_of(&cfg.groups);
    let start = rand::random_range(0..cfg.groups.len().max(1));
    let Ok(mut rule) = Failover::new(&shape, start) else {
        return;
    };
    let opts = ClientOptions::default();
    let mut step = rule.first();
    let mut refusals_in_a_row = 0u64;
    loop {
        if *mode.borrow() == Mode::Stop {
            return;
        }
        let target = match step {
            Step::Try(t) => t,
            Step::Wait => {
                tokio::time::sleep(cfg.reconnect_delay).await;
                step = rule.waited();
                continue;
            }
        };
        let url = &cfg.groups[target.group][target.index];
        match client::push(url, &opts).await {
            Ok(mut session) => {
                refusals_in_a_row = 0;
                stats.connects.fetch_add(1, Ordering::Relaxed);
                rule.connected();
                stats.publishing.store(true, Ordering::Relaxed);
                let result = publish(&mut session, &cfg, &mut mode, birth).await;
                stats.publishing.store(false, Ordering::Relaxed);
                match result {
                    Ok(()) => {
                        session.close().await;
                        return;
                    }
                    Err(e) => {
                        stats.drops.fetch_add(1, Ordering::Relaxed);
                        note_error(&stats, &e);
                        tokio::time::sleep(cfg.reconnect_delay).await;
                        step = rule.dropped();
                    }
                }
            }
            Err(e) => {
                if matches!(e, client::ClientError::Refused(_)) {
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    refusals_in_a_row += 1;
                    if cfg.max_refusals > 0 && refusals_in_a_row >= cfg.max_refusals {
                        note_error(&stats, &e);
                        return;
                    }
                } else {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                }
                note_error(&stats, &e);
                step = rule.failed();
                if step != Step::Wait {
                    tokio::time::sleep(cfg.reconnect_delay).await;
                }
            }
        }
    }
}

/// Wait out a stall; `false` when told to stop.
async fn hold(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        match *mode.borrow_and_update() {
            Mode::Run => return true,
            Mode::Stop => return false,
            Mode::Stall => {}
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

/// Send the fixture in a loop at real-time pace until stopped (`Ok`) or the
/// connection fails (`Err`).
async fn publish(
    session: &mut PushSession,
    cfg: &EncoderConfig,
    mode: &mut watch::Receiver<Mode>,
    birth: Instant,
) -> Result<(), client::ClientError> {
    let start = Instant::now();
    let base_ms = start.duration_since(birth).as_millis() as u64;
    let flv = session.format() == primacy::engine::PlayerFormat::Flv;
    let mut lap: u64 = 0;
    loop {
        if flv {
            let fx = &cfg.fixture.flv;
            let lap_ms = lap * u64::from(fx.duration_ms);
            for tag in &fx.tags {
                if tag.kind == 18 || (lap > 0 && tag.is_config()) {
                    continue;
                }
                let at = u64::from(tag.ts) + lap_ms;
                if !pace(start, at, cfg.batch, mode).await {
                    return Ok(());
                }
                let ts = (at + base_ms) as u32;
                let item = if tag.kind == 9 {
                    PlayerItem::Video {
                        ts,
                        body: tag.body.clone().into(),
                        keyframe: tag.is_video_keyframe(),
                    }
                } else {
                    PlayerItem::Audio {
                        ts,
                        body: tag.body.clone().into(),
                    }
                };
                session.send(item).await?;
            }
        } else {
            let fx = &cfg.fixture.ts;
            let lap_ms = lap * u64::from(fx.duration_ms);
            for &(t, off) in &fx.chunks {
                let at = u64::from(t) + lap_ms;
                if !pace(start, at, cfg.batch, mode).await {
                    return Ok(());
                }
                let end = (off + 7 * 188).min(fx.packets.len());
                session
                    .send(PlayerItem::Ts {
                        data: fx.chunk(off, end, lap, lap_ms + base_ms),
                        keyframe: false,
                    })
                    .await?;
            }
        }
        lap += 1;
    }
}

/// Sleep until `at_ms` after `start` (rounded up to the batch grid); honour
/// stalls. `false` when told to stop.
async fn pace(
    start: Instant,
    at_ms: u64,
    batch: Duration,
    mode: &mut watch::Receiver<Mode>,
) -> bool {
    if *mode.borrow() != Mode::Run && !hold(mode).await {
        return false;
    }
    let mut due = Duration::from_millis(at_ms);
    if !batch.is_zero() {
        let b = batch.as_millis() as u64;
        due = Duration::from_millis(at_ms.div_ceil(b) * b);
    }
    let due = start + due;
    if due > Instant::now() {
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = mode.changed() => {
                return Box::pin(pace(start, at_ms, batch, mode)).await;
            }
        }
    }
    true
}
