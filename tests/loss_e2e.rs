//! Loss of signal end to end (issue 15): real ffmpeg encoders that die
//! without a goodbye, an ffprobe player, and the freeze the player sees.
//!
//! Primary (priority 100, fixture A, 1 s GOP) and backup (50, fixture B,
//! 0.5 s GOP) both live; the primary is killed with SIGKILL (an SRT encoder
//! then sends no shutdown packet), stopped with SIGSTOP (an RTMP encoder's
//! TCP connection stays open, nothing is sent), or ended with SIGTERM (a
//! clean SRT shutdown). Before loss windows were learned, the first two
//! froze players for `feed_timeout` (1.5 s). The bound asserted here is
//! generous (the machine may be loaded); the measured freeze is printed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::gateway::Gateway as Env;
use common::media::{
    check_monotonic, keyframe_spacing, publish, publish_srt, spawn_logged, Fixture, Player, Proc,
};

/// Well under the old 1.5 s, robust on a loaded machine.
const BOUND: Duration = Duration::from_millis(1_000);

enum Primary {
    Rtmp,
    Srt,
    /// An ffmpeg encoding live (x264 from a test source), as an encoder in
    /// the field does, rather than copying a pre-encoded file.
    SrtLive,
}

enum Death {
    Kill,
    Stop,
    Term,
}

fn signal(p: &Proc, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} failed");
}

/// ffmpeg encoding a 360p30 test picture with a 1 s GOP live and
/// publishing it to `url` as MPEG-TS.
fn publish_live(url: &str) -> Proc {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        ])
        .args([
            "-g",
            "30",
            "-keyint_min",
            "30",
            "-sc_threshold",
            "0",
            "-b:v",
            "600k",
        ])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "mpegts"])
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    spawn_logged(&mut cmd, "ffmpeg live encoder")
}

/// The largest gap between consecutive video packets from `from` on.
fn freeze_since(player: &Player, from: usize) -> Duration {
    let packets = player.snapshot();
    check_monotonic(&packets);
    check_monotonic(&packets[from.saturating_sub(1)..]).0
}

/// Publish primary and backup, wait until the primary's loss window is
/// learned, let it die, and return (freeze the player saw, switch detail).
fn fail_over(primary: Primary, death: Death) -> (Duration, String) {
    let e = Env::start();
    let (hi_id, hi) = e.token(&["match1"], 100);
    let (_, lo) = e.token(&["match1"], 50);
    let mut enc = match primary {
        Primary::Rtmp => publish(Fixture::A, &e.rtmp(&format!("match1?token={hi}"))),
        Primary::Srt => publish_srt(
            Fixture::A,
            &e.srt_ff(&format!("#!::r=match1,m=publish,s={hi}")),
        ),
        Primary::SrtLive => publish_live(&e.srt_ff(&format!("#!::r=match1,m=publish,s={hi}"))),
    };
    let _backup = publish(Fixture::B, &e.rtmp(&format!("match1?token={lo}")));
    e.wait_feeds("match1", 2, Some(&hi_id));
    // The primary's cadence is learned once its warm-up has passed.
    let window = e.wait_for("the primary's loss window", Duration::from_secs(20), || {
        let v = e.stream("match1");
        let feeds = v["sources"][0]["feeds"].as_array()?.clone();
        let w =
            feeds.iter().find(|f| f["token_id"] == hi_id.as_str())?["loss_window_ms"].as_u64()?;
        (w < 1_500).then_some(w)
    });
    let player = Player::start(&e.rtmp("match1"));
    player.wait_packets(100, Duration::from_secs(20));
    let sp = keyframe_spacing(&player.snapshot()).expect("keyframes");
    assert!(
        (sp - 1.0).abs() < 0.2,
        "the primary is on air, spacing {sp}"
    );

    let before = player.count();
    let died = Instant::now();
    match death {
        Death::Kill => enc.kill(),
        Death::Stop => signal(&enc, "-STOP"),
        Death::Term => signal(&enc, "-TERM"),
    }
    // A live encoder stopping cleanly flushes its encoder first: up to a
    // few dozen more frames of the primary.
    player.wait_packets(before + 120, Duration::from_secs(20));
    let freeze = freeze_since(&player, before);
    let switch = e.wait_for("the switch", Duration::from_secs(10), || {
        let v = e.stream("match1");
        let sw = v["sources"][0]["last_switch"].clone();
        (sw["reason"] == "primary_lost").then_some(sw)
    });
    let detail = switch["detail"].as_str().unwrap_or_default().to_owned();
    println!(
        "primary window {window} ms; freeze seen by the player {:.0} ms; switch {detail:?}, gap {} ms; {:?} after the signal",
        freeze.as_secs_f64() * 1000.0,
        switch["gap_ms"],
        died.elapsed()
    );
    let packets = player.snapshot();
    let sp = keyframe_spacing(&packets[packets.len() - 50..]).expect("keyframes after the switch");
    assert!(
        (sp - 0.5).abs() < 0.15,
        "the backup is on air, spacing {sp}"
    );
    if matches!(death, Death::Stop) {
        // Let it go (it would send its backlog) and end it.
        signal(&enc, "-CONT");
        enc.kill();
    }
    (freeze, detail)
}

#[test]
fn srt_encoder_killed_fails_over_within_its_loss_window() {
    let (freeze, detail) = fail_over(Primary::Srt, Death::Kill);
    assert!(detail.starts_with("lost: silent"), "{detail}");
    assert!(freeze < BOUND, "freeze {freeze:?}");
}

#[test]
fn rtmp_encoder_stalled_fails_over_within_its_loss_window() {
    let (freeze, detail) = fail_over(Primary::Rtmp, Death::Stop);
    assert!(detail.starts_with("lost: silent"), "{detail}");
    assert!(freeze < BOUND, "freeze {freeze:?}");
}

#[test]
fn srt_encoder_stopping_cleanly_fails_over_at_once() {
    let (freeze, detail) = fail_over(Primary::Srt, Death::Term);
    // The SRT shutdown closes the feed before its loss window runs out.
    assert_eq!(detail, "lost: closed");
    assert!(freeze < BOUND, "freeze {freeze:?}");
}

#[test]
fn live_srt_encoder_stopping_cleanly_fails_over_at_once() {
    let (freeze, detail) = fail_over(Primary::SrtLive, Death::Term);
    assert_eq!(detail, "lost: closed");
    assert!(freeze < BOUND, "freeze {freeze:?}");
}

#[test]
fn live_srt_encoder_killed_fails_over_within_its_loss_window() {
    let (freeze, detail) = fail_over(Primary::SrtLive, Death::Kill);
    assert!(detail.starts_with("lost: silent"), "{detail}");
    assert!(freeze < BOUND, "freeze {freeze:?}");
}
