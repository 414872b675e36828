//! The scenarios. Each one starts what it needs (a gateway, encoders,
//! players), measures, stops everything it started, and returns a
//! [`ScenarioReport`]. Every loop in here is bounded in count and time.

mod admission;
mod churn;
mod failover;
mod fanout;
mod impaired;
mod planned;
mod restart;
mod scale;
mod startup;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use primacy::client::ClientUrl;

use crate::encoder::{Encoder, EncoderConfig};
use crate::fixtures::{self, Fixture, Quality};
use crate::gateway::{Gateway, Target};
use crate::player::Player;
use crate::report::ScenarioReport;
use crate::Scenario;

/// What every scenario gets.
pub struct Ctx {
    pub target: Target,
    pub results: PathBuf,
    pub fixtures: PathBuf,
    pub quick: bool,
    /// Compare with nginx-rtmp where it applies (when it is installed).
    pub nginx: bool,
    /// Redis for runs with several nodes.
    pub redis_url: String,
    pub rt: tokio::runtime::Handle,
}

impl Ctx {
    /// `full` normally, `quick` in a quick run.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }

    pub fn fixture(&self, q: Quality) -> Result<Fixture> {
        fixtures::load(&self.fixtures, q)
    }
}

/// What `all --quick` runs.
pub const QUICK: [Scenario; 7] = [
    Scenario::Startup,
    Scenario::Admission,
    Scenario::Failover,
    Scenario::Impaired,
    Scenario::Planned,
    Scenario::Fanout,
    Scenario::Churn,
];

pub fn run(s: Scenario, ctx: &Ctx) -> Result<ScenarioReport> {
    match s {
        Scenario::Startup => startup::run(ctx),
        Scenario::Admission => admission::run(ctx),
        Scenario::Failover => failover::run(ctx),
        Scenario::Impaired => impaired::run(ctx),
        Scenario::Planned => planned::run(ctx),
        Scenario::Fanout => fanout::run(ctx),
        Scenario::Scale => scale::run(ctx),
        Scenario::Churn => churn::run(ctx),
        Scenario::Restart => restart::run(ctx),
        Scenario::All => bail!("`all` is not a single scenario"),
    }
}

/// The protocol of an encoder or player.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Rtmp,
    Srt,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Rtmp => "RTMP",
            Proto::Srt => "SRT",
        }
    }
}

fn parse(url: String) -> Result<ClientUrl> {
    url.parse().map_err(|e| anyhow!("bad URL: {e}"))
}

/// A publish URL for `stream` with `token`.
pub fn publish_url(gw: &Gateway, p: Proto, stream: &str, token: &str) -> Result<ClientUrl> {
    match p {
        Proto::Rtmp => parse(gw.rtmp_url(&format!("{stream}?token={token}"))),
        Proto::Srt => parse(gw.srt_url(&format!("#!::r={stream},m=publish,s={token}"))),
    }
}

/// A publish URL for `stream` with `token` that reaches the gateway at
/// `via` (an impairment link in front of its RTMP or SRT port).
pub fn publish_url_via(
    gw: &Gateway,
    p: Proto,
    stream: &str,
    token: &str,
    via: std::net::SocketAddr,
) -> Result<ClientUrl> {
    let url = match p {
        Proto::Rtmp => gw.rtmp_url(&format!("{stream}?token={token}")).replacen(
            &gw.rtmp.to_string(),
            &via.to_string(),
            1,
        ),
        Proto::Srt => gw
            .srt_url(&format!("#!::r={stream},m=publish,s={token}"))
            .replacen(&gw.srt.to_string(), &via.to_string(), 1),
    };
    parse(url)
}

/// A publish URL for source `source` of `stream` (`sourceId`), with a token.
pub fn publish_source_url(
    gw: &Gateway,
    p: Proto,
    stream: &str,
    source: &str,
    token: &str,
) -> Result<ClientUrl> {
    match p {
        Proto::Rtmp => parse(gw.rtmp_url(&format!("{stream}?token={token}&sourceId={source}"))),
        Proto::Srt => parse(gw.srt_url(&format!(
            "#!::r={stream},m=publish,s={token},user_source={source}"
        ))),
    }
}

/// A play URL for `stream`.
pub fn play_url(gw: &Gateway, p: Proto, stream: &str) -> Result<ClientUrl> {
    match p {
        Proto::Rtmp => parse(gw.rtmp_url(stream)),
        Proto::Srt => parse(gw.srt_url(&format!("#!::r={stream},m=request"))),
    }
}

/// Start an encoder on `url` with the usual settings.
pub fn encoder(ctx: &Ctx, url: ClientUrl, fx: &Fixture) -> Encoder {
    Encoder::spawn(&ctx.rt, EncoderConfig::new(url, fx.clone()))
}

pub fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Wait until every player got at least `frames` video frames.
pub fn wait_frames(players: &[&Player], frames: u64, timeout: Duration) -> Result<()> {
    let end = Instant::now() + timeout;
    loop {
        let behind = players.iter().filter(|p| p.video_frames() < frames).count();
        if behind == 0 {
            return Ok(());
        }
        if Instant::now() > end {
            bail!(
                "{behind} of {} players got fewer than {frames} frames within {timeout:?}",
                players.len()
            );
        }
        sleep_ms(50);
    }
}

/// Stop players and encoders (bounded).
pub fn stop_all(ctx: &Ctx, players: Vec<Player>, encoders: Vec<Encoder>) {
    ctx.rt.block_on(async {
        let p = futures::future::join_all(players.into_iter().map(Player::stop));
        let e = futures::future::join_all(encoders.into_iter().map(Encoder::stop));
        let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join(p, e)).await;
    });
}

/// Format a number of ms.
pub fn ms(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.1} ms"))
}

/// "; DTS steps of A–B ms" for the (arrival, dts before, dts after) steps
/// a timestamp check found, or nothing.
pub fn steps_text(steps: &[(f64, i64, i64)]) -> String {
    let sizes: Vec<i64> = steps.iter().map(|s| s.2 - s.1).filter(|d| *d > 0).collect();
    match (sizes.iter().min(), sizes.iter().max()) {
        (Some(a), Some(b)) => format!("; video DTS steps of {a}–{b} ms"),
        _ => String::new(),
    }
}
