//! `impaired`: primaries and backups on links as they are in the field,
//! for a long time, nothing killed. Every encoder reaches the gateway
//! through an impairment link of its own (`crate::impair`): SRT with
//! 40 ± 20 ms delay and 1 % loss each way, RTMP with 40 ± 20 ms delay,
//! both capped at 10 Mbit/s (an uplink; the fixture needs ~0.5). The
//! gateway runs at its default settings. Nothing fails, so every switch is
//! a false one: the count must be 0. Also reported: the loss window each
//! feed settled on (when the gateway shows one), the players' largest gap
//! and timestamp regressions, and what the links dropped.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{json, Value};

use super::{play_url, publish_url_via, sleep_ms, stop_all, wait_frames, Ctx, Proto};
use crate::encoder::Encoder;
use crate::fixtures::Quality;
use crate::gateway::{Gateway, Settings};
use crate::impair::{Impairment, Link, LinkStats};
use crate::player::{dts_check, max_gap, now_ms, Player};
use crate::report::{Figure, ScenarioReport};
use crate::stats::Summary;

const FRAME_MS: f64 = 1000.0 / 30.0;

/// The sum of `primacy_switches_total` over its labels, from `/metrics`.
fn switches(gw: &Gateway) -> Result<f64> {
    let (_, v) = gw.call("GET", "/metrics", None)?;
    let text = v.as_str().unwrap_or_default();
    Ok(text
        .lines()
        .filter(|l| l.starts_with("primacy_switches_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

pub fn run(ctx: &Ctx) -> Result<ScenarioReport> {
    let mut r = ScenarioReport::new("impaired");
    let secs = ctx.pick(600, 10);
    let per_proto = ctx.pick(2, 1);
    let fx = ctx.fixture(Quality::Sd)?;
    let gw = Gateway::start(&ctx.target, &Settings::default(), "impaired")?;
    let imp_of = |p: Proto| match p {
        Proto::Srt => Impairment::delay(40, 20)
            .with_loss(0.01)
            .with_rate(10_000_000),
        Proto::Rtmp => Impairment::delay(40, 20).with_rate(10_000_000),
    };
    let mut streams = Vec::new();
    for p in [Proto::Rtmp, Proto::Srt] {
        for i in 0..per_proto {
            streams.push((p, format!("imp-{}-{i}", p.name().to_lowercase())));
        }
    }
    let names: Vec<&str> = streams.iter().map(|(_, s)| s.as_str()).collect();
    let hi = gw.token("primary", &names, Some(100))?;
    let lo = gw.token("backup", &names, Some(50))?;
    let mut links: Vec<(Proto, Link)> = Vec::new();
    let mut encoders: Vec<Encoder> = Vec::new();
    let mut players = Vec::new();
    for (p, s) in &streams {
        for token in [&lo, &hi] {
            let link = match p {
                Proto::Rtmp => Link::tcp(&ctx.rt, gw.rtmp.to_string(), imp_of(*p))?,
                Proto::Srt => Link::udp(&ctx.rt, gw.srt, imp_of(*p))?,
            };
            let url = publish_url_via(&gw, *p, s, &token.secret, link.addr)?;
            encoders.push(super::encoder(ctx, url, &fx));
            links.push((*p, link));
            if token.id == lo.id {
                gw.wait_on_air(s, 1, None, Duration::from_secs(20))?;
            }
        }
        gw.wait_on_air(s, 2, Some(&hi.id), Duration::from_secs(20))?;
        players.push(Player::spawn(&ctx.rt, play_url(&gw, *p, s)?, true));
    }
    let refs: Vec<&Player> = players.iter().collect();
    wait_frames(&refs, 45, Duration::from_secs(20))?;

    // The run: nothing fails. Every few seconds, check that each stream is
    // still on its primary (a switch and a switch back in between still
    // shows in the counter read at the end).
    let before = switches(&gw)?;
    let t0 = now_ms();
    let start = Instant::now();
    let mut off_primary = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        sleep_ms(2_000);
        for (_, s) in &streams {
            let v = gw.stream(s)?.unwrap_or(Value::Null);
            let on_air = v["sources"][0]["feeds"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|f| f["state"] == "on_air")
                .map(|f| f["token_id"] == hi.id.as_str());
            if on_air != Some(true) {
                off_primary.push(json!({
                    "stream": s,
                    "after_s": start.elapsed().as_secs_f64(),
                    "last_switch": v["sources"][0]["last_switch"],
                }));
            }
        }
    }
    let t1 = now_ms();
    let false_switches = switches(&gw)? - before;

    let mut windows: Vec<Value> = Vec::new();
    for (p, s) in &streams {
        let v = gw.stream(s)?.unwrap_or(Value::Null);
        for f in v["sources"][0]["feeds"].as_array().into_iter().flatten() {
            windows.push(json!({
                "stream": s,
                "protocol": p.name(),
                "priority": f["priority"],
                "loss_window_ms": f["loss_window_ms"],
                "stats": f["srt"],
            }));
        }
    }
    let mut gaps = Vec::new();
    let mut regressions = 0;
    for p in &players {
        let frames = p.frames();
        gaps.extend(max_gap(&frames, t0, t1));
        regressions += dts_check(&frames, t0, t1, FRAME_MS).regressions;
    }
    let link_stats: Vec<(Proto, LinkStats)> = links.iter().map(|(p, l)| (*p, l.stats())).collect();

    r.figures.push(Figure::judged(
        "false_switches",
        format!(
            "switches in {secs} s with nothing failing ({} sources: RTMP {}, SRT {})",
            streams.len(),
            imp_of(Proto::Rtmp).describe(),
            imp_of(Proto::Srt).describe()
        ),
        format!(
            "{false_switches} switches; {} checks found a stream off its primary",
            off_primary.len()
        ),
        Some(false_switches == 0.0 && off_primary.is_empty()),
    ));
    r.figures.push(Figure::judged(
        "false_switches",
        "players' timestamp regressions on those links".to_string(),
        format!("{regressions}"),
        Some(regressions == 0),
    ));
    r.figures.push(Figure::info(
        "players' largest gap (no switch)",
        Summary::of(&gaps).brief("ms"),
    ));
    for p in [Proto::Rtmp, Proto::Srt] {
        let w: Vec<f64> = windows
            .iter()
            .filter(|w| w["protocol"] == p.name())
            .filter_map(|w| w["loss_window_ms"].as_f64())
            .collect();
        r.figures.push(Figure::info(
            format!("{} feeds' loss windows at the end", p.name()),
            if w.is_empty() {
                "not shown by this gateway".to_string()
            } else {
                Summary::of(&w).brief("ms")
            },
        ));
    }
    let dropped: u64 = link_stats.iter().map(|(_, s)| s.dropped_loss).sum();
    let forwarded: u64 = link_stats.iter().map(|(_, s)| s.forwarded).sum();
    r.figures.push(Figure::info(
        "links: chunks forwarded, datagrams lost on purpose",
        format!("{forwarded} forwarded, {dropped} lost"),
    ));
    r.notes.push(format!(
        "360p30 ~500 kbit/s 1 s GOP; primary 100 and backup 50 per source, each behind its own link; \
         players unimpaired; the gateway at default settings; {secs} s"
    ));
    r.details = json!({
        "seconds": secs,
        "false_switches": false_switches,
        "off_primary": off_primary,
        "feeds": windows,
        "links": link_stats.iter().map(|(p, s)| json!({"protocol": p.name(), "stats": s})).collect::<Vec<_>>(),
    });
    stop_all(ctx, players, encoders);
    drop(links);
    Ok(r)
}
