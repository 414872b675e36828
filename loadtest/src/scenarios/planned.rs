//! `planned`: one source with two RTMP encoders and a recording player;
//! the on-air encoder's token is reprioritized below the other one,
//! alternately, with `disconnect` false and then true. Measured: call →
//! election decision and call → new primary on air (the switch record's
//! `decided_at` / `at`, same clock), frames lost and timestamp regressions
//! at the player. With `disconnect` true the demoted encoder is
//! disconnected after the switch and reconnects as the backup.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{encoder, play_url, publish_url, sleep_ms, stop_all, wait_frames, Ctx, Proto};
use crate::fixtures::Quality;
use crate::gateway::{Gateway, Settings, Token};
use crate::player::{dts_check, now_ms, Player};
use crate::plot;
use crate::report::{Figure, ScenarioReport};
use crate::stats::Summary;

const FRAME_MS: f64 = 1000.0 / 30.0;

#[derive(Default, serde::Serialize)]
struct Series {
    disconnect: bool,
    /// Call → the election's decision.
    decided_ms: Vec<f64>,
    /// Call → the new primary's first frame out.
    on_air_ms: Vec<f64>,
    /// Call → the API answered.
    answered_ms: Vec<f64>,
    /// When each call was made (ms on the players' clock), to place the
    /// switches among the recorded frames.
    call_at: Vec<f64>,
    lost_frames: u64,
    regressions: u64,
    frames: u64,
    steps: Vec<(f64, i64, i64)>,
}

pub fn run(ctx: &Ctx) -> Result<ScenarioReport> {
    let mut r = ScenarioReport::new("planned");
    let calls = ctx.pick(20, 2);
    let fx = ctx.fixture(Quality::Hd)?;
    let gw = Gateway::start(
        &ctx.target,
        &Settings::default().set("PRIMACY_ELECTION__FAILBACK_HOLD_MS", 500),
        "planned",
    )?;
    let mut all = Vec::new();
    for disconnect in [false, true] {
        all.push(series(ctx, &gw, disconnect, calls, &fx)?);
    }
    let mut cdf = Vec::new();
    for s in &all {
        let d = s.disconnect;
        let on_air = Summary::of(&s.on_air_ms);
        let decided = Summary::of(&s.decided_ms);
        r.figures.push(Figure::judged(
            "reprioritize",
            format!("reprioritize (disconnect {d}) call → new primary on air, same node"),
            on_air.brief("ms"),
            on_air.p99.map(|p| p <= 150.0),
        ));
        r.figures.push(Figure::info(
            format!("reprioritize (disconnect {d}) call → election decision"),
            decided.brief("ms"),
        ));
        let waits: Vec<f64> = s
            .on_air_ms
            .iter()
            .zip(&s.decided_ms)
            .map(|(a, b)| a - b)
            .collect();
        r.figures.push(Figure::info(
            format!("reprioritize (disconnect {d}) decision → on air (wait for the new primary's next keyframe)"),
            Summary::of(&waits).brief("ms"),
        ));
        r.figures.push(Figure::judged(
            "planned",
            format!(
                "reprioritize (disconnect {d}) switches, {} calls",
                s.on_air_ms.len()
            ),
            format!(
                "{} frames lost, {} dts regressions in {} frames{}",
                s.lost_frames,
                s.regressions,
                s.frames,
                super::steps_text(&s.steps)
            ),
            Some(s.lost_frames == 0 && s.regressions == 0),
        ));
        cdf.push((
            format!("disconnect {d}: call → on air"),
            s.on_air_ms.clone(),
        ));
        cdf.push((
            format!("disconnect {d}: call → decision"),
            s.decided_ms.clone(),
        ));
    }
    r.figures.push(Figure::judged(
        "reprioritize",
        "reprioritize across nodes via Redis",
        "not measured: the load test runs one gateway; a multi-node run with Redis is not implemented yet",
        None,
    ));
    let png = "reprioritize.png";
    match plot::cdf(
        &ctx.results.join(png),
        "Reprioritize call → switch",
        "ms after the API call",
        &cdf,
    ) {
        Ok(()) => r.plots.push(png.into()),
        Err(e) => r.notes.push(format!("plot: {e:#}")),
    }
    r.notes.push(
        "a planned switch is make-before-break: the old primary stays on air until the new primary's next \
         keyframe, so call → on air ≈ decision + a wait uniform in [0, GOP] (1 s GOP here)"
            .into(),
    );
    r.details = json!({ "series": all });
    Ok(r)
}

