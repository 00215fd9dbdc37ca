#!/usr/bin/env bash
# A server joins a room of 10,000 members held by a Myelin: Myelin and Synapse side by side.
#
#   crates/bench/run-join-large.sh [OUT.jsonl]
#
# On 127.0.0.1, in a temp dir under /var/tmp, with TLS between the servers from a private CA
# made here (certificate verification stays on):
#   - A, the resident: a Myelin (release build, SQLite) holding the room. myelin-bench's
#     join-large-setup registers MEMBERS users on it through the shared-secret admin API
#     (argon2 turned down, rate limits off), one creates a public room of ROOM_VERSION and all
#     the others join it. Untimed.
#   - then ROUNDS times, in turn: a fresh Myelin B (release, SQLite, empty database, new server
#     name) and a fresh Synapse S (SQLite, empty database, new server name); on each,
#     myelin-bench's join-remote registers one user, takes a /sync token, and times
#     `POST /join/{room}?server_name=A` and the join until that user's long-poll /sync lists the
#     room. A fresh joining server per round: a second user of a server already in the room
#     would not be a remote join, and a server that left keeps the state it fetched. The
#     joining servers stay up until the end, since their joins are in the state the later ones
#     receive and check (the state grows by one member per earlier join).
# Every run appends one JSON line to OUT (default /var/tmp/myelin-join-large-<UTC>.jsonl); the
# joining servers' logs are copied next to OUT as OUT.b<round><mode>.log and OUT.s<round><mode>.log.
#
# Environment knobs:
#   MEMBERS=10000 ROUNDS=3 ROOM_VERSION=12 SETUP_CONCURRENCY=8
#   SYNC_MODES="full lazy"    each round joins once per mode: the joining user's /sync asks for
#                             the whole state (full) or lazy-loaded members (lazy, as Element)
#   SERVERS="myelin synapse"  which joining servers
#                             (an account-key room, ROOM_VERSION=org.matrix.12.4243, takes
#                             SERVERS=myelin: Synapse cannot join one. Every Myelin then runs
#                             with experimental.msc4243 on, and join-remote also records the
#                             joining server's /query/accounts asking, from its /metrics, until
#                             every member of another server is verified: requests, bytes each
#                             way, time after the join returned)
#   MYELIN_BIN, BENCH_BIN     (default: release builds in $CARGO_TARGET_DIR or /var/tmp/myelin-target)
#   SYNAPSE_VENV              venv with matrix-synapse (default /var/tmp/myelin-synapse-venv)
#   KEEP=1                    keep the temp dir
set -euo pipefail

cd "$(dirname "$0")/../.."
TARGET="${CARGO_TARGET_DIR:-/var/tmp/myelin-target}"
MYELIN_BIN="${MYELIN_BIN:-$TARGET/release/myelin}"
BENCH_BIN="${BENCH_BIN:-$TARGET/release/myelin-bench}"
SYNAPSE_VENV="${SYNAPSE_VENV:-/var/tmp/myelin-synapse-venv}"
MEMBERS="${MEMBERS:-10000}"
ROUNDS="${ROUNDS:-3}"
ROOM_VERSION="${ROOM_VERSION:-12}"
SETUP_CONCURRENCY="${SETUP_CONCURRENCY:-8}"
SYNC_MODES="${SYNC_MODES:-full lazy}"
SERVERS="${SERVERS:-myelin synapse}"
SECRET="bench-shared-secret"
OUT="${1:-/var/tmp/myelin-join-large-$(date -u +%Y%m%dT%H%M%SZ).jsonl}"
OUT="$(realpath -m "$OUT")"

log() { printf 'run-join-large: %s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

if [ ! -x "$MYELIN_BIN" ] || [ ! -x "$BENCH_BIN" ]; then
    log "building release binaries into $TARGET"
    CARGO_TARGET_DIR="$TARGET" cargo build --release -p myelin -p myelin-bench
fi
# Account-key rooms (MSC4243): on for every Myelin, and followed by join-remote.
ACCOUNT_KEYS=0
case "$ROOM_VERSION" in *.4243)
    ACCOUNT_KEYS=1
    case " $SERVERS " in *" synapse "*)
        log "Synapse cannot join a $ROOM_VERSION room: run with SERVERS=myelin"; exit 1 ;;
    esac ;;
