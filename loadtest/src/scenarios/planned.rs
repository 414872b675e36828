//! `planned`: one source with two RTMP encoders and a recording player;
//! the on-air encoder's token is reprioritized below the other one,
//! alternately, with `disconnect` false and then true. Measured: call →
//! election decision and call → new primary on air (the switch record's
//! `decided_at` / `at`, same clock), frames lost and timestamp regressions
//! at the player. With `disconnect` true the demoted encoder is
//! disconnected after the switch and reconnects as the backup.
//!
//! Across nodes (when Redis answers): two gateways of one cluster (regions
//! eu and us, one database, Redis with a key prefix of the run's own). The
//! encoders publish one to each node; the player and the API calls are on
//! us, so half of the switches go to the feed relayed from eu.

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
    /// Encoders on two nodes (eu, us), player and API calls on us.
    cross_node: bool,
    /// `switch.planned_max_added_latency_ms` of the gateway: 0 waits for
    /// the new primary's next keyframe, > 0 may cut at its cached one.
    max_added_latency_ms: u64,
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
    let mut all = Vec::new();
    // The default (make-before-break at the next keyframe), then a gateway
    // allowed to cut at a cached keyframe up to a GOP old.
    for max_added in [0u64, 1000] {
        let gw = Gateway::start(
            &ctx.target,
            &Settings::default()
                .set("PRIMACY_ELECTION__FAILBACK_HOLD_MS", 500)
                .set("PRIMACY_SWITCH__PLANNED_MAX_ADDED_LATENCY_MS", max_added),
            if max_added == 0 {
                "planned"
            } else {
                "planned-cached-cut"
            },
        )?;
        // A quick run measures the variants with `disconnect` false only.
        let modes: &[bool] = if ctx.quick && max_added > 0 {
            &[false]
        } else {
            &[false, true]
        };
        for &disconnect in modes {
            let nodes = Nodes {
                api: &gw,
                a: &gw,
                b: &gw,
            };
            all.push(series(ctx, nodes, disconnect, max_added, calls, &fx)?);
        }
    }
    let cross = match cross_node_gateways(ctx) {
        Ok(Some((eu, us))) => {
            for &disconnect in ctx.pick(&[false, true][..], &[false][..]) {
                let nodes = Nodes {
                    api: &us,
                    a: &eu,
                    b: &us,
                };
                all.push(series(ctx, nodes, disconnect, 0, calls, &fx)?);
            }
            None
        }
        Ok(None) => {
            Some("not measured: a gateway given by URL (start it here for two nodes)".to_owned())
        }
        Err(e) => Some(format!("not measured: {e:#}")),
    };
    let mut cdf = Vec::new();
    for s in &all {
        let d = if s.max_added_latency_ms == 0 {
            s.disconnect.to_string()
        } else {
            format!(
                "{}, cut at a cached keyframe ≤ {} ms old",
                s.disconnect, s.max_added_latency_ms
            )
        };
        let d = if s.cross_node {
            format!("{d}, across nodes")
        } else {
            d
        };
        let on_air = Summary::of(&s.on_air_ms);
        let decided = Summary::of(&s.decided_ms);
        let (what, target) = if s.cross_node {
            ("via the other node's API, on air there", 300.0)
        } else {
            ("same node", 150.0)
        };
        r.figures.push(Figure::judged(
            "reprioritize",
            format!("reprioritize (disconnect {d}) call → new primary on air, {what}"),
            on_air.brief("ms"),
            on_air.p99.map(|p| p <= target),
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
            format!("reprioritize (disconnect {d}) decision → on air"),
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
    if let Some(why) = cross {
        r.figures.push(Figure::judged(
            "reprioritize",
            "reprioritize across nodes via Redis",
            why,
            None,
        ));
    }
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
         keyframe, so call → on air ≈ decision + a wait uniform in [0, GOP] (1 s GOP here); with \
         switch.planned_max_added_latency_ms = 1000 it cuts at once at the new primary's cached keyframe \
         (players then run up to that much later); across nodes the defaults apply (no \
         cluster.prefetch_runner_up), so a switch to the remote feed also waits for its relay to start"
            .into(),
    );
    r.details = json!({ "series": all });
    Ok(r)
}

fn ts(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()?.parse().ok()
}

/// Where a series' API calls and player go, and where encoders a and b
/// publish.
#[derive(Clone, Copy)]
struct Nodes<'a> {
    api: &'a Gateway,
    a: &'a Gateway,
    b: &'a Gateway,
}

/// A shared secret of the two nodes (loopback only, never a real one).
const CLUSTER_SECRET: &str = "loadtest-cluster-secret-0123456789abcdef";

/// Two nodes of one cluster (eu, us) on the same database, coordinated
/// through Redis under a key prefix of this run's own; `None` when the
/// gateway under test was given by URL.
fn cross_node_gateways(ctx: &Ctx) -> Result<Option<(Gateway, Gateway)>> {
    if !matches!(ctx.target, crate::gateway::Target::Spawn { .. }) {
        return Ok(None);
    }
    crate::gateway::redis_ping(&ctx.redis_url)?;
    let prefix = format!("primacy-loadtest-{}", uuid::Uuid::new_v4().simple());
    let eu = Gateway::start(
        &ctx.target,
        &Settings::default()
            .set("PRIMACY_ELECTION__FAILBACK_HOLD_MS", 500)
            .set("PRIMACY_REDIS_URL", &ctx.redis_url)
            .set("PRIMACY_REDIS_KEY_PREFIX", &prefix)
            .set("PRIMACY_CLUSTER_SECRET", CLUSTER_SECRET)
            .set("PRIMACY_REGION", "eu"),
        "planned-eu",
    )?;
    let us = eu.peer(
        &Settings::default().set("PRIMACY_REGION", "us"),
        "planned-us",
    )?;
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let (st, v) = us.call("GET", "/api/v1/cluster/nodes", None)?;
        if st == 200 && v["nodes"].as_array().is_some_and(|n| n.len() == 2) {
            break;
        }
        if Instant::now() > end {
            bail!("the two nodes did not see each other within 15 s: {st} {v}");
        }
        sleep_ms(50);
    }
    Ok(Some((eu, us)))
}

fn series(
    ctx: &Ctx,
    nodes: Nodes<'_>,
    disconnect: bool,
    max_added_latency_ms: u64,
    calls: usize,
    fx: &crate::fixtures::Fixture,
) -> Result<Series> {
    let gw = nodes.api;
    let cross_node = !std::ptr::eq(nodes.a, nodes.b);
    let stream = format!("pl-{disconnect}-{max_added_latency_ms}-{cross_node}");
    let a = gw.token("a", &[&stream], Some(100))?;
    let b = gw.token("b", &[&stream], Some(50))?;
    let enc_b = encoder(
        ctx,
        publish_url(nodes.b, Proto::Rtmp, &stream, &b.secret)?,
        fx,
    );
    gw.wait_on_air(&stream, 1, None, Duration::from_secs(20))?;
    // The player joins before the other node's feed is elected: a node
    // relays a remote feed for its players.
    let player = Player::spawn(&ctx.rt, play_url(gw, Proto::Rtmp, &stream)?, true);
    let enc_a = encoder(
        ctx,
        publish_url(nodes.a, Proto::Rtmp, &stream, &a.secret)?,
        fx,
    );
    gw.wait_on_air(&stream, 2, Some(&a.id), Duration::from_secs(20))?;
    wait_frames(&[&player], 45, Duration::from_secs(20))?;
    let mut s = Series {
        disconnect,
        cross_node,
        max_added_latency_ms,
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
