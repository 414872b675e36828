//! `fanout`: what relaying costs. 1 → N RTMP players of one 720p30
//! ~2.65 Mbit/s publisher for several N, then N publishers → N players at
//! ~500 kbit/s; the relay's CPU-seconds (from /proc) per Gbit delivered to
//! the players, and its resident memory per player and per publishing
//! connection. The same load runs against nginx with the RTMP module
//! (started by `scripts/nginx-rtmp.sh` on loopback) when it is installed,
//! and the ratio is reported.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use primacy::client::ClientUrl;
use serde_json::json;

use super::{encoder, publish_url, sleep_ms, stop_all, Ctx, Proto};
use crate::encoder::Encoder;
use crate::fixtures::{Fixture, Quality};
use crate::gateway::{free_tcp, Gateway, Settings};
use crate::player::Player;
use crate::plot;
use crate::procstat::{self, ProcStat};
use crate::report::{Figure, ScenarioReport};

/// An RTMP relay under test.
trait Relay {
    fn name(&self) -> &'static str;
    fn stat(&self) -> Option<ProcStat>;
    fn publish(&self, stream: &str) -> Result<ClientUrl>;
    fn play(&self, stream: &str) -> Result<ClientUrl>;
}

struct GatewayRelay {
    gw: Gateway,
    secret: String,
    /// Publish and play over SRT instead of RTMP.
    srt: bool,
}

impl GatewayRelay {
    fn proto(&self) -> Proto {
        if self.srt {
            Proto::Srt
        } else {
            Proto::Rtmp
        }
    }
}

impl Relay for GatewayRelay {
    fn name(&self) -> &'static str {
        if self.srt {
            "primacy SRT"
        } else {
            "primacy"
        }
    }
    fn stat(&self) -> Option<ProcStat> {
        self.gw.stat()
    }
    fn publish(&self, stream: &str) -> Result<ClientUrl> {
        publish_url(&self.gw, self.proto(), stream, &self.secret)
    }
    fn play(&self, stream: &str) -> Result<ClientUrl> {
        super::play_url(&self.gw, self.proto(), stream)
    }
}

/// nginx-rtmp, started by the repository's script (exec: same PID).
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path) -> Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nginx-rtmp.sh");
        let port = free_tcp()?.port();
        let child = Command::new("bash")
            .arg(&script)
            .arg(dir)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("run {}", script.display()))?;
        let mut n = Self { child, port };
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(n);
            }
            if let Some(st) = n.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = n.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                bail!("nginx-rtmp did not start ({st}): {}", err.trim());
            }
            if Instant::now() > end {
                bail!("nginx-rtmp did not listen within 5 s");
            }
            sleep_ms(20);
        }
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(master) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            sleep_ms(20);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay for Nginx {
    fn name(&self) -> &'static str {
        "nginx-rtmp"
    }
    fn stat(&self) -> Option<ProcStat> {
        ProcStat::read_all(&self.pids()).ok()
    }
    fn publish(&self, stream: &str) -> Result<ClientUrl> {
        format!("rtmp://127.0.0.1:{}/live/{stream}", self.port)
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
    fn play(&self, stream: &str) -> Result<ClientUrl> {
        self.publish(stream)
    }
}

/// One measured window.
#[derive(Debug, Clone, serde::Serialize)]
struct Window {
    relay: &'static str,
    publishers: usize,
    players: usize,
    seconds: f64,
    cpu_s: f64,
    gbit: f64,
    cpu_s_per_gbit: Option<f64>,
    /// Resident memory added per player (KiB).
    rss_kib_per_player: f64,
    /// Resident memory added per publishing connection (KiB), N → N only.
    rss_kib_per_publisher: Option<f64>,
    /// Players more than 1 s behind real time (or with no frame).
    players_behind: usize,
    /// CPU-seconds of the load generator itself in the window.
    generator_cpu_s: f64,
}

