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

LOG_TAG=run-join-large
. crates/bench/lib.sh

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
trap bench_cleanup EXIT
make_ca
MSC4243="$([ "$ACCOUNT_KEYS" = 1 ] && echo true || echo false)"

bench() { # label url pid scenario args...
    local label="$1" url="$2" pid="$3"
    shift 3
    "$BENCH_BIN" --url "$url" --shared-secret "$SECRET" --label "$label" --pid "$pid" \
        --time-limit-secs 900 --scenario "$@"
}

LOGS=()

start_myelin resident warn MYELIN_EXPERIMENTAL__MSC4243="$MSC4243"
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
            myelin) dir="b$round$mode" label=myelin-b-sqlite; start_myelin "$dir" "info,ruma_state_res=warn" MYELIN_EXPERIMENTAL__MSC4243="$MSC4243" ;;
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
