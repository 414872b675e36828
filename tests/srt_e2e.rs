//! SRT end to end with real ffmpeg/ffprobe: SRT publish → RTMP play, RTMP
//! publish → SRT play, refusals, and a mixed-protocol failover.

mod common;

use std::time::{Duration, Instant};

use common::gateway::Gateway as Env;
use common::media::{check_monotonic, keyframe_spacing, publish, publish_srt, Fixture, Player};

#[test]
fn srt_publish_plays_over_rtmp_and_srt() {
    let e = Env::start();
    let (_, t) = e.token(&["match1"], 10);
    let _enc = publish_srt(
        Fixture::A,
        &e.srt_ff(&format!("#!::r=match1,m=publish,s={t}")),
    );
    let v = e.wait_feeds("match1", 1, None);
    assert_eq!(v["sources"][0]["feeds"][0]["protocol"], "srt");
    let rtmp_player = Player::start(&e.rtmp("match1"));
    let srt_player = Player::start(&e.srt_ff("#!::r=match1,m=request"));
    rtmp_player.wait_packets(90, Duration::from_secs(20));
    srt_player.wait_packets(90, Duration::from_secs(20));
    // SRT statistics of the feed show in the streams API.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) =
            e.s.call("GET", "/api/v1/streams/match1", Some(&e.key), None);
        let srt = &v["sources"][0]["feeds"][0]["srt"];
        if srt["rx_packets"].as_u64().unwrap_or(0) > 0 {
            assert!(srt["rtt_ms"].as_f64().is_some(), "{srt}");
            break;
        }
        assert!(
            Instant::now() < end,
            "no SRT statistics in the streams API: {v}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, m) = e.s.get_text("/metrics");
    assert!(m.contains("primacy_srt_rx_packets_total"), "{m}");
    for (name, p) in [("rtmp", &rtmp_player), ("srt", &srt_player)] {
        let packets = p.snapshot();
        assert!(
            packets[0].keyframe,
            "{name} player must start on a keyframe"
        );
        let (gap, _) = check_monotonic(&packets);
        println!(
            "SRT in → {name} out: {} packets, largest gap {gap:?}",
            packets.len()
        );
    }
}

#[test]
fn rtmp_publish_plays_over_srt() {
    let e = Env::start();
    let (_, t) = e.token(&["match1"], 10);
    let _enc = publish(Fixture::A, &e.rtmp(&format!("match1?token={t}")));
    e.wait_feeds("match1", 1, None);
    let p = Player::start(&e.srt_ff("#!::r=match1,m=request"));
    p.wait_packets(120, Duration::from_secs(20));
    let packets = p.snapshot();
    assert!(packets[0].keyframe);
    check_monotonic(&packets);
    let sp = keyframe_spacing(&packets).expect("keyframes");
    assert!((sp - 1.0).abs() < 0.2, "spacing {sp}");
}

#[test]
fn mixed_protocol_failover() {
    let e = Env::start();
    let (hi_id, hi) = e.token(&["match1"], 100);
    let (_, lo) = e.token(&["match1"], 50);
    let mut a = publish(Fixture::A, &e.rtmp(&format!("match1?token={hi}")));
    let _b = publish_srt(
        Fixture::B,
        &e.srt_ff(&format!("#!::r=match1,m=publish,s={lo}")),
    );
    e.wait_feeds("match1", 2, Some(&hi_id));
    let rtmp_player = Player::start(&e.rtmp("match1"));
    let srt_player = Player::start(&e.srt_ff("#!::r=match1,m=request"));
    rtmp_player.wait_packets(60, Duration::from_secs(20));
    srt_player.wait_packets(60, Duration::from_secs(20));
    let (nr, ns) = (rtmp_player.count(), srt_player.count());
    a.kill();
    rtmp_player.wait_packets(nr + 120, Duration::from_secs(20));
    srt_player.wait_packets(ns + 120, Duration::from_secs(20));
    for (name, p, from) in [("rtmp", &rtmp_player, nr), ("srt", &srt_player, ns)] {
        let packets = p.snapshot();
        let (gap, _) = check_monotonic(&packets);
        println!(
            "mixed failover, {name} player: largest gap {:.1} ms",
            gap.as_secs_f64() * 1000.0
        );
        assert!(gap < Duration::from_secs(1), "{name} gap {gap:?}");
        let sp = keyframe_spacing(&packets[from + 30..]).expect("keyframes");
        assert!(
            (sp - 0.5).abs() < 0.15,
            "{name} player should be on the SRT backup, spacing {sp}"
        );
    }
}

#[test]
fn srt_refusals() {
    let e = Env::start();
    let (_, t) = e.token(&["match1"], 10);
    for streamid in [
        "#!::r=match1,m=publish,s=garbage".to_owned(),
        format!("#!::r=other,m=publish,s={t}"),
        "#!::r=match1,m=bidirectional".to_owned(),
        "#!::m=publish".to_owned(),
    ] {
        let mut p = publish_srt(Fixture::A, &e.srt_ff(&streamid));
        let status = p.wait_timeout(Duration::from_secs(15));
        assert!(
            status.is_some_and(|s| !s.success()),
            "{streamid} should be refused; ffmpeg said {}",
            p.stderr_text()
        );
    }
    let (_, m) = e.s.get_text("/metrics");
    assert!(
        m.contains("reason=\"malformed\"") || m.contains("reason=\"bad_request\""),
        "{m}"
    );
    assert!(m.contains("reason=\"stream_not_allowed\""), "{m}");
}

/// Decode `url` for a few seconds with the real ffmpeg; returns its errors.
fn decode_errors(url: &str, seconds: u32) -> String {
    let mut child = std::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-rw_timeout",
            "8000000",
            "-i",
            url,
        ])
        .args([
            "-t",
            &seconds.to_string(),
            "-map",
            "0:v",
            "-map",
            "0:a",
            "-f",
            "null",
            "-",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg decoder");
    let end = Instant::now() + Duration::from_secs(u64::from(seconds) + 30);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("ffmpeg output");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn srt_in_rtmp_out_decodes_cleanly() {
    let e = Env::start();
    let (_, t) = e.token(&["match1"], 10);
    let _enc = publish_srt(
        Fixture::A,
        &e.srt_ff(&format!("#!::r=match1,m=publish,s={t}")),
    );
    e.wait_feeds("match1", 1, None);
    let errors = decode_errors(&e.rtmp("match1"), 5);
    assert!(
        errors.trim().is_empty(),
        "ffmpeg decode errors on the RTMP output of an SRT feed:\n{errors}"
    );
}
