//! `scale`: how many sessions this machine carries. First the memory of
//! idle connections (players waiting on a stream nobody publishes); then a
//! ramp of 500 kbit/s streams, each with one RTMP publisher and three RTMP
//! players (four sessions), step by step until a player falls more than
//! 1 s behind real time, the session cap or the time limit is reached.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::{play_url, publish_url, sleep_ms, stop_all, Ctx, Proto};
use crate::encoder::{Encoder, EncoderConfig};
use crate::fixtures::Quality;
use crate::gateway::{Gateway, Settings};
use crate::player::Player;
use crate::plot;
use crate::procstat;
use crate::report::{Figure, ScenarioReport};

const PLAYERS_PER_STREAM: usize = 3;
const SESSIONS_PER_STREAM: usize = 1 + PLAYERS_PER_STREAM;

#[derive(Debug, Clone, serde::Serialize)]
struct Step {
    sessions: usize,
    behind: usize,
    worst_drift_ms: f64,
    gateway_cpu_share: f64,
    generator_cpu_share: f64,
    gateway_rss_mib: f64,
    gateway_fds: u64,
}

pub fn run(ctx: &Ctx) -> Result<ScenarioReport> {
    let mut r = ScenarioReport::new("scale");
    let fx = ctx.fixture(Quality::Sd)?;
    let idle_n = ctx.pick(1000, 20);
    let streams_per_step = ctx.pick(50, 2);
    let max_sessions = ctx.pick(4000, 16);
    let limit = Duration::from_secs(ctx.pick(180, 20));
    let dwell = ctx.pick(6, 3);

    let gw = Gateway::start(&ctx.target, &Settings::default(), "scale")?;
    if gw.pid().is_none() {
        bail!("scale reads the gateway's /proc: start it here or pass --gateway-pid");
    }
    let token = gw.token_regex("scale", "sc-.*", None)?;

    // Idle connections.
    sleep_ms(500);
    let s0 = gw.stat().unwrap_or_default();
    let mut idle = Vec::new();
    for i in 0..idle_n {
        idle.push(Player::spawn(
            &ctx.rt,
            play_url(&gw, Proto::Rtmp, "sc-idle")?,
            false,
        ));
        if i % 100 == 99 {
            sleep_ms(50);
        }
    }
    sleep_ms(3000);
    let s1 = gw.stat().unwrap_or_default();
    let idle_kib = (s1.rss_kib as f64 - s0.rss_kib as f64) / idle_n as f64;
    let idle_fds = s1.fds.saturating_sub(s0.fds);
    stop_all(ctx, idle, Vec::new());
    r.figures.push(Figure::info(
        format!("memory per idle connection ({idle_n} RTMP players waiting on a vacant stream)"),
        format!("{idle_kib:.1} KiB ({idle_fds} descriptors opened)"),
    ));

    // The ramp.
    let t_start = Instant::now();
    let mut encoders: Vec<Encoder> = Vec::new();
    let mut players: Vec<Player> = Vec::new();
    let mut steps = Vec::new();
    let mut best = 0usize;
    let mut stopped_by = "the session cap";
    let mut n_streams = 0usize;
    while n_streams * SESSIONS_PER_STREAM < max_sessions {
        if t_start.elapsed() > limit {
            stopped_by = "the time limit";
            break;
        }
        for _ in 0..streams_per_step {
            let s = format!("sc-{n_streams}");
            let mut cfg = EncoderConfig::new(
                publish_url(&gw, Proto::Rtmp, &s, &token.secret)?,
                fx.clone(),
            );
            cfg.batch = Duration::from_millis(20);
            encoders.push(Encoder::spawn(&ctx.rt, cfg));
            for _ in 0..PLAYERS_PER_STREAM {
                players.push(Player::spawn(
                    &ctx.rt,
                    play_url(&gw, Proto::Rtmp, &s)?,
                    false,
                ));
            }
            n_streams += 1;
        }
        // Let the new sessions start, then watch a window.
        sleep_ms(1500);
        for p in &players {
            p.reset_window();
        }
        let g0 = gw.stat().unwrap_or_default();
        let o0 = procstat::own();
        let t0 = Instant::now();
        sleep_ms(dwell * 1000);
        let g1 = gw.stat().unwrap_or_default();
        let o1 = procstat::own();
        let dt = t0.elapsed().as_secs_f64();
        let drifts: Vec<f64> = players.iter().map(Player::drift_ms).collect();
        let behind = drifts.iter().filter(|d| **d > 1000.0).count();
        let step = Step {
            sessions: n_streams * SESSIONS_PER_STREAM,
            behind,
            worst_drift_ms: drifts.iter().copied().fold(0.0, f64::max),
            gateway_cpu_share: (g1.cpu_s - g0.cpu_s) / dt,
            generator_cpu_share: (o1.cpu_s - o0.cpu_s) / dt,
            gateway_rss_mib: g1.rss_kib as f64 / 1024.0,
            gateway_fds: g1.fds,
        };
        eprintln!(
            "[scale] {} sessions: {} behind, gateway {:.2} cores, generator {:.2} cores, {:.0} MiB",
            step.sessions,
            step.behind,
            step.gateway_cpu_share,
            step.generator_cpu_share,
            step.gateway_rss_mib
        );
        steps.push(step.clone());
        if behind > 0 {
            stopped_by = "a player falling behind";
            break;
        }
        best = step.sessions;
    }
    stop_all(ctx, players, encoders);
    r.figures.push(Figure::judged(
        "scale",
        format!("sessions with every player at real time (500 kbit/s, 1 publisher + {PLAYERS_PER_STREAM} players per stream)"),
        format!("{best} (ramp stopped by {stopped_by})"),
        Some(best >= 2000),
    ));
    if let Some(ok) = steps.iter().rev().find(|s| s.behind == 0) {
        r.figures.push(Figure::info(
            "gateway CPU per 1,000 sessions at the last step with every player at real time",
            format!(
                "{:.2} cores ({} sessions: {:.2} cores)",
                ok.gateway_cpu_share * 1000.0 / ok.sessions as f64,
                ok.sessions,
                ok.gateway_cpu_share
            ),
        ));
    }
    if let Some(last) = steps.last() {
        r.figures.push(Figure::info(
            "CPU at the last step (cores busy)",
            format!(
                "gateway {:.2}, load generator {:.2} ({} sessions)",
                last.gateway_cpu_share, last.generator_cpu_share, last.sessions
            ),
        ));
    }
    let series = vec![
        plot::Series {
            name: "gateway".into(),
            points: steps
                .iter()
                .map(|s| (s.sessions as f64, s.gateway_cpu_share))
                .collect(),
        },
        plot::Series {
            name: "load generator".into(),
            points: steps
                .iter()
                .map(|s| (s.sessions as f64, s.generator_cpu_share))
                .collect(),
        },
    ];
    let png = "scale-cpu.png";
    match plot::lines(
        &ctx.results.join(png),
        "CPU while ramping sessions",
        "sessions",
        "cores busy",
        &series,
    ) {
        Ok(()) => r.plots.push(png.into()),
        Err(e) => r.notes.push(format!("plot: {e:#}")),
    }
    r.notes.push(
        "the load generator shares the machine's cores with the gateway; when the two together use every core, players fall behind whichever side is short"
            .into(),
    );
    r.details = json!({ "idle_kib_per_connection": idle_kib, "steps": steps });
    Ok(r)
}
