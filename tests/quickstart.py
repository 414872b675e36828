#!/usr/bin/env python3
"""Runs the README's quick start as a new user would, and checks what it
promises.

The commands come from README.md itself: every fenced block preceded by
`<!-- quickstart: STEP -->` is executed, in order, in one bash session (so
variables and background jobs carry over from block to block, as in a
terminal). Only addresses are rewritten, so that this run has its own
ports and database and cannot disturb anything else on the machine:
`localhost:8080`, `rtmp://127.0.0.1/`, `127.0.0.1:9000` and the database URL.
The `ffplay` player is replaced by ffprobe writing one line per video packet
with the wall-clock time it arrived, since tests have no display.

The gateway is started with the README's own `scripts/run.sh` (serve block),
with a state folder of its own, and stopped by PID with SIGTERM (it must
drain and exit 0). Every process this test starts runs in a session of its
own and is killed by its process group at the end.

Checks, after the steps that promise something:
- serve: /api/ready answers 200;
- player: the player receives video;
- before the failover: the primary ("venue-a primary") is on air;
- failover: the backup is on air within a few seconds, the primary takes
  the air back after its loop restarted it and the failback hold passed;
- reprioritize: the backup is on air with priority 200, the primary stands by;
- the player never froze for long and its timestamps never went back;
- stop: the encoders are gone and the stream has no feed left.

Usage: tests/quickstart.py  (PRIMACY_TEST_DATABASE_URL: a database URL from
which this test may CREATE DATABASE; default the local `primacy` role).
"""

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ["serve", "setup", "encoders", "player", "show", "failover", "reprioritize", "stop"]
# How long the player may freeze at any moment of the run. A killed RTMP
# encoder fails over in tens of milliseconds; this bound leaves room for a
# loaded CI machine while still catching a wait for `feed_timeout` plus a GOP.
MAX_PLAYER_GAP_S = 1.2
T0 = time.monotonic()


def log(msg):
    print(f"[quickstart {time.monotonic() - T0:7.1f}s] {msg}", flush=True)


class Failure(Exception):
    pass


def readme_steps():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = {}
    for m in re.finditer(r"^<!-- quickstart: (\w+) -->\n```bash\n(.*?)\n```", text, re.S | re.M):
        if m.group(1) in blocks:
            raise Failure(f"README.md has two quickstart blocks named {m.group(1)}")
        blocks[m.group(1)] = m.group(2)
    missing = [s for s in STEPS if s not in blocks]
    if missing:
        raise Failure(f"README.md lacks the quickstart blocks {missing}")
    # Markers stand on a line of their own (prose may mention the syntax).
    order = [m.group(1) for m in re.finditer(r"^<!-- quickstart: (\w+) -->$", text, re.M)]
    if order != STEPS:
        raise Failure(f"README.md's quickstart blocks are in the order {order}, expected {STEPS}")
    return blocks


def free_port(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Env:
    """Ports, database and folders of this run."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.http = free_port(socket.SOCK_STREAM)
        self.rtmp = free_port(socket.SOCK_STREAM)
        self.srt = free_port(socket.SOCK_DGRAM)
        self.admin_url = os.environ.get(
            "PRIMACY_TEST_DATABASE_URL", "postgres://primacy:primacy@127.0.0.1:5432/postgres"
        )
        self.db = f"primacy_quickstart_{os.getpid()}_{int(time.time())}"
        u = urllib.parse.urlsplit(self.admin_url)
        self.db_url = urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + self.db, u.query, ""))
        self.player_csv = os.path.join(tmp, "player.csv")

    def rewrite(self, block):
        """The README's addresses, pointed at this run's own ones."""
        b = block.replace("localhost:8080", f"127.0.0.1:{self.http}")
        b = b.replace("rtmp://127.0.0.1/", f"rtmp://127.0.0.1:{self.rtmp}/")
        b = b.replace("127.0.0.1:9000", f"127.0.0.1:{self.srt}")
        b = b.replace("postgres://primacy:primacy@127.0.0.1:5432/primacy", self.db_url)
        stamp = (
            "python3 -u -c 'import sys, time\n"
            "for l in sys.stdin: print(\"%.3f,%s\" % (time.time(), l), end=\"\", flush=True)'"
        )
        player = (
            r"stdbuf -oL ffprobe -hide_banner -v error -rw_timeout 20000000 -select_streams v:0 "
            r"-show_entries packet=pts_time,dts_time,flags -of csv=p=0 \1 | "
            + stamp.replace("\\", "\\\\")
            + f" > {self.player_csv} &"
        )
        b = re.sub(r"^ffplay (\S+) &$", player, b, flags=re.M)
        if "ffplay" in b:
            raise Failure("a README block plays with ffplay in a form this test cannot rewrite")
        return b

    def clean_environ(self):
        """The caller's environment without Primacy settings of its own."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PRIMACY_")}
        env.setdefault("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/primacy-target"))
        return env


