//! Players: play a stream with the gateway's own client
//! ([`primacy::client::pull`]) and record, per video frame, the arrival
//! time, dts, pts and keyframe flag; plus the analyses run on a recording
//! (largest freeze in a window, timestamp regressions, lost frames) and a
//! cheap real-time check for players that do not record every frame.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use primacy::client::{self, ClientOptions, ClientUrl, Counter};
use primacy::engine::FeedMedia;
use primacy::media::Track;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The load test's clock origin: every arrival time is ms since this; the
/// wall-clock time beside it places the gateway's own timestamps (switch
/// records) on the same clock.
static T0: LazyLock<(Instant, SystemTime)> = LazyLock::new(|| (Instant::now(), SystemTime::now()));

/// Milliseconds since the load test's clock origin.
pub fn now_ms() -> f64 {
    T0.0.elapsed().as_secs_f64() * 1000.0
}

/// A wall-clock time of this machine (e.g. a gateway's switch record) in
/// ms on the load test's clock.
pub fn wall_ms(t: chrono::DateTime<chrono::Utc>) -> f64 {
    let t0: chrono::DateTime<chrono::Utc> = T0.1.into();
    (t - t0).num_microseconds().unwrap_or(0) as f64 / 1000.0
}

/// One received video frame.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FrameRec {
    /// Arrival, ms since the load test's clock origin.
    pub at: f64,
    pub dts: i64,
    pub pts: i64,
    pub key: bool,
}

/// What a player saw.
#[derive(Debug, Default)]
pub struct Recording {
    /// Every video frame (only when recording).
    pub frames: Vec<FrameRec>,
    pub video_frames: u64,
    /// (arrival, dts) of the window's first frame: the real-time reference.
    origin: Option<(f64, i64)>,
    /// Extremes of `arrival − dts` (relative to the origin) in the window.
    lag_min: f64,
    lag_max: f64,
    pub last_at: Option<f64>,
    pub sessions: u64,
    pub last_error: Option<String>,
}

impl Recording {
    /// How far the player drifted behind real time in the window: the
    /// spread of (arrival − dts), in ms (≈ 0 for a player at real time,
    /// plus jitter).
    pub fn drift_ms(&self) -> f64 {
        if self.origin.is_none() {
            return f64::INFINITY;
        }
        self.lag_max - self.lag_min
    }

    /// Start a new real-time window.
    pub fn reset_window(&mut self) {
        self.origin = None;
        self.lag_min = 0.0;
        self.lag_max = 0.0;
    }
}

/// A running player.
pub struct Player {
    stop: CancellationToken,
    task: JoinHandle<()>,
    pub rec: Arc<Mutex<Recording>>,
    bytes: Arc<AtomicU64>,
    counter: Arc<Mutex<Option<Counter>>>,
}

impl Player {
    /// Play `url` until stopped, reconnecting after 200 ms when the session
    /// ends; `record` keeps every video frame.
    pub fn spawn(rt: &tokio::runtime::Handle, url: ClientUrl, record: bool) -> Self {
        LazyLock::force(&T0);
        let stop = CancellationToken::new();
        let rec = Arc::new(Mutex::new(Recording::default()));
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = Arc::new(Mutex::new(None));
        let task = rt.spawn(run(
            url,
            record,
            stop.clone(),
            rec.clone(),
            bytes.clone(),
            counter.clone(),
        ));
        Self {
            stop,
            task,
            rec,
            bytes,
            counter,
        }
    }

    /// Bytes received so far over every session.
    pub fn bytes(&self) -> u64 {
        let live = self
            .counter
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(Counter::get))
            .unwrap_or(0);
        self.bytes.load(Ordering::Relaxed) + live
    }

    pub fn frames(&self) -> Vec<FrameRec> {
        self.rec
            .lock()
            .map(|r| r.frames.clone())
            .unwrap_or_default()
    }

    pub fn video_frames(&self) -> u64 {
        self.rec.lock().map(|r| r.video_frames).unwrap_or(0)
    }

    pub fn reset_window(&self) {
        if let Ok(mut r) = self.rec.lock() {
            r.reset_window();
        }
    }

    pub fn drift_ms(&self) -> f64 {
        self.rec
            .lock()
            .map(|r| r.drift_ms())
            .unwrap_or(f64::INFINITY)
    }

    /// Stop and wait (bounded) for the session to close.
    pub async fn stop(self) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

