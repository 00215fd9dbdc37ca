#!/usr/bin/env bash
# Federates Myelin with a real Synapse: one Synapse 1.163 (SQLite) and one Myelin (debug build,
# SQLite) on loopback, talking over TLS with certificate verification on (a private CA made here),
# then drives tests/interop/synapse/flow.py through both client APIs. Everything runs in a temp
# dir and stops at exit; on failure the tails of both logs are printed.
#
#   tests/interop/synapse/run.sh
#
# Synapse lives in a virtualenv outside the checkout (MYELIN_SYNAPSE_VENV, default
# /var/tmp/myelin-synapse-venv), installed on first use (about a minute) and reused after.
# MYELIN_SYNAPSE_KEEP=1 keeps the temp dir (configs, databases, logs) for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/../../.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/myelin-target}"
VENV="${MYELIN_SYNAPSE_VENV:-/var/tmp/myelin-synapse-venv}"
SYNAPSE_VERSION=1.163.0

log() { printf 'tests/interop/synapse: %s\n' "$*" >&2; }

cargo build -q -p myelin
BIN="$CARGO_TARGET_DIR/debug/myelin"

if ! "$VENV/bin/python" -c "import sys, importlib.metadata as m; sys.exit(0 if m.version('matrix-synapse') == '$SYNAPSE_VERSION' else 1)" 2>/dev/null; then
    log "installing matrix-synapse $SYNAPSE_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "matrix-synapse==$SYNAPSE_VERSION"
fi

. tests/lib/server.sh
. tests/lib/tls.sh

WORK="$(mktemp -d /tmp/myelin-synapse.XXXXXX)"
SYNAPSE_PID=""
cleanup() {
    if [ -n "$SYNAPSE_PID" ]; then
        kill -TERM "$SYNAPSE_PID" 2>/dev/null || true
        wait "$SYNAPSE_PID" 2>/dev/null || true
    fi
    stop_test_server
    if [ "${MYELIN_SYNAPSE_KEEP:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

show_logs() {
    log "tail of Synapse's log ($WORK/synapse.log):"
    tail -n 60 "$WORK/synapse.log" >&2 || true
    log "tail of Myelin's log ($WORK/server.log):"
    tail -n 60 "$WORK/server.log" >&2 || true
}

make_certificates() { make_test_certificates "$WORK/tls" synapse myelin; }

# Synapse: its generated config, then an overlay (later -c files win per top-level key) with a
# TLS listener for federation and clients on the server name's port, a plain client listener,
# the private CA, loopback allowed, no notary, open registration and rate limits out of the way.
start_synapse() {
    local dir="$WORK/synapse" limit
    mkdir -p "$dir"
    "$VENV/bin/python" -m synapse.app.homeserver --server-name "$SYNAPSE_NAME" \
        --config-path "$dir/homeserver.yaml" --data-directory "$dir" \
        --generate-config --report-stats=no >/dev/null
    cat >"$dir/log.yaml" <<EOF
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $WORK/synapse.log
loggers:
  synapse.storage.SQL: {level: INFO}
root: {level: INFO, handlers: [file]}
disable_existing_loggers: false
EOF
    limit='{per_second: 1000, burst_count: 1000}'
    cat >"$dir/overlay.yaml" <<EOF
listeners:
  - port: $SYNAPSE_FEDERATION_PORT
    bind_addresses: ['127.0.0.1']
    type: http
    tls: true
    resources: [{names: [federation, client], compress: false}]
  - port: $SYNAPSE_CLIENT_PORT
    bind_addresses: ['127.0.0.1']
    type: http
    tls: false
    resources: [{names: [client], compress: false}]
log_config: $dir/log.yaml
tls_certificate_path: $WORK/tls/synapse.crt
tls_private_key_path: $WORK/tls/synapse.key
federation_verify_certificates: true
federation_custom_ca_list: ['$WORK/tls/ca.crt']
ip_range_blacklist: []
ip_range_whitelist: ['127.0.0.0/8', '::1/128']
trusted_key_servers: []
suppress_key_server_warning: true
enable_registration: true
enable_registration_without_verification: true
registration_shared_secret: interop-shared-secret
bcrypt_rounds: 4
presence: {enabled: false}
# Synapse keeps a /sync answer for two minutes and gives it again for the same request: the
# flow's repeated initial syncs (waiting for an invite, a ban) must see what happened since.
caches: {sync_response_cache_duration: 0}
rc_message: $limit
rc_registration: $limit
rc_login: {address: $limit, account: $limit, failed_attempts: $limit}
rc_joins: {local: $limit, remote: $limit}
rc_joins_per_room: $limit
rc_invites: {per_room: $limit, per_user: $limit, per_issuer: $limit}
rc_room_creation: $limit
rc_admin_redaction: $limit
rc_federation: {window_size: 1000, sleep_limit: 1000, sleep_delay: 0, reject_limit: 1000, concurrent: 100}
EOF
    "$VENV/bin/python" -m synapse.app.homeserver -c "$dir/homeserver.yaml" -c "$dir/overlay.yaml" \
        >"$WORK/synapse.out" 2>&1 &
    SYNAPSE_PID=$!
    for _ in $(seq 1 300); do
        if curl -fsS "http://127.0.0.1:$SYNAPSE_CLIENT_PORT/_matrix/client/versions" >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$SYNAPSE_PID" 2>/dev/null; then
            log "Synapse exited:"
            tail -n 40 "$WORK/synapse.out" >&2
            show_logs
            return 1
        fi
        sleep 0.1
    done
    log "Synapse never answered"
    show_logs
    return 1
}

make_certificates

SYNAPSE_FEDERATION_PORT="$(free_port)"
SYNAPSE_CLIENT_PORT="$(free_port)"
SYNAPSE_NAME="localhost:$SYNAPSE_FEDERATION_PORT"
MYELIN_FEDERATION_PORT="$(free_port)"
MYELIN_NAME="localhost:$MYELIN_FEDERATION_PORT"

start_synapse

# Myelin named after its TLS listener's port, as Synapse is, so that neither needs well-known,
# SRV or an override to find the other; both resolve localhost, which is loopback, hence
# allow_private_addresses. A short backoff: one refused request must not silence Synapse for
# the steps after it.
export MYELIN_SERVER_NAME="$MYELIN_NAME"
export MYELIN_TLS__CERTIFICATE="$WORK/tls/myelin.crt"
export MYELIN_TLS__PRIVATE_KEY="$WORK/tls/myelin.key"
export MYELIN_FEDERATION__TRUSTED_CA_FILES="[\"$WORK/tls/ca.crt\"]"
export MYELIN_FEDERATION__VERIFY_CERTIFICATES=true
export MYELIN_FEDERATION__ALLOW_PRIVATE_ADDRESSES=true
export MYELIN_FEDERATION__BACKOFF_MIN_SECS=1
export MYELIN_FEDERATION__REQUEST_TIMEOUT_SECS=10
start_test_server "$BIN" "$WORK" "${MYELIN_SYNAPSE_LOG:-info,ruma_state_res=warn}" "$MYELIN_FEDERATION_PORT"

log "Synapse $SYNAPSE_NAME (client http://127.0.0.1:$SYNAPSE_CLIENT_PORT), Myelin $MYELIN_NAME (client $SERVER_URL)"
if ! "$VENV/bin/python" tests/interop/synapse/flow.py \
    --myelin "$SERVER_URL" --myelin-name "$MYELIN_NAME" \
    --synapse "http://127.0.0.1:$SYNAPSE_CLIENT_PORT" --synapse-name "$SYNAPSE_NAME"; then
    show_logs
    exit 1
fi
