# Sourced by the benchmark scripts of crates/bench (run-join-large.sh, run-inbound.sh,
# run-comparison.sh): servers on loopback in a work dir, stopped at exit.
#
# The caller sets, before sourcing: LOG_TAG (prefix of log lines); before calling the functions:
# WORK (the work dir), SECRET (the shared registration secret), MYELIN_BIN, SYNAPSE_VENV.
#
#   bench_cleanup                    stops every process started here (and PostgreSQL), removes
#                                    WORK unless KEEP=1; the caller installs it as the EXIT trap
#   make_ca                          a private CA: WORK/ca.{crt,key}
#   make_certificate NAME            WORK/NAME.{crt,key} for localhost and 127.0.0.1, from the CA
#   start_postgres DB...             a throwaway cluster in WORK/pg (fsync off), databases DB...;
#                                    sets PG_PORT, PG_BIN
#   start_myelin LABEL FILTER [VAR=VALUE...]
#                                    a federating Myelin named localhost:<federation port>
#                                    (TLS from the CA, the CA trusted, loopback allowed, cheap
#                                    passwords, rate limits off), in WORK/LABEL, with the extra
#                                    settings given; sets URL, PID, NAME, FED_PORT
#   start_synapse LABEL [LEVEL]      a federating Synapse (SQLite) named localhost:<port>, TLS
#                                    federation listener, plain client listener, the CA trusted,
#                                    loopback allowed, rate limits raised, logging at LEVEL (INFO);
#                                    SYNAPSE_OVERLAY (YAML lines) is appended to its overlay;
#                                    sets URL, PID, NAME, FED_PORT
#   wait_ready URL PID NAME LOG      waits for /_matrix/client/versions

PIDS=()
PG_BIN=""
PG_PORT=""

log() { printf '%s: %s %s\n' "$LOG_TAG" "$(date -u +%H:%M:%S)" "$*" >&2; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

stop_pid() {
    local pid="$1"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

bench_cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [ -n "$PG_BIN" ]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg/data" stop -m immediate >/dev/null 2>&1 || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}

make_ca() {
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 2 \
        -subj "/CN=Myelin bench CA" -keyout "$WORK/ca.key" -out "$WORK/ca.crt" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

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

start_postgres() { # databases...
    local db
    PG_BIN="$(for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && echo "$d"; done | sort -V | tail -n 1)"
    [ -n "$PG_BIN" ] || { log "no PostgreSQL server binaries (apt-get install postgresql)"; exit 1; }
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    chmod 755 "$WORK"
    mkdir -p "$WORK/pg" && chown postgres "$WORK/pg"
    PG_PORT="$(free_port)"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres --auth=trust -E UTF8 --no-locale >"$WORK/pg/initdb.log" 2>&1
    runuser -u postgres -- "$PG_BIN/postgres" -D "$WORK/pg/data" -k "$WORK/pg" -p "$PG_PORT" \
        -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
        -c full_page_writes=off -c max_connections=300 -c shared_buffers=128MB \
        >"$WORK/pg/postgres.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do
        "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -q 2>/dev/null && break
        sleep 0.2
    done
    for db in "$@"; do
        "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -q -c \
            "CREATE DATABASE $db ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    done
    log "PostgreSQL ($("$PG_BIN/postgres" --version)) on 127.0.0.1:$PG_PORT, fsync off"
}

start_myelin() { # label log-filter [VAR=VALUE...]
    local label="$1" filter="$2" dir="$WORK/$1" client
    shift 2
    mkdir -p "$dir"
    make_certificate "$label"
    FED_PORT="$(free_port)" client="$(free_port)"
    NAME="localhost:$FED_PORT"
    (cd "$dir" && exec env \
        MYELIN_SERVER_NAME="$NAME" \
        MYELIN_LISTEN__CLIENT="127.0.0.1:$client" \
        MYELIN_LISTEN__FEDERATION="127.0.0.1:$FED_PORT" \
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
        NO_COLOR=1 \
        "$@" \
        "$MYELIN_BIN" serve >"$dir/server.log" 2>&1) &
    PID=$!
    PIDS+=("$PID")
    URL="http://127.0.0.1:$client"
    wait_ready "$URL" "$PID" "$label" "$dir/server.log"
    log "$label: Myelin $NAME, client $URL, pid $PID"
}

start_synapse() { # label [log level]
    local label="$1" level="${2:-INFO}" dir="$WORK/$1" client limit py="$SYNAPSE_VENV/bin/python"
    mkdir -p "$dir"
    make_certificate "$label"
    FED_PORT="$(free_port)" client="$(free_port)"
    NAME="localhost:$FED_PORT"
    "$py" -m synapse.app.homeserver --server-name "$NAME" --config-path "$dir/homeserver.yaml" \
        --data-directory "$dir" --generate-config --report-stats=no >/dev/null
    cat >"$dir/log.yaml" <<EOF
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file: {class: logging.FileHandler, formatter: precise, filename: $dir/server.log}
root: {level: $level, handlers: [file]}
disable_existing_loggers: false
EOF
    limit='{per_second: 10000, burst_count: 100000}'
    cat >"$dir/overlay.yaml" <<EOF
listeners:
  - {port: $FED_PORT, bind_addresses: ['127.0.0.1'], type: http, tls: true, resources: [{names: [federation], compress: false}]}
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
rc_room_creation: $limit
rc_federation: {window_size: 1000, sleep_limit: 10000, sleep_delay: 0, reject_limit: 10000, concurrent: 1000}
${SYNAPSE_OVERLAY:-}
EOF
    (cd "$dir" && exec "$py" -m synapse.app.homeserver -c "$dir/homeserver.yaml" -c "$dir/overlay.yaml" \
        >"$dir/stdout.log" 2>&1) &
    PID=$!
    PIDS+=("$PID")
    URL="http://127.0.0.1:$client"
    wait_ready "$URL" "$PID" "$label" "$dir/stdout.log"
    log "$label: Synapse $NAME, client $URL, pid $PID"
}
