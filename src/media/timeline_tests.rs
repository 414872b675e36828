//! Tests of the timeline pieces, including a simulated switch.

use bytes::Bytes;

use super::*;
use crate::media::Codec;

fn video(dts: i64, cts: i64, keyframe: bool) -> Frame {
    Frame {
        track: Track::Video,
        codec: Codec::H264,
        dts,
        pts: dts + cts,
        keyframe,
        payload: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
    }
}

fn audio(dts: i64) -> Frame {
    Frame {
        track: Track::Audio,
        codec: Codec::Aac,
        dts,
        pts: dts,
        keyframe: true,
        payload: Bytes::from_static(&[0x21, 0x10]),
    }
}

#[test]
fn unwrapper_first_value_maps_to_itself() {
    let mut u = TimestampUnwrapper::new();
    assert_eq!(u.unwrap(123_456), 123_456);
    assert_eq!(u.unwrap(123_489), 123_489);
    let mut u = TimestampUnwrapper::new();
    assert_eq!(u.unwrap(u32::MAX), i64::from(u32::MAX));
}

#[test]
fn unwrapper_crosses_the_wrap_forwards() {
    let mut u = TimestampUnwrapper::new();
    let start = u32::MAX - 50;
    assert_eq!(u.unwrap(start), i64::from(start));
    assert_eq!(u.unwrap(u32::MAX - 17), i64::from(u32::MAX) - 17);
    assert_eq!(u.unwrap(15), (1i64 << 32) + 15);
    assert_eq!(u.unwrap(48), (1i64 << 32) + 48);
    // A second wrap keeps counting.
    let mut v = (1i64 << 32) + 48;
    let mut raw = 48u32;
    for _ in 0..300 {
        raw = raw.wrapping_add(1 << 24);
        v += 1 << 24;
        assert_eq!(u.unwrap(raw), v);
    }
    assert!(v > 1i64 << 33);
}

#[test]
fn unwrapper_small_backwards_step_is_not_a_wrap() {
    let mut u = TimestampUnwrapper::new();
    assert_eq!(u.unwrap(1000), 1000);
    assert_eq!(u.unwrap(1066), 1066);
    assert_eq!(u.unwrap(1033), 1033); // B-frame-like jitter
    assert_eq!(u.unwrap(1100), 1100);
    // Jitter right after a wrap goes back across the boundary, not forwards by 2^32.
    let mut u = TimestampUnwrapper::new();
    u.unwrap(u32::MAX - 10);
    assert_eq!(u.unwrap(20), (1i64 << 32) + 20);
    assert_eq!(u.unwrap(u32::MAX - 5), i64::from(u32::MAX) - 5);
    assert_eq!(u.unwrap(40), (1i64 << 32) + 40);
}

#[test]
fn unwrapper_backwards_from_zero_goes_negative() {
    let mut u = TimestampUnwrapper::new();
    assert_eq!(u.unwrap(10), 10);
    assert_eq!(u.unwrap(u32::MAX - 9), -10);
}

#[test]
fn rebase_shifts_dts_and_pts_keeping_cts() {
    let r = Rebase::new(1_000_000, 500);
    assert_eq!(r.offset(), 500 - 1_000_000);
    assert_eq!(r.map(1_000_000), 500);
    assert_eq!(r.map(1_000_033), 533);
    let f = video(1_000_033, 66, false);
    let out = r.apply(&f);
    assert_eq!((out.dts, out.pts), (533, 599));
    assert_eq!(out.cts(), f.cts());
    assert_eq!(out.payload, f.payload);
    assert_eq!(out.keyframe, f.keyframe);
    let neg = r.apply(&video(1_000_066, -20, false));
    assert_eq!((neg.dts, neg.pts), (566, 546));
}

#[test]
fn rebase_saturates_instead_of_overflowing() {
    let r = Rebase::new(i64::MIN, i64::MAX);
    assert_eq!(r.map(0), i64::MAX);
    let r = Rebase::new(i64::MAX, i64::MIN);
    assert_eq!(r.map(-5), i64::MIN);
}

#[test]
fn clock_next_base() {
    let mut c = OutputClock::new();
    assert_eq!(c.last_dts(), None);
    assert_eq!(c.next_base(33), 0);
    c.observe(&video(100, 0, true));
    c.observe(&audio(120));
    c.observe(&video(90, 0, false)); // out of order: does not move back
    assert_eq!(c.last_track_dts(Track::Video), Some(100));
    assert_eq!(c.last_track_dts(Track::Audio), Some(120));
    assert_eq!(c.last_dts(), Some(120));
    // Audio leads video by 20 ms: one frame after the video.
    assert_eq!(c.next_base(33), 133);
    // A gap shorter than the audio lead: still one gap after the video
    // (the new feed's audio before 120 is the overlap, dropped by the
    // engine); the gap is at least 1.
    assert_eq!(c.next_base(10), 110);
    assert_eq!(c.next_base(0), 101);
    assert_eq!(c.next_base(-7), 101);
    assert_eq!(Rebase::continue_after(&c, 5, 33), Rebase::new(5, 133));
    let mut v = OutputClock::new();
    v.observe(&video(100, 0, true));
    assert_eq!(v.next_base(33), 133);
    let mut a = OutputClock::new();
    a.observe(&audio(120));
    assert_eq!(a.next_base(33), 153);
}

