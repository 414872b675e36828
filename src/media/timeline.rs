//! Timelines: from 32-bit RTMP timestamps to one continuous output timeline
//! per source.
//!
//! The chain for every frame is: raw `u32` RTMP ms → [`TimestampUnwrapper`]
//! (the feed's own `i64` timeline) → [`Rebase`] (the source's output
//! timeline; one offset per feed and switch, shared by audio and video) →
//! [`OutputClock::enforce_monotonic`] (last line of defence) →
//! [`OutputClock::observe`].
//!
//! Invariants:
//! - Unwrapping: consecutive raw values are taken to be less than 2^31 ms
//!   apart, so a step backwards (B-frame-like jitter, audio/video skew) stays
//!   a step backwards and only a jump over the 2^32 boundary counts as a
//!   wrap, in either direction.
//! - Rebasing and clamping shift `dts` and `pts` by the same amount: the
//!   composition offset `pts - dts` is preserved.
//! - On a switch, `out_base = clock.next_base(gap)` lies strictly after
//!   every DTS already emitted, so with `in_base` = the DTS of the first
//!   frame relayed from the new feed (and frames below `in_base` dropped),
//!   the output continues strictly after the old feed. `enforce_monotonic`
//!   then keeps video DTS strictly increasing and audio DTS non-decreasing
//!   even if a feed's own timeline steps backwards.
//! - Arithmetic saturates instead of overflowing, so hostile timestamps
//!   cannot panic a debug build.

use std::collections::VecDeque;

use super::{Frame, Track};

/// Unwraps 32-bit RTMP millisecond timestamps into a monotonic-ish i64 timeline (handles wrap at 2^32 in both directions relative to the last value; first value maps to itself).
#[derive(Debug, Default, Clone)]
pub struct TimestampUnwrapper {
    /// Last raw value and what it unwrapped to.
    last: Option<(u32, i64)>,
}

impl TimestampUnwrapper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `ts` onto the unwrapped timeline: the last value plus the signed
    /// 32-bit difference from the last raw value.
    pub fn unwrap(&mut self, ts: u32) -> i64 {
        let value = match self.last {
            None => i64::from(ts),
            Some((raw, value)) => value.saturating_add(i64::from(ts.wrapping_sub(raw) as i32)),
        };
        self.last = Some((ts, value));
        value
    }
}

/// Maps one feed's timeline onto a source's continuous output timeline: out = in - in_base + out_base,
/// one offset shared by audio and video of the feed. Guarantees output DTS never goes below `floor` given at rebase time.
///
/// The floor is `out_base` itself: every input DTS `>= in_base` maps to an
/// output DTS `>= out_base`. Callers pick `in_base` = the first relayed
/// frame's DTS, drop earlier frames, and take `out_base` from
/// [`OutputClock::next_base`] (see [`Rebase::continue_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebase {
    pub in_base: i64,
    pub out_base: i64,
}

impl Rebase {
    /// Start a mapping so that input `in_base` maps to `out_base`.
    pub fn new(in_base: i64, out_base: i64) -> Self {
        Rebase { in_base, out_base }
    }

    /// A mapping that puts input `in_base` one frame gap after everything
    /// `clock` has emitted (at 0 on an empty clock).
    pub fn continue_after(clock: &OutputClock, in_base: i64, frame_gap_ms: i64) -> Self {
        Rebase::new(in_base, clock.next_base(frame_gap_ms))
    }

    /// What is added to every input timestamp.
    pub fn offset(&self) -> i64 {
        self.out_base.saturating_sub(self.in_base)
    }

    /// Shifts dts and pts, keeps pts - dts.
    pub fn apply(&self, frame: &Frame) -> Frame {
        Frame {
            dts: self.map(frame.dts),
            pts: self.map(frame.pts),
            ..frame.clone()
        }
    }

    /// Map one input timestamp to the output timeline.
    pub fn map(&self, ts: i64) -> i64 {
        ts.saturating_add(self.offset())
    }
}

/// The output timeline of one source: tracks the last output DTS per track and proposes the out_base for a switch.
#[derive(Debug, Default, Clone)]
pub struct OutputClock {
    video: Option<i64>,
    audio: Option<i64>,
}

