#!/usr/bin/env bash
# Inbound PDUs over federation (issue 15): Myelin and Synapse side by side.
#
#   crates/bench/run-inbound.sh [OUT.jsonl]
#
# On 127.0.0.1, in a temp dir under /var/tmp, with TLS between servers from a private CA made
# here (certificate verification on everywhere):
#   - the servers under test, started once: Myelin (release build) and Synapse 1.163.0, on each
#     database of DBS (PostgreSQL: one throwaway cluster, fsync off, a database per server),
#     each named localhost:<its federation port>, trusting the CA, loopback allowed, rate
#     limits off or raised as far as Synapse goes;
#   - then ROUNDS times, the servers in turn (the order reversed every other round, so that a
#     drift in the machine's load hits all of them): myelin-bench's inbound scenario, whose fake
#     peer (a new server localhost:<free port> with its own signing key and a certificate of the
#     CA) joins a fresh public room of a local user through make_join/send_join and sends
#     WARMUP_TXNS untimed then TXNS timed transactions of 50 signed m.room.message PDUs, one at a
#     time; see crates/bench/src/inbound.rs for what is measured and checked.
# Every run appends one JSON line to OUT (default /var/tmp/myelin-inbound-<UTC>.jsonl); a
# failed run appends its line with an "error" field.
#
# Environment knobs:
#   ROUNDS=5 TXNS=40 WARMUP_TXNS=2 ROOM_VERSION=10
#   DBS="sqlite postgres"     databases
#   SERVERS="myelin synapse"  servers
#   MYELIN_LOG=warn SYNAPSE_LOG=WARNING   log levels (INFO logs a line per request)
#   MYELIN_BIN, BENCH_BIN     (default: release builds in $CARGO_TARGET_DIR or /var/tmp/myelin-target)
#   SYNAPSE_VENV              venv with matrix-synapse 1.163.0 (and psycopg2 for PostgreSQL;
#                             default /var/tmp/myelin-synapse-venv, installed as
#                             tests/interop/synapse/run.sh does when missing)
#   KEEP=1                    keep the temp dir (configs, databases, logs)
set -euo pipefail

cd "$(dirname "$0")/../.."
TARGET="${CARGO_TARGET_DIR:-/var/tmp/myelin-target}"
MYELIN_BIN="${MYELIN_BIN:-$TARGET/release/myelin}"
BENCH_BIN="${BENCH_BIN:-$TARGET/release/myelin-bench}"
SYNAPSE_VENV="${SYNAPSE_VENV:-/var/tmp/myelin-synapse-venv}"
SYNAPSE_VERSION=1.163.0
ROUNDS="${ROUNDS:-5}"
TXNS="${TXNS:-40}"
WARMUP_TXNS="${WARMUP_TXNS:-2}"
ROOM_VERSION="${ROOM_VERSION:-10}"
DBS="${DBS:-sqlite postgres}"
SERVERS="${SERVERS:-myelin synapse}"
MYELIN_LOG="${MYELIN_LOG:-warn}"
SYNAPSE_LOG="${SYNAPSE_LOG:-WARNING}"
SECRET="bench-shared-secret"
OUT="${1:-/var/tmp/myelin-inbound-$(date -u +%Y%m%dT%H%M%SZ).jsonl}"
OUT="$(realpath -m "$OUT")"

LOG_TAG=run-inbound
. crates/bench/lib.sh

if [ ! -x "$MYELIN_BIN" ] || [ ! -x "$BENCH_BIN" ]; then
    log "building release binaries into $TARGET"
    CARGO_TARGET_DIR="$TARGET" cargo build --release -p myelin -p myelin-bench
fi
case " $SERVERS " in *" synapse "*)
    if ! "$SYNAPSE_VENV/bin/python" -c "import sys, importlib.metadata as m; sys.exit(0 if m.version('matrix-synapse') == '$SYNAPSE_VERSION' else 1)" 2>/dev/null; then
        log "installing matrix-synapse $SYNAPSE_VERSION into $SYNAPSE_VENV"
        python3 -m venv "$SYNAPSE_VENV"
        "$SYNAPSE_VENV/bin/pip" install -q "matrix-synapse==$SYNAPSE_VERSION"
    fi
    case " $DBS " in *" postgres "*)
        "$SYNAPSE_VENV/bin/python" -c 'import psycopg2' 2>/dev/null ||
            "$SYNAPSE_VENV/bin/pip" install -q psycopg2-binary ;;
    esac ;;
esac

WORK="$(mktemp -d /var/tmp/myelin-inbound.XXXXXX)"
trap bench_cleanup EXIT
make_ca
make_certificate peer
case " $DBS " in *" postgres "*) start_postgres myelin synapse ;; esac

declare -A URLS PIDS_OF NAMES FEDS
LABELS=()
for db in $DBS; do
    for server in $SERVERS; do
        label="$server-$db"
        case "$server-$db" in
            myelin-sqlite) start_myelin "$label" "$MYELIN_LOG" ;;
            myelin-postgres)
                start_myelin "$label" "$MYELIN_LOG" \
                    MYELIN_DATABASE__URL="postgres://postgres@127.0.0.1:$PG_PORT/myelin" ;;
            synapse-sqlite)
                SYNAPSE_OVERLAY="federation_rr_transactions_per_room_per_second: 10000" \
                    start_synapse "$label" "$SYNAPSE_LOG" ;;
            synapse-postgres)
                SYNAPSE_OVERLAY="federation_rr_transactions_per_room_per_second: 10000
database: {name: psycopg2, args: {user: postgres, database: synapse, host: 127.0.0.1, port: $PG_PORT, cp_min: 5, cp_max: 10}}" \
                    start_synapse "$label" "$SYNAPSE_LOG" ;;
            *) log "unknown server or database $server-$db"; exit 1 ;;
        esac
        URLS[$label]="$URL" PIDS_OF[$label]="$PID" NAMES[$label]="$NAME" FEDS[$label]="$FED_PORT"
        LABELS+=("$label")
    done
done

for round in $(seq 1 "$ROUNDS"); do
    order=("${LABELS[@]}")
    if [ $((round % 2)) = 0 ]; then
        order=()
        for ((i = ${#LABELS[@]} - 1; i >= 0; i--)); do order+=("${LABELS[$i]}"); done
    fi
    for label in "${order[@]}"; do
        log "round $round: $label (load average $(cut -d' ' -f1-3 /proc/loadavg))"
        "$BENCH_BIN" --url "${URLS[$label]}" --shared-secret "$SECRET" --label "$label" \
            --pid "${PIDS_OF[$label]}" --tag "round$round" --time-limit-secs 1800 \
            --scenario inbound --room-version "$ROOM_VERSION" --runs 1 \
            --txns "$TXNS" --warmup-txns "$WARMUP_TXNS" \
            --peer-port "$(free_port)" --peer-cert "$WORK/peer.crt" --peer-key "$WORK/peer.key" \
            --ca "$WORK/ca.crt" --target-name "${NAMES[$label]}" \
            --target-addr "127.0.0.1:${FEDS[$label]}" >>"$OUT" ||
            { log "$label round $round failed (see $OUT and $WORK/$label)"; tail -20 "$WORK/$label/server.log" >&2 || true; }
        tail -n 1 "$OUT" | python3 -c 'import json, sys
l = json.load(sys.stdin)
r = (l.get("per_run") or [{}])[0]
print("  ", l["server"], "visible", r.get("pdus_per_second_visible"), "PDUs/s; answered",
      r.get("pdus_per_second_answered"), "PDUs/s;", l.get("error", ""))' >&2
    done
done
log "results in $OUT"
