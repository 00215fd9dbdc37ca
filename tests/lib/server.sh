# Sourced by the client test runners (tests/interop/run.sh, tests/clients/run.sh): starts one
# Myelin for real clients to talk to (SQLite in a temp dir, loopback, free ports, registration
# open, cheap password hashing, rate limits off) and stops it at exit.
#
#   start_test_server BIN WORK LOG_FILTER [FEDERATION_PORT]
#                                           sets SERVER_PID and SERVER_URL; the log is WORK/server.log
#                                           (a caller that names the server after its federation
#                                           port picks the port first; other MYELIN_* settings
#                                           exported by the caller reach the server too)
#   stop_test_server                        (installed as the EXIT trap by the caller)

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

SERVER_PID=""
SERVER_URL=""

stop_test_server() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
}

start_test_server() { # start_test_server <binary> <work dir> <log filter> [federation port]
    local bin="$1" work="$2" filter="$3" federation_port="${4:-}" client_port
    client_port="$(free_port)"
    [ -n "$federation_port" ] || federation_port="$(free_port)"
    (
        cd "$work"
        MYELIN_LISTEN__CLIENT="127.0.0.1:$client_port" \
        MYELIN_LISTEN__FEDERATION="127.0.0.1:$federation_port" \
        MYELIN_REGISTRATION__ENABLED=true \
        MYELIN_PASSWORDS__MEMORY_KIB=8 \
        MYELIN_PASSWORDS__ITERATIONS=1 \
        MYELIN_RATE_LIMITS__ENABLED=false \
        MYELIN_LOG__FILTER="$filter" \
        NO_COLOR=1 \
        exec "$bin"
    ) >"$work/server.log" 2>&1 &
    SERVER_PID=$!
    SERVER_URL="http://127.0.0.1:$client_port"
    for _ in $(seq 1 150); do
        if curl -fsS "$SERVER_URL/_matrix/client/versions" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "the test server exited; its log:" >&2
            tail -n 60 "$work/server.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "the test server never answered; its log:" >&2
    tail -n 60 "$work/server.log" >&2
    return 1
}