fn ts(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()?.parse().ok()
}

fn series(
    ctx: &Ctx,
    gw: &Gateway,
    disconnect: bool,
    calls: usize,
    fx: &crate::fixtures::Fixture,
) -> Result<Series> {
    let stream = format!("pl-{disconnect}");
    let a = gw.token("a", &[&stream], Some(100))?;
    let b = gw.token("b", &[&stream], Some(50))?;
    let enc_b = encoder(ctx, publish_url(gw, Proto::Rtmp, &stream, &b.secret)?, fx);
    gw.wait_on_air(&stream, 1, None, Duration::from_secs(20))?;
    let enc_a = encoder(ctx, publish_url(gw, Proto::Rtmp, &stream, &a.secret)?, fx);
    gw.wait_on_air(&stream, 2, Some(&a.id), Duration::from_secs(20))?;
    let player = Player::spawn(&ctx.rt, play_url(gw, Proto::Rtmp, &stream)?, true);
    wait_frames(&[&player], 45, Duration::from_secs(20))?;
    let mut s = Series {
        disconnect,
        ..Series::default()
    };
    let t_start = now_ms();
    let (mut on, mut off): (&Token, &Token) = (&a, &b);
    let mut prio = [(a.id.clone(), 100i64), (b.id.clone(), 50)];
    for _ in 0..calls {
        sleep_ms(700 + rand::random_range(0..1000)); // a random phase in the GOP
                                                     // Demote the on-air token below the other one.
        let other = prio.iter().find(|(id, _)| *id == off.id).map_or(0, |p| p.1);
        let new = other - 10;
        let t_call = Utc::now();
        s.call_at.push(now_ms());
        let t0 = Instant::now();
        let (st, v) = gw.call(
            "POST",
            &format!("/api/v1/tokens/{}/reprioritize", on.id),
            Some(&json!({ "priority": new, "disconnect": disconnect })),
        )?;
        let answered = t0.elapsed().as_secs_f64() * 1000.0;
        if st != 200 {
            bail!("reprioritize: {st} {v}");
        }
        for p in prio.iter_mut() {
            if p.0 == on.id {
                p.1 = new;
            }
        }
        // The switch record of the source names the new primary.
        let end = Instant::now() + Duration::from_secs(10);
        let rec = loop {
            if let Some(v) = gw.stream(&stream)? {
                let src = &v["sources"][0];
                let ls = &src["last_switch"];
                let on_air_token = src["feeds"]
                    .as_array()
                    .and_then(|fs| fs.iter().find(|f| f["state"] == "on_air"))
                    .map(|f| f["token_id"].clone());
                if let (Some(at), Some(dec)) = (ts(&ls["at"]), ts(&ls["decided_at"])) {
                    if at >= t_call
                        && on_air_token.as_ref().and_then(Value::as_str) == Some(off.id.as_str())
                    {
                        break (at, dec);
                    }
                }
            }
            if Instant::now() > end {
                bail!("reprioritize: no switch to the other feed within 10 s");
            }
            sleep_ms(10);
        };
        s.on_air_ms
            .push((rec.0 - t_call).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        s.decided_ms
            .push((rec.1 - t_call).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        s.answered_ms.push(answered);
        std::mem::swap(&mut on, &mut off);
        if disconnect {
            // The demoted encoder reconnects as the backup.
            gw.wait_on_air(&stream, 2, Some(&on.id), Duration::from_secs(10))?;
        }
    }
    sleep_ms(300);
    let c = dts_check(&player.frames(), t_start, now_ms(), FRAME_MS);
    s.lost_frames = c.lost_frames;
    s.regressions = c.regressions;
    s.frames = c.frames;
    s.steps = c.steps;
    stop_all(ctx, vec![player], vec![enc_a, enc_b]);
    Ok(s)
}
