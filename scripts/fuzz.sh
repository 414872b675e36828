#!/usr/bin/env bash
# A short, bounded fuzz run of every target in fuzz/ (cargo-fuzz, libFuzzer),
# started from the committed corpora; part of scripts/test.sh.
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS (15) each
#   scripts/fuzz.sh ts_demux urls   only these
#   FUZZ_SECONDS=1800 nice -n 19 scripts/fuzz.sh engine_media   a campaign
#
# Needs a nightly toolchain (`cargo +nightly`); installs cargo-fuzz when it
# is missing. Without nightly, or when the fuzz build does not finish within
# FUZZ_BUILD_TIMEOUT seconds (240), it replays the committed corpora through
# the same target functions on stable (tests/fuzz_corpus.rs) instead and
# says so (a build stopped there keeps what it compiled: the next run goes
# on from it). New inputs found by a run go to fuzz/target-corpus/ (ignored by
# git), never into the committed corpora; crashes go to fuzz/artifacts/ and
# fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-15}"
FUZZ_BUILD_TIMEOUT="${FUZZ_BUILD_TIMEOUT:-240}"
FUZZ_MAX_LEN="${FUZZ_MAX_LEN:-65536}"
# Fuzz builds (sanitizer flags) in a directory of their own, so they never
# invalidate the normal build.
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/primacy-target}-fuzz}"
log() { echo "[fuzz] $*" >&2; }

replay_on_stable() {
    log "$1: NOT fuzzing; replaying the committed corpora on stable instead"
    cargo test --test fuzz_corpus
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    replay_on_stable "no nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^primacy-fuzz$')
fi

STABLE_TARGET_DIR="${CARGO_TARGET_DIR:-}"
cd fuzz
export CARGO_TARGET_DIR="$FUZZ_TARGET_DIR"
log "building ${#targets[@]} targets (at most ${FUZZ_BUILD_TIMEOUT} s)"
if ! timeout "$FUZZ_BUILD_TIMEOUT" cargo +nightly fuzz build -O "${targets[@]:0:1}" >&2; then
    cd ..
    if [ -n "$STABLE_TARGET_DIR" ]; then export CARGO_TARGET_DIR="$STABLE_TARGET_DIR"; else unset CARGO_TARGET_DIR; fi
    replay_on_stable "the fuzz build failed or took longer than ${FUZZ_BUILD_TIMEOUT} s"
    exit 0
fi
# The other targets share every dependency: quick once one is built.
for t in "${targets[@]:1}"; do
    cargo +nightly fuzz build -O "$t" >&2
done

for t in "${targets[@]}"; do
    work="target-corpus/$t"
    mkdir -p "$work" "artifacts/$t"
    log "$t: ${FUZZ_SECONDS} s from corpus/$t"
    seeds=("corpus/$t")
    [ -d "regressions/$t" ] && seeds+=("regressions/$t")
    # One process; the last lines carry the figures.
    status=0
    cargo +nightly fuzz run -O "$t" "$work" "${seeds[@]}" -- \
        -max_total_time="$FUZZ_SECONDS" -max_len="$FUZZ_MAX_LEN" -timeout=20 \
        -rss_limit_mb=4096 -print_final_stats=1 >"target-corpus/$t.log" 2>&1 || status=$?
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::average_exec_per_sec|==[0-9]+== ERROR|thread .* panicked)' \
        "target-corpus/$t.log" >&2 || true
    if [ "$status" -ne 0 ]; then
        log "$t: CRASH (exit $status); input in fuzz/artifacts/$t/, log in fuzz/target-corpus/$t.log"
        exit 1
    fi
done
log "ran ${#targets[@]} targets for ${FUZZ_SECONDS} s each: no crash"
