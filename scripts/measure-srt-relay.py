#!/usr/bin/env python3
"""CPU per Gbit delivered to SRT players: the gateway vs srt-live-transmit.

1. Gateway: `primacy serve` (release) with its own database; one ffmpeg
   publisher sends a ~3 Mbit/s MPEG-TS file over SRT (-re -c copy); N
   srt-live-transmit readers play it over SRT into files. For --seconds the
   gateway's CPU time (utime+stime from /proc) and the bytes the readers
   received are measured.
2. Reference: srt-live-transmit relaying the same publisher to one reader
   (it cannot fan out), measured the same way.

Prints CPU-seconds per Gbit delivered for both. Numbers, not assertions.
Loopback only; bounded in time. Needs ffmpeg, srt-live-transmit, psql.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid

TICK = os.sysconf("SC_CLK_TCK")


def free_port(kind=socket.SOCK_DGRAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_for(cond, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if cond():
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def encode(path):
    if not os.path.exists(path):
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        "testsrc2=size=1280x720:rate=30", "-f", "lavfi", "-i", "sine=sample_rate=48000", "-t", "10",
                        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "30", "-b:v", "3M",
                        "-maxrate", "3M", "-bufsize", "3M", "-c:a", "aac", "-b:a", "128k", "-f", "mpegts", path],
                       check=True)


def publisher(path, url):
    return subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1",
                             "-i", path, "-c", "copy", "-f", "mpegts", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def reader(url, out):
    # srt-live-transmit writes to files only through stdout (file://con).
    with open(out, "wb") as f:
        return subprocess.Popen(["srt-live-transmit", "-a:no", "-q", url, "file://con"],
                                stdout=f, stderr=subprocess.DEVNULL)


def measure(pid, outs, seconds):
    sizes0 = [os.path.getsize(o) if os.path.exists(o) else 0 for o in outs]
    c0 = cpu_seconds(pid)
    time.sleep(seconds)
    c1 = cpu_seconds(pid)
    sizes1 = [os.path.getsize(o) if os.path.exists(o) else 0 for o in outs]
    delivered = sum(b - a for a, b in zip(sizes0, sizes1))
    gbit = delivered * 8 / 1e9
    return {"cpu_s": c1 - c0, "gbit": gbit, "cpu_s_per_gbit": (c1 - c0) / gbit if gbit else None,
            "readers_receiving": sum(1 for a, b in zip(sizes0, sizes1) if b > a)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release/primacy"))
    ap.add_argument("--players", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="primacy-srt-relay-")
    src = os.path.join(work, "hd.ts")
    encode(src)
    procs = []
    result = {}
    admin = os.environ.get("PRIMACY_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    dbname = "primacy_relay_" + uuid.uuid4().hex
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {dbname} TEMPLATE template0"], check=True)
    try:
        http, srt = free_port(socket.SOCK_STREAM), free_port()
        env = dict(os.environ, PRIMACY_DATABASE_URL=admin.rsplit("/", 1)[0] + "/" + dbname,
                   PRIMACY_HTTP_LISTEN=f"127.0.0.1:{http}", PRIMACY_RTMP_LISTEN=f"127.0.0.1:{free_port(socket.SOCK_STREAM)}",
                   PRIMACY_SRT_LISTEN=f"127.0.0.1:{srt}", PRIMACY_HS256_SECRET="relay-secret-0123456789abcdef01234",
                   PRIMACY_LOG="error")
        gw = subprocess.Popen([args.binary, "serve"], env=env)
        procs.append(gw)
        assert wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{http}/api/ready", timeout=1).status == 200, 30)
        key = json.loads(subprocess.run([args.binary, "api-keys", "create", "--name", "relay", "--scope", "admin",
                                         "--json"], env=env, check=True, capture_output=True, text=True).stdout)
        req = urllib.request.Request(f"http://127.0.0.1:{http}/api/v1/tokens", method="POST",
                                     data=json.dumps({"label": "relay", "streams": [{"name": "r"}]}).encode(),
                                     headers={"Authorization": "Bearer " + key["secret"],
                                              "Content-Type": "application/json"})
        token = json.loads(urllib.request.urlopen(req, timeout=10).read())["secret"]
        procs.append(publisher(src, f"srt://127.0.0.1:{srt}?streamid=#!::r=r,m=publish,s={token}"))
        time.sleep(2)
        outs = [os.path.join(work, f"p{i}.ts") for i in range(args.players)]
        for o in outs:
            procs.append(reader(f"srt://127.0.0.1:{srt}?streamid=#!::r=r,m=request", o))
        time.sleep(3)
        result["gateway"] = measure(gw.pid, outs, args.seconds)
        result["gateway"]["players"] = args.players
        for p in procs:
            p.kill()
            p.wait()
        procs.clear()

        # Reference: srt-live-transmit relaying listener -> listener, one reader.
        a, b = free_port(), free_port()
        relay = subprocess.Popen(["srt-live-transmit", "-a:no", "-q", f"srt://:{a}?mode=listener",
                                  f"srt://:{b}?mode=listener"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(relay)
        time.sleep(0.5)
        out = os.path.join(work, "ref.ts")
        procs.append(reader(f"srt://127.0.0.1:{b}", out))
        time.sleep(0.5)
        procs.append(publisher(src, f"srt://127.0.0.1:{a}"))
        time.sleep(3)
        result["srt_live_transmit_1_to_1"] = measure(relay.pid, [out], args.seconds)
        print(json.dumps(result, indent=2))
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if p is procs[0] else signal.SIGKILL)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
