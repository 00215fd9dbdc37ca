#!/usr/bin/env bash
# Drives one Myelin server with three real clients, as TESTING.md §5 describes:
#   sdk       matrix-sdk 0.18 (Rust; tests/matrix-sdk, a crate in its own workspace)
#   js        matrix-js-sdk 37 (Node; tests/js-sdk)
#   hydrogen  the Hydrogen web client in Debian's Chromium via playwright-core (tests/hydrogen)
#
#   tests/clients/run.sh [sdk] [js] [hydrogen]     (no argument: all three)
#
# Builds the myelin binary, starts it (SQLite, temp dir, loopback, free ports, registration on,
# cheap password hashing, rate limits off), installs what is missing (npm ci into the test dirs,
# Chromium from apt when root), runs the clients and stops the server at exit. Any failure
# fails the run and prints the tail of the server log.
#
# MYELIN_CLIENTS_URL=http://127.0.0.1:8008 runs the clients against an already running server
# instead (nothing is built or started). The matrix-sdk crate builds into
# MYELIN_CLIENTS_TARGET_DIR (default "${CARGO_TARGET_DIR}-clients", outside the clone, so CI
# reuses it).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/myelin-target}"
SDK_TARGET_DIR="${MYELIN_CLIENTS_TARGET_DIR:-${CARGO_TARGET_DIR}-clients}"

log() { printf 'tests/clients: %s\n' "$*" >&2; }

CLIENTS=("$@")
if [ ${#CLIENTS[@]} -eq 0 ]; then CLIENTS=(sdk js hydrogen); fi
for c in "${CLIENTS[@]}"; do
    case "$c" in sdk|js|hydrogen) ;; *) log "unknown client '$c' (sdk, js, hydrogen)"; exit 2 ;; esac
done
wants() { local c; for c in "${CLIENTS[@]}"; do [ "$c" = "$1" ] && return 0; done; return 1; }

TIMES=()
timed() { # timed <label> <command...>: runs it, records its duration
    local label="$1" t0=$SECONDS
    shift
    "$@"
    TIMES+=("$label $((SECONDS - t0)) s")
}

# --- set-up (before the server starts, so that its log covers only the flows) ---------------
npm_install() { # npm ci unless node_modules was installed from this very lockfile
    local dir="$1"
    if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.installed-from-lock.json" 2>/dev/null; then
        log "npm ci in $dir"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
        cp "$dir/package-lock.json" "$dir/node_modules/.installed-from-lock.json"
    fi
}

if wants sdk; then
    log "building tests/matrix-sdk (target dir $SDK_TARGET_DIR)"
    timed "build matrix-sdk flow" env CARGO_TARGET_DIR="$SDK_TARGET_DIR" \
        cargo build -q --locked --manifest-path tests/matrix-sdk/Cargo.toml
fi
if wants js; then
    command -v node >/dev/null || { log "node is not installed"; exit 1; }
    timed "npm ci js-sdk" npm_install tests/js-sdk
fi
if wants hydrogen; then
    command -v node >/dev/null || { log "node is not installed"; exit 1; }
    if ! command -v chromium >/dev/null; then
        if [ "$(id -u)" = 0 ]; then
            log "installing Debian's chromium"
            timed "apt-get chromium" bash -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }'
        else
            log "chromium is missing and this is not root: install Debian's chromium package"
            exit 1
        fi
    fi
    timed "npm ci hydrogen" npm_install tests/hydrogen
    timed "bundle hydrogen" node tests/hydrogen/build.mjs
fi

# --- the server ------------------------------------------------------------------------------
. tests/lib/server.sh
WORK="$(mktemp -d /tmp/myelin-clients.XXXXXX)"
cleanup() {
    stop_test_server
    rm -rf "$WORK"
}
trap cleanup EXIT

server_log_tail() {
    if [ -f "$WORK/server.log" ]; then
        log "server log (last 60 lines):"
        tail -n 60 "$WORK/server.log" >&2
    fi
}

if [ -n "${MYELIN_CLIENTS_URL:-}" ]; then
    URL="$MYELIN_CLIENTS_URL"
else
    timed "build myelin" cargo build -q -p myelin
    # media.legacy_endpoints stays off (its default): matrix-sdk and Hydrogen 0.3.1 both download
    # through /_matrix/client/v1/media since the server advertises v1.11, and Hydrogen's upload
    # (/_matrix/media/r0/upload) is not behind that setting.
    start_test_server "$CARGO_TARGET_DIR/debug/myelin" "$WORK" "${MYELIN_CLIENTS_LOG_FILTER:-info}"
    URL="$SERVER_URL"
fi
log "server at $URL"

# --- the clients -----------------------------------------------------------------------------
FAILED=()
run_client() { # run_client <name> <command...>
    local name="$1" t0=$SECONDS
    shift
    log "running $name"
    if "$@"; then
        TIMES+=("$name $((SECONDS - t0)) s")
    else
        log "$name FAILED"
        FAILED+=("$name")
        server_log_tail
    fi
}

if wants sdk; then
    run_client matrix-sdk env MYELIN_URL="$URL" "$SDK_TARGET_DIR/debug/myelin-matrix-sdk-flow"
fi
if wants js; then
    run_client matrix-js-sdk node tests/js-sdk/flow.mjs "$URL"
fi
if wants hydrogen; then
    run_client hydrogen node tests/hydrogen/drive.mjs "$URL"
fi

log "times: $(IFS=,; echo "${TIMES[*]}")"
if [ ${#FAILED[@]} -gt 0 ]; then
    log "FAILED: ${FAILED[*]}"
    exit 1
fi
log "all passed: ${CLIENTS[*]}"
