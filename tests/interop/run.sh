#!/usr/bin/env bash
# Drives a Myelin server with real client libraries (today: matrix-nio) through the flow the
# client-server issue describes. Starts its own server (SQLite, temp dir, loopback, free ports)
# and stops it at exit.
#
#   tests/interop/run.sh
#
# The Python virtualenv lives outside the checkout (MYELIN_INTEROP_VENV, default
# /var/tmp/myelin-interop-venv) so repeated runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/../.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/myelin-target}"
VENV="${MYELIN_INTEROP_VENV:-/var/tmp/myelin-interop-venv}"
NIO_VERSION=0.26.0

log() { printf 'tests/interop: %s\n' "$*" >&2; }

cargo build -q -p myelin
BIN="$CARGO_TARGET_DIR/debug/myelin"

if ! "$VENV/bin/python" -c "import sys, importlib.metadata as m; sys.exit(0 if m.version('matrix-nio') == '$NIO_VERSION' else 1)" 2>/dev/null; then
    log "installing matrix-nio $NIO_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "matrix-nio==$NIO_VERSION"
fi

. tests/lib/server.sh

WORK="$(mktemp -d /tmp/myelin-interop.XXXXXX)"
cleanup() {
    stop_test_server
    rm -rf "$WORK"
}
trap cleanup EXIT
start_test_server "$BIN" "$WORK" warn

if ! "$VENV/bin/python" tests/interop/nio_flow.py "$SERVER_URL"; then
    log "matrix-nio flow failed; server log:"
    tail -n 50 "$WORK/server.log" >&2
    exit 1
fi
