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

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

WORK="$(mktemp -d /tmp/myelin-interop.XXXXXX)"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

CLIENT_PORT="$(free_port)"
FEDERATION_PORT="$(free_port)"
(
    cd "$WORK"
    MYELIN_LISTEN__CLIENT="127.0.0.1:$CLIENT_PORT" \
    MYELIN_LISTEN__FEDERATION="127.0.0.1:$FEDERATION_PORT" \
    MYELIN_REGISTRATION__ENABLED=true \
    MYELIN_PASSWORDS__MEMORY_KIB=8 \
    MYELIN_PASSWORDS__ITERATIONS=1 \
    MYELIN_RATE_LIMITS__ENABLED=false \
    MYELIN_LOG__FILTER=warn \
    exec "$BIN"
) >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

for _ in $(seq 1 150); do
    if curl -fsS "http://127.0.0.1:$CLIENT_PORT/_matrix/client/versions" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then cat "$WORK/server.log" >&2; exit 1; fi
    sleep 0.1
done

if ! "$VENV/bin/python" tests/interop/nio_flow.py "http://127.0.0.1:$CLIENT_PORT"; then
    log "matrix-nio flow failed; server log:"
    tail -n 50 "$WORK/server.log" >&2
    exit 1
fi
