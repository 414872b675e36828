//! SRT against real libsrt clients: srt-live-transmit publishing and
//! playing, every SRT refusal code as a libsrt caller sees it, 3 Mbit/s
//! runs without stalls, and a mixed RTMP/SRT failover captured as MPEG-TS.
//!
//! Needs ffmpeg/ffprobe, srt-live-transmit (Debian `srt-tools`) and
//! python3 (its ctypes reads the numeric reject code from libsrt itself;
//! srt-live-transmit and ffmpeg only print libsrt's reason *text*).
//!
//! The tests take a file-wide lock and run one at a time: the 3 Mbit/s runs
//! measure stalls, and a 2-core machine running two of them side by side
//! would measure the CPU instead.

mod common;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::gateway::Gateway as Env;
use common::media::{
    check_monotonic, fixture, keyframe_spacing, publish, publish_srt, spawn_logged, Fixture,
    Packet, Player, Proc,
};
use primacy::media::ts::demux::{DemuxEvent, TsDemuxer};
use primacy::media::{Frame, Track};

/// One test at a time (see the module docs).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// `ffmpeg -re -stream_loop -1 -i FIXTURE -c copy -f mpegts -` piped into
/// `srt-live-transmit -a:no file://con URL`. Both die on drop.
struct SltPublisher {
    ffmpeg: Proc,
    slt: Proc,
}

fn publish_slt(f: Fixture, url: &str) -> SltPublisher {
    let mut ffmpeg = spawn_logged(
        Command::new("ffmpeg")
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
            .arg(fixture(f))
            .args(["-c", "copy", "-f", "mpegts", "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
        "ffmpeg (TS to stdout)",
    );
    let ts = ffmpeg.child.stdout.take().expect("ffmpeg stdout");
    let slt = spawn_logged(
        Command::new("srt-live-transmit")
            .args(["-a:no", "file://con", url])
            .stdin(Stdio::from(ts))
            .stdout(Stdio::null()),
        "srt-live-transmit publisher",
    );
    SltPublisher { ffmpeg, slt }
}

/// `srt-live-transmit -a:no URL file://con > out`; dies on drop.
fn capture_slt(url: &str, out: &Path) -> Proc {
    let file = File::create(out).expect("create capture file");
    spawn_logged(
        Command::new("srt-live-transmit")
            .args(["-a:no", url, "file://con"])
            .stdin(Stdio::null())
            .stdout(file),
        "srt-live-transmit player",
    )
}

fn capture_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("srt-clients");
    std::fs::create_dir_all(&dir).expect("capture dir");
    dir.join(format!("{name}-{}.ts", std::process::id()))
}

/// Run a short command to completion (at most `timeout`); returns its
/// stdout and stderr.
fn run(cmd: &mut Command, what: &str, timeout: Duration) -> (String, String) {
    let mut p = spawn_logged(cmd.stdin(Stdio::null()).stdout(Stdio::piped()), what);
    let mut out = p.child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let status = p.wait_timeout(timeout);
    assert!(
        status.is_some(),
        "{what} did not finish in {timeout:?}: {}",
        p.stderr_text()
    );
    let stdout = reader.join().expect("stdout reader");
    // The stderr collector thread ends at EOF just after the exit.
    std::thread::sleep(Duration::from_millis(100));
    (stdout, p.stderr_text())
}

/// Cut a capture at its last PES start. A capture stopped mid-stream ends
/// in a partial frame (the client was killed with the rest of the frame in
/// flight or in its output buffer), and decoders rightly complain about it;
/// the gateway writes each frame's packets contiguously, so everything
/// before the last PES start is whole. Returns the bytes dropped.
fn trim_to_whole_pes(path: &Path) -> usize {
    let data = std::fs::read(path).expect("read capture");
    let whole = data.len() / 188 * 188;
    let cut = data[..whole]
        .chunks_exact(188)
        .rposition(|p| {
            let pusi = p[0] == 0x47 && p[1] & 0x40 != 0;
            let afc = (p[3] >> 4) & 3;
            let start = match afc {
                1 => 4,
                3 => 5 + usize::from(p[4]),
                _ => return false,
            };
            pusi && p.get(start..start + 3) == Some(&[0, 0, 1][..])
        })
        .map_or(whole, |i| i * 188);
    std::fs::write(path, &data[..cut]).expect("rewrite capture");
    data.len() - cut
}

/// What the TS demuxer made of a capture.
struct TsReport {
    video: Vec<Frame>,
    audio: usize,
    continuity_errors: u64,
    /// Continuity errors after the first 20 TS packets.
    continuity_errors_after_start: u64,
    pes_errors: u64,
    resyncs: u64,
    /// TS packets whose adaptation field sets discontinuity_indicator.
    discontinuity_flags: usize,
}

fn demux_file(path: &Path) -> TsReport {
    let data = std::fs::read(path).expect("read capture");
    let head = data.len().min(20 * 188);
    let mut d = TsDemuxer::new();
    let mut events = d.push(&data[..head]);
    let early = d.stats().continuity_errors;
    events.extend(d.push(&data[head..]));
    events.extend(d.finish());
    let mut video = Vec::new();
    let mut audio = 0;
    for ev in events {
        match ev {
            DemuxEvent::Frame(f) if f.track == Track::Video => video.push(f),
            DemuxEvent::Frame(_) => audio += 1,
            DemuxEvent::Config(_) => {}
        }
    }
    let discontinuity_flags = data
        .chunks_exact(188)
        .filter(|p| p[0] == 0x47 && p[3] & 0x20 != 0 && p[4] > 0 && p[5] & 0x80 != 0)
        .count();
    let s = d.stats();
    TsReport {
        video,
        audio,
        continuity_errors: s.continuity_errors,
        continuity_errors_after_start: s.continuity_errors - early,
        pes_errors: s.pes_errors,
        resyncs: s.resyncs,
        discontinuity_flags,
    }
}

/// Largest step between consecutive video DTS (ms) and whether they rise.
fn dts_steps(video: &[Frame]) -> (i64, bool) {
    let max = video
        .windows(2)
        .map(|w| w[1].dts - w[0].dts)
        .max()
        .unwrap_or(0);
    (max, video.windows(2).all(|w| w[1].dts > w[0].dts))
}

/// ffprobe's codec names of a file, and ffmpeg's full decode errors.
fn probe_and_decode(path: &Path) -> (String, String) {
    let (streams, _) = run(
        Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_type,codec_name",
                "-of",
                "csv=p=0",
            ])
            .arg(path),
        "ffprobe",
        Duration::from_secs(60),
    );
    let (_, errors) = run(
        Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-v", "error", "-i"])
            .arg(path)
            .args(["-f", "null", "-"]),
        "ffmpeg decode",
        Duration::from_secs(120),
    );
    (streams, errors)
}

