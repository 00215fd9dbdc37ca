#!/usr/bin/env bash
# Myelin against Synapse on loopback, measured by the same myelin-bench, alternating servers.
#
#   crates/bench/run-comparison.sh [OUT.jsonl]
#
# Starts, on 127.0.0.1 and in a temp dir under /var/tmp:
#   - a throwaway PostgreSQL cluster (fsync off, as scripts/test does) unless DBS=sqlite;
#   - Myelin (release binary) on SQLite and on PostgreSQL;
#   - Synapse from PyPI (a venv under /var/tmp, never in the repository) on SQLite and PostgreSQL,
#     every rc_* rate limit raised, the sync response cache off, logging at WARNING;
# then, for each round, each scenario runs against each server in turn (A B A B; in even rounds
# in the reverse order, B A B A), GAP seconds apart, and every run appends one JSON line to OUT
# (default /var/tmp/myelin-bench-<UTC time>.jsonl).
# Idle memory is read after start-up and a settle pause, before any load; after-load memory at
# the end.
#
# Environment knobs:
#   ROUNDS=2                     rounds of the whole scenario list
#   DBS="sqlite postgres"        which databases
#   SERVERS="myelin synapse"     which servers ("base" adds a second Myelin, MYELIN_BASE_BIN: a
#                                build of an earlier commit, to compare a change side by side)
#   SCENARIOS="register send-seq send-concurrent sync20 sync500 wakeup"
#                                the default list; also available: sync20m (initial sync of 20
#                                rooms of SYNC_MESSAGES messages each) and (issues 17 and 18,
#                                slower to set up, so not in the default): keys-claim keys-query
#                                media-upload media-download thumbnail, e.g.
#                                SCENARIOS="keys-claim keys-query media-upload media-download thumbnail"
#   SYNC500_ROUNDS=1             rounds in which sync500 runs (its set-up creates 500 rooms)
#   QUERY_ROUNDS=$ROUNDS         rounds in which keys-query runs (its set-up logs in 1,000 times:
#                                minutes on Synapse, whose bcrypt makes every login cost ~0.25 s)
#   MYELIN_BIN, BENCH_BIN        binaries (default: release builds in /var/tmp/myelin-target)
#   MYELIN_BASE_BIN              the earlier Myelin for SERVERS containing "base"
#   SYNAPSE_VENV                 venv with matrix-synapse and psycopg2 (created when missing)
#   SETTLE=10                    seconds of idle before the idle memory reading
#   GAP=2                        seconds of idle before each run (the last run's background
#                                work, such as a PostgreSQL checkpoint, settles first)
#   REGISTER_N=100 SEND_N=1000 CONC_CLIENTS=50 CONC_PER=20 SYNC_REPS=10 SYNC_BIG_ROOMS=500 WAKE_N=100
#   SYNC_MESSAGES=5              sync20m: messages the syncing user sends into each room
#   KEYS_USERS=10 KEYS_DEVICES=10 KEYS_REPS=20    keys-claim: users × devices, timed claims
#   QUERY_DEVICES=1000 QUERY_REPS=20              keys-query: devices of the queried user, queries
#   MEDIA_CLIENTS=16 MEDIA_PER=8 MEDIA_KIB=1024   media-upload/-download: clients × files each, size
#   THUMB_REPS=10                                 thumbnail: timed thumbnails of new sizes
#
# Synapse runs with `dynamic_thumbnails: true` (off by default: it then serves only the sizes it
# made at upload and never makes the size asked for), so that both servers make thumbnails of
# any size on request, as the thumbnail scenario measures.
set -euo pipefail

