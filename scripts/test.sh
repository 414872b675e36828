#!/usr/bin/env bash
# Run every test: installs what the tests need (PostgreSQL, Redis, build
# libraries, ffmpeg for the end-to-end tests), starts the services when they are down, then formats-checks,
# lints and runs the whole test suite (unit, property, integration, CLI,
# OpenAPI snapshot, the admission benchmark in test mode), a short run of
# every fuzz target (scripts/fuzz.sh), then the README's quick start
# (tests/quickstart.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_build_tools
ensure_postgres
ensure_redis
ensure_media_tools

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/primacy-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
run() { echo "+ $*" >&2; "$@"; }
run cargo fmt --all -- --check
run cargo clippy --workspace --all-targets -- -D warnings
run cargo test --workspace --all-targets
# A bounded run of every fuzz target (nightly; the corpora replayed on
# stable otherwise, which cargo test above already did).
run scripts/fuzz.sh
# The README's quick start, executed as written (its own ports and database).
run python3 tests/quickstart.py