async fn run(
    url: ClientUrl,
    record: bool,
    stop: CancellationToken,
    rec: Arc<Mutex<Recording>>,
    bytes: Arc<AtomicU64>,
    counter: Arc<Mutex<Option<Counter>>>,
) {
    let opts = ClientOptions {
        no_input_timeout: Duration::from_secs(60),
        ..ClientOptions::default()
    };
    while !stop.is_cancelled() {
        let session = tokio::select! {
            s = client::pull(&url, &opts) => s,
            _ = stop.cancelled() => return,
        };
        let mut session = match session {
            Ok(s) => s,
            Err(e) => {
                if let Ok(mut r) = rec.lock() {
                    r.last_error = Some(e.to_string());
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        if let Ok(mut c) = counter.lock() {
            *c = Some(session.counter());
        }
        if let Ok(mut r) = rec.lock() {
            r.sessions += 1;
        }
        let ended = loop {
            let media = tokio::select! {
                m = session.next() => m,
                _ = stop.cancelled() => break None,
            };
            match media {
                Ok(Some(FeedMedia::Frame(f))) if f.track == Track::Video => {
                    let at = now_ms();
                    let Ok(mut r) = rec.lock() else { break None };
                    r.video_frames += 1;
                    r.last_at = Some(at);
                    match r.origin {
                        None => r.origin = Some((at, f.dts)),
                        Some((a0, d0)) => {
                            let lag = (at - a0) - (f.dts - d0) as f64;
                            r.lag_min = r.lag_min.min(lag);
                            r.lag_max = r.lag_max.max(lag);
                        }
                    }
                    if record {
                        r.frames.push(FrameRec {
                            at,
                            dts: f.dts,
                            pts: f.pts,
                            key: f.keyframe,
                        });
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break Some("the server ended the stream".to_owned()),
                Err(e) => break Some(e.to_string()),
            }
        };
        let got = session.counter().get();
        if let Ok(mut c) = counter.lock() {
            *c = None;
        }
        bytes.fetch_add(got, Ordering::Relaxed);
        match ended {
            None => {
                session.close().await;
                return;
            }
            Some(e) => {
                if let Ok(mut r) = rec.lock() {
                    r.last_error = Some(e);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

/// The largest wall-clock gap between consecutive video frames that
/// arrived in `[from, to]` (ms since the clock origin); the frame just
/// before `from` counts, so a freeze starting at `from` is seen whole.
pub fn max_gap(frames: &[FrameRec], from: f64, to: f64) -> Option<f64> {
    max_gap_at(frames, from, to).map(|(gap, _)| gap)
}

/// [`max_gap`] and the frame that ended it (where the freeze was).
pub fn max_gap_at(frames: &[FrameRec], from: f64, to: f64) -> Option<(f64, FrameRec)> {
    let start = frames.partition_point(|f| f.at < from).saturating_sub(1);
    let end = frames.partition_point(|f| f.at <= to);
    frames
        .get(start..end)?
        .windows(2)
        .map(|w| (w[1].at - w[0].at, w[1]))
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

/// Timestamp checks over a recording.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DtsCheck {
    /// Steps where dts did not advance.
    pub regressions: u64,
    /// Frames missing, from dts steps over 1.5 frame intervals.
    pub lost_frames: u64,
    pub frames: u64,
    /// The first few steps found, as (arrival, dts before, dts after).
    pub steps: Vec<(f64, i64, i64)>,
}

/// Count regressions and lost frames among frames that arrived in
/// `[from, to]`, for a stream of `frame_ms` frames.
pub fn dts_check(frames: &[FrameRec], from: f64, to: f64, frame_ms: f64) -> DtsCheck {
    let mut c = DtsCheck::default();
    let w: Vec<&FrameRec> = frames
        .iter()
        .filter(|f| f.at >= from && f.at <= to)
        .collect();
    c.frames = w.len() as u64;
    for p in w.windows(2) {
        let step = (p[1].dts - p[0].dts) as f64;
        if step <= 0.0 {
            c.regressions += 1;
        } else if step > frame_ms * 1.5 {
            c.lost_frames += ((step / frame_ms).round() as u64).saturating_sub(1);
        } else {
            continue;
        }
        if c.steps.len() < 10 {
            c.steps.push((p[1].at, p[0].dts, p[1].dts));
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(at: f64, dts: i64) -> FrameRec {
        FrameRec {
            at,
            dts,
            pts: dts,
            key: false,
        }
    }

    #[test]
    fn gaps_and_timestamps() {
        let fr = vec![
            f(0.0, 0),
            f(33.0, 33),
            f(66.0, 66),
            f(200.0, 100),
            f(233.0, 100),
            f(266.0, 200),
        ];
        assert_eq!(max_gap(&fr, 50.0, 300.0), Some(134.0));
        assert_eq!(max_gap(&fr, 201.0, 300.0), Some(33.0));
        let c = dts_check(&fr, 0.0, 300.0, 33.3);
        assert_eq!(c.regressions, 1);
        assert_eq!(c.lost_frames, 2, "100 → 200 is three frame steps: two lost");
        assert_eq!(c.frames, 6);
    }
}