def psql(url, sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                   stdout=subprocess.DEVNULL, timeout=60)


class Shell:
    """One bash session fed the README's blocks through its stdin."""

    def __init__(self, env, tmp):
        self.tmp = tmp
        self.errors = os.path.join(tmp, "shell-errors")
        self.stderr = open(os.path.join(tmp, "shell.log"), "w")
        self.proc = subprocess.Popen(
            ["bash"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            text=True, env=env, cwd=ROOT, start_new_session=True,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.n = 0
        # A failing command is recorded (ERR is not inherited by the
        # encoders' loops, whose ffmpeg is meant to fail when killed).
        self._send(f"trap 'echo \"line $LINENO: $BASH_COMMAND\" >> {self.errors}' ERR\n")

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _send(self, text):
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def run(self, name, block, timeout=120):
        self.n += 1
        path = os.path.join(self.tmp, f"step{self.n}-{name}.sh")
        with open(path, "w") as f:
            f.write(block + "\n")
        marker = f"__quickstart_done_{self.n}__"
        self._send(f"source {path}\necho {marker}\n")
        deadline = time.monotonic() + timeout
        out = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failure(f"step {name} did not finish within {timeout} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise Failure(f"the shell ended during step {name} (see {self.stderr.name})")
            if line.strip() == marker:
                break
            out.append(line.rstrip("\n"))
        for line in out:
            print(f"    | {line}", flush=True)
        if os.path.exists(self.errors) and os.path.getsize(self.errors) > 0:
            raise Failure(f"step {name}: a command failed: {open(self.errors).read().strip()}")
        return out

    def var(self, name):
        self.n += 1
        marker = f"__quickstart_var_{self.n}__"
        self._send(f"printf '%s\\n' \"${name}\"\necho {marker}\n")
        value = None
        while True:
            line = self.lines.get(timeout=10)
            if line is None:
                raise Failure("the shell ended")
            if line.strip() == marker:
                return value
            value = line.rstrip("\n")

    def kill(self):
        kill_group(self.proc)


def kill_group(proc):
    """Kill a process this test started and everything in its session."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


class Api:
    def __init__(self, port, key):
        self.base = f"http://127.0.0.1:{port}"
        self.key = key

    def get(self, path):
        req = urllib.request.Request(self.base + path)
        if self.key:
            req.add_header("Authorization", f"Bearer {self.key}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, None
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            return None, None

    def feeds(self):
        status, body = self.get("/api/v1/streams/match1")
        if status != 200:
            return []
        return [f for s in body["sources"] for f in s["feeds"]]

    def on_air(self):
        """(label, priority) of the feed on air, or None."""
        for f in self.feeds():
            if f["primary"]:
                return f["label"], f["priority"]
        return None


def wait_for(what, cond, timeout, poll=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise Failure(f"not within {timeout} s: {what}")


def player_packets(path):
    """(arrival wall clock, dts) of every video packet the player got."""
    rows = []
    if not os.path.exists(path):
        return rows
    for line in open(path):
        parts = line.strip().split(",")
        if len(parts) < 3:
            continue
        try:
            rows.append((float(parts[0]), float(parts[2])))
        except ValueError:
            continue
    return rows


def check_player(path, since):
    rows = player_packets(path)
    if len(rows) < 100:
        raise Failure(f"the player received only {len(rows)} video packets")
    worst = max((b[0] - a[0], a[0]) for a, b in zip(rows, rows[1:]) if b[0] >= since)
    back = [(a[1], b[1]) for a, b in zip(rows, rows[1:]) if b[1] <= a[1]]
    log(f"player: {len(rows)} video packets, longest freeze {worst[0] * 1000:.0f} ms, "
        f"{len(back)} timestamp regressions")
    if worst[0] > MAX_PLAYER_GAP_S:
        raise Failure(f"the player froze for {worst[0]:.2f} s")
    if back:
        raise Failure(f"the player's timestamps went back: {back[:3]}")


def main():
    blocks = readme_steps()
    tmp = tempfile.mkdtemp(prefix="primacy-quickstart-")
    env = Env(tmp)
    log(f"ports http {env.http}, rtmp {env.rtmp}, srt {env.srt}; database {env.db}; folder {tmp}")
    psql(env.admin_url, f'CREATE DATABASE "{env.db}"')
    server = shell = None
    try:
        # --- serve: the README's run command, with this run's own settings.
        senv = env.clean_environ()
        senv.update({
            "PRIMACY_HTTP_LISTEN": f"127.0.0.1:{env.http}",
            "PRIMACY_RTMP_LISTEN": f"127.0.0.1:{env.rtmp}",
            "PRIMACY_SRT_LISTEN": f"127.0.0.1:{env.srt}",
            "PRIMACY_DATABASE_URL": env.db_url,
            "PRIMACY_TEST_DATABASE_URL": env.admin_url,
            "PRIMACY_RUN_STATE_DIR": os.path.join(tmp, "state"),
        })
        server_log = open(os.path.join(tmp, "server.log"), "w")
        server = subprocess.Popen(
            ["bash", "-c", blocks["serve"]], env=senv, cwd=ROOT, stdout=server_log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        api = Api(env.http, None)

        def ready():
            if server.poll() is not None:
                raise Failure(f"scripts/run.sh exited with {server.returncode}: "
                              + open(server_log.name).read()[-3000:])
            return api.get("/api/ready")[0] == 200

        # The first run builds the release binary.
        wait_for("the gateway is ready", ready, timeout=1800, poll=0.5)
        log("serve: /api/ready is 200")

        shell_env = env.clean_environ()
        shell_env["PRIMACY_API"] = f"http://127.0.0.1:{env.http}"
        shell = Shell(shell_env, tmp)

        shell.run("setup", env.rewrite(blocks["setup"]))
        api.key = shell.var("PRIMACY_API_KEY")
        if not api.key or not api.key.startswith("pmy_"):
            raise Failure("the setup did not leave an API key in PRIMACY_API_KEY")
        for name in ("PRIMARY_SECRET", "BACKUP_SECRET", "BACKUP_ID"):
            if not shell.var(name) or shell.var(name) == "null":
                raise Failure(f"the setup did not set {name}")
        secrets = [shell.var("PRIMARY_SECRET"), shell.var("BACKUP_SECRET")]

        shell.run("encoders", env.rewrite(blocks["encoders"]))
        wait_for("both encoders publish", lambda: len(api.feeds()) == 2, timeout=60)
        wait_for("the primary is on air",
                 lambda: api.on_air() == ("venue-a primary", 100), timeout=30)
        log("encoders: both feeds live, the primary on air")

        shell.run("player", env.rewrite(blocks["player"]))
        wait_for("the player receives video",
                 lambda: len(player_packets(env.player_csv)) >= 30, timeout=30)
        player_start = time.time()
        log("player: receiving")

        out = shell.run("show", env.rewrite(blocks["show"]))
        shown = json.loads("\n".join(out))
        if not any(f["primary"] and f["label"] == "venue-a primary" for f in shown["feeds"]):
            raise Failure(f"the show step did not show the primary on air: {shown}")

        time.sleep(1.5)  # some playback before the kill, to see the freeze in context
        killed = time.monotonic()
        shell.run("failover", env.rewrite(blocks["failover"]))
        wait_for("the backup is on air after the primary's encoder was killed",
                 lambda: api.on_air() == ("venue-a backup", 50), timeout=5, poll=0.02)
        log(f"failover: backup on air {time.monotonic() - killed:.2f} s after the kill")
        wait_for("the restarted primary takes the air back",
                 lambda: api.on_air() == ("venue-a primary", 100), timeout=30)
        log(f"failback: primary on air again {time.monotonic() - killed:.2f} s after the kill")

        time.sleep(1.0)
        moved = time.monotonic()
        shell.run("reprioritize", env.rewrite(blocks["reprioritize"]))
        wait_for("the backup is on air with priority 200",
                 lambda: api.on_air() == ("venue-a backup", 200), timeout=30)
        standby = [f for f in api.feeds() if f["label"] == "venue-a primary"]
        if not standby or standby[0]["primary"] or standby[0]["priority"] != 100:
            raise Failure(f"after the reprioritize the primary should stand by: {standby}")
        log(f"reprioritize: backup on air at 200 {time.monotonic() - moved:.2f} s after the call")

        time.sleep(1.5)
        check_player(env.player_csv, player_start)

        shell.run("stop", env.rewrite(blocks["stop"]))
        wait_for("the stream has no feed left", lambda: not api.feeds(), timeout=15)

        def encoders_gone():
            return all(subprocess.run(["pgrep", "-f", f"token={s}"],
                                      stdout=subprocess.DEVNULL).returncode == 1 for s in secrets)
        wait_for("the encoders are gone", encoders_gone, timeout=10)
        log("stop: encoders and player gone")

        # The gateway drains on SIGTERM and exits 0.
        os.kill(server.pid, signal.SIGTERM)
        try:
            code = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise Failure("the gateway did not exit within 60 s of SIGTERM")
        if code != 0:
            raise Failure(f"the gateway exited with {code} after SIGTERM")
        log("the gateway drained and exited 0")
    except Failure as e:
        log(f"FAILED: {e}")
        for name in ("server.log", "shell.log"):
            path = os.path.join(tmp, name)
            if os.path.exists(path):
                print(f"--- {name} (last 4000 characters)\n{open(path).read()[-4000:]}")
        return 1
    finally:
        if shell:
            shell.kill()
        if server:
            kill_group(server)
        try:
            psql(env.admin_url, f'DROP DATABASE IF EXISTS "{env.db}" WITH (FORCE)')
        except subprocess.SubprocessError as e:
            log(f"could not drop {env.db}: {e}")
    shutil.rmtree(tmp, ignore_errors=True)
    log("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
