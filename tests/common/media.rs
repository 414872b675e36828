//! Real encoders and players for end-to-end tests: ffmpeg publishing
//! pre-encoded files (`-c copy`, cheap on CPU) and ffprobe printing one
//! line per received video packet, time-stamped on arrival.
//!
//! Feed fixtures differ by GOP length so a player can tell which encoder
//! is on air from its keyframe spacing: `A` has a keyframe every 1000 ms,
//! `B` every 500 ms (both 30 fps).

// Each test crate compiles these helpers and uses a different part of
// them: an `expect` would be unfulfilled in the crates that use it all.
#![allow(
    dead_code,
    reason = "each test crate uses a part of the shared helpers"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixture {
    /// 640x360, 30 fps, keyframe every 30 frames.
    A,
    /// 640x360, 30 fps, keyframe every 15 frames.
    B,
    /// 1280x720, 30 fps, 3 Mbit/s video (CBR-ish), keyframe every 30 frames.
    Hd,
}

fn fixture_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("primacy-fixtures");
    std::fs::create_dir_all(&dir).expect("fixture dir");
    dir
}

/// The FLV file of a fixture, encoded once per machine (kept in the
/// target's temp dir).
pub fn fixture(f: Fixture) -> PathBuf {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    let _g = LOCK
        .get_or_init(|| Mutex::new(()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let (name, src, gop) = match f {
        Fixture::A => ("a.flv", "testsrc2=size=640x360:rate=30", 30),
        Fixture::B => ("b.flv", "smptebars=size=640x360:rate=30", 15),
        Fixture::Hd => ("hd3m.flv", "testsrc2=size=1280x720:rate=30", 30),
    };
    let (secs, video_rate, audio_rate) = match f {
        Fixture::A | Fixture::B => ("12", &["-b:v", "600k"][..], "64k"),
        Fixture::Hd => (
            "10",
            &["-b:v", "3M", "-maxrate", "3M", "-bufsize", "3M"][..],
            "128k",
        ),
    };
    let path = fixture_dir().join(name);
    if path.exists() {
        return path;
    }
    let tmp = fixture_dir().join(format!("{name}.{}.tmp.flv", std::process::id()));
    let mut enc = spawn_logged(
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-nostdin",
                "-y",
                "-f",
                "lavfi",
                "-i",
                src,
            ])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"])
            .args([
                "-t",
                secs,
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
            ])
            .args([
                "-g",
                &gop.to_string(),
                "-keyint_min",
                &gop.to_string(),
                "-sc_threshold",
                "0",
            ])
            .args(video_rate)
            .args(["-c:a", "aac", "-b:a", audio_rate, "-f", "flv"])
            .arg(&tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
        "ffmpeg (is it installed?)",
    );
    let status = enc.wait_timeout(Duration::from_secs(300));
    assert!(
        status.is_some_and(|s| s.success()),
        "ffmpeg could not encode fixture {name} within 300 s: {}",
        enc.stderr_text()
    );
    std::fs::rename(&tmp, &path).expect("rename fixture");
    path
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub child: Child,
    pub stderr: Arc<Mutex<String>>,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for exit, at most `timeout`; returns the exit status if it exited.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// What the client complained about, without libsrt's own transport
    /// warnings (`…/SRT:…!W:…` lines). In non-blocking connect mode libsrt
    /// may see the first data packet before it has processed the handshake
    /// response and logs "received DATA while HANDSHAKE expected"; it
    /// re-requests the handshake and carries on. Errors stay in.
    pub fn complaints(&self) -> String {
        self.stderr_text()
            .lines()
            .filter(|l| !(l.contains("/SRT:") && l.contains("!W:")))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    if let Some(err) = child.stderr.take() {
        let b = buf.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut g = b.lock().unwrap();
                if g.len() < 64 * 1024 {
                    g.push_str(&line);
                    g.push('\n');
                }
            }
        });
    }
    buf
}

/// Spawn `cmd` (the caller sets stdin and stdout) with its stderr collected;
/// the process is killed and reaped when the returned `Proc` drops.
pub fn spawn_logged(cmd: &mut Command, what: &str) -> Proc {
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let stderr = collect_stderr(&mut child);
    Proc { child, stderr }
}

/// Publish a fixture in a loop at real time to `url` (no re-encode).
pub fn publish(f: Fixture, url: &str) -> Proc {
    publish_as(f, url, "flv")
}