cd "$(dirname "$0")/../.."
REPO="$PWD"
TARGET="${CARGO_TARGET_DIR:-/var/tmp/myelin-target}"
MYELIN_BIN="${MYELIN_BIN:-$TARGET/release/myelin}"
BENCH_BIN="${BENCH_BIN:-$TARGET/release/myelin-bench}"
SYNAPSE_VENV="${SYNAPSE_VENV:-/var/tmp/myelin-bench-synapse-venv}"
ROUNDS="${ROUNDS:-2}"
DBS="${DBS:-sqlite postgres}"
SERVERS="${SERVERS:-myelin synapse}"
SCENARIOS="${SCENARIOS:-register send-seq send-concurrent sync20 sync500 wakeup}"
SYNC500_ROUNDS="${SYNC500_ROUNDS:-1}"
SETTLE="${SETTLE:-10}"
GAP="${GAP:-2}"
# Sizes (the defaults are the issue's).
REGISTER_N="${REGISTER_N:-100}" SEND_N="${SEND_N:-1000}" CONC_CLIENTS="${CONC_CLIENTS:-50}"
CONC_PER="${CONC_PER:-20}" SYNC_REPS="${SYNC_REPS:-10}" SYNC_MESSAGES="${SYNC_MESSAGES:-5}" SYNC_BIG_ROOMS="${SYNC_BIG_ROOMS:-500}"
WAKE_N="${WAKE_N:-100}"
KEYS_USERS="${KEYS_USERS:-10}" KEYS_DEVICES="${KEYS_DEVICES:-10}" KEYS_REPS="${KEYS_REPS:-20}"
QUERY_DEVICES="${QUERY_DEVICES:-1000}" QUERY_REPS="${QUERY_REPS:-20}" QUERY_ROUNDS="${QUERY_ROUNDS:-$ROUNDS}"
MEDIA_CLIENTS="${MEDIA_CLIENTS:-16}" MEDIA_PER="${MEDIA_PER:-8}" MEDIA_KIB="${MEDIA_KIB:-1024}"
THUMB_REPS="${THUMB_REPS:-10}"
SECRET="bench-shared-secret"
OUT="${1:-/var/tmp/myelin-bench-$(date -u +%Y%m%dT%H%M%SZ).jsonl}"

LOG_TAG=run-comparison
# log, free_port, start_postgres, wait_ready, bench_cleanup. This script's own start_myelin and
# start_synapse (below) replace the library's: plain, non-federating servers.
. crates/bench/lib.sh

if [ ! -x "$MYELIN_BIN" ] || [ ! -x "$BENCH_BIN" ]; then
    log "building release binaries into $TARGET"
    CARGO_TARGET_DIR="$TARGET" cargo build --release -p myelin -p myelin-bench
fi
case " $SERVERS " in *" synapse "*)
    if [ ! -x "$SYNAPSE_VENV/bin/python" ] || ! "$SYNAPSE_VENV/bin/python" -c 'import synapse, psycopg2' 2>/dev/null; then
        log "installing matrix-synapse into $SYNAPSE_VENV"
        python3 -m venv "$SYNAPSE_VENV"
        "$SYNAPSE_VENV/bin/pip" install -q matrix-synapse psycopg2-binary
    fi
    ;;
esac

WORK="$(mktemp -d /var/tmp/myelin-bench.XXXXXX)"
chmod 755 "$WORK"
trap bench_cleanup EXIT

declare -A URL PID
LABELS=()

start_myelin() { # db [label prefix] [binary]
    local db="$1" prefix="${2:-myelin}" bin="${3:-$MYELIN_BIN}"
    local name="$prefix-$1" dir="$WORK/$prefix-$1" port
    port="$(free_port)"
    mkdir -p "$dir"
    local env=(
        MYELIN_SERVER_NAME=localhost
        MYELIN_LISTEN__CLIENT="127.0.0.1:$port"
        MYELIN_LISTEN__FEDERATION="127.0.0.1:$(free_port)"
        MYELIN_REGISTRATION__SHARED_SECRET="$SECRET"
        MYELIN_RATE_LIMITS__ENABLED=false
        MYELIN_DATA_DIR="$dir"
        MYELIN_LOG__FILTER=warn
    )
    if [ "$db" = postgres ]; then
        env+=(MYELIN_DATABASE__URL="postgres://postgres@127.0.0.1:$PG_PORT/$prefix")
    fi
    (cd "$dir" && exec env "${env[@]}" "$bin" serve >"$dir/myelin.log" 2>&1) &
    PID[$name]=$!
    PIDS+=("${PID[$name]}")
    URL[$name]="http://127.0.0.1:$port"
    wait_ready "${URL[$name]}" "${PID[$name]}" "$name" "$dir/myelin.log" || exit 1
    LABELS+=("$name")
    log "$name on ${URL[$name]} (pid ${PID[$name]})"
}