#[test]
fn srt_live_transmit_publishes_to_rtmp_player() {
    let _g = serial();
    let e = Env::start();
    let (_, t) = e.token(&["s1"], 10);
    let mut p = publish_slt(Fixture::A, &e.srt_slt(&format!("#!::r=s1,m=publish,s={t}")));
    let v = e.wait_feeds("s1", 1, None);
    assert_eq!(v["sources"][0]["feeds"][0]["protocol"], "srt", "{v}");
    let player = Player::start(&e.rtmp("s1"));
    player.wait_packets(150, Duration::from_secs(25));
    let packets = player.snapshot();
    assert!(
        packets[0].keyframe,
        "the RTMP player must start on a keyframe"
    );
    let (gap, at) = check_monotonic(&packets);
    let sp = keyframe_spacing(&packets).expect("keyframes");
    println!(
        "srt-live-transmit → RTMP player: {} packets, largest gap {gap:?} at {at}, keyframe spacing {sp:.2} s",
        packets.len()
    );
    assert!((sp - 1.0).abs() < 0.2, "keyframe spacing {sp}");
    assert!(
        gap < Duration::from_secs(1),
        "stalled {gap:?} at packet {at}"
    );
    assert!(
        matches!(p.slt.child.try_wait(), Ok(None)),
        "srt-live-transmit exited: {}",
        p.slt.stderr_text()
    );
    assert!(
        p.slt.stderr_text().contains("SRT target connected"),
        "{}",
        p.slt.stderr_text()
    );
    assert!(
        p.ffmpeg.complaints().trim().is_empty(),
        "ffmpeg: {}",
        p.ffmpeg.stderr_text()
    );
}

