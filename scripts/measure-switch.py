#!/usr/bin/env python3
"""Measure switching on a real gateway with real encoders and a player.

Starts `primacy serve` on loopback ports (its own database, created and
dropped here), publishes two pre-encoded files with ffmpeg (-c copy) under
tokens of priority 100 (1 s GOP) and 50 (0.5 s GOP), plays with ffprobe
(one line per video packet, time-stamped on arrival), then:

  * kills the primary N times (default 20): the player-visible freeze is the
    largest wall-clock gap between video packets around each kill;
  * restarts it each time: the failback is a planned switch, checked for
    lost frames (a DTS step over 1.5 frame intervals) and DTS regressions;
  * reprioritizes the primary's token below the backup (disconnect false)
    M times: time from the call to the switch record of the engine.

Prints a summary and writes it as JSON (--out). Not a test: numbers, not
assertions. Needs ffmpeg/ffprobe and PostgreSQL (PRIMACY_TEST_DATABASE_URL,
default postgres://postgres@127.0.0.1:5432/postgres). Build first:
cargo build --release --bin primacy.
"""

import argparse
import json
import random
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import datetime


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round((len(v) - 1) * q)))]


class Api:
    def __init__(self, base, key):
        self.base, self.key = base, key

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", "Bearer " + self.key)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return json.loads(text) if text else None


class Player:
    def __init__(self, url):
        self.packets = []  # (arrival, dts, keyframe)
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", "ffprobe", "-v", "error", "-rw_timeout", "8000000", "-select_streams", "v:0",
             "-show_entries", "packet=dts_time,flags", "-of", "csv=p=0", url],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            t = time.monotonic()
            cols = line.strip().split(",")
            try:
                self.packets.append((t, float(cols[0]), cols[1].startswith("K")))
            except (ValueError, IndexError):
                pass

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def encode(path, src, gop):
    if os.path.exists(path):
        return
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", src, "-f", "lavfi",
                    "-i", "sine=frequency=440:sample_rate=48000", "-t", "12", "-c:v", "libx264", "-preset",
                    "ultrafast", "-pix_fmt", "yuv420p", "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold",
                    "0", "-b:v", "600k", "-c:a", "aac", "-b:a", "64k", "-f", "flv", path], check=True)