/// Publish a fixture in a loop at real time in container `format`.
fn publish_as(f: Fixture, url: &str, format: &str) -> Proc {
    let path = fixture(f);
    let mut child = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-re",
            "-stream_loop",
            "-1",
            "-i",
        ])
        .arg(&path)
        .args(["-c", "copy", "-f", format, url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg publisher");
    let stderr = collect_stderr(&mut child);
    Proc { child, stderr }
}

/// One video packet as the player received it.
#[derive(Debug, Clone)]
pub struct Packet {
    pub arrived: Instant,
    pub pts: f64,
    pub dts: f64,
    pub keyframe: bool,
}

/// An ffprobe player printing one line per video packet.
pub struct Player {
    pub proc: Proc,
    pub packets: Arc<Mutex<Vec<Packet>>>,
}

impl Player {
    pub fn start(url: &str) -> Self {
        Self::start_with(url, &[])
    }

    /// A player with extra ffprobe input options before the URL (for
    /// example `-listen 1` to wait for an RTMP publisher).
    pub fn start_with(url: &str, input_options: &[&str]) -> Self {
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "ffprobe",
                "-hide_banner",
                "-v",
                "error",
                "-rw_timeout",
                "8000000",
            ])
            .args([
                "-select_streams",
                "v:0",
                "-show_entries",
                "packet=pts_time,dts_time,flags",
                "-of",
                "csv=p=0",
            ])
            .args(input_options)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ffprobe player");
        let stderr = collect_stderr(&mut child);
        let out = child.stdout.take().expect("stdout");
        let packets = Arc::new(Mutex::new(Vec::new()));
        let p = packets.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let arrived = Instant::now();
                let cols: Vec<&str> = line.trim().split(',').collect();
                if cols.len() < 3 {
                    continue;
                }
                let (Ok(pts), Ok(dts)) = (cols[0].parse::<f64>(), cols[1].parse::<f64>()) else {
                    continue;
                };
                p.lock().unwrap().push(Packet {
                    arrived,
                    pts,
                    dts,
                    keyframe: cols[2].starts_with('K'),
                });
            }
        });
        Self {
            proc: Proc { child, stderr },
            packets,
        }
    }

    pub fn count(&self) -> usize {
        self.packets.lock().unwrap().len()
    }

    pub fn snapshot(&self) -> Vec<Packet> {
        self.packets.lock().unwrap().clone()
    }

    /// Wait until at least `n` packets arrived (panics after `timeout`).
    pub fn wait_packets(&self, n: usize, timeout: Duration) {
        let end = Instant::now() + timeout;
        while self.count() < n {
            assert!(
                Instant::now() < end,
                "player got {} of {n} packets in {timeout:?}; ffprobe said: {}",
                self.count(),
                self.proc.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.proc.child.try_wait(), Ok(None))
    }
}

/// Mean distance between consecutive keyframes (in dts seconds) among packets.
pub fn keyframe_spacing(packets: &[Packet]) -> Option<f64> {
    let k: Vec<f64> = packets
        .iter()
        .filter(|p| p.keyframe)
        .map(|p| p.dts)
        .collect();
    if k.len() < 3 {
        return None;
    }
    let d: Vec<f64> = k.windows(2).map(|w| w[1] - w[0]).collect();
    Some(d.iter().sum::<f64>() / d.len() as f64)
}

/// Assert dts never goes backwards; returns the largest wall-clock gap
/// between consecutive packets and where it was.
pub fn check_monotonic(packets: &[Packet]) -> (Duration, usize) {
    let mut max_gap = Duration::ZERO;
    let mut at = 0;
    for (i, w) in packets.windows(2).enumerate() {
        assert!(
            w[1].dts > w[0].dts,
            "video dts regressed at packet {}: {} -> {}",
            i + 1,
            w[0].dts,
            w[1].dts
        );
        let g = w[1].arrived.duration_since(w[0].arrived);
        if g > max_gap {
            max_gap = g;
            at = i + 1;
        }
    }
    (max_gap, at)
}

/// Run ffmpeg publishing a fixture and wait for it to exit (used for refusals).
pub fn publish_expect_refusal(f: Fixture, url: &str, timeout: Duration) -> (Option<i32>, String) {
    let mut p = publish(f, url);
    let status = p.wait_timeout(timeout);
    std::thread::sleep(Duration::from_millis(100));
    let text = p.stderr_text();
    (status.and_then(|s| s.code()), text)
}

/// Publish a fixture over SRT as MPEG-TS (no re-encode).
pub fn publish_srt(f: Fixture, url: &str) -> Proc {
    publish_as(f, url, "mpegts")
}

/// A loopback port free right now, for a listener a child process will
/// open. Chosen below the kernel's ephemeral range (32768+), so no
/// outgoing connection of this or another test takes it meanwhile, and a
/// client retrying against it cannot connect to itself.
fn free_port(bind: impl Fn(u16) -> bool) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Test processes start at different places to stay out of each
    // other's way.
    let start = (std::process::id() % 600) as u16 * 20;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + start.wrapping_add(n) % 12_000;
        if bind(port) {
            return port;
        }
    }
    panic!("no free port below the ephemeral range");
}

pub fn free_tcp_port() -> u16 {
    free_port(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

pub fn free_udp_port() -> u16 {
    free_port(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// Wait until something listens on loopback TCP `port` (or has UDP `port`
/// bound), without connecting to it (ffmpeg's `-listen 1` serves exactly
/// one client). Reads `/proc/net/{tcp,udp}`; false after `timeout`.
pub fn wait_bound(port: u16, udp: bool, timeout: Duration) -> bool {
    // TCP: listening (0A), or already serving its client (01: a client
    // that connects at once can be accepted between two looks).
    let (file, states): (&str, &[&str]) = if udp {
        ("/proc/net/udp", &[])
    } else {
        ("/proc/net/tcp", &["0A", "01"])
    };
    let want = format!(":{port:04X}");
    let end = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let found = text.lines().skip(1).any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3
                && cols[1].ends_with(&want)
                && (states.is_empty() || states.contains(&cols[3]))
        });
        if found {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// ffmpeg serving a fixture to the first client that connects.
pub fn ffmpeg_source(f: Fixture, format: &str, listen_url: &str) -> Proc {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-re"])
        .args(["-stream_loop", "-1", "-i"])
        .arg(fixture(f))
        .args(["-c", "copy", "-f", format]);
    if format == "flv" {
        cmd.args(["-listen", "1"]);
    }
    cmd.arg(listen_url)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut p = spawn_logged(&mut cmd, "ffmpeg listening source");
    let port = listen_url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|p| p.parse::<u16>().ok())
        .expect("a port in the listen URL");
    if !wait_bound(
        port,
        listen_url.starts_with("srt://"),
        Duration::from_secs(20),
    ) {
        p.kill();
        panic!(
            "ffmpeg did not listen on port {port} within 20 s: {}",
            p.stderr_text()
        );
    }
    p
}
