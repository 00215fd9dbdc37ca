#!/usr/bin/env bash
# Runs the Complement suite (github.com/matrix-org/complement) against Myelin processes; no Docker.
#
#   complement/run.sh                 full run; writes the baseline complement/results.jsonl
#   complement/run.sh -run REGEX      only top-level tests matching REGEX (as `go test -run`);
#                                     results go to complement/.work/results.jsonl
#   complement/run.sh --check [...]   also compare with the committed baseline: exit 1 when a
#                                     test that passed there now fails, is skipped or is missing
#   complement/run.sh --ci            --check on the whole suite (what .ci/run runs)
#   --packages "./tests/csapi ..."    restrict the packages (default: ./tests ./tests/csapi ./tests/msc*)
#
# Exit status: 0 fine; 1 regressions against the baseline (with --check) or a failed step,
# including a Complement module that cannot be had (nothing tested is a failure); 2 bad usage.
#
# It builds Myelin (cargo build -p myelin), downloads the Complement version pinned in
# complement/go.mod with `go mod download` (first from the file-based module proxy in
# ../shared/goproxy, which holds exactly the pinned version, then the machine's GOPROXY; the go
# command checks the zip against complement/go.sum either way), copies it into the git-ignored
# complement/.work/src, drops in myelindeploy/ and makes every test package's TestMain pass
# complement.WithDeployment(myelindeploy.Deploy). Nothing from Complement is committed.
# Environment: CARGO_TARGET_DIR (default /var/tmp/myelin-target), MYELIN_COMPLEMENT_BINARY (use
# this binary, skip the build), COMPLEMENT_* (passed on to Complement, e.g. COMPLEMENT_DEBUG=1),
# GOPROXY/GOFLAGS as usual for the go command.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
work="$here/.work"
baseline="$here/results.jsonl"
tools="$here/tools/results.py"

# The tests that need Docker blueprints (OldDeploy with a prebuilt image): never run here.
skip_tests='^(TestJoinFederatedRoomFromApplicationServiceBridgeUser|TestJumpToDateEndpoint|TestRoomSpecificUsernameChange|TestRoomSpecificUsernameAtJoin)$'

check=0
run_regex=""
packages=""
timeout="${COMPLEMENT_GO_TEST_TIMEOUT:-180m}"
while [ $# -gt 0 ]; do
    case "$1" in
        --check) check=1 ;;
        # CI defends every pass of the baseline: the whole suite, checked.
        --ci) check=1 ;;
        -run|--run) shift; run_regex="${1:?-run needs a regex}" ;;
        --packages) shift; packages="${1:?--packages needs a list}" ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "complement/run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

started=$(date +%s)
mkdir -p "$work"

# 1. The pinned Complement module, from the Go module proxy.
version="$(sed -n 's#^[[:space:]]*require github.com/matrix-org/complement \(v[^ ]*\).*#\1#p; s#^[[:space:]]*github.com/matrix-org/complement \(v[^ ]*\).*#\1#p' "$here/go.mod" | head -n1)"
echo "complement/run.sh: Complement $version"
# The file-based proxy in shared/ (beside the checkout, and beside CI's fresh clone) comes first.
shared_proxy="$repo/../shared/goproxy"
if [ -d "$shared_proxy" ]; then
    GOPROXY="file://$(cd "$shared_proxy" && pwd),$(go env GOPROXY)"
    export GOPROXY
fi
if ! info="$(cd "$here" && go mod download -json "github.com/matrix-org/complement@$version" 2>&1)" \
    || ! src="$(printf '%s' "$info" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["Dir"]) if d.get("Dir") and not d.get("Error") else sys.exit(1)' 2>/dev/null)"; then
    echo "complement/run.sh: FAILED: the pinned Complement module github.com/matrix-org/complement@$version cannot be downloaded (GOPROXY=$GOPROXY):" >&2
    printf '%s\n' "$info" | sed 's/^/    /' >&2
    exit 1
fi

# 2. Myelin.
if [ -n "${MYELIN_COMPLEMENT_BINARY:-}" ]; then
    binary="$MYELIN_COMPLEMENT_BINARY"
else
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/myelin-target}"
    echo "complement/run.sh: cargo build -p myelin (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$repo" && cargo build --quiet -p myelin)
    binary="$CARGO_TARGET_DIR/debug/myelin"
fi
[ -x "$binary" ] || { echo "complement/run.sh: no Myelin binary at $binary" >&2; exit 1; }