#[test]
fn srt_live_transmit_plays_rtmp_feed() {
    let _g = serial();
    let e = Env::start();
    let (_, t) = e.token(&["s1"], 10);
    let _enc = publish(Fixture::A, &e.rtmp(&format!("s1?token={t}")));
    e.wait_feeds("s1", 1, None);
    let out = capture_path("play");
    let mut slt = capture_slt(&e.srt_slt("#!::r=s1,m=request"), &out);
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        matches!(slt.child.try_wait(), Ok(None)),
        "srt-live-transmit exited early: {}",
        slt.stderr_text()
    );
    slt.kill();
    let size = std::fs::metadata(&out).expect("capture").len();
    // srt-live-transmit writes through a buffered stream: the kill may cut
    // the last TS packet short, which the demuxer and ffmpeg must tolerate.
    assert!(size > 200_000, "capture is only {size} bytes");
    let dropped = trim_to_whole_pes(&out);

    let (streams, errors) = probe_and_decode(&out);
    assert!(
        streams.contains("h264,video") && streams.contains("aac,audio"),
        "ffprobe: {streams}"
    );
    assert!(errors.trim().is_empty(), "ffmpeg decode errors:\n{errors}");

    let r = demux_file(&out);
    println!(
        "srt-live-transmit capture: {size} bytes ({dropped} cut at the end), {} video / {} audio frames, continuity errors {}, PES errors {}, resyncs {}",
        r.video.len(),
        r.audio,
        r.continuity_errors,
        r.pes_errors,
        r.resyncs
    );
    assert_eq!(r.continuity_errors, 0);
    assert_eq!(r.pes_errors, 0);
    assert!(
        r.video.first().is_some_and(|f| f.keyframe),
        "starts on a keyframe"
    );
    assert!(r.video.len() >= 6 * 30, "{} video frames", r.video.len());
    assert!(r.audio > 100, "{} audio frames", r.audio);
    let (max_step, rising) = dts_steps(&r.video);
    assert!(rising, "video DTS must rise");
    assert!(max_step <= 40, "video DTS step {max_step} ms");
    let _ = std::fs::remove_file(&out);
}

// ---------------------------------------------------------------- refusals

/// Gateway log lines (all tests' gateways), captured in memory once
/// [`capture_gateway_log`] ran.
static GATEWAY_LOG: Mutex<String> = Mutex::new(String::new());

fn capture_gateway_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    struct Sink;
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut g = GATEWAY_LOG.lock().unwrap_or_else(|p| p.into_inner());
            if g.len() < 8 << 20 {
                g.push_str(&String::from_utf8_lossy(b));
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    ONCE.call_once(|| {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("primacy=info"))
            .with_ansi(false)
            .with_writer(|| Sink)
            .try_init()
            .expect("install the log capture");
    });
}

/// The gateway's refusal line for a caller from local port `port`.
fn refusal_line(port: u16) -> String {
    // In the connection's span: `srt{peer=127.0.0.1:PORT}: …` (or
    // followed by the span's other fields).
    let peer = format!("peer=127.0.0.1:{port}");
    let of_peer = |l: &str| {
        l.match_indices(&peer)
            .any(|(i, _)| matches!(l.as_bytes().get(i + peer.len()), Some(b'}' | b' ')))
    };
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let log = GATEWAY_LOG.lock().unwrap().clone();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("SRT connection refused") && of_peer(l))
        {
            return l.to_owned();
        }
        assert!(
            Instant::now() < end,
            "no refusal logged for {peer}; log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a UDP port")
        .port()
}

/// libsrt's reason text for every code in its predefined (1000+) range.
const LIBSRT_APP_REASON: &str =
    "REJECT reported from HS processing: Application-defined rejection reason";