fn spawn_players(
    ctx: &Ctx,
    relay: &dyn Relay,
    streams: &[String],
    per_stream: usize,
) -> Result<Vec<Player>> {
    let mut players = Vec::new();
    for s in streams {
        for _ in 0..per_stream {
            players.push(Player::spawn(&ctx.rt, relay.play(s)?, false));
            if players.len() % 50 == 0 {
                sleep_ms(100); // do not SYN-flood the accept queue
            }
        }
    }
    Ok(players)
}

/// Warm up, then measure CPU and bytes over `secs`.
fn measure(
    ctx: &Ctx,
    relay: &dyn Relay,
    players: &[Player],
    secs: u64,
) -> Result<(f64, f64, f64, usize, f64, ProcStat)> {
    let end = Instant::now() + Duration::from_secs(20);
    while players.iter().any(|p| p.video_frames() == 0) && Instant::now() < end {
        sleep_ms(100);
    }
    sleep_ms(ctx.pick(2000, 500));
    for p in players {
        p.reset_window();
    }
    let s0 = relay.stat().context("relay /proc stat")?;
    let g0 = procstat::own();
    let b0: u64 = players.iter().map(Player::bytes).sum();
    let t0 = Instant::now();
    sleep_ms(secs * 1000);
    let s1 = relay.stat().context("relay /proc stat")?;
    let g1 = procstat::own();
    let b1: u64 = players.iter().map(Player::bytes).sum();
    let dt = t0.elapsed().as_secs_f64();
    let behind = players.iter().filter(|p| p.drift_ms() > 1000.0).count();
    Ok((
        dt,
        s1.cpu_s - s0.cpu_s,
        (b1 - b0) as f64 * 8.0 / 1e9,
        behind,
        g1.cpu_s - g0.cpu_s,
        s1,
    ))
}

/// Starts a fresh relay: every window is measured on a new process, so
/// memory freed by an earlier window cannot hide what a later one uses.
type Factory<'a> = &'a dyn Fn() -> Result<Box<dyn Relay>>;

fn one_to_n(
    ctx: &Ctx,
    make: Factory,
    fx: &Fixture,
    levels: &[usize],
    secs: u64,
) -> Result<Vec<Window>> {
    let stream = "fan-1".to_owned();
    let mut out = Vec::new();
    for &n in levels {
        let relay = make()?;
        let relay = relay.as_ref();
        let enc = encoder(ctx, relay.publish(&stream)?, fx);
        sleep_ms(ctx.pick(2500, 1500));
        let base = relay.stat().context("relay /proc stat")?;
        let players = spawn_players(ctx, relay, std::slice::from_ref(&stream), n)?;
        let (dt, cpu, gbit, behind, gen, s1) = measure(ctx, relay, &players, secs)?;
        out.push(Window {
            relay: relay.name(),
            publishers: 1,
            players: n,
            seconds: dt,
            cpu_s: cpu,
            gbit,
            cpu_s_per_gbit: (gbit > 0.0).then(|| cpu / gbit),
            rss_kib_per_player: (s1.rss_kib as f64 - base.rss_kib as f64) / n as f64,
            rss_kib_per_publisher: None,
            players_behind: behind,
            generator_cpu_s: gen,
        });
        stop_all(ctx, players, vec![enc]);
    }
    Ok(out)
}

