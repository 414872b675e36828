#!/usr/bin/env python3
"""Start-to-ready after a crash, and drain times with many RTMP players.

1. Restart: a database seeded with --tokens publish tokens, then also
   --definitions persistent pull inputs and as many push outputs (one INSERT
   ... SELECT generate_series per table, into the real tables). `primacy
   serve` (release) is spawned, /api/ready polled every 2 ms, then the
   process is SIGKILLed; --rounds times per data set. Reports spawn-to-ready
   (wall, as a supervisor sees it) and the gateway's own "ready in" figure
   (start-up step 1 to step 7), and checks the API lists every token and
   that a seeded token is admitted. The pull inputs point at a loopback
   port where nothing listens and retry every 60 s, the outputs at vacant
   sources: start-up does not wait for remote sources.
2. Drain, players stay: one ffmpeg publisher (-re -c copy, 640x360 30 fps,
   ~0.7 Mbit/s) and --players RTMP players (a minimal RTMP client in this
   script, one thread per player, counting bytes; ffprobe is too heavy for
   100). SIGTERM with shutdown.max_wait_ms = --max-wait-ms: time to ready
   503, whether players keep receiving, when each player's connection is
   closed, and when the process exits (and with what status).
3. Drain, players leave: the same set-up with a long max wait; SIGTERM, then
   every player and the publisher disconnect; time from the last disconnect
   to the process exit.

Numbers, not assertions. Loopback only; bounded in time. Needs ffmpeg, psql.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

SECRET = "lifecycle-secret-0123456789abcdef0123"
NODE = "measure-node"


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready_status(http):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{http}/api/ready", timeout=1).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.002)
    raise SystemExit(f"timed out waiting for {what}")


class Gateway:
    def __init__(self, binary, env, log_path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=self.log)

    def text(self):
        self.log.flush()
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def api(http, key, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{http}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


# ------------------------------------------------------------- RTMP player

def amf_string(s):
    b = s.encode()
    return b"\x02" + struct.pack(">H", len(b)) + b


def amf_number(n):
    return b"\x00" + struct.pack(">d", n)


def amf_object(props):
    out = b"\x03"
    for k, v in props.items():
        kb = k.encode()
        out += struct.pack(">H", len(kb)) + kb + amf_string(v)
    return out + b"\x00\x00\x09"


def chunk(csid, type_id, stream_id, payload):
    """One message in one chunk (payloads stay under the chunk size we set)."""
    return (bytes([csid]) + b"\x00\x00\x00" + struct.pack(">I", len(payload))[1:] + bytes([type_id])
            + struct.pack("<I", stream_id) + payload)


class RtmpPlayer(threading.Thread):
    """Handshake, connect, createStream, play; then count bytes until EOF."""

    def __init__(self, port, stream):
        super().__init__(daemon=True)
        self.port, self.stream = port, stream
        self.bytes = 0
        self.closed_at = None
        self.error = None
        self.sock = None

    def run(self):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=60)
            self.sock = s
            s.sendall(b"\x03" + b"\x00" * 8 + os.urandom(1528))
            s0s1s2 = b""
            while len(s0s1s2) < 1 + 2 * 1536:
                part = s.recv(1 + 2 * 1536 - len(s0s1s2))
                if not part:
                    raise OSError("closed during the handshake")
                s0s1s2 += part
            s.sendall(s0s1s2[1:1537])
            s.sendall(chunk(2, 1, 0, struct.pack(">I", 4096)))
            s.sendall(chunk(3, 20, 0, amf_string("connect") + amf_number(1) + amf_object(
                {"app": "live", "tcUrl": f"rtmp://127.0.0.1:{self.port}/live"})))
            # Each command waits for the answer to the one before, as clients do.
            seen = self.read_until(s, b"", 1)
            s.sendall(chunk(3, 20, 0, amf_string("createStream") + amf_number(2) + b"\x05"))
            self.read_until(s, seen, 2)
            # rml_rtmp numbers streams from 1 on each connection.
            s.sendall(chunk(8, 20, 1, amf_string("play") + amf_number(3) + b"\x05" + amf_string(self.stream)))
            while True:
                data = s.recv(65536)
                if not data:
                    break
                self.bytes += len(data)
        except OSError as e:
            self.error = str(e)
        finally:
            self.closed_at = time.monotonic()

    def read_until(self, s, seen, results):
        """Read until `results` answers (`_result` commands) have arrived."""
        while seen.count(b"_result") < results:
            data = s.recv(65536)
            if not data:
                raise OSError("closed before the answer to a command")
            self.bytes += len(data)
            seen += data
        return seen

    def leave(self):
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def encode(path):
    if not os.path.exists(path):
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                        "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=sample_rate=48000", "-t", "12",
                        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "30",
                        "-keyint_min", "30", "-sc_threshold", "0", "-b:v", "600k", "-c:a", "aac", "-b:a", "64k",
                        "-f", "flv", path], check=True)


def publisher(path, url):
    return subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re", "-stream_loop", "-1",
                             "-i", path, "-c", "copy", "-f", "flv", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ms(seconds):
    return round(seconds * 1000, 1)


# ------------------------------------------------------------------ phases

def restart_rounds(args, env, http, work, label):
    spawn_to_ready, internal = [], []
    for i in range(args.rounds):
        gw = Gateway(args.binary, env, os.path.join(work, f"restart-{label}-{i}.log"))
        wait_for(lambda: ready_status(http) == 200 or gw.proc.poll() is not None, 30, "ready")
        if gw.proc.poll() is not None:
            raise SystemExit(gw.text())
        spawn_to_ready.append(time.monotonic() - gw.spawned)
        m = re.search(r"ready in ([0-9.]+) ms", gw.text())
        if m:
            internal.append(float(m.group(1)) / 1000)
        gw.stop(signal.SIGKILL)
    return spawn_to_ready, internal


def drain_run(args, env, http, rtmp, token, work, max_wait_ms, leave):
    env = dict(env, PRIMACY_SHUTDOWN__MAX_WAIT_MS=str(max_wait_ms))
    gw = Gateway(args.binary, env, os.path.join(work, f"drain-{'leave' if leave else 'stay'}.log"))
    wait_for(lambda: ready_status(http) == 200, 30, "ready")
    pub = publisher(args.fixture, f"rtmp://127.0.0.1:{rtmp}/live/d?token={token}")
    time.sleep(2)
    players = [RtmpPlayer(rtmp, "d") for _ in range(args.players)]
    for p in players:
        p.start()
        time.sleep(0.01)
    time.sleep(3)
    receiving = sum(1 for p in players if p.bytes > 0 and p.closed_at is None)
    before = [p.bytes for p in players]
    t_sig = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: ready_status(http) == 503 or gw.proc.poll() is not None, 10, "ready 503")
    t_503 = time.monotonic() - t_sig
    out = {"players": args.players, "players_receiving_before": receiving,
           "shutdown_max_wait_ms": max_wait_ms, "sigterm_to_ready_503_ms": ms(t_503)}
    if leave:
        time.sleep(1)
        for p in players:
            p.leave()
        pub.kill()
        pub.wait()
        t_left = time.monotonic()
        gw.proc.wait(timeout=max_wait_ms / 1000 + 30)
        out["last_disconnect_to_exit_ms"] = ms(time.monotonic() - t_left)
    else:
        time.sleep(max(0.0, max_wait_ms / 1000 - 1.0 - (time.monotonic() - t_sig)))
        out["players_still_receiving_1s_before_max_wait"] = sum(
            1 for p, b in zip(players, before) if p.bytes > b and p.closed_at is None)
        gw.proc.wait(timeout=max_wait_ms / 1000 + 30)
        t_exit = time.monotonic() - t_sig
        for p in players:
            p.join(timeout=10)
        closed = [p.closed_at - t_sig for p in players if p.closed_at is not None]
        out["sigterm_to_exit_ms"] = ms(t_exit)
        out["players_closed"] = len(closed)
        if closed:
            out["sigterm_to_players_closed_ms"] = {"first": ms(min(closed)), "last": ms(max(closed))}
        pub.kill()
        pub.wait()
    out["exit_status"] = gw.proc.returncode
    text = gw.text()
    m = re.search(r"drained and stopped elapsed_ms=(\d+)", text)
    out["gateway_drain_elapsed_ms"] = int(m.group(1)) if m else None
    gw.stop()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release/primacy"))
    ap.add_argument("--tokens", type=int, default=10_000)
    ap.add_argument("--definitions", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--players", type=int, default=100)
    ap.add_argument("--max-wait-ms", type=int, default=5000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="primacy-lifecycle-")
    args.fixture = os.path.join(work, "a.flv")
    encode(args.fixture)
    admin = os.environ.get("PRIMACY_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    dbname = "primacy_lifecycle_" + uuid.uuid4().hex
    db_url = admin.rsplit("/", 1)[0] + "/" + dbname
    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {dbname} TEMPLATE template0"], check=True)
    result = {}
    try:
        http, rtmp, srt = free_port(), free_port(), free_port(socket.SOCK_DGRAM)
        env = dict(os.environ, PRIMACY_DATABASE_URL=db_url, PRIMACY_HTTP_LISTEN=f"127.0.0.1:{http}",
                   PRIMACY_RTMP_LISTEN=f"127.0.0.1:{rtmp}", PRIMACY_SRT_LISTEN=f"127.0.0.1:{srt}",
                   PRIMACY_HS256_SECRET=SECRET, PRIMACY_NODE_ID=NODE, PRIMACY_LOG="info,actix_web::middleware::logger=warn", NO_COLOR="1",
                   # --players connections come from one loopback address.
                   PRIMACY_RTMP__MAX_CONNECTIONS_PER_IP=str(max(50, args.players + 10)))
        subprocess.run([args.binary, "migrate"], env=env, check=True, capture_output=True)
        key = json.loads(subprocess.run([args.binary, "api-keys", "create", "--name", "measure", "--scope", "admin",
                                         "--json"], env=env, check=True, capture_output=True, text=True).stdout)
        key = key["secret"]

        empty, empty_internal = restart_rounds(args, env, http, work, "empty")
        t = time.monotonic()
        subprocess.run(["psql", db_url, "-qc",
                        "INSERT INTO publish_tokens (id, label, priority, streams, secret_id) "
                        "SELECT gen_random_uuid(), 'seed ' || g, g % 1000, "
                        "jsonb_build_array(jsonb_build_object('name', 'seed' || g, 'is_regex', false)), "
                        f"gen_random_uuid() FROM generate_series(1, {args.tokens}) g"], check=True)
        seeded = time.monotonic() - t
        full, full_internal = restart_rounds(args, env, http, work, "tokens")
        dead = free_port()
        t = time.monotonic()
        subprocess.run(["psql", db_url, "-qc",
                        "INSERT INTO pull_inputs (id, node_id, stream, urls, priority, persistent, retry_count, "
                        "no_input_timeout_ms, reconnect_delay_ms) "
                        f"SELECT gen_random_uuid(), '{NODE}', 'pull' || g, "
                        f"ARRAY['rtmp://127.0.0.1:{dead}/live/p' || g], 10, true, NULL, 5000, 60000 "
                        f"FROM generate_series(1, {args.definitions}) g"], check=True)
        subprocess.run(["psql", db_url, "-qc",
                        "INSERT INTO push_outputs (id, node_id, stream, targets, enabled, reconnect_delay_ms) "
                        f"SELECT gen_random_uuid(), '{NODE}', 'out' || g, "
                        f"jsonb_build_array(jsonb_build_array('rtmp://127.0.0.1:{dead}/live/o' || g)), true, 60000 "
                        f"FROM generate_series(1, {args.definitions}) g"], check=True)
        seeded_defs = time.monotonic() - t
        defs, defs_internal = restart_rounds(args, env, http, work, "definitions")
        with open(os.path.join(work, "restart-definitions-0.log"), encoding="utf-8", errors="replace") as f:
            text = f.read()
        m = re.search(r"start-up 3/7 load definitions: (.*?) step=", text)
        steps = {name: float(t) for name, t in
                 re.findall(r'step="([^"]+)" elapsed_ms=([0-9.]+)', text)}

        def summary(values):
            return {"p50_ms": ms(statistics.median(values)), "max_ms": ms(max(values)), "n": len(values)}

        result["restart_no_tokens"] = {"spawn_to_ready": summary(empty), "gateway_ready_in": summary(empty_internal)}
        result[f"restart_{args.tokens}_tokens"] = {"seed_ms": ms(seeded), "spawn_to_ready": summary(full),
                                                   "gateway_ready_in": summary(full_internal)}
        result[f"restart_{args.tokens}_tokens_{args.definitions}_pulls_{args.definitions}_outputs"] = {
            "seed_ms": ms(seeded_defs), "spawn_to_ready": summary(defs), "gateway_ready_in": summary(defs_internal),
            "load_definitions_step": m.group(1) if m else None, "steps_ms_first_round": steps}
        subprocess.run(["psql", db_url, "-qc", "DELETE FROM pull_inputs; DELETE FROM push_outputs"], check=True)

        # Tokens are there after the restarts; one is used for the drain runs.
        gw = Gateway(args.binary, env, os.path.join(work, "check.log"))
        wait_for(lambda: ready_status(http) == 200, 30, "ready")
        listed = api(http, key, "GET", "/api/v1/tokens?per_page=1")["total"]
        token = api(http, key, "POST", "/api/v1/tokens",
                    {"label": "drain", "streams": [{"name": "d"}], "priority": 10})["secret"]
        # A seeded token is admitted: give it a secret, publish with it.
        seed_id = subprocess.run(["psql", db_url, "-tAc", "SELECT id FROM publish_tokens WHERE label = 'seed 1'"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        seed_secret = api(http, key, "POST", f"/api/v1/tokens/{seed_id}/refresh")["secret"]
        enc = publisher(args.fixture, f"rtmp://127.0.0.1:{rtmp}/live/seed1?token={seed_secret}")

        def on_air():
            try:
                view = api(http, key, "GET", "/api/v1/streams/seed1")
            except urllib.error.HTTPError:
                return False
            return any(f["state"] == "on_air" for s in view["sources"] for f in s["feeds"])
        wait_for(on_air, 20, "a seeded token's feed on air")
        enc.kill()
        enc.wait()
        gw.stop(signal.SIGTERM)
        result[f"restart_{args.tokens}_tokens"]["tokens_listed_after_restarts"] = listed
        result[f"restart_{args.tokens}_tokens"]["seeded_token_admitted"] = True

        result["drain_players_stay"] = drain_run(args, env, http, rtmp, token, work, args.max_wait_ms, leave=False)
        result["drain_players_leave"] = drain_run(args, env, http, rtmp, token, work, 30_000, leave=True)
        print(json.dumps(result, indent=2))
    finally:
        subprocess.run(["psql", admin, "-qc", f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