start_base() { # db
    [ -x "${MYELIN_BASE_BIN:-}" ] || { log "SERVERS has base but MYELIN_BASE_BIN is not a binary"; exit 1; }
    start_myelin "$1" base "$MYELIN_BASE_BIN"
}

start_synapse() { # db
    local db="$1" name="synapse-$1" dir="$WORK/synapse-$1" port py="$SYNAPSE_VENV/bin/python"
    port="$(free_port)"
    mkdir -p "$dir"
    "$py" -m synapse.app.homeserver --server-name "localhost:$port" --config-path "$dir/homeserver.yaml" \
        --data-directory "$dir" --generate-config --report-stats=no >"$dir/generate.log" 2>&1
    # Quieter logging: INFO logs a line per request, which is not what we measure.
    sed -i 's/level: INFO/level: WARNING/' "$dir"/*.log.config
    {
        echo "listeners:"
        echo "  - {port: $port, bind_addresses: ['127.0.0.1'], type: http, tls: false, x_forwarded: false,"
        echo "     resources: [{names: [client], compress: false}]}"
        echo "registration_shared_secret: '$SECRET'"
        echo "enable_registration: true"
        echo "enable_registration_without_verification: true"
        echo "trusted_key_servers: []"
        echo "report_stats: false"
        echo "caches: {sync_response_cache_duration: 0}"
        # Thumbnails of any size on request, as Myelin makes them (see the header).
        echo "dynamic_thumbnails: true"
        for rc in rc_message rc_registration rc_registration_token_validity rc_login rc_admin_redaction \
            rc_joins rc_joins_per_room rc_3pid_validation rc_invites rc_third_party_invite rc_media_create \
            rc_room_creation rc_reports rc_presence rc_delayed_event_mgmt rc_send_to_device; do
            case "$rc" in
                rc_login) echo "rc_login: {address: {per_second: 10000, burst_count: 100000}, account: {per_second: 10000, burst_count: 100000}, failed_attempts: {per_second: 10000, burst_count: 100000}}" ;;
                rc_joins) echo "rc_joins: {local: {per_second: 10000, burst_count: 100000}, remote: {per_second: 10000, burst_count: 100000}}" ;;
                rc_invites) echo "rc_invites: {per_room: {per_second: 10000, burst_count: 100000}, per_user: {per_second: 10000, burst_count: 100000}, per_issuer: {per_second: 10000, burst_count: 100000}}" ;;
                rc_presence) echo "rc_presence: {per_user: {per_second: 10000, burst_count: 100000}}" ;;
                *) echo "$rc: {per_second: 10000, burst_count: 100000}" ;;
            esac
        done
        echo "rc_federation: {window_size: 1000, sleep_limit: 10000, sleep_delay: 0, reject_limit: 10000, concurrent: 1000}"
        if [ "$db" = postgres ]; then
            echo "database: {name: psycopg2, args: {user: postgres, database: synapse, host: 127.0.0.1, port: $PG_PORT, cp_min: 5, cp_max: 10}}"
        fi
    } >"$dir/overlay.yaml"
    (cd "$dir" && exec "$py" -m synapse.app.homeserver -c "$dir/homeserver.yaml" -c "$dir/overlay.yaml" \
        >"$dir/stdout.log" 2>&1) &
    PID[$name]=$!
    PIDS+=("${PID[$name]}")
    URL[$name]="http://127.0.0.1:$port"
    wait_ready "${URL[$name]}" "${PID[$name]}" "$name" "$dir/stdout.log" || { tail -30 "$dir"/*.log >&2; exit 1; }
    LABELS+=("$name")
    log "$name on ${URL[$name]} (pid ${PID[$name]})"
}

case " $DBS " in *" postgres "*) start_postgres myelin synapse base ;; esac
for db in $DBS; do
    for server in $SERVERS; do "start_$server" "$db"; done
done

bench() { # label tag scenario args...
    local label="$1" tag="$2" scenario="$3"
    shift 3
    log "$label $scenario $tag"
    "$BENCH_BIN" --url "${URL[$label]}" --shared-secret "$SECRET" --label "$label" --tag "$tag" \
        --pid "${PID[$label]}" --scenario "$scenario" "$@" >>"$OUT" ||
        log "$label $scenario failed (see the error field in $OUT)"
}

log "settling for $SETTLE s, then idle memory"
sleep "$SETTLE"
for label in "${LABELS[@]}"; do bench "$label" idle memory; done

for round in $(seq 1 "$ROUNDS"); do
    # Odd rounds take the servers in the order they started, even rounds in the reverse order:
    # a run follows whatever the run before it left behind (a PostgreSQL checkpoint, a busy
    # page cache), and no server should always be the one that comes first or after the same
    # neighbour.
    order=("${LABELS[@]}")
    if [ $((round % 2)) -eq 0 ]; then
        order=()
        for ((i = ${#LABELS[@]} - 1; i >= 0; i--)); do order+=("${LABELS[i]}"); done
    fi
    for scenario in $SCENARIOS; do
        for label in "${order[@]}"; do
            sleep "$GAP"
            case "$scenario" in
                register) bench "$label" "round$round" register --count "$REGISTER_N" ;;
                send-seq) bench "$label" "round$round" send-seq --count "$SEND_N" ;;
                send-concurrent) bench "$label" "round$round" send-concurrent --clients "$CONC_CLIENTS" --count "$CONC_PER" ;;
                sync20) bench "$label" "round$round" sync-initial --rooms 20 --reps "$SYNC_REPS" ;;
                sync20m)
                    bench "$label" "round$round" sync-initial --rooms 20 --messages "$SYNC_MESSAGES" \
                        --reps "$SYNC_REPS"
                    ;;
                sync500)
                    [ "$round" -le "$SYNC500_ROUNDS" ] || continue
                    bench "$label" "round$round" sync-initial --rooms "$SYNC_BIG_ROOMS" --reps 5
                    ;;
                wakeup) bench "$label" "round$round" wakeup --count "$WAKE_N" ;;
                keys-claim)
                    bench "$label" "round$round" keys-claim --users "$KEYS_USERS" \
                        --devices "$KEYS_DEVICES" --reps "$KEYS_REPS"
                    ;;
                keys-query)
                    [ "$round" -le "$QUERY_ROUNDS" ] || continue
                    bench "$label" "round$round" keys-query --devices "$QUERY_DEVICES" --reps "$QUERY_REPS"
                    ;;
                media-upload)
                    bench "$label" "round$round" media-upload --clients "$MEDIA_CLIENTS" \
                        --count "$MEDIA_PER" --file-kib "$MEDIA_KIB"
                    ;;
                media-download)
                    bench "$label" "round$round" media-download --clients "$MEDIA_CLIENTS" \
                        --count "$MEDIA_PER" --file-kib "$MEDIA_KIB"
                    ;;
                thumbnail) bench "$label" "round$round" thumbnail --reps "$THUMB_REPS" ;;
                *) log "unknown scenario $scenario" ;;
            esac
        done
    done
done

for label in "${LABELS[@]}"; do bench "$label" after-load memory; done
log "results in $OUT"