fn n_to_n(
    ctx: &Ctx,
    make: Factory,
    fx: &Fixture,
    n: usize,
    secs: u64,
    gop_bytes: f64,
) -> Result<Window> {
    let relay = make()?;
    let relay = relay.as_ref();
    let streams: Vec<String> = (0..n).map(|i| format!("nn-{i}")).collect();
    sleep_ms(500);
    let base = relay.stat().context("relay /proc stat")?;
    let mut encs: Vec<Encoder> = Vec::new();
    for s in &streams {
        encs.push(encoder(ctx, relay.publish(s)?, fx));
    }
    let end = Instant::now() + Duration::from_secs(30);
    while encs.iter().any(|e| !e.is_publishing()) && Instant::now() < end {
        sleep_ms(100);
    }
    sleep_ms(ctx.pick(3000, 1500)); // a GOP cached per feed, buffers settled
    let with_pubs = relay.stat().context("relay /proc stat")?;
    let players = spawn_players(ctx, relay, &streams, 1)?;
    let (dt, cpu, gbit, behind, gen, s1) = measure(ctx, relay, &players, secs)?;
    let per_pub = (with_pubs.rss_kib as f64 - base.rss_kib as f64) / n as f64;
    let w = Window {
        relay: relay.name(),
        publishers: n,
        players: n,
        seconds: dt,
        cpu_s: cpu,
        gbit,
        cpu_s_per_gbit: (gbit > 0.0).then(|| cpu / gbit),
        rss_kib_per_player: (s1.rss_kib as f64 - with_pubs.rss_kib as f64) / n as f64,
        rss_kib_per_publisher: Some(per_pub - gop_bytes / 1024.0),
        players_behind: behind,
        generator_cpu_s: gen,
    };
    stop_all(ctx, players, encs);
    Ok(w)
}

fn fmt(x: Option<f64>, unit: &str) -> String {
    x.map_or("–".into(), |v| format!("{v:.2} {unit}"))
}