esac
case " $SERVERS " in *" synapse "*)
    "$SYNAPSE_VENV/bin/python" -c 'import synapse' 2>/dev/null ||
        { log "no Synapse in $SYNAPSE_VENV (see tests/interop/synapse/run.sh)"; exit 1; } ;;
esac

WORK="$(mktemp -d /var/tmp/myelin-join-large.XXXXXX)"
PIDS=()
stop_pid() {
    local pid="$1"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# The private CA, and one certificate (localhost and 127.0.0.1) made per server on demand.
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 2 \
    -subj "/CN=Myelin join-large CA" -keyout "$WORK/ca.key" -out "$WORK/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
make_certificate() { # name
    local n="$WORK/$1"
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -subj "/CN=localhost" -keyout "$n.key" -out "$n.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$n.ext"
    openssl x509 -req -in "$n.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -CAcreateserial \
        -days 2 -extfile "$n.ext" -out "$n.crt" 2>/dev/null
}

wait_ready() { # url pid name log
    for _ in $(seq 1 600); do
        curl -fsS "$1/_matrix/client/versions" >/dev/null 2>&1 && return 0
        kill -0 "$2" 2>/dev/null || { log "$3 exited during start-up"; tail -30 "$4" >&2; return 1; }
        sleep 0.2
    done
    log "$3 not ready after 120 s"
    tail -30 "$4" >&2
    return 1
}

# A Myelin named localhost:<its federation port>, so no discovery is needed; sets URL, PID, NAME.
start_myelin() { # label log-filter
    local label="$1" filter="$2" dir="$WORK/$1" fed client
    mkdir -p "$dir"
    make_certificate "$label"
    fed="$(free_port)" client="$(free_port)"
    NAME="localhost:$fed"
    (cd "$dir" && exec env \
        MYELIN_SERVER_NAME="$NAME" \
        MYELIN_LISTEN__CLIENT="127.0.0.1:$client" \
        MYELIN_LISTEN__FEDERATION="127.0.0.1:$fed" \
        MYELIN_DATA_DIR="$dir" \
        MYELIN_REGISTRATION__SHARED_SECRET="$SECRET" \
        MYELIN_PASSWORDS__MEMORY_KIB=8 \
        MYELIN_PASSWORDS__ITERATIONS=1 \
        MYELIN_RATE_LIMITS__ENABLED=false \
        MYELIN_TLS__CERTIFICATE="$WORK/$label.crt" \
        MYELIN_TLS__PRIVATE_KEY="$WORK/$label.key" \
        MYELIN_FEDERATION__TRUSTED_CA_FILES="[\"$WORK/ca.crt\"]" \
        MYELIN_FEDERATION__VERIFY_CERTIFICATES=true \
        MYELIN_FEDERATION__ALLOW_PRIVATE_ADDRESSES=true \
        MYELIN_FEDERATION__REQUEST_TIMEOUT_SECS=600 \
        MYELIN_LOG__FILTER="$filter" \
        MYELIN_EXPERIMENTAL__MSC4243="$([ "$ACCOUNT_KEYS" = 1 ] && echo true || echo false)" \
        NO_COLOR=1 \
        "$MYELIN_BIN" serve >"$dir/server.log" 2>&1) &
    PID=$!
    PIDS+=("$PID")
    URL="http://127.0.0.1:$client"
    wait_ready "$URL" "$PID" "$label" "$dir/server.log"
    log "$label: Myelin $NAME, client $URL, pid $PID"
}

# A Synapse on SQLite with a TLS federation listener on its name's port; sets URL, PID, NAME.
start_synapse() { # label
    local label="$1" dir="$WORK/$1" fed client limit py="$SYNAPSE_VENV/bin/python"
    mkdir -p "$dir"
    make_certificate "$label"
    fed="$(free_port)" client="$(free_port)"
    NAME="localhost:$fed"
    "$py" -m synapse.app.homeserver --server-name "$NAME" --config-path "$dir/homeserver.yaml" \
        --data-directory "$dir" --generate-config --report-stats=no >/dev/null
    cat >"$dir/log.yaml" <<EOF
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file: {class: logging.FileHandler, formatter: precise, filename: $dir/server.log}
root: {level: INFO, handlers: [file]}
disable_existing_loggers: false
EOF
    limit='{per_second: 10000, burst_count: 100000}'
    cat >"$dir/overlay.yaml" <<EOF
listeners:
  - {port: $fed, bind_addresses: ['127.0.0.1'], type: http, tls: true, resources: [{names: [federation], compress: false}]}
  - {port: $client, bind_addresses: ['127.0.0.1'], type: http, tls: false, resources: [{names: [client], compress: false}]}
log_config: $dir/log.yaml
tls_certificate_path: $WORK/$label.crt
tls_private_key_path: $WORK/$label.key
federation_verify_certificates: true
federation_custom_ca_list: ['$WORK/ca.crt']
ip_range_blacklist: []
ip_range_whitelist: ['127.0.0.0/8', '::1/128']
trusted_key_servers: []
suppress_key_server_warning: true
registration_shared_secret: '$SECRET'
presence: {enabled: false}
caches: {sync_response_cache_duration: 0}
rc_message: $limit
rc_registration: $limit
rc_login: {address: $limit, account: $limit, failed_attempts: $limit}
rc_joins: {local: $limit, remote: $limit}
rc_joins_per_room: $limit
rc_federation: {window_size: 1000, sleep_limit: 10000, sleep_delay: 0, reject_limit: 10000, concurrent: 1000}
EOF
    (cd "$dir" && exec "$py" -m synapse.app.homeserver -c "$dir/homeserver.yaml" -c "$dir/overlay.yaml" \
        >"$dir/stdout.log" 2>&1) &
    PID=$!
    PIDS+=("$PID")
    URL="http://127.0.0.1:$client"
    wait_ready "$URL" "$PID" "$label" "$dir/stdout.log"
    log "$label: Synapse $NAME, client $URL, pid $PID"
}

bench() { # label url pid scenario args...
    local label="$1" url="$2" pid="$3"
    shift 3
    "$BENCH_BIN" --url "$url" --shared-secret "$SECRET" --label "$label" --pid "$pid" \
        --time-limit-secs 900 --scenario "$@"
}

LOGS=()

start_myelin resident warn
A_URL="$URL" A_PID="$PID" A_NAME="$NAME"
log "setting up: $MEMBERS members in a version $ROOM_VERSION room on $A_NAME"
line="$(bench myelin-a-sqlite "$A_URL" "$A_PID" join-large-setup --tag setup --count "$MEMBERS" \
    --room-version "$ROOM_VERSION" --setup-concurrency "$SETUP_CONCURRENCY" --prefix a_)"
echo "$line" >>"$OUT"
ROOM="$(printf '%s' "$line" | python3 -c 'import json, sys; print(json.load(sys.stdin)["room_id"])')"
log "room $ROOM ready: $line"

for round in $(seq 1 "$ROUNDS"); do
  for mode in $SYNC_MODES; do
    lazy=()
    [ "$mode" = lazy ] && lazy=(--lazy-load-members)
    keys=()
    [ "$ACCOUNT_KEYS" = 1 ] && keys=(--account-keys)
    # Alternate which server goes first, so that a drift in the machine's load hits both.
    order="$SERVERS"
    [ $((round % 2)) = 0 ] && order="$(printf '%s\n' $SERVERS | tac | tr '\n' ' ')"
    for server in $order; do
        case "$server" in
            myelin) dir="b$round$mode" label=myelin-b-sqlite; start_myelin "$dir" "info,ruma_state_res=warn" ;;
            synapse) dir="s$round$mode" label=synapse-sqlite; start_synapse "$dir" ;;
            *) log "unknown server $server"; exit 1 ;;
        esac
        log "round $round ($mode): $label joins"
        bench "$label" "$URL" "$PID" join-remote --tag "round$round-$mode" --prefix j_ --room "$ROOM" \
            --via "$A_NAME" "${lazy[@]}" "${keys[@]}" >>"$OUT" || log "$label round $round failed (see $OUT)"
        tail -n 1 "$OUT" >&2
        # The joining server stays up until the end: its join is in the room's state now, and
        # the next rounds' servers fetch its signing key from it to check that event.
        LOGS+=("$WORK/$dir/server.log:$OUT.$dir.log")
    done
  done
done
for pair in "${LOGS[@]}"; do cp "${pair%%:*}" "${pair#*:}"; done
log "results in $OUT"
