#!/usr/bin/env bash
# Account-key rooms (MSC4243, `org.matrix.12.4243`) between two Myelin processes federating over
# TLS on loopback (a private CA, certificate verification on), driven by a real client library,
# matrix-nio: tests/interop/account-keys/flow.py. Everything runs in a temp dir and stops at exit;
# on failure the tails of both logs are printed.
#
#   tests/interop/account-keys/run.sh
#
# Uses the matrix-nio virtualenv of tests/interop/run.sh (MYELIN_INTEROP_VENV, default
# /var/tmp/myelin-interop-venv), installed there when missing. MYELIN_BIN=<path> uses that
# binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/../../.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/myelin-target}"
VENV="${MYELIN_INTEROP_VENV:-/var/tmp/myelin-interop-venv}"
NIO_VERSION=0.26.0

log() { printf 'tests/interop/account-keys: %s\n' "$*" >&2; }

if [ -n "${MYELIN_BIN:-}" ]; then
    BIN="$MYELIN_BIN"
else
    cargo build -q -p myelin
    BIN="$CARGO_TARGET_DIR/debug/myelin"
fi
if ! "$VENV/bin/python" -c "import sys, importlib.metadata as m; sys.exit(0 if m.version('matrix-nio') == '$NIO_VERSION' else 1)" 2>/dev/null; then
    log "installing matrix-nio $NIO_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "matrix-nio==$NIO_VERSION"
fi

. tests/lib/server.sh
. tests/lib/tls.sh

WORK="$(mktemp -d /tmp/myelin-account-keys.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

make_test_certificates "$WORK/tls" a b
# Each server is named after its federation port (localhost:<port>), so neither needs
# well-known, SRV or an override to reach the other; localhost is loopback, hence
# allow_private_addresses. Account-key rooms are on (experimental.msc4243).
export MYELIN_FEDERATION__TRUSTED_CA_FILES="[\"$WORK/tls/ca.crt\"]"
export MYELIN_FEDERATION__VERIFY_CERTIFICATES=true
export MYELIN_FEDERATION__ALLOW_PRIVATE_ADDRESSES=true
export MYELIN_FEDERATION__BACKOFF_MIN_SECS=1
export MYELIN_EXPERIMENTAL__MSC4243=true
URLS=()
for name in a b; do
    port="$(free_port)"
    mkdir -p "$WORK/$name"
    export MYELIN_SERVER_NAME="localhost:$port"
    export MYELIN_TLS__CERTIFICATE="$WORK/tls/$name.crt"
    export MYELIN_TLS__PRIVATE_KEY="$WORK/tls/$name.key"
    start_test_server "$BIN" "$WORK/$name" "info,ruma_state_res=warn" "$port"
    PIDS+=("$SERVER_PID")
    SERVER_PID=""
    URLS+=("$SERVER_URL")
    log "Myelin $MYELIN_SERVER_NAME, client API $SERVER_URL"
done

if ! "$VENV/bin/python" tests/interop/account-keys/flow.py "${URLS[0]}" "${URLS[1]}"; then
    for name in a b; do
        log "tail of server $name's log:"
        tail -n 40 "$WORK/$name/server.log" >&2 || true
    done
    exit 1
fi