# 3. A patched, git-ignored copy of the module: our deployer in, WithDeployment in every TestMain.
rm -rf "$work/src"
cp -R "$src" "$work/src"
chmod -R u+w "$work/src"
mkdir -p "$work/src/myelindeploy"
for f in "$here"/myelindeploy/*.go; do
    case "$f" in *_test.go) continue ;; esac
    cp "$f" "$work/src/myelindeploy/"
done
python3 "$tools" patch-mains "$work/src/tests"

# 4. Run, one package at a time.
all_packages="./tests ./tests/csapi $(cd "$work/src" && ls -d tests/msc* | sed 's#^#./#' | tr '\n' ' ' | sed 's/ $//')"
packages="${packages:-$all_packages}"
go_args=(-json -p 1 -count=1 -vet=off -timeout "$timeout" -skip "$skip_tests")
# Only a full run without --check writes the committed baseline.
out="$work/results.jsonl"
if [ -z "$run_regex" ] && [ "$packages" = "$all_packages" ] && [ "$check" = 0 ]; then
    out="$baseline"
fi
export COMPLEMENT_BASE_IMAGE="$binary"
export COMPLEMENT_SPAWN_HS_TIMEOUT_SECS="${COMPLEMENT_SPAWN_HS_TIMEOUT_SECS:-30}"
export MYELIN_COMPLEMENT_BINARY="$binary"

# Per package: the top-level tests this run selects (so that --check knows which baseline lines
# are in scope), then `go test`. When a package's test binary dies (a test panics, for example by
# failing in a goroutine after it ended, or the -timeout fires), the tests that were running are
# recorded as failed and the package is run again with the tests that never started, so one crash
# does not hide the rest of the package.
: > "$work/selected.txt"
: > "$work/go-test.json"
echo "complement/run.sh: go test, one package at a time: $packages${run_regex:+ (-run '$run_regex')}; skipping the Docker-blueprint tests"
for pkg in $packages; do
    if ! (cd "$work/src" && go test -vet=off -list "${run_regex:-.}" "$pkg") > "$work/list.txt" 2>&1; then
        cat "$work/list.txt" >&2
        echo "complement/run.sh: listing the tests of $pkg failed (above)" >&2
        exit 1
    fi
    grep -E '^Test' "$work/list.txt" | grep -Ev "$skip_tests" | sort -u > "$work/list-pkg.txt" || true
    cat "$work/list-pkg.txt" >> "$work/selected.txt"
    cp "$work/list-pkg.txt" "$work/list-$(tr '/.' '__' <<< "$pkg").txt"
    pkg_regex="$run_regex"
    previous=""
    for attempt in $(seq 1 100); do
        if [ "$attempt" -gt 1 ]; then
            echo "complement/run.sh: go test $pkg -run '$pkg_regex' (attempt $attempt)"
        fi
        set +e
        (cd "$work/src" && go test "${go_args[@]}" ${pkg_regex:+-run "$pkg_regex"} "$pkg") \
            | python3 "$tools" stream "$work/go-test.json"
        set -e
        pending="$(python3 "$tools" pending "$work/go-test.json" "github.com/matrix-org/complement/${pkg#./}" "$work/list-pkg.txt" "$skip_tests")"
        [ -z "$pending" ] && break
        if [ "$pending" = "$previous" ]; then
            echo "complement/run.sh: $pkg: no test started in the last attempt; giving up on: $pending" >&2
            break
        fi
        previous="$pending"
        echo "complement/run.sh: $pkg stopped early; running its $(wc -w <<< "$pending") tests that did not start"
        pkg_regex="^($(tr ' ' '|' <<< "$pending"))\$"
    done
done
sort -u -o "$work/selected.txt" "$work/selected.txt"
echo "complement/run.sh: $(wc -l < "$work/selected.txt") top-level tests selected"

python3 "$tools" reduce "$work/go-test.json" "$out"
[ "$out" = "$baseline" ] && cp "$out" "$work/results.jsonl"
python3 "$tools" counts "$out"
echo "complement/run.sh: results in ${out#"$repo"/}; raw go test -json output in ${work#"$repo"/}/go-test.json; took $(( $(date +%s) - started )) s"

if [ "$check" = 1 ]; then
    # Top-level test names defined in the packages this run left out (see `check` in results.py).
    : > "$work/elsewhere.txt"
    for dir in $all_packages; do
        case " $packages " in *" $dir "*) continue ;; esac
        sed -n 's/^func \(Test[A-Za-z0-9_]*\)(.*/\1/p' "$work/src/${dir#./}"/*_test.go >> "$work/elsewhere.txt"
    done
    check_args=("$baseline" "$out" "$work/selected.txt" "$skip_tests" "$work/elsewhere.txt" "$work/regressed.txt")
    if ! python3 "$tools" check "${check_args[@]}"; then
        # Retry the regressed tests once, in the packages that have them: timing-sensitive tests
        # fail now and then on a loaded machine. A test that passes on the retry counts as passing.
        echo "complement/run.sh: retrying the regressed tests once"
        for pkg in $packages; do
            retry="$(grep -Fxf "$work/regressed.txt" "$work/list-$(tr '/.' '__' <<< "$pkg").txt" | tr '\n' '|' | sed 's/|$//')" || true
            [ -n "$retry" ] || continue
            set +e
            (cd "$work/src" && go test "${go_args[@]}" -run "^($retry)\$" "$pkg") \
                | python3 "$tools" stream "$work/go-test.json"
            set -e
        done
        python3 "$tools" reduce "$work/go-test.json" "$out"
        python3 "$tools" flaky "$work/go-test.json"
        python3 "$tools" counts "$out"
        python3 "$tools" check "${check_args[@]}"
    fi
fi
