//! `primacy-loadtest`: the benchmark suite that measures every target of
//! DESIGN section 10 against a real gateway, with real RTMP/SRT encoders and
//! players (the gateway's own client library), side by side with nginx-rtmp
//! where it applies.
//!
//! Every scenario is bounded in time and count, prints a table, and writes
//! JSON (and plots) into the results folder; `all` also writes `report.md`
//! with each target beside its measured value.

#![forbid(unsafe_code)]

mod encoder;
mod fixtures;
mod gateway;
mod impair;
mod player;
mod plot;
mod procstat;
mod report;
mod scenarios;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::gateway::Target;
use crate::report::{RunInfo, ScenarioReport};

#[derive(Parser, Debug)]
#[command(name = "primacy-loadtest", version, about = "Measure the Primacy gateway against the targets of DESIGN section 10", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
    /// A small, fast smoke run (≤ 60 s for `all`): few sessions, few samples.
    #[arg(long, global = true)]
    pub quick: bool,
    /// Where JSON, plots and report.md go.
    #[arg(long, global = true, default_value_os_t = default_results())]
    pub results: PathBuf,
    /// The `primacy` binary to start as the gateway under test (default: the
    /// one beside this binary, else target/release/primacy).
    #[arg(long, global = true, env = "PRIMACY_LOADTEST_GATEWAY_BIN")]
    pub gateway_bin: Option<PathBuf>,
    /// PostgreSQL server where the started gateway gets its own database.
    #[arg(
        long,
        global = true,
        env = "PRIMACY_TEST_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// Redis for the two-node runs of `planned` and `restart` (a key prefix
    /// of the run's own); skipped with a note when it does not answer.
    #[arg(
        long,
        global = true,
        env = "PRIMACY_TEST_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Use a running gateway instead of starting one: its HTTP base URL.
    /// Needs --api-key, --rtmp and --srt (and --gateway-pid for /proc figures).
    #[arg(long, global = true, requires_all = ["api_key", "rtmp", "srt"])]
    pub gateway_url: Option<String>,
    /// Admin API key of the running gateway (--gateway-url).
    #[arg(long, global = true, env = "PRIMACY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// RTMP address of the running gateway (host:port).
    #[arg(long, global = true)]
    pub rtmp: Option<SocketAddr>,
    /// SRT address of the running gateway (host:port).
    #[arg(long, global = true)]
    pub srt: Option<SocketAddr>,
    /// PID of the running gateway on this machine.
    #[arg(long, global = true)]
    pub gateway_pid: Option<u32>,
    /// Fixture folder (made by scripts/loadtest-fixtures.sh when missing).
    #[arg(long, global = true, default_value_os_t = fixtures::default_dir())]
    pub fixtures: PathBuf,
    /// Skip the nginx-rtmp comparison in `fanout`.
    #[arg(long, global = true)]
    pub no_nginx: bool,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Every scenario below, then report.md (~30 min on 2 cores).
    All,
    /// Kill / stall primaries of N sources with live backups: player freeze.
    Failover,
    /// Primaries and backups behind impaired links (delay, jitter, loss) for 10 min, nothing killed: false switches.
    Impaired,
    /// Failback and reprioritize: frames lost, regressions, call → on air.
    Planned,
    /// 1 → N and N → N players: CPU-s per Gbit, memory per session; nginx-rtmp beside.
    Fanout,
    /// Ramp 500 kbit/s sessions until a player falls behind real time.
    Scale,
    /// 10k tokens (+ definitions): SIGKILL and restart, time to ready.
    Startup,
    /// Publish attempts with valid and invalid tokens: rate and latency.
    Admission,
    /// Encoders connecting and leaving, good and bad tokens: memory and fds back to baseline.
    Churn,
    /// PostgreSQL cut and restored under load: nothing on air stops; time to converge.
    Restart,
}

