#!/usr/bin/env bash
# Make sure the tools and services Primacy needs on this machine are
# present and running: PostgreSQL (with a `primacy` role that may create
# databases), Redis, and the C libraries the build links. Debian/Ubuntu.
#
# Sourced by scripts/run.sh and scripts/test.sh. Exports
# PRIMACY_DATABASE_URL, PRIMACY_TEST_DATABASE_URL and PRIMACY_REDIS_URL
# unless they are already set.
set -euo pipefail

log() { echo "[services] $*" >&2; }

if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else SUDO="__none__"; fi

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$SUDO" = "__none__" ]; then
        log "missing packages: ${missing[*]}; install them (as root) and run again"
        exit 1
    fi
    if ! command -v apt-get >/dev/null; then
        log "missing packages: ${missing[*]}; this script knows apt-get only, install them yourself"
        exit 1
    fi
    log "installing ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then su postgres -c "$*"; else sudo -u postgres bash -c "$*"; fi
}

ensure_postgres() {
    if [ -n "${PRIMACY_DATABASE_URL:-}" ] && [ -n "${PRIMACY_TEST_DATABASE_URL:-}" ]; then
        return 0
    fi
    apt_install postgresql libpq-dev pkg-config
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        if command -v pg_lsclusters >/dev/null; then
            local ver
            ver=$(pg_lsclusters -h | awk '{print $1}' | sort -V | tail -1)
            if [ -z "$ver" ]; then
                ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
                log "creating PostgreSQL $ver cluster main"
                $SUDO pg_createcluster "$ver" main >/dev/null
            fi
            log "starting PostgreSQL $ver"
            $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || $SUDO pg_ctlcluster "$ver" main start
        fi
        for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
        pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL did not come up on 127.0.0.1:5432"; exit 1; }
    fi
    # A login role for Primacy that may create databases (the tests make one each).
    if ! PGPASSWORD=primacy psql -h 127.0.0.1 -U primacy -d postgres -tAc 'select 1' >/dev/null 2>&1; then
        log "creating PostgreSQL role primacy"
        as_postgres "psql -q -v ON_ERROR_STOP=1 -d postgres" <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'primacy') THEN
    CREATE ROLE primacy LOGIN CREATEDB PASSWORD 'primacy';
  ELSE
    ALTER ROLE primacy LOGIN CREATEDB PASSWORD 'primacy';
  END IF;
END $$;
SQL
    fi
    if ! PGPASSWORD=primacy psql -h 127.0.0.1 -U primacy -d primacy -tAc 'select 1' >/dev/null 2>&1; then
        log "creating database primacy"
        PGPASSWORD=primacy psql -q -h 127.0.0.1 -U primacy -d postgres -c 'CREATE DATABASE primacy'
    fi
    export PRIMACY_DATABASE_URL="${PRIMACY_DATABASE_URL:-postgres://primacy:primacy@127.0.0.1:5432/primacy}"
    export PRIMACY_TEST_DATABASE_URL="${PRIMACY_TEST_DATABASE_URL:-postgres://primacy:primacy@127.0.0.1:5432/postgres}"
}

ensure_redis() {
    if [ -n "${PRIMACY_REDIS_URL:-}" ]; then
        return 0
    fi
    apt_install redis-server
    if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        log "starting Redis on 127.0.0.1:6379"
        local dir="${XDG_STATE_HOME:-$HOME/.local/state}/primacy/redis"
        mkdir -p "$dir"
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
            --dir "$dir" --logfile "$dir/redis.log"
        for _ in $(seq 1 40); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.25; done
        redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || { log "Redis did not come up"; exit 1; }
    fi
    export PRIMACY_TEST_REDIS_URL="${PRIMACY_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
}

ensure_build_tools() {
    command -v cargo >/dev/null || { log "cargo not found: install the Rust toolchain (rustup) first"; exit 1; }
    command -v cc >/dev/null || apt_install build-essential
    apt_install libpq-dev pkg-config
}

ensure_media_tools() {
    # Real encoders and players for the end-to-end tests.
    command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || apt_install ffmpeg
    # srt-live-transmit (libsrt's reference client) for the SRT client tests.
    command -v srt-live-transmit >/dev/null || apt_install srt-tools
    # python3 reads libsrt's reject reason through its C API in one test.
    command -v python3 >/dev/null || apt_install python3
    # openssl makes the EdDSA key pairs of the signing-key tests.
    command -v openssl >/dev/null || apt_install openssl
    # stdbuf (line-buffered ffprobe output) is in coreutils.
    command -v stdbuf >/dev/null || apt_install coreutils
    # The README's quick start (run by tests/quickstart.py) uses jq, curl,
    # pkill and psql.
    command -v jq >/dev/null || apt_install jq
    command -v curl >/dev/null || apt_install curl
    command -v pkill >/dev/null || apt_install procps
    command -v psql >/dev/null || apt_install postgresql-client
}