pub fn run(ctx: &Ctx) -> Result<ScenarioReport> {
    let mut r = ScenarioReport::new("fanout");
    let hd = ctx.fixture(Quality::Hd)?;
    let sd = ctx.fixture(Quality::Sd)?;
    let levels: Vec<usize> = ctx.pick(vec![10, 100, 250, 500], vec![5]);
    let nn = ctx.pick(100, 5);
    let secs = ctx.pick(10, 2);
    // One GOP of the SD fixture: what a feed's GOP cache holds.
    let gop_bytes = sd.flv.bitrate / 8.0;

    let start = |srt: bool| -> Result<Box<dyn Relay>> {
        let gw = Gateway::start(&ctx.target, &Settings::default(), "fanout")?;
        if gw.pid().is_none() {
            bail!("fanout reads the gateway's /proc: start it here or pass --gateway-pid");
        }
        let secret = gw.token_regex("fanout", "(fan|nn)-.*", None)?.secret;
        Ok(Box::new(GatewayRelay { gw, secret, srt }))
    };
    let gateway = || start(false);
    let mut windows = one_to_n(ctx, &gateway, &hd, &levels, secs)?;
    windows.push(n_to_n(ctx, &gateway, &sd, nn, secs, gop_bytes)?);
    // SRT players (MPEG-TS out), for comparison with the RTMP figures.
    if !ctx.quick {
        let srt = || start(true);
        windows.extend(one_to_n(ctx, &srt, &hd, &[50], secs)?);
    }

    // nginx-rtmp: the full run only (a quick run checks the tool, not nginx).
    if ctx.nginx && !ctx.quick {
        let dir = ctx.results.join("nginx-rtmp");
        let nginx = || -> Result<Box<dyn Relay>> { Ok(Box::new(Nginx::start(&dir)?)) };
        match nginx() {
            Ok(probe) => {
                drop(probe);
                windows.extend(one_to_n(ctx, &nginx, &hd, &levels, secs)?);
                windows.push(n_to_n(ctx, &nginx, &sd, nn, secs, gop_bytes)?);
            }
            Err(e) => r.notes.push(format!("no nginx-rtmp comparison: {e:#}")),
        }
    }

    let find = |relay: &str, pubs: usize, players: usize| {
        windows
            .iter()
            .find(|w| w.relay == relay && w.publishers == pubs && w.players == players)
            .cloned()
    };
    let ref_n = if ctx.quick { levels[0] } else { 100 };
    let ours = find("primacy", 1, ref_n);
    let theirs = find("nginx-rtmp", 1, ref_n);
    if let Some(w) = &ours {
        let ratio = theirs
            .as_ref()
            .and_then(|t| Some(w.cpu_s_per_gbit? / t.cpu_s_per_gbit?))
            .map_or(String::new(), |x| format!("; ratio to nginx-rtmp {x:.2}"));
        r.figures.push(Figure::judged(
            "fanout_1_n",
            format!("relay CPU, 1 → {ref_n} RTMP players, 720p30 2.65 Mbit/s"),
            format!("{}{ratio}", fmt(w.cpu_s_per_gbit, "CPU-s/Gbit")),
            w.cpu_s_per_gbit.map(|c| c <= 0.25),
        ));
        r.figures.push(Figure::judged(
            "memory",
            format!("memory per player (1 → {ref_n})"),
            format!("{:.1} KiB", w.rss_kib_per_player),
            Some(w.rss_kib_per_player <= 12.0),
        ));
    }
    if let Some(t) = &theirs {
        r.figures.push(Figure::info(
            format!("nginx-rtmp, same run, 1 → {ref_n}"),
            format!(
                "{}; {:.1} KiB per player",
                fmt(t.cpu_s_per_gbit, "CPU-s/Gbit"),
                t.rss_kib_per_player
            ),
        ));
    }
    if let Some(w) = find("primacy", nn, nn) {
        let t = find("nginx-rtmp", nn, nn);
        let ratio = t
            .as_ref()
            .and_then(|t| Some(w.cpu_s_per_gbit? / t.cpu_s_per_gbit?))
            .map_or(String::new(), |x| format!("; ratio to nginx-rtmp {x:.2}"));
        r.figures.push(Figure::judged(
            "fanout_n_n",
            format!("relay CPU, {nn} publishers → {nn} players, 500 kbit/s"),
            format!("{}{ratio}", fmt(w.cpu_s_per_gbit, "CPU-s/Gbit")),
            w.cpu_s_per_gbit.map(|c| c <= 3.0),
        ));
        let per_pub = w.rss_kib_per_publisher.unwrap_or(f64::NAN);
        r.figures.push(Figure::judged(
            "memory",
            format!("memory per publishing connection beyond the GOP cache ({nn} at 500 kbit/s, GOP {:.0} KiB)", gop_bytes / 1024.0),
            format!("{per_pub:.1} KiB"),
            Some(per_pub <= 32.0),
        ));
        if let Some(t) = t {
            r.figures.push(Figure::info(
                format!("nginx-rtmp, same run, {nn} → {nn}"),
                format!(
                    "{}; {:.1} KiB per publisher beyond a GOP, {:.1} KiB per player",
                    fmt(t.cpu_s_per_gbit, "CPU-s/Gbit"),
                    t.rss_kib_per_publisher.unwrap_or(f64::NAN),
                    t.rss_kib_per_player
                ),
            ));
        }
    }
    for w in &windows {
        r.figures.push(Figure::info(
            format!("{} {} → {}", w.relay, w.publishers, w.players),
            format!(
                "{}, {:.2} Gbit in {:.0} s, {:.1} KiB/player, {} behind, generator {:.1} CPU-s",
                fmt(w.cpu_s_per_gbit, "CPU-s/Gbit"),
                w.gbit,
                w.seconds,
                w.rss_kib_per_player,
                w.players_behind,
                w.generator_cpu_s
            ),
        ));
    }
    let series: Vec<plot::Series> = ["primacy", "nginx-rtmp", "primacy SRT"]
        .iter()
        .map(|name| plot::Series {
            name: (*name).into(),
            points: windows
                .iter()
                .filter(|w| w.relay == *name && w.publishers == 1)
                .filter_map(|w| Some((w.players as f64, w.cpu_s_per_gbit?)))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let png = "fanout-cpu-per-gbit.png";
    match plot::lines(
        &ctx.results.join(png),
        "Relay CPU per Gbit delivered, 1 → N RTMP players",
        "players",
        "CPU-s per Gbit",
        &series,
    ) {
        Ok(()) => r.plots.push(png.into()),
        Err(e) => r.notes.push(format!("plot: {e:#}")),
    }
    r.notes.push(
        "the load generator (encoders and players) runs on the same cores as the relay; its own CPU is shown per window".into(),
    );
    r.details = json!({ "windows": windows });
    Ok(r)
}