/// Connect with srt-live-transmit from local port `port` and return its
/// stderr once libsrt reported the rejection. A publish request is made
/// by a publishing srt-live-transmit (fed by ffmpeg; it keeps reading its
/// input after a refusal, so it is killed), a play request by a reading
/// one (which exits by itself with `-a:no`).
fn slt_refused(e: &Env, streamid: &str, port: u16) -> String {
    let url = format!("{}&port={port}", e.srt_slt(streamid));
    let (stderr, exited) = if streamid.contains("m=publish") {
        let mut p = publish_slt(Fixture::A, &url);
        let end = Instant::now() + Duration::from_secs(10);
        while !p.slt.stderr_text().contains("REJECT") && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        let connected = p.slt.stderr_text().contains("connected");
        p.slt.kill();
        (p.slt.stderr_text(), !connected)
    } else {
        let out = capture_path("refused");
        let mut p = capture_slt(&url, &out);
        // It exits right after the rejection; the bound is generous because
        // a loaded machine has been seen to take over 10 s to exit after
        // printing the rejection, so the rejection itself is what counts.
        let end = Instant::now() + Duration::from_secs(30);
        let mut status = None;
        while Instant::now() < end {
            status = p.wait_timeout(Duration::from_millis(100));
            if status.is_some() || p.stderr_text().contains("REJECT") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let stderr = p.stderr_text();
        let _ = std::fs::remove_file(&out);
        let given_up =
            (status.is_some() || !stderr.contains("connected")) && stderr.contains("REJECT");
        (stderr, given_up)
    };
    assert!(
        exited,
        "srt-live-transmit should have given up on {streamid}: {stderr}"
    );
    stderr
}

/// The numeric reject code as libsrt hands it to applications
/// (`srt_getrejectreason` after a failed `srt_connect`), read through
/// python3's ctypes: neither srt-live-transmit nor ffmpeg prints it.
const LIBSRT_PROBE: &str = r#"
import ctypes, ctypes.util, socket, sys
host, port, sid = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
names = [ctypes.util.find_library(n) for n in ("srt", "srt-gnutls", "srt-openssl")]
lib = ctypes.CDLL(next(n for n in names if n))
lib.srt_rejectreason_str.restype = ctypes.c_char_p
lib.srt_getlasterror_str.restype = ctypes.c_char_p
lib.srt_startup()
s = lib.srt_create_socket()
SRTO_STREAMID = 46
assert lib.srt_setsockflag(s, SRTO_STREAMID, sid, len(sid)) == 0
class SockaddrIn(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("port", ctypes.c_uint16),
                ("addr", ctypes.c_uint32), ("zero", ctypes.c_char * 8)]
sa = SockaddrIn(socket.AF_INET, socket.htons(port),
                int.from_bytes(socket.inet_aton(host), "little"), b"")
rc = lib.srt_connect(s, ctypes.byref(sa), ctypes.sizeof(sa))
reason = lib.srt_getrejectreason(s)
print(f"srt_connect={rc} error={lib.srt_getlasterror_str().decode()!r} "
      f"reject_reason={reason} ({lib.srt_rejectreason_str(reason).decode()})")
lib.srt_close(s)
lib.srt_cleanup()
"#;

fn libsrt_reject_reason(e: &Env, streamid: &str) -> (i32, String) {
    let addr = e.s.running().srt_addr;
    let (out, err) = run(
        Command::new("python3")
            .args(["-c", LIBSRT_PROBE, "127.0.0.1"])
            .arg(addr.port().to_string())
            .arg(streamid),
        "python3 libsrt probe",
        Duration::from_secs(20),
    );
    let line = out.trim().to_owned();
    let code = line
        .split("reject_reason=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("libsrt probe said {line:?}; stderr: {err}"));
    (code, line)
}

#[test]
fn srt_refusal_codes_seen_by_libsrt_clients() {
    let _g = serial();
    capture_gateway_log();
    // Every refusal's line is checked: no log rate limit here.
    let e = Env::start_with(|c| c.log.burst = 1_000);
    let (_, t) = e.token(&["s1"], 10);
    let garbage = "#!::r=s1,m=publish,s=garbage".to_owned();
    let other = format!("#!::r=other,m=publish,s={t}");
    let cases: [(&str, &str, i32, &str); 4] = [
        (
            "malformed stream id",
            "#!::m=publish",
            1400,
            "malformed stream id: missing r=STREAM",
        ),
        ("garbage token", &garbage, 1401, "reason=\"malformed\""),
        ("stream not allowed", &other, 1403, "stream_not_allowed"),
        (
            "bad mode",
            "#!::r=s1,m=bidirectional",
            1405,
            "unsupported mode",
        ),
    ];
    let check = |what: &str, streamid: &str, code: i32, reason: &str| {
        let port = free_udp_port();
        let stderr = slt_refused(&e, streamid, port);
        let line = refusal_line(port);
        let (seen, probe) = libsrt_reject_reason(&e, streamid);
        let slt_says = stderr
            .lines()
            .find(|l| l.contains("REJECT"))
            .unwrap_or_default();
        println!(
            "{what} ({}):\n  srt-live-transmit: {slt_says}\n  libsrt API: {probe}\n  gateway: {line}",
            streamid.replace(&t, "TOKEN")
        );
        assert!(
            stderr.contains(LIBSRT_APP_REASON),
            "{what}: srt-live-transmit said:\n{stderr}"
        );
        assert!(
            line.contains(&format!("code={code} ")) && line.contains(reason),
            "{what}: gateway logged {line}"
        );
        assert_eq!(seen, code, "{what}: libsrt reported {probe}");
    };
    for (what, streamid, code, reason) in cases {
        check(what, streamid, code, reason);
    }
    let (_, m) = e.s.get_text("/metrics");
    for label in ["bad_request", "malformed", "stream_not_allowed", "bad_mode"] {
        assert!(
            m.contains(&format!("reason=\"{label}\"")),
            "no refusal metric {label}: {m}"
        );
    }

    // A draining gateway refuses new publishers and players with 1503.
    e.s.running().readiness.begin_drain();
    let publish = format!("#!::r=s1,m=publish,s={t}");
    check("draining (publish)", &publish, 1503, "shutting down");
    check(
        "draining (play)",
        "#!::r=s1,m=request",
        1503,
        "shutting down",
    );
    let (_, m) = e.s.get_text("/metrics");
    assert!(
        m.contains("reason=\"shutting_down\""),
        "no shutting_down refusal metric: {m}"
    );
}

// ---------------------------------------------------------- 3 Mbit/s runs

/// Play `s1` over SRT with ffprobe for 22 s and check it never stalled.
fn long_run(e: &Env, label: &str) {
    const SECS: u64 = 22;
    let mut player = Player::start(&e.srt_ff("#!::r=s1,m=request"));
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(SECS) {
        assert!(
            player.is_running(),
            "{label}: ffprobe exited: {}",
            player.proc.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let packets: Vec<Packet> = player.snapshot();
    let n = packets.len();
    assert!(n > 30, "{label}: only {n} packets");
    check_monotonic(&packets);
    let settled = packets[0].arrived + Duration::from_secs(1);
    let (gap, at) = packets
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0].arrived >= settled)
        .map(|(i, w)| (w[1].arrived.duration_since(w[0].arrived), i + 1))
        .max()
        .unwrap_or_default();
    let span = packets[n - 1].dts - packets[0].dts;
    let feed = e.stream("s1")["sources"][0]["feeds"][0].clone();
    println!(
        "{label}: {n} video packets in {SECS} s (dts span {span:.1} s), largest gap after the first second {:.0} ms at packet {at}; feed srt stats: {}",
        gap.as_secs_f64() * 1000.0,
        feed["srt"]
    );
    let want = (SECS * 30) as f64 * 0.9;
    assert!(n as f64 >= want, "{label}: {n} packets, wanted ≥ {want}");
    assert!(
        gap < Duration::from_millis(500),
        "{label}: stalled {gap:?} at packet {at}"
    );
    assert!(
        player.proc.complaints().trim().is_empty(),
        "{label}: ffprobe said {}",
        player.proc.stderr_text()
    );
}

#[test]
fn srt_3mbps_srt_publish_srt_play_22s() {
    let _g = serial();
    fixture(Fixture::Hd);
    let e = Env::start();
    let (_, t) = e.token(&["s1"], 10);
    let mut enc = publish_srt(Fixture::Hd, &e.srt_ff(&format!("#!::r=s1,m=publish,s={t}")));
    e.wait_feeds("s1", 1, None);
    long_run(&e, "3 Mbit/s SRT in → SRT out");
    let v = e.wait_feeds("s1", 1, None);
    assert_eq!(v["sources"][0]["feeds"][0]["protocol"], "srt");
    assert!(
        matches!(enc.child.try_wait(), Ok(None)),
        "publisher exited: {}",
        enc.stderr_text()
    );
}

#[test]
fn srt_3mbps_rtmp_publish_srt_play_22s() {
    let _g = serial();
    fixture(Fixture::Hd);
    let e = Env::start();
    let (_, t) = e.token(&["s1"], 10);
    let mut enc = publish(Fixture::Hd, &e.rtmp(&format!("s1?token={t}")));
    e.wait_feeds("s1", 1, None);
    long_run(&e, "3 Mbit/s RTMP in → SRT out");
    let v = e.wait_feeds("s1", 1, None);
    assert_eq!(v["sources"][0]["feeds"][0]["protocol"], "rtmp");
    assert!(
        matches!(enc.child.try_wait(), Ok(None)),
        "publisher exited: {}",
        enc.stderr_text()
    );
}

// ------------------------------------------------- mixed-protocol failover

#[test]
fn srt_capture_across_rtmp_primary_loss_keeps_ts_continuity() {
    let _g = serial();
    let e = Env::start();
    let (hi_id, hi) = e.token(&["s1"], 100);
    let (lo_id, lo) = e.token(&["s1"], 50);
    let mut primary = publish(Fixture::A, &e.rtmp(&format!("s1?token={hi}")));
    let _backup = publish_srt(Fixture::B, &e.srt_ff(&format!("#!::r=s1,m=publish,s={lo}")));
    e.wait_feeds("s1", 2, Some(&hi_id));
    let out = capture_path("failover");
    let mut slt = capture_slt(&e.srt_slt("#!::r=s1,m=request"), &out);
    std::thread::sleep(Duration::from_secs(6));
    primary.kill();
    let killed = Instant::now();
    e.wait_feeds("s1", 1, Some(&lo_id));
    println!(
        "backup on air {:?} after the primary was killed",
        killed.elapsed()
    );
    std::thread::sleep(Duration::from_secs(8).saturating_sub(killed.elapsed()));
    assert!(
        matches!(slt.child.try_wait(), Ok(None)),
        "srt-live-transmit exited: {}",
        slt.stderr_text()
    );
    slt.kill();
    let dropped = trim_to_whole_pes(&out);

    let r = demux_file(&out);
    let (max_step, rising) = dts_steps(&r.video);
    println!(
        "failover capture ({dropped} bytes cut at the end): {} video / {} audio frames, continuity errors {} ({} after the first 20 packets), discontinuity_indicator packets {}, PES errors {}, video DTS max gap {max_step} ms",
        r.video.len(),
        r.audio,
        r.continuity_errors,
        r.continuity_errors_after_start,
        r.discontinuity_flags,
        r.pes_errors
    );
    // The demuxer does not count a jump flagged with discontinuity_indicator.
    assert_eq!(r.continuity_errors_after_start, 0);
    assert!(
        r.video.first().is_some_and(|f| f.keyframe),
        "starts on a keyframe"
    );
    assert!(rising, "video DTS must rise across the switch");
    assert!(max_step < 1_000, "video DTS gap {max_step} ms");
    // The tail is the SRT backup: keyframes every 500 ms, not 1000 ms.
    let keys: Vec<i64> = r
        .video
        .iter()
        .filter(|f| f.keyframe)
        .map(|f| f.dts)
        .collect();
    let tail: Vec<i64> = keys.windows(2).rev().take(4).map(|w| w[1] - w[0]).collect();
    assert!(
        tail.iter().all(|d| (d - 500).abs() <= 100),
        "the capture should end on the backup (GOP 500 ms): {tail:?}"
    );

    let (streams, errors) = probe_and_decode(&out);
    assert!(
        streams.contains("h264,video") && streams.contains("aac,audio"),
        "ffprobe: {streams}"
    );
    assert!(errors.trim().is_empty(), "ffmpeg decode errors:\n{errors}");
    let _ = std::fs::remove_file(&out);
}
