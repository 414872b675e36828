//! Per-feed GOP cache: the frames since (and including) the last video
//! keyframe, so a switch or a joining player can start at once.
//!
//! Invariants:
//! - Either the cache is empty, or its first frame is a video keyframe and
//!   the rest are the audio frames pushed just before it but timed at or
//!   after it, then every frame pushed after it, in arrival order (audio
//!   interleaved as it arrived). So `has_keyframe() == !is_empty()`.
//! - `bytes()` is the sum of the cached payload lengths and never exceeds
//!   `max_bytes` after a `push` returns: a push that would exceed it clears
//!   the cache, which then stays empty until the next video keyframe.
//! - Feeds that never send video (audio-only) cache nothing.

use std::collections::VecDeque;

use super::{Frame, Track};

/// Per-feed GOP cache: the frames since (and including) the last video keyframe, bounded in bytes.
/// Before the first video keyframe of an audio+video feed nothing is cached (audio-only feeds: keep the last ~1 s of audio is NOT required; keep it simple: if the feed never sent video, cache nothing and report has_keyframe() == false).
/// When the byte bound is exceeded, the cache is cleared and stays empty until the next keyframe (has_keyframe() false until then).
#[derive(Debug, Clone)]
pub struct GopCache {
    frames: VecDeque<Frame>,
    bytes: usize,
    max_bytes: usize,
}

