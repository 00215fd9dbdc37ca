#!/usr/bin/env bash
# End-to-end encryption with a real client: the matrix-sdk 0.18 E2EE flow
# (tests/matrix-sdk/src/bin/e2ee.rs: cross-signing for two users, messages both ways in an
# encrypted room, each decrypting the other's, a second device restoring the history from the
# key backup, a dehydrated device (MSC3814) rehydrated by a new device to read what was sent
# while alice was logged out) run twice:
#   one   both users on one Myelin;
#   two   alice on one Myelin, bob on another, the two federating over TLS with certificate
#         verification on (a private CA made here, as tests/interop/synapse/run.sh does).
#
#   tests/e2ee/run.sh [one] [two]        (no argument: both, one first)
#
# Builds the myelin binary (`cargo build -q -p myelin`) unless MYELIN_BIN=<path> names one, and
# the flow (tests/matrix-sdk with its e2ee feature) into MYELIN_CLIENTS_TARGET_DIR (default
# "${CARGO_TARGET_DIR}-clients", shared with tests/clients/run.sh). Each server: SQLite in a temp
# dir, loopback, registration on, cheap password hashing, rate limits off (tests/lib/server.sh).
# Any failing part fails the run and prints the tails of the server logs; the times of the build
# and of each part are printed at the end. MYELIN_E2EE_KEEP=1 keeps the temp dir (logs, data).
# MYELIN_E2EE_LOG sets the servers' log filter (default info,ruma_state_res=warn; add
# tower_http=debug to log every request with its status); MYELIN_SDK_LOG sets the client's
# (default warn, matrix-sdk's own backup warnings left out).
set -euo pipefail
cd "$(dirname "$0")/../.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/myelin-target}"
SDK_TARGET_DIR="${MYELIN_CLIENTS_TARGET_DIR:-${CARGO_TARGET_DIR}-clients}"
FLOW="$SDK_TARGET_DIR/debug/myelin-matrix-sdk-e2ee"
LOG_FILTER="${MYELIN_E2EE_LOG:-info,ruma_state_res=warn}"

log() { printf 'tests/e2ee: %s\n' "$*" >&2; }

PARTS=("$@")
if [ ${#PARTS[@]} -eq 0 ]; then PARTS=(one two); fi
for part in "${PARTS[@]}"; do
    case "$part" in one|two) ;; *) log "unknown part '$part' (one, two)"; exit 2 ;; esac
done

TIMES=()
timed() { # timed <label> <command...>: runs it, records its duration
    local label="$1" t0=$SECONDS
    shift
    "$@"
    TIMES+=("$label $((SECONDS - t0)) s")
}

if [ -n "${MYELIN_BIN:-}" ]; then
    BIN="$MYELIN_BIN"
    log "using MYELIN_BIN=$BIN (nothing built)"
else
    timed "build myelin" cargo build -q -p myelin
    BIN="$CARGO_TARGET_DIR/debug/myelin"
fi
log "building the matrix-sdk e2ee flow (target dir $SDK_TARGET_DIR)"
timed "build flow" env CARGO_TARGET_DIR="$SDK_TARGET_DIR" \
    cargo build -q --locked --manifest-path tests/matrix-sdk/Cargo.toml \
    --features e2ee --bin myelin-matrix-sdk-e2ee

. tests/lib/server.sh
. tests/lib/tls.sh

WORK="$(mktemp -d /tmp/myelin-e2ee.XXXXXX)"
PIDS=()
LOGS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${MYELIN_E2EE_KEEP:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

show_logs() {
    local file
    for file in "${LOGS[@]}"; do
        log "tail of $file:"
        tail -n 40 "$file" >&2 || true
    done
}

# start_server <dir> [federation port]: a Myelin in <dir> (its log <dir>/server.log), with the
# MYELIN_* settings exported at the time; sets SERVER_URL, records the pid and the log.
start_server() {
    mkdir -p "$1"
    start_test_server "$BIN" "$1" "$LOG_FILTER" "${2:-}"
    PIDS+=("$SERVER_PID")
    LOGS+=("$1/server.log")
    SERVER_PID="" # stopped by cleanup, not by stop_test_server
}

make_certificates() { make_test_certificates "$WORK/tls" a b; }

FAILED=()
run_flow() { # run_flow <part> <env...>: the flow with the given MYELIN_URL(_B), timed
    local part="$1" t0=$SECONDS
    shift
    log "part '$part': running the flow"
    if env "$@" "$FLOW"; then
        TIMES+=("flow ($part) $((SECONDS - t0)) s")
    else
        TIMES+=("flow ($part, failed) $((SECONDS - t0)) s")
        FAILED+=("$part")
        show_logs
    fi
}

for part in "${PARTS[@]}"; do
    LOGS=()
    case "$part" in
    one)
        start_server "$WORK/one"
        log "part 'one': Myelin at $SERVER_URL"
        run_flow one MYELIN_URL="$SERVER_URL"
        ;;
    two)
        make_certificates
        # Each server named after its TLS federation listener's port, so that neither needs
        # well-known, SRV or an override to reach the other; localhost is loopback, hence
        # allow_private_addresses. A short backoff: one refused request must not silence a
        # server for the steps after it.
        export MYELIN_FEDERATION__TRUSTED_CA_FILES="[\"$WORK/tls/ca.crt\"]"
        export MYELIN_FEDERATION__VERIFY_CERTIFICATES=true
        export MYELIN_FEDERATION__ALLOW_PRIVATE_ADDRESSES=true
        export MYELIN_FEDERATION__BACKOFF_MIN_SECS=1
        export MYELIN_FEDERATION__REQUEST_TIMEOUT_SECS=10
        urls=()
        for name in a b; do
            port="$(free_port)"
            export MYELIN_SERVER_NAME="localhost:$port"
            export MYELIN_TLS__CERTIFICATE="$WORK/tls/$name.crt"
            export MYELIN_TLS__PRIVATE_KEY="$WORK/tls/$name.key"
            start_server "$WORK/two-$name" "$port"
            log "part 'two': Myelin $MYELIN_SERVER_NAME, client API $SERVER_URL"
            urls+=("$SERVER_URL")
        done
        unset MYELIN_SERVER_NAME MYELIN_TLS__CERTIFICATE MYELIN_TLS__PRIVATE_KEY
        run_flow two MYELIN_URL="${urls[0]}" MYELIN_URL_B="${urls[1]}"
        ;;
    esac
done

log "times: $(IFS=,; echo "${TIMES[*]}")"
if [ ${#FAILED[@]} -gt 0 ]; then
    log "FAILED: ${FAILED[*]}"
    exit 1
fi
log "all passed: ${PARTS[*]}"
