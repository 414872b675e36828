#!/usr/bin/env bash
# Run a single-node Primacy gateway on this machine: installs and starts
# PostgreSQL and Redis when they are missing, creates a signing key once
# (kept in .primacy/), builds and starts `primacy serve`.
#
#   scripts/run.sh                 # HTTP :8080, RTMP :1935, SRT :9000
#   scripts/run.sh --config my.toml
#
# Any PRIMACY_* variable you set wins (see docs/primacy.example.toml).
# PRIMACY_RUN_STATE_DIR (default .primacy) is where the signing key is kept;
# the gateway itself ignores PRIMACY_RUN_* and PRIMACY_TEST_* variables.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_build_tools
ensure_postgres

state="${PRIMACY_RUN_STATE_DIR:-.primacy}"
mkdir -p "$state"
if [ -z "${PRIMACY_HS256_SECRET:-}" ]; then
    if [ ! -s "$state/signing.key" ]; then
        echo "[run] creating a publish-token signing key in $state/signing.key" >&2
        (umask 077; head -c 48 /dev/urandom | base64 -w0 > "$state/signing.key")
    fi
    PRIMACY_HS256_SECRET="$(cat "$state/signing.key")"
    export PRIMACY_HS256_SECRET
    export PRIMACY_HS256_KID="${PRIMACY_HS256_KID:-local}"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/primacy-target}"
cargo build --release --bin primacy
exec "$CARGO_TARGET_DIR/release/primacy" "$@" serve
