#!/usr/bin/env bash
# The gateway's live heap with N RTMP players (or N publishers) connected,
# by call site: `primacy serve` runs under heaptrack, `primacy-loadtest
# fanout` drives it, and the gateway is SIGKILLed N players (or feeds) in,
# so what heaptrack reports as leaked is what was live at that moment.
# Run it for two values of N and subtract to get the cost of one more.
#
#   scripts/heap-profile.sh players 100      # 1 publisher, N players
#   scripts/heap-profile.sh publishers 100   # N publishers (each played once)
#
# Needs heaptrack (Debian: apt install heaptrack), PostgreSQL at
# $PRIMACY_TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres),
# the release binaries (cargo build --release --workspace --bins) and the
# load-test fixtures (scripts/loadtest-fixtures.sh). Writes to
# ${OUT:-loadtest/results/heap}. Loopback only; stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?players or publishers}
n=${2:?how many}
case $what in
    players) gauge=primacy_players ;;
    publishers) gauge=primacy_feeds ;;
    *) echo "first argument: players or publishers" >&2; exit 2 ;;
esac
command -v heaptrack >/dev/null || { echo "heaptrack is not installed" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}/release
bin=$target/primacy
lt=$target/primacy-loadtest
[ -x "$bin" ] && [ -x "$lt" ] || { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }
out=${OUT:-loadtest/results/heap}
mkdir -p "$out"
base=${PRIMACY_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
db=heap_profile_$$
psql "$base" -qc "create database $db" >/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=127.0.0.1:$(free_port)
export PRIMACY_DATABASE_URL=${base%/*}/$db
export PRIMACY_HTTP_LISTEN=$http PRIMACY_RTMP_LISTEN=127.0.0.1:$(free_port) PRIMACY_SRT_LISTEN=127.0.0.1:$(free_port)
export PRIMACY_HS256_SECRET=heap-profile-$$-$RANDOM-$RANDOM-0123456789 PRIMACY_HS256_KID=heap
export PRIMACY_NODE_ID=heap PRIMACY_LOG=warn
export PRIMACY_RTMP__MAX_CONNECTIONS_PER_IP=20000 PRIMACY_RTMP__MAX_CONNECTIONS=20000
gw=
ltpid=
cleanup() {
    [ -n "$ltpid" ] && kill -TERM "$ltpid" 2>/dev/null || true
    [ -n "$gw" ] && kill -KILL "$gw" 2>/dev/null || true
    sleep 2
    psql "$base" -qc "drop database if exists $db" >/dev/null 2>&1 || true
}
trap cleanup EXIT
"$bin" migrate >/dev/null
key=$("$bin" api-keys create --name heap-profile --scope admin --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])')
file=$out/heap-$what-$n
heaptrack -o "$file" "$bin" serve >"$out/heaptrack-$what-$n.log" 2>&1 &
for _ in $(seq 150); do
    curl -fs "http://$http/api/ready" >/dev/null && break
    sleep 0.2
done
gw=$(pgrep -n -f "^$bin serve$")
PRIMACY_API_KEY=$key timeout 300 "$lt" fanout --no-nginx --gateway-url "http://$http" \
    --rtmp "$PRIMACY_RTMP_LISTEN" --srt "$PRIMACY_SRT_LISTEN" --gateway-pid "$gw" \
    --results "$out/fanout-$what-$n" >"$out/fanout-$what-$n.log" 2>&1 &
ltpid=$!
seen=0
for _ in $(seq 1200); do
    seen=$(curl -fs "http://$http/metrics" | awk -v g="$gauge" '$1==g {print $2}')
    [ "${seen:-0}" = "$n" ] && break
    sleep 0.2
done
[ "${seen:-0}" = "$n" ] || { echo "never saw $n $what (last: ${seen:-none})" >&2; exit 1; }
sleep 6 # settled: catch-up sent, queues at their steady level
echo "$n $what; gateway $(grep VmRSS "/proc/$gw/status")"
kill -KILL "$gw"
gw=
wait "$ltpid" 2>/dev/null || true
ltpid=
# heaptrack's interpreter finishes writing once the process is gone.
for _ in $(seq 100); do
    [ -s "$file.zst" ] && ! pgrep -f "heaptrack_interpret.*" >/dev/null && break
    sleep 0.2
done
heaptrack_print -f "$file.zst" --flamegraph-cost-type leaked -F "$file.stacks" >/dev/null 2>&1
python3 - "$file.stacks" <<'EOF'
import collections, re, sys
# Each stack is charged to its innermost frame in this code or a crate of
# interest, so "who holds it" reads at the level of a session, a queue, a task.
own = ("primacy::", "rml_rtmp::", "srt_tokio", "tokio::sync", "tokio::task::spawn",
       "tokio::net", "actix", "regex", "CRYPTO", "diesel", "redis")
by = collections.Counter()
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    frames = [re.sub(r"::h[0-9a-f]{16}", "", f) for f in stack.split(";")]
    key = next((f for f in reversed(frames) if any(o in f for o in own)), "(other)")
    by[key[:100]] += int(n)
print(f"live heap: {sum(by.values()) / 1024:.1f} KiB")
for k, v in by.most_common(20):
    print(f"{v / 1024:10.1f} KiB  {k}")
EOF
echo "stacks: $file.stacks (subtract a run with another N for the cost of one)"