impl Scenario {
    pub const EVERY: [Scenario; 9] = [
        Scenario::Startup,
        Scenario::Restart,
        Scenario::Admission,
        Scenario::Failover,
        Scenario::Impaired,
        Scenario::Planned,
        Scenario::Fanout,
        Scenario::Churn,
        Scenario::Scale,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::All => "all",
            Scenario::Failover => "failover",
            Scenario::Impaired => "impaired",
            Scenario::Planned => "planned",
            Scenario::Fanout => "fanout",
            Scenario::Scale => "scale",
            Scenario::Startup => "startup",
            Scenario::Admission => "admission",
            Scenario::Churn => "churn",
            Scenario::Restart => "restart",
        }
    }
}

fn default_results() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")
}

/// The `primacy` binary: beside this one (same profile), else release.
fn default_gateway_bin() -> PathBuf {
    let here = std::env::current_exe().ok();
    if let Some(dir) = here.as_ref().and_then(|p| p.parent()) {
        let sibling = dir.join("primacy");
        if sibling.exists() {
            return sibling;
        }
        // Integration tests run from target/<profile>/deps.
        if let Some(up) = dir.parent() {
            let sibling = up.join("primacy");
            if sibling.exists() {
                return sibling;
            }
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release").join("primacy")
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let target = match &cli.gateway_url {
        Some(url) => Target::Url {
            http: url.clone(),
            api_key: cli.api_key.clone().unwrap_or_default(),
            rtmp: cli.rtmp.expect("required by clap"),
            srt: cli.srt.expect("required by clap"),
            pid: cli.gateway_pid,
        },
        None => Target::Spawn {
            bin: cli.gateway_bin.clone().unwrap_or_else(default_gateway_bin),
            admin_db: cli.database_url.clone(),
            log_dir: cli.results.clone(),
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let ctx = scenarios::Ctx {
        rt: rt.handle().clone(),
        target: target.clone(),
        results: cli.results.clone(),
        fixtures: cli.fixtures.clone(),
        quick: cli.quick,
        nginx: !cli.no_nginx,
        redis_url: cli.redis_url.clone(),
    };
    std::fs::create_dir_all(&cli.results)?;
    let list: Vec<Scenario> = match cli.scenario {
        Scenario::All if cli.quick => scenarios::QUICK.to_vec(),
        Scenario::All => Scenario::EVERY.to_vec(),
        s => vec![s],
    };
    let t0 = Instant::now();
    let load_start = report::loadavg();
    let mut reports: Vec<ScenarioReport> = Vec::new();
    let mut failed = Vec::new();
    for s in list {
        eprintln!("[loadtest] {} ...", s.name());
        let started = Instant::now();
        let mut r = match scenarios::run(s, &ctx) {
            Ok(r) => r,
            Err(e) => {
                failed.push(s.name());
                let mut r = ScenarioReport::new(s.name());
                r.notes.push(format!("the scenario failed: {e:#}"));
                r
            }
        };
        r.duration_s = started.elapsed().as_secs_f64();
        print!("{}", r.table());
        r.write_json(&cli.results)?;
        reports.push(r);
    }
    let info = RunInfo {
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        command: std::env::args()
            .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
            .collect::<Vec<_>>()
            .join(" "),
        machine: report::machine(),
        gateway: match &target {
            Target::Spawn { bin, .. } => format!(
                "`{}` started by the load test",
                bin.file_name().unwrap_or_default().to_string_lossy()
            ),
            Target::Url { http, .. } => format!("running at {http}"),
        },
        quick: cli.quick,
        load_start,
        load_end: report::loadavg(),
    };
    let md = report::markdown(&info, &reports);
    let path = cli.results.join("report.md");
    std::fs::write(&path, md)?;
    std::fs::write(
        cli.results.join("report.json"),
        serde_json::to_vec_pretty(&reports)?,
    )?;
    eprintln!(
        "[loadtest] done in {:.0} s; report: {}",
        t0.elapsed().as_secs_f64(),
        path.display()
    );
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}
