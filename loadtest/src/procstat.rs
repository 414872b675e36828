//! What `/proc` says about a process: CPU-seconds (user + system), resident
//! memory and open file descriptors. Linux only.

use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcStat {
    /// utime + stime, in seconds.
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub fds: u64,
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know).
fn ticks() -> f64 {
    static T: OnceLock<f64> = OnceLock::new();
    *T.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

impl ProcStat {
    pub fn read(pid: u32) -> Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("read /proc/{pid}/stat"))?;
        // The command name may hold spaces and parentheses: split after the last ')'.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After ')': state(0) ppid(1) ... utime(11) stime(12).
        let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        Ok(Self {
            cpu_s: (utime + stime) / ticks(),
            rss_kib,
            fds,
        })
    }

    /// The sum over several processes (nginx master + workers).
    pub fn read_all(pids: &[u32]) -> Result<Self> {
        let mut total = Self::default();
        for &p in pids {
            let s = Self::read(p)?;
            total.cpu_s += s.cpu_s;
            total.rss_kib += s.rss_kib;
            total.fds += s.fds;
        }
        Ok(total)
    }
}

/// How many of `pid`'s descriptors are TCP connections to remote port
/// `port` (e.g. its PostgreSQL pool), from the socket inodes of
/// `/proc/PID/fd` and the process's `/proc/PID/net/tcp{,6}`.
pub fn tcp_to_port(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    let mut n = 0;
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(rem), Some(inode)) = (f.get(2), f.get(9)) else {
                continue;
            };
            let rport = rem
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            let inode: Option<u64> = inode.parse().ok();
            if rport == Some(port) && inode.is_some_and(|i| inodes.contains(&i)) {
                n += 1;
            }
        }
    }
    n
}

/// The CPU-seconds of this process (the load generator itself).
pub fn own() -> ProcStat {
    ProcStat::read(std::process::id()).unwrap_or_default()
}
