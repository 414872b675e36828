//! Results: each scenario yields figures (a measured value, and the DESIGN
//! section 10 target it answers with met / not met), printed as a table,
//! written as JSON, and gathered into a Markdown report beside the plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

/// The targets of DESIGN section 10, in its order: (id, figure, target).
pub const TARGETS: &[(&str, &str, &str)] = &[
    (
        "kill",
        "player-visible freeze, primary encoder killed, backup live",
        "≤ 1 frame interval + 50 ms (83 ms at 30 fps), p99; no timestamp regression",
    ),
    (
        "silent",
        "player-visible freeze, primary dies without a goodbye (SRT encoder killed, encoder stalled with its connection open, link blackholed)",
        "≤ 250 ms p99 at default settings (the loss window)",
    ),
    (
        "false_switches",
        "false switches on impaired but live links",
        "0",
    ),
    (
        "planned",
        "planned switch (failback, reprioritize)",
        "0 frames lost, no timestamp regression",
    ),
    (
        "reprioritize",
        "Reprioritize call → new primary on air, same node / across nodes via Redis",
        "p99 ≤ 150 ms / ≤ 300 ms (loopback)",
    ),
    (
        "startup",
        "kill -9 → ready, with 10k tokens and 1k pull/push definitions",
        "≤ 1 s",
    ),
    (
        "fanout_1_n",
        "relay CPU per Gbit delivered, 1 → 100 RTMP players",
        "≤ 0.25 CPU-s/Gbit (nginx-rtmp 0.38, floor 0.14), ratio measured in the same run",
    ),
    (
        "fanout_n_n",
        "relay CPU per Gbit, 100 publishers → 100 players",
        "≤ 3.0 CPU-s/Gbit (nginx-rtmp 4.5)",
    ),
    (
        "memory",
        "memory per player / per publishing connection",
        "≤ 12 KiB / ≤ 32 KiB beyond the GOP cache (nginx-rtmp 12 / 37)",
    ),
    (
        "scale",
        "concurrent sessions on 2 cores (500 kbit/s feeds + players, Rust load generator)",
        "≥ 2,000 with every player at real time",
    ),
    (
        "admission",
        "publish admission (token verify + cached row)",
        "p99 ≤ 5 ms; ≥ 20k verifications/s per core",
    ),
    (
        "restart",
        "Redis restart / PostgreSQL restart during load",
        "no on-air stream interrupted; converges ≤ 2 s",
    ),
];

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// The DESIGN target it answers (see [`TARGETS`]), or `None` for context.
    pub target: Option<&'static str>,
    pub what: String,
    pub measured: String,
    /// Met / not met against the target; `None` when it is context only or
    /// could not be judged.
    pub met: Option<bool>,
}

impl Figure {
    pub fn judged(
        target: &'static str,
        what: impl Into<String>,
        measured: impl Into<String>,
        met: Option<bool>,
    ) -> Self {
        Self {
            target: Some(target),
            what: what.into(),
            measured: measured.into(),
            met,
        }
    }

    pub fn info(what: impl Into<String>, measured: impl Into<String>) -> Self {
        Self {
            target: None,
            what: what.into(),
            measured: measured.into(),
            met: None,
        }
    }
}

/// What one scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: String,
    pub started_at: String,
    pub duration_s: f64,
    pub figures: Vec<Figure>,
    /// Raw numbers (samples, per-step readings) for whoever wants to dig.
    pub details: Value,
    /// PNG files written, relative to the results folder.
    pub plots: Vec<String>,
    /// What went wrong or was skipped, in words.
    pub notes: Vec<String>,
}

impl ScenarioReport {
    pub fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            duration_s: 0.0,
            figures: Vec::new(),
            details: Value::Null,
            plots: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The result table, as printed to stdout.
    pub fn table(&self) -> String {
        let mut s = format!("\n== {} ({:.0} s) ==\n", self.scenario, self.duration_s);
        for f in &self.figures {
            let verdict = verdict(f.met);
            let _ = writeln!(s, "  {:<70} {:<48} {verdict}", f.what, f.measured);
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    }

    pub fn write_json(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.json", self.scenario));
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)?;
        Ok(path)
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT MET",
        None => "",
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The run's context, printed at the top of the report.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub date: String,
    pub command: String,
    pub machine: String,
    pub gateway: String,
    pub quick: bool,
    /// /proc/loadavg when the run started and when it ended: other work on
    /// the machine shows here.
    pub load_start: String,
    pub load_end: String,
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A description of this machine: CPU model and count, memory, kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), {:.0} GiB RAM, Linux {}",
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

/// The Markdown summary: every DESIGN target with the figures measured for
/// it, then each scenario's other figures, notes and plots.
pub fn markdown(info: &RunInfo, reports: &[ScenarioReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Primacy load test report\n");
    let _ = writeln!(s, "- date: {}", info.date);
    let _ = writeln!(s, "- machine: {}", info.machine);
    let _ = writeln!(s, "- command: `{}`", info.command);
    let _ = writeln!(s, "- gateway: {}", info.gateway);
    let _ = writeln!(
        s,
        "- load average (1/5/15 min) at start: {}; at end: {}",
        info.load_start, info.load_end
    );
    if info.quick {
        let _ = writeln!(
            s,
            "- **quick run**: small scale, the numbers are a smoke test, not a measurement"
        );
    }
    let _ = writeln!(s, "\n## DESIGN section 10 targets\n");
    let _ = writeln!(s, "| figure | target | measured | verdict |");
    let _ = writeln!(s, "| --- | --- | --- | --- |");
    for (id, what, target) in TARGETS {
        let figs: Vec<&Figure> = reports
            .iter()
            .flat_map(|r| r.figures.iter())
            .filter(|f| f.target == Some(*id))
            .collect();
        if figs.is_empty() {
            let _ = writeln!(
                s,
                "| {} | {} | not measured in this run | – |",
                md_escape(what),
                md_escape(target)
            );
            continue;
        }
        for (i, f) in figs.iter().enumerate() {
            let (w, t) = if i == 0 { (*what, *target) } else { ("", "") };
            let _ = writeln!(
                s,
                "| {} | {} | {}: {} | {} |",
                md_escape(w),
                md_escape(t),
                md_escape(&f.what),
                md_escape(&f.measured),
                match f.met {
                    Some(true) => "met",
                    Some(false) => "**not met**",
                    None => "–",
                }
            );
        }
    }
    for r in reports {
        let _ = writeln!(
            s,
            "\n## {} ({:.0} s, started {})\n",
            r.scenario, r.duration_s, r.started_at
        );
        let _ = writeln!(s, "| figure | measured | verdict |");
        let _ = writeln!(s, "| --- | --- | --- |");
        for f in &r.figures {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                md_escape(&f.what),
                md_escape(&f.measured),
                verdict(f.met)
            );
        }
        for n in &r.notes {
            let _ = writeln!(s, "\n- {n}");
        }
        for p in &r.plots {
            let _ = writeln!(s, "\n![{p}]({p})");
        }
    }
    s
}