impl OutputClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record an emitted frame's output timestamps (a per-track maximum, so
    /// observing out of order never moves the clock backwards).
    pub fn observe(&mut self, frame: &Frame) {
        let slot = match frame.track {
            Track::Video => &mut self.video,
            Track::Audio => &mut self.audio,
        };
        *slot = Some(slot.map_or(frame.dts, |last| last.max(frame.dts)));
    }

    /// Last emitted output DTS over all tracks (None if nothing emitted yet).
    pub fn last_dts(&self) -> Option<i64> {
        match (self.video, self.audio) {
            (Some(v), Some(a)) => Some(v.max(a)),
            (v, a) => v.or(a),
        }
    }

    /// Last emitted output DTS of one track.
    pub fn last_track_dts(&self, track: Track) -> Option<i64> {
        match track {
            Track::Video => self.video,
            Track::Audio => self.audio,
        }
    }

    /// Where the next feed's first frame (its keyframe) should land: one
    /// frame gap (>= 1) after the last video DTS (after the last audio DTS
    /// when there was no video); 0 if nothing was emitted.
    ///
    /// Audio leads video by up to a few frames in interleaved FLV and more
    /// in MPEG-TS (audio PES are sent ahead), so basing the gap on the
    /// later of the two tracks would leave a hole of that lead in the video
    /// at every switch. The new feed's audio that then lands before the
    /// last audio out is the overlap of the two feeds: the engine drops it
    /// ([`OutputClock::last_track_dts`] at the cut is the floor).
    pub fn next_base(&self, frame_gap_ms: i64) -> i64 {
        let gap = frame_gap_ms.max(1);
        match (self.video, self.audio) {
            (Some(last), _) | (None, Some(last)) => last.saturating_add(gap),
            (None, None) => 0,
        }
    }

    /// Clamp so per-track output DTS is strictly monotonic... for video strictly increasing, for audio non-decreasing; returns the adjusted frame (pts shifted by the same amount as dts). Use this as a last line of defence after Rebase::apply.
    ///
    /// Does not record the frame: call [`OutputClock::observe`] with the
    /// result once it is emitted.
    pub fn enforce_monotonic(&self, mut frame: Frame) -> Frame {
        let min = match frame.track {
            Track::Video => self.video.map(|last| last.saturating_add(1)),
            Track::Audio => self.audio,
        };
        if let Some(min) = min {
            if frame.dts < min {
                let shift = min.saturating_sub(frame.dts);
                frame.dts = min;
                frame.pts = frame.pts.saturating_add(shift);
            }
        }
        frame
    }
}

/// Estimated frame interval in ms from recent video DTS deltas (median of last N); default 33 when unknown.
///
/// Only deltas in `1..=1000` ms count: repeated or backwards DTS and long
/// gaps (stalls, discontinuities) say nothing about the frame rate.
#[derive(Debug, Default, Clone)]
pub struct FrameIntervalEstimator {
    last: Option<i64>,
    deltas: VecDeque<i64>,
}

impl FrameIntervalEstimator {
    /// How many recent deltas the median is taken over.
    pub const WINDOW: usize = 15;
    /// The estimate before any usable delta was seen.
    pub const DEFAULT_MS: i64 = 33;
    const MAX_DELTA_MS: i64 = 1000;

    pub fn new() -> Self {
        Self::default()
    }

    /// Record a video frame's DTS (decode order).
    pub fn observe(&mut self, dts: i64) {
        if let Some(last) = self.last {
            let delta = dts.saturating_sub(last);
            if (1..=Self::MAX_DELTA_MS).contains(&delta) {
                if self.deltas.len() == Self::WINDOW {
                    self.deltas.pop_front();
                }
                self.deltas.push_back(delta);
            }
        }
        self.last = Some(dts);
    }

    /// Median of the recent deltas (upper median for an even count), at
    /// least 1; [`Self::DEFAULT_MS`] when unknown.
    pub fn interval_ms(&self) -> i64 {
        if self.deltas.is_empty() {
            return Self::DEFAULT_MS;
        }
        let mut sorted: Vec<i64> = self.deltas.iter().copied().collect();
        sorted.sort_unstable();
        sorted[sorted.len() / 2].max(1)
    }
}

#[cfg(test)]
#[path = "timeline_tests.rs"]
mod tests;
