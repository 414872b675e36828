//! `failover`: N sources, each with a primary (priority 100) and a backup
//! (50) encoder and one recording player, in three rounds: RTMP encoders →
//! RTMP player, SRT encoders → SRT player, and mixed redundancy (RTMP
//! primary, SRT backup, half the sources played over RTMP and half over
//! SRT). Each primary reaches the gateway through an impairment link of
//! its own (`crate::impair`, no impairment set), so it can die in every way
//! it dies in the field, each many times, at a random phase of the GOP:
//!
//! - **kill**: the connection is dropped with a goodbye (RTMP: the kernel
//!   closes the TCP connection; SRT: the client's socket sends its
//!   shutdown);
//! - **stall**: the encoder stops sending, its connection stays open (SRT
//!   keepalives go on);
//! - **blackhole**: the link stops forwarding in both directions without
//!   closing anything — a pulled cable, a dead router, an encoder that lost
//!   power (for SRT: no shutdown, no keepalive).
//!
//! The player-visible freeze is the largest gap between video frames around
//! each failure. After each one the primaries come back and take the air
//! again by a planned switch (failback), checked for lost frames and
//! timestamp regressions.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::{
    encoder, play_url, publish_url, publish_url_via, sleep_ms, stop_all, wait_frames, Ctx, Proto,
};
use crate::encoder::Encoder;
use crate::fixtures::Quality;
use crate::gateway::{Gateway, Settings};
use crate::impair::{Impairment, Link};
use crate::player::{dts_check, max_gap, max_gap_at, now_ms, wall_ms, DtsCheck, FrameRec, Player};
use crate::plot;
use crate::report::{Figure, ScenarioReport};
use crate::stats::Summary;

const FEED_TIMEOUT_MS: f64 = 1500.0;
const FAILBACK_HOLD_MS: u64 = 500;
const FRAME_MS: f64 = 1000.0 / 30.0;
/// The freeze a failure without a goodbye may cause (issue target).
const SILENT_TARGET_MS: f64 = 250.0;

/// How a primary dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Stall,
    Blackhole,
}
#[derive(Default, serde::Serialize)]
struct Round {
    /// "RTMP", "SRT" or "mixed".
    label: String,
    /// How the encoders and players of the round speak.
    setup: String,
    baseline_gap_ms: Vec<f64>,
    kill_gap_ms: Vec<f64>,
    /// The gateway's own figure for each kill's switch (`last_switch.gap_ms`:
    /// last frame out of the old feed → the switch), to tell the time spent
    /// before the switch from the time to the player.
    kill_engine_gap_ms: Vec<f64>,
    /// Per kill and player: (freeze, when the frame that ended it arrived,
    /// ms after the kill): a freeze at the switch ends within a few frames
    /// of the kill; a larger one elsewhere in the window is not the switch's.
    kill_gap_end_ms: Vec<(f64, f64)>,
    stall_gap_ms: Vec<f64>,
    stall_engine_gap_ms: Vec<f64>,
    blackhole_gap_ms: Vec<f64>,
    blackhole_engine_gap_ms: Vec<f64>,
    /// Each unplanned switch's reason and detail as the streams API gave it
    /// (`last_switch`), counted.
    switch_reasons: BTreeMap<String, u64>,
    /// Timestamp checks around the unplanned switches.
    unplanned: DtsCheckSum,
    /// Timestamp checks around the failbacks (planned switches).
    planned: DtsCheckSum,
    failbacks: u64,
    /// When each failback went on air (the switch record's `at`, on the
    /// players' clock), and each planned-window step's arrival relative to
    /// its source's failback (ms, negative before it): tells a step made by the cut
    /// from one made elsewhere (transport, demux).
    failback_at_ms: Vec<f64>,
    planned_step_offset_ms: Vec<f64>,
    /// The recorded frames around each planned-window step (a few).
    planned_step_frames: Vec<Vec<FrameRec>>,
    /// The feeds of each source at the end of the round, as the streams
    /// API shows them (SRT statistics: loss, retransmissions, drops).
    feeds_at_end: Vec<serde_json::Value>,
}

#[derive(Default, serde::Serialize)]
struct DtsCheckSum {
    regressions: u64,
    lost_frames: u64,
    frames: u64,
    steps: Vec<(f64, i64, i64)>,
}

impl DtsCheckSum {
    fn add(&mut self, c: DtsCheck) {
        self.regressions += c.regressions;
        self.lost_frames += c.lost_frames;
        self.frames += c.frames;
        self.steps.extend(
            c.steps
                .into_iter()
                .take(20usize.saturating_sub(self.steps.len())),
        );
    }
}