#[test]
fn enforce_monotonic_video_strict_audio_non_decreasing() {
    let mut c = OutputClock::new();
    // Empty clock: untouched.
    let f = c.enforce_monotonic(video(-5, 10, true));
    assert_eq!((f.dts, f.pts), (-5, 5));

    c.observe(&video(100, 0, true));
    c.observe(&audio(100));

    let v = c.enforce_monotonic(video(100, 40, false));
    assert_eq!((v.dts, v.pts), (101, 141));
    let v = c.enforce_monotonic(video(80, -10, false));
    assert_eq!((v.dts, v.pts), (101, 91));
    let v = c.enforce_monotonic(video(133, 33, false));
    assert_eq!((v.dts, v.pts), (133, 166));

    let a = c.enforce_monotonic(audio(100));
    assert_eq!((a.dts, a.pts), (100, 100));
    let a = c.enforce_monotonic(audio(90));
    assert_eq!((a.dts, a.pts), (100, 100));
    let a = c.enforce_monotonic(audio(123));
    assert_eq!((a.dts, a.pts), (123, 123));
}

#[test]
fn estimator_defaults_and_median() {
    let mut e = FrameIntervalEstimator::new();
    assert_eq!(e.interval_ms(), 33);
    e.observe(0);
    assert_eq!(e.interval_ms(), 33);
    // 25 fps with one dropped frame and one repeated DTS.
    for dts in [40, 80, 120, 200, 240, 240, 280, 320] {
        e.observe(dts);
    }
    assert_eq!(e.interval_ms(), 40);
}

#[test]
fn estimator_follows_rate_changes_and_ignores_gaps() {
    let mut e = FrameIntervalEstimator::new();
    let mut dts = 0;
    for _ in 0..50 {
        e.observe(dts);
        dts += 33;
    }
    assert_eq!(e.interval_ms(), 33);
    dts += 5_000; // stall
    e.observe(dts);
    assert_eq!(e.interval_ms(), 33);
    e.observe(dts - 1_000_000); // backwards jump
    dts -= 1_000_000;
    for _ in 0..FrameIntervalEstimator::WINDOW {
        dts += 17;
        e.observe(dts);
    }
    assert_eq!(e.interval_ms(), 17);
}

/// Feed A runs at 1_000_000 ms on its own timeline, feed B restarts at 0.
/// After the switch the output continues one frame interval after A's last
/// output, monotonic per track, with B's composition offsets intact.
#[test]
fn switch_keeps_output_continuous_and_monotonic() {
    let mut clock = OutputClock::new();
    let mut est = FrameIntervalEstimator::new();
    let mut out: Vec<Frame> = Vec::new();
    let emit = |clock: &mut OutputClock, rebase: &Rebase, f: &Frame, out: &mut Vec<Frame>| {
        if f.dts < rebase.in_base {
            return;
        }
        let o = clock.enforce_monotonic(rebase.apply(f));
        clock.observe(&o);
        out.push(o);
    };

    // Feed A: 30 fps video with B-frame cts, 23 ms audio, 2 s.
    let a_start = 1_000_000;
    let mut a_frames = Vec::new();
    for i in 0..60 {
        let dts = a_start + i * 33;
        a_frames.push(video(dts, if i % 3 == 1 { 66 } else { 33 }, i % 30 == 0));
        a_frames.push(audio(a_start + i * 23));
    }
    let rebase_a = Rebase::continue_after(&clock, a_start, est.interval_ms());
    assert_eq!(rebase_a.out_base, 0);
    for f in &a_frames {
        if f.track == Track::Video {
            est.observe(f.dts);
        }
        emit(&mut clock, &rebase_a, f, &mut out);
    }
    let last_a = clock.last_dts().unwrap();
    let last_a_video = clock.last_track_dts(Track::Video).unwrap();
    assert_eq!(last_a_video, 59 * 33);
    let switch_at = out.len();

    // Feed B: its cached GOP starts at dts 0 (audio slightly before the keyframe).
    let b_frames = [
        audio(-10),
        video(0, 66, true),
        audio(13),
        video(33, 99, false),
        audio(36),
        video(66, 0, false),
        audio(59),
    ];
    let gap = est.interval_ms();
    assert_eq!(gap, 33);
    let rebase_b = Rebase::continue_after(&clock, 0, gap);
    assert_eq!(rebase_b.out_base, last_a + 33);
    for f in &b_frames {
        emit(&mut clock, &rebase_b, f, &mut out);
    }

    let after = &out[switch_at..];
    assert_eq!(after.len(), 6, "audio before the keyframe is dropped");
    assert!(after[0].is_video_keyframe());
    assert_eq!(after[0].dts, last_a + 33);
    assert_eq!(after[0].cts(), 66);
    assert_eq!(after[2].cts(), 99);
    assert!(after.iter().all(|f| f.dts > last_a));

    for track in [Track::Video, Track::Audio] {
        let dts: Vec<i64> = out
            .iter()
            .filter(|f| f.track == track)
            .map(|f| f.dts)
            .collect();
        for w in dts.windows(2) {
            match track {
                Track::Video => assert!(w[0] < w[1], "video {w:?}"),
                Track::Audio => assert!(w[0] <= w[1], "audio {w:?}"),
            }
        }
    }
}

/// If the new feed's timeline steps backwards after the cut (an encoder
/// glitch), the output still never goes backwards.
#[test]
fn switch_with_backwards_input_is_clamped() {
    let mut clock = OutputClock::new();
    clock.observe(&video(5_000, 0, false));
    clock.observe(&audio(5_010));
    let r = Rebase::continue_after(&clock, 100, 33);
    let first = clock.enforce_monotonic(r.apply(&video(100, 0, true)));
    clock.observe(&first);
    // One frame after the last video; the audio (10 ms ahead) is already
    // behind that.
    assert_eq!(first.dts, 5_033);
    let glitch = clock.enforce_monotonic(r.apply(&video(50, 20, false)));
    assert_eq!((glitch.dts, glitch.pts), (5_034, 5_054));
    let a = clock.enforce_monotonic(r.apply(&audio(60)));
    assert_eq!(a.dts, 5_010);
}