impl GopCache {
    /// An empty cache holding at most `max_bytes` of payload.
    pub fn new(max_bytes: usize) -> Self {
        GopCache {
            frames: VecDeque::new(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Add a frame: a video keyframe starts a new GOP; anything else is
    /// appended if a GOP is open and dropped otherwise. Clones the Frame
    /// (payload Bytes is refcounted).
    ///
    /// Audio that arrived just before the keyframe but is timed at or after
    /// it (muxers send audio ahead of the video, MPEG-TS by up to a few
    /// frames) belongs to the new GOP: it is kept, after the keyframe, so
    /// that a cut to this GOP has no audio hole.
    pub fn push(&mut self, frame: &Frame) {
        if frame.is_video_keyframe() {
            let ahead = self
                .frames
                .iter()
                .rev()
                .take_while(|f| f.track == Track::Audio && f.dts >= frame.dts)
                .count();
            let carried: Vec<Frame> = self.frames.drain(self.frames.len() - ahead..).collect();
            self.clear();
            self.append(frame);
            for f in &carried {
                self.append(f);
            }
            return;
        }
        if self.frames.is_empty() {
            return;
        }
        self.append(frame);
    }

    fn append(&mut self, frame: &Frame) {
        let size = frame.payload.len();
        if self.bytes.saturating_add(size) > self.max_bytes {
            self.clear();
            return;
        }
        self.bytes += size;
        self.frames.push_back(frame.clone());
    }

    /// Whether a GOP (starting at a video keyframe) is cached.
    pub fn has_keyframe(&self) -> bool {
        !self.frames.is_empty()
    }

    /// The cached GOP's keyframe, if any.
    pub fn keyframe(&self) -> Option<&Frame> {
        self.frames.front()
    }

    /// Frames starting at the last video keyframe, in arrival order (audio interleaved as it arrived).
    pub fn frames(&self) -> impl Iterator<Item = &Frame> {
        self.frames.iter()
    }

    /// Number of cached frames.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Total cached payload bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The configured bound on [`GopCache::bytes`].
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Drop everything; the cache refills from the next video keyframe.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::media::{Codec, Track};

    fn video(dts: i64, keyframe: bool, len: usize) -> Frame {
        Frame {
            track: Track::Video,
            codec: Codec::H264,
            dts,
            pts: dts,
            keyframe,
            payload: Bytes::from(vec![0u8; len]),
        }
    }

    fn audio(dts: i64, len: usize) -> Frame {
        Frame {
            track: Track::Audio,
            codec: Codec::Aac,
            dts,
            pts: dts,
            keyframe: true,
            payload: Bytes::from(vec![1u8; len]),
        }
    }

    fn dts_list(c: &GopCache) -> Vec<(Track, i64)> {
        c.frames().map(|f| (f.track, f.dts)).collect()
    }

    #[test]
    fn nothing_before_first_keyframe() {
        let mut c = GopCache::new(1 << 20);
        c.push(&audio(0, 10));
        c.push(&video(0, false, 100));
        c.push(&audio(23, 10));
        assert!(!c.has_keyframe());
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        assert!(c.keyframe().is_none());
    }

    #[test]
    fn resets_at_each_keyframe_and_keeps_interleaved_audio() {
        let mut c = GopCache::new(1 << 20);
        c.push(&video(0, true, 100));
        c.push(&audio(10, 10));
        c.push(&video(33, false, 50));
        c.push(&audio(33, 10));
        assert!(c.has_keyframe());
        assert_eq!(
            dts_list(&c),
            vec![
                (Track::Video, 0),
                (Track::Audio, 10),
                (Track::Video, 33),
                (Track::Audio, 33)
            ]
        );
        assert_eq!(c.bytes(), 170);

        c.push(&video(66, true, 80));
        c.push(&audio(70, 10));
        assert_eq!(dts_list(&c), vec![(Track::Video, 66), (Track::Audio, 70)]);
        assert_eq!(c.bytes(), 90);
        assert_eq!(c.keyframe().map(|f| f.dts), Some(66));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn audio_sent_ahead_of_a_keyframe_joins_its_gop() {
        let mut c = GopCache::new(1 << 20);
        c.push(&video(0, true, 100));
        c.push(&audio(50, 10));
        c.push(&video(33, false, 50));
        // Timed after the next keyframe (66), sent before it.
        c.push(&audio(70, 10));
        c.push(&audio(91, 10));
        c.push(&video(66, true, 80));
        c.push(&audio(113, 10));
        assert_eq!(
            dts_list(&c),
            vec![
                (Track::Video, 66),
                (Track::Audio, 70),
                (Track::Audio, 91),
                (Track::Audio, 113)
            ]
        );
        assert_eq!(c.bytes(), 110);
        // Audio timed before the keyframe stays with the old GOP.
        c.push(&audio(120, 10));
        c.push(&video(99, false, 50));
        c.push(&audio(135, 10));
        c.push(&video(132, true, 80));
        assert_eq!(dts_list(&c), vec![(Track::Video, 132), (Track::Audio, 135)]);
    }

    #[test]
    fn audio_keyframes_do_not_start_a_gop() {
        let mut c = GopCache::new(1 << 20);
        c.push(&video(0, true, 100));
        c.push(&audio(5, 10));
        c.push(&audio(28, 10));
        assert_eq!(c.keyframe().map(|f| f.track), Some(Track::Video));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn clears_on_overflow_and_refills_after_next_keyframe() {
        let mut c = GopCache::new(250);
        c.push(&video(0, true, 100));
        c.push(&video(33, false, 100));
        assert_eq!(c.bytes(), 200);
        c.push(&video(66, false, 100)); // 300 > 250
        assert!(!c.has_keyframe());
        assert_eq!(c.bytes(), 0);
        // Stays empty until the next keyframe.
        c.push(&video(99, false, 10));
        c.push(&audio(100, 10));
        assert!(c.is_empty());
        c.push(&video(132, true, 100));
        c.push(&audio(140, 10));
        assert!(c.has_keyframe());
        assert_eq!(dts_list(&c), vec![(Track::Video, 132), (Track::Audio, 140)]);
        assert_eq!(c.bytes(), 110);
    }

    #[test]
    fn exact_bound_is_kept_and_oversized_keyframe_is_not() {
        let mut c = GopCache::new(200);
        c.push(&video(0, true, 150));
        c.push(&video(33, false, 50));
        assert_eq!(c.bytes(), 200);
        assert!(c.has_keyframe());
        c.push(&video(66, true, 201));
        assert!(!c.has_keyframe());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn audio_only_feed_caches_nothing() {
        let mut c = GopCache::new(1 << 20);
        for i in 0..100 {
            c.push(&audio(i * 23, 300));
        }
        assert!(!c.has_keyframe());
        assert_eq!(c.frames().count(), 0);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn clear_empties() {
        let mut c = GopCache::new(1 << 20);
        c.push(&video(0, true, 100));
        c.clear();
        assert!(!c.has_keyframe());
        assert_eq!(c.bytes(), 0);
        c.push(&audio(10, 10));
        assert!(c.is_empty());
        assert_eq!(c.max_bytes(), 1 << 20);
    }

    #[test]
    fn cached_frames_share_payload() {
        let mut c = GopCache::new(1 << 20);
        let kf = video(0, true, 100);
        c.push(&kf);
        let cached = c.keyframe().map(|f| f.payload.as_ptr());
        assert_eq!(cached, Some(kf.payload.as_ptr()));
    }
}