pub fn run(ctx: &Ctx) -> Result<ScenarioReport> {
    let mut r = ScenarioReport::new("failover");
    let sources = ctx.pick(4, 1);
    let kills = ctx.pick(10, 1);
    let stalls = ctx.pick(10, 1);
    let blackholes = ctx.pick(10, 1);
    let fx = ctx.fixture(Quality::Hd)?;
    let gw = Gateway::start(
        &ctx.target,
        &Settings::default()
            .set("PRIMACY_ELECTION__FAILBACK_HOLD_MS", FAILBACK_HOLD_MS)
            .set("PRIMACY_ELECTION__FEED_TIMEOUT_MS", FEED_TIMEOUT_MS),
        "failover",
    )?;
    use Proto::{Rtmp, Srt};
    // (primary, backup, players by source): one protocol throughout, then
    // mixed redundancy (RTMP primary, SRT backup, RTMP and SRT players).
    let setups: Vec<Setup> = ctx.pick(
        vec![
            (Rtmp, Rtmp, &[Rtmp][..]),
            (Srt, Srt, &[Srt][..]),
            (Rtmp, Srt, &[Rtmp, Srt][..]),
        ],
        vec![(Rtmp, Rtmp, &[Rtmp][..])],
    );
    let mut rounds = Vec::new();
    for setup in setups {
        let mixed = setup.0 != setup.1;
        // The mixed round repeats what the others measured: fewer of each.
        let n = |x: usize| if mixed { x.min(3) } else { x };
        let faults = [
            (Fault::Kill, kills),
            (Fault::Stall, n(stalls)),
            (Fault::Blackhole, n(blackholes)),
        ];
        rounds.push(round(ctx, &gw, setup, sources, &faults, &fx)?);
    }

    let mut cdf = Vec::new();
    for rd in &rounds {
        let p = rd.label.as_str();
        let k = Summary::of(&rd.kill_gap_ms);
        let regress = rd.unplanned.regressions;
        r.figures.push(Figure::judged(
            "kill",
            format!("freeze, primary killed, {} ({} kills)", rd.setup, k.n),
            format!("{}; {regress} dts regressions", k.brief("ms")),
            k.p99.map(|p99| p99 <= FRAME_MS + 50.0 && regress == 0),
        ));
        r.figures.push(Figure::info(
            format!("gateway's switch gap at those kills (last frame out → switch, {p})"),
            Summary::of(&rd.kill_engine_gap_ms).brief("ms"),
        ));
        for (what, how, gaps, engine) in [
            (
                "stall",
                "stalled (connection open, nothing sent)",
                &rd.stall_gap_ms,
                &rd.stall_engine_gap_ms,
            ),
            (
                "blackhole",
                "blackholed (link stops forwarding, nothing closed)",
                &rd.blackhole_gap_ms,
                &rd.blackhole_engine_gap_ms,
            ),
        ] {
            let s = Summary::of(gaps);
            r.figures.push(Figure::judged(
                "silent",
                format!("freeze, primary {how}, {p} ({} times)", s.n),
                s.brief("ms"),
                s.p99.map(|p99| p99 <= SILENT_TARGET_MS),
            ));
            r.figures.push(Figure::info(
                format!("gateway's switch gap at those {what}s ({p})"),
                Summary::of(engine).brief("ms"),
            ));
        }
        r.figures.push(Figure::judged(
            "planned",
            format!("failback (planned switch), {p}, {} switches", rd.failbacks),
            format!(
                "{} frames lost, {} dts regressions in {} frames{}",
                rd.planned.lost_frames,
                rd.planned.regressions,
                rd.planned.frames,
                super::steps_text(&rd.planned.steps)
            ),
            Some(rd.planned.lost_frames == 0 && rd.planned.regressions == 0),
        ));
        if !rd.planned_step_offset_ms.is_empty() {
            let at: Vec<String> = rd
                .planned_step_offset_ms
                .iter()
                .take(12)
                .map(|o| format!("{o:+.0}"))
                .collect();
            r.figures.push(Figure::info(
                format!("{p} failback steps: arrival − that source's switch"),
                format!("{} ms", at.join(", ")),
            ));
        }
        r.figures.push(Figure::info(
            format!("{p} player's largest gap with no switch (baseline)"),
            super::ms(rd.baseline_gap_ms.iter().copied().reduce(f64::max)),
        ));
        if !rd.switch_reasons.is_empty() {
            let reasons: Vec<String> = rd
                .switch_reasons
                .iter()
                .map(|(k, v)| format!("{k} ×{v}"))
                .collect();
            r.figures.push(Figure::info(
                format!("{p} unplanned switches by reason"),
                reasons.join("; "),
            ));
        }
        cdf.push((format!("{p} kill"), rd.kill_gap_ms.clone()));
        cdf.push((format!("{p} blackhole"), rd.blackhole_gap_ms.clone()));
        cdf.push((format!("{p} no switch"), rd.baseline_gap_ms.clone()));
    }
    let png = "failover-gaps.png";
    match plot::cdf(
        &ctx.results.join(png),
        "Player-visible freeze at failover",
        "largest gap between video frames (ms)",
        &cdf,
    ) {
        Ok(()) => r.plots.push(png.into()),
        Err(e) => r.notes.push(format!("plot: {e:#}")),
    }
    r.notes.push(format!(
        "{sources} sources per round, 720p30 ~2.65 Mbit/s 1 s GOP; failback_hold {FAILBACK_HOLD_MS} ms; \
         a kill drops the encoder's connection (RTMP: TCP close; SRT: the client socket's shutdown); \
         a stall stops the encoder's output; a blackhole stops the primary's link (nothing crosses, nothing closes); \
         feed_timeout {FEED_TIMEOUT_MS} ms; target for stalls and blackholes: p99 ≤ {SILENT_TARGET_MS} ms"
    ));
    r.details = json!({ "rounds": rounds });
    Ok(r)
}