def publish(path, url):
    return subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1",
                             "-i", path, "-c", "copy", "-f", "flv", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit("timed out waiting for " + what)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release/primacy"))
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--reprioritizes", type=int, default=20)
    ap.add_argument("--out", default=None)
    ap.add_argument("--backup", choices=["rtmp", "srt"], default="rtmp", help="protocol of the backup encoder")
    ap.add_argument("--player", choices=["rtmp", "srt"], default="rtmp", help="protocol of the player")
    args = ap.parse_args()

    admin = os.environ.get("PRIMACY_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    dbname = "primacy_measure_" + uuid.uuid4().hex
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {dbname} TEMPLATE template0"], check=True)
    db = admin.rsplit("/", 1)[0] + "/" + dbname
    work = tempfile.mkdtemp(prefix="primacy-measure-")
    a_file, b_file = os.path.join(work, "a.flv"), os.path.join(work, "b.flv")
    encode(a_file, "testsrc2=size=640x360:rate=30", 30)
    encode(b_file, "smptebars=size=640x360:rate=30", 15)

    http, rtmp, srt = free_port(), free_port(), free_port()
    env = dict(os.environ, PRIMACY_DATABASE_URL=db, PRIMACY_HTTP_LISTEN=f"127.0.0.1:{http}",
               PRIMACY_RTMP_LISTEN=f"127.0.0.1:{rtmp}", PRIMACY_SRT_LISTEN=f"127.0.0.1:{srt}",
               PRIMACY_HS256_SECRET="measure-secret-0123456789abcdef0123", PRIMACY_LOG="warn",
               PRIMACY_ELECTION__FAILBACK_HOLD_MS="500")
    gw = subprocess.Popen([args.binary, "serve"], env=env)
    procs = []
    try:
        base = f"http://127.0.0.1:{http}"
        wait_for(lambda: urllib.request.urlopen(base + "/api/ready", timeout=1).status == 200, 30, "gateway ready")
        out = subprocess.run([args.binary, "api-keys", "create", "--name", "measure", "--scope", "admin", "--json"],
                             env=env, check=True, capture_output=True, text=True).stdout
        api = Api(base, json.loads(out)["secret"])
        hi = api.call("POST", "/api/v1/tokens", {"label": "primary", "priority": 100, "streams": [{"name": "m"}]})
        lo = api.call("POST", "/api/v1/tokens", {"label": "backup", "priority": 50, "streams": [{"name": "m"}]})
        a_url = f"rtmp://127.0.0.1:{rtmp}/live/m?token={hi['secret']}"
        if args.backup == "srt":
            b = subprocess.Popen(
                ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1", "-i", b_file,
                 "-c", "copy", "-f", "mpegts",
                 f"srt://127.0.0.1:{srt}?streamid=#!::r=m,m=publish,s={lo['secret']}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            b = publish(b_file, f"rtmp://127.0.0.1:{rtmp}/live/m?token={lo['secret']}")
        procs.append(b)
        a = publish(a_file, a_url)
        time.sleep(3)
        if args.player == "srt":
            player = Player(f"srt://127.0.0.1:{srt}?streamid=#!::r=m,m=request")
        else:
            player = Player(f"rtmp://127.0.0.1:{rtmp}/live/m")
        wait_for(lambda: len(player.packets) > 60, 20, "player packets")

        # Baseline: the largest inter-arrival gap in quiet 2.2 s windows
        # (no switch), to read the freezes against.
        baseline = []
        for _ in range(3):
            t = time.monotonic()
            time.sleep(2.2)
            w = [p for p in player.packets if t <= p[0] <= t + 2.2]
            baseline.append(max((q[0] - p[0] for p, q in zip(w, w[1:])), default=0) * 1000)
        gaps, lost, regressions = [], 0, 0
        for i in range(args.kills):
            time.sleep(1.0 + (i % 7) * 0.13)  # vary the kill's phase within the GOP
            t_kill = time.monotonic()
            a.send_signal(signal.SIGKILL)
            a.wait()
            time.sleep(2.0)
            window = [p for p in player.packets if t_kill - 0.2 <= p[0] <= t_kill + 2.0]
            gap = max((q[0] - p[0] for p, q in zip(window, window[1:])), default=None)
            if gap is not None:
                gaps.append(gap * 1000)
            n_before = len(player.packets)
            a = publish(a_file, a_url)
            procs.append(a)
            time.sleep(3.5)  # failback hold + up to one GOP + margin
            seg = player.packets[n_before:]
            for p, q in zip(seg, seg[1:]):
                step = q[1] - p[1]
                if step <= 0:
                    regressions += 1
                elif step > 0.050:
                    lost += round(step / (1 / 30)) - 1
            print(f"kill {i + 1}/{args.kills}: freeze {gaps[-1]:.1f} ms" if gaps else "kill: no packets", flush=True)

        repri, decided = [], []
        for i in range(args.reprioritizes):
            target = 10 if i % 2 == 0 else 100
            t0 = time.time()
            api.call("POST", f"/api/v1/tokens/{hi['token']['id']}/reprioritize", {"priority": target, "disconnect": False})
            expected = lo["token"]["id"] if target == 10 else hi["token"]["id"]

            def switched():
                v = api.call("GET", "/api/v1/streams/m")
                src = v["sources"][0]
                on_air = [f for f in src["feeds"] if f["state"] == "on_air"]
                ls = src["last_switch"]
                if on_air and on_air[0]["token_id"] == expected and ls and ls["to"] == on_air[0]["feed_id"]:
                    return ls
                return None
            wait_for(lambda: bool(switched()), 10, "reprioritize switch")
            ls = switched()

            def ts(s):
                return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
            repri.append((ts(ls["at"]) - t0) * 1000)
            decided.append((ts(ls["decided_at"]) - t0) * 1000)
            # A random phase against the feeds' GOPs for the next call.
            time.sleep((1.5 if target == 100 else 0.5) + random.random())

        player.stop()
        summary = {
            "backup_protocol": args.backup, "player_protocol": args.player,
            "baseline_max_gap_ms": max(baseline),
            "kills": len(gaps),
            "freeze_ms_p50": pct(gaps, 0.5), "freeze_ms_p99": pct(gaps, 0.99), "freeze_ms_max": max(gaps or [0]),
            "planned_failbacks": args.kills, "planned_frames_lost": lost, "dts_regressions": regressions,
            "reprioritize_to_on_air_ms_p50": pct(repri, 0.5), "reprioritize_to_on_air_ms_p99": pct(repri, 0.99),
            "reprioritize_to_decision_ms_p50": pct(decided, 0.5),
            "reprioritize_to_decision_ms_p99": pct(decided, 0.99),
            "reprioritize_calls": len(repri),
        }
        print(json.dumps(summary, indent=2))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(summary, f, indent=2)
    finally:
        for p in procs:
            p.kill()
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gw.kill()
        subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"])


if __name__ == "__main__":
    sys.exit(main())
