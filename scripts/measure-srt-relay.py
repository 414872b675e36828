#!/usr/bin/env python3
"""CPU per Gbit of srt-live-transmit relaying one SRT feed to SRT players.

The reference for the gateway's SRT fan-out figure in docs/benchmarks.md
(`primacy-loadtest fanout`, "SRT 1 -> 50"). srt-live-transmit relays one
input to one output, so a fan-out to N players takes N relay processes,
each fed its own copy of the stream: here one ffmpeg publisher (-re, -c
copy, looping the load test's 720p TS fixture) per relay, a relay
`srt-live-transmit srt://:IN?mode=listener srt://:OUT?mode=listener`, and a
player `srt-live-transmit srt://127.0.0.1:OUT file://con` writing to a file.
Measured over --seconds after a warm-up: the relays' CPU seconds (utime +
stime from /proc) and the bytes the players received.

Numbers, not assertions. Loopback only; bounded in time and count; ends
only the processes it started.
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixture", default="loadtest/fixtures/hd.ts")
    ap.add_argument("--relays", type=int, default=1, help="relays (= players), at most 50")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--latency-ms", type=int, default=120)
    a = ap.parse_args()
    if not os.path.exists(a.fixture):
        sys.exit(f"{a.fixture} is missing: run scripts/loadtest-fixtures.sh")
    n = max(1, min(a.relays, 50))
    tmp = tempfile.mkdtemp(prefix="srt-relay-")
    procs, relays, outs = [], [], []
    base = random.randrange(21000, 29000, 100)
    try:
        for i in range(n):
            pin, pout = base + 2 * i, base + 2 * i + 1
            opt = f"latency={a.latency_ms}"
            relay = subprocess.Popen(
                ["srt-live-transmit", "-q", f"srt://127.0.0.1:{pin}?mode=listener&{opt}",
                 f"srt://127.0.0.1:{pout}?mode=listener&{opt}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(relay)
            relays.append(relay)
            time.sleep(0.2)
            out = os.path.join(tmp, f"player-{i}.ts")
            outs.append(out)
            with open(out, "wb") as f:
                procs.append(subprocess.Popen(
                    ["srt-live-transmit", "-q", f"srt://127.0.0.1:{pout}?mode=caller&{opt}", "file://con"],
                    stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.DEVNULL))
            procs.append(subprocess.Popen(
                ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1",
                 "-i", a.fixture, "-c", "copy", "-f", "mpegts",
                 f"srt://127.0.0.1:{pin}?pkt_size=1316&latency={a.latency_ms * 1000}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(3.0)
        size = lambda: sum(os.path.getsize(o) for o in outs)
        c0, b0, t0 = sum(cpu_s(r.pid) for r in relays), size(), time.monotonic()
        time.sleep(a.seconds)
        c1, b1, t1 = sum(cpu_s(r.pid) for r in relays), size(), time.monotonic()
        gbit = (b1 - b0) * 8 / 1e9
        if gbit <= 0:
            sys.exit("the players received nothing: is srt-live-transmit working?")
        print(f"srt-live-transmit, {n} relay(s) -> {n} player(s), {t1 - t0:.1f} s: "
              f"{c1 - c0:.2f} CPU-s, {gbit:.3f} Gbit delivered "
              f"({gbit * 1e3 / (t1 - t0) / n:.2f} Mbit/s per player), "
              f"{(c1 - c0) / gbit:.2f} CPU-s/Gbit")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for o in outs:
            try:
                os.remove(o)
            except OSError:
                pass
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