/// Primary's and backup's protocol, and the players' (source i gets
/// `players[i % len]`).
type Setup = (Proto, Proto, &'static [Proto]);

fn round(
    ctx: &Ctx,
    gw: &Gateway,
    (pri, bak, play): Setup,
    sources: usize,
    faults: &[(Fault, usize)],
    fx: &crate::fixtures::Fixture,
) -> Result<Round> {
    let mixed = pri != bak || play.iter().any(|p| *p != pri);
    let label = if mixed {
        "mixed".to_string()
    } else {
        pri.name().to_string()
    };
    let names_of = |ps: &[Proto]| {
        ps.iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(" and ")
    };
    let setup = if mixed {
        format!(
            "{} primary, {} backup → {} players",
            pri.name(),
            bak.name(),
            names_of(play)
        )
    } else {
        format!("{label} encoders → {label} player")
    };
    let tag = label.to_lowercase();
    let streams: Vec<String> = (0..sources).map(|i| format!("fo-{tag}-{i}")).collect();
    let names: Vec<&str> = streams.iter().map(String::as_str).collect();
    let hi = gw.token("primary", &names, Some(100))?;
    let lo = gw.token("backup", &names, Some(50))?;
    let mut backups = Vec::new();
    let mut primaries: Vec<Option<Encoder>> = Vec::new();
    let mut players = Vec::new();
    // One link per primary, kept across its restarts.
    let links = streams
        .iter()
        .map(|_| match pri {
            Proto::Rtmp => Link::tcp(&ctx.rt, gw.rtmp.to_string(), Impairment::default()),
            Proto::Srt => Link::udp(&ctx.rt, gw.srt, Impairment::default()),
        })
        .collect::<Result<Vec<_>>>()?;
    let primary_url = |i: usize| publish_url_via(gw, pri, &streams[i], &hi.secret, links[i].addr);
    for s in &streams {
        backups.push(encoder(ctx, publish_url(gw, bak, s, &lo.secret)?, fx));
    }
    for (i, s) in streams.iter().enumerate() {
        gw.wait_on_air(s, 1, None, Duration::from_secs(20))?;
        primaries.push(Some(encoder(ctx, primary_url(i)?, fx)));
    }
    for (i, s) in streams.iter().enumerate() {
        gw.wait_on_air(s, 2, Some(&hi.id), Duration::from_secs(20))?;
        let p = play[i % play.len()];
        players.push(Player::spawn(&ctx.rt, play_url(gw, p, s)?, true));
    }
    let refs: Vec<&Player> = players.iter().collect();
    wait_frames(&refs, 45, Duration::from_secs(20))?;
    let mut rd = Round {
        label,
        setup,
        ..Round::default()
    };
    // Baseline: quiet windows, no switch.
    for _ in 0..ctx.pick(4, 1) {
        let t = now_ms();
        sleep_ms(1500);
        for p in &players {
            rd.baseline_gap_ms
                .extend(max_gap(&p.frames(), t, t + 1500.0));
        }
    }
    let restart = |primaries: &mut Vec<Option<Encoder>>| -> Result<()> {
        for (i, p) in primaries.iter_mut().enumerate() {
            *p = Some(encoder(ctx, primary_url(i)?, fx));
        }
        Ok(())
    };
    let failback = |rd: &mut Round, t: f64| -> Result<()> {
        // Back on the primary: hold + up to one GOP + margin. `at[i]`: when
        // streams[i] (played by players[i]) switched, if by a planned cut.
        let mut at = Vec::new();
        for s in &streams {
            gw.wait_on_air(s, 2, Some(&hi.id), Duration::from_secs(10))?;
            let sw = gw
                .stream(s)?
                .map(|v| v["sources"][0]["last_switch"].clone())
                .unwrap_or_default();
            let t = sw["at"].as_str().and_then(|a| a.parse().ok());
            at.push(t.filter(|_| sw["planned"] == true).map(wall_ms));
        }
        sleep_ms(300);
        for (p, at) in players.iter().zip(&at) {
            let frames = p.frames();
            let c = dts_check(&frames, t, now_ms(), FRAME_MS);
            for st in c
                .steps
                .iter()
                .take(8usize.saturating_sub(rd.planned_step_frames.len()))
            {
                if let Some(i) = frames.iter().position(|f| f.at == st.0) {
                    rd.planned_step_frames
                        .push(frames[i.saturating_sub(4)..(i + 3).min(frames.len())].to_vec());
                }
            }
            if let Some(a) = at {
                rd.planned_step_offset_ms
                    .extend(c.steps.iter().map(|st| st.0 - a));
            }
            rd.planned.add(c);
        }
        rd.failback_at_ms.extend(at.into_iter().flatten());
        rd.failbacks += streams.len() as u64;
        Ok(())
    };
    for &(fault, times) in faults {
        for _ in 0..times {
            // Past the primary's loss warm-up (2 s from its first frame;
            // until then only feed_timeout applies), at a random phase in
            // the GOP.
            sleep_ms(2_200 + rand::random_range(0..1000));
            let t = now_ms();
            match fault {
                Fault::Kill => {
                    for p in primaries.iter_mut() {
                        if let Some(e) = p.take() {
                            e.kill();
                        }
                    }
                }
                Fault::Stall => primaries.iter().flatten().for_each(Encoder::stall),
                Fault::Blackhole => links.iter().for_each(|l| l.blackhole(true)),
            }
            // A kill is over within a few frames; the others are measured
            // past feed_timeout, so a slow detection shows as it is.
            sleep_ms(match fault {
                Fault::Kill => 1200,
                _ => FEED_TIMEOUT_MS as u64 + 700,
            });
            for p in &players {
                let frames = p.frames();
                if let Some((gap, end)) = max_gap_at(&frames, t - 100.0, now_ms()) {
                    match fault {
                        Fault::Kill => {
                            rd.kill_gap_ms.push(gap);
                            rd.kill_gap_end_ms.push((gap, end.at - t));
                        }
                        Fault::Stall => rd.stall_gap_ms.push(gap),
                        Fault::Blackhole => rd.blackhole_gap_ms.push(gap),
                    }
                }
                rd.unplanned
                    .add(dts_check(&frames, t - 100.0, now_ms(), FRAME_MS));
            }
            for s in &streams {
                let sw = gw
                    .stream(s)?
                    .map(|v| v["sources"][0]["last_switch"].clone())
                    .unwrap_or_default();
                if sw["planned"] != false {
                    continue;
                }
                let engine = match fault {
                    Fault::Kill => &mut rd.kill_engine_gap_ms,
                    Fault::Stall => &mut rd.stall_engine_gap_ms,
                    Fault::Blackhole => &mut rd.blackhole_engine_gap_ms,
                };
                engine.extend(sw["gap_ms"].as_f64());
                let reason = [&sw["reason"], &sw["detail"]]
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(": ");
                let reason = coarse(&reason);
                *rd.switch_reasons
                    .entry(format!("{fault:?} → {reason}").to_lowercase())
                    .or_default() += 1;
            }
            if fault != Fault::Kill {
                for p in primaries.iter_mut() {
                    if let Some(e) = p.take() {
                        e.kill();
                    }
                }
                links.iter().for_each(|l| l.blackhole(false));
                sleep_ms(300);
            }
            restart(&mut primaries)?;
            failback(&mut rd, now_ms())?;
        }
    }
    for s in &streams {
        rd.feeds_at_end
            .extend(gw.stream(s)?.map(|v| v["sources"][0]["feeds"].clone()));
    }
    let mut encoders = backups;
    encoders.extend(primaries.into_iter().flatten());
    stop_all(ctx, players, encoders);
    Ok(rd)
}

/// A switch's reason and detail with its numbers replaced by `N`, so the
/// same cause counts once (`lost: silent 184 ms` → `lost: silent N ms`).
fn coarse(reason: &str) -> String {
    let mut out = String::new();
    let mut in_number = false;
    for c in reason.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}
