#!/usr/bin/env python3
"""Helpers for complement/run.sh (standard library only).

  patch-mains DIR                  make every DIR/**/main_test.go pass WithDeployment(myelindeploy.Deploy)
  stream RAW                       append `go test -json` from stdin to RAW, print one line per finished top-level test
  reduce RAW OUT                   write sorted {"Action","Test"} lines (pass/fail/skip) to OUT; a test run more
                                   than once (retried) passes if any attempt passed
  counts FILE                      print pass/fail/skip counts of a results file
  pending RAW PKG LIST SKIP_REGEX      after a crashed package run: append fail events for tests that started and never
                                   ended, print the LIST tests (not matching SKIP_REGEX) that never started
  causes RAW                       group the failing top-level tests by their first failing request or message
  report FILE RAW                  the generated part of docs/complement.md: counts, passing top-level tests and
                                   failing ones by cause, as Markdown
  flaky RAW                        name the top-level tests that failed and then passed when retried
  check BASELINE FRESH SELECTED SKIP_REGEX ELSEWHERE REGRESSED
                                   exit 1 when a baseline "pass" line in scope is not a "pass" in FRESH, writing the
                                   top-level names to REGRESSED; in scope: its top-level test is listed in SELECTED,
                                   not in ELSEWHERE (names defined in packages the run left out) and not matched by SKIP_REGEX
"""

import json
import pathlib
import re
import sys

IMPORT = '"github.com/matrix-org/complement"'
OUR_IMPORT = '"github.com/matrix-org/complement/myelindeploy"'
MAIN_CALL = re.compile(r'complement\.TestMain\(m, ("[^"]+")\)')


def patch_mains(root):
    files = sorted(pathlib.Path(root).rglob("main_test.go"))
    if not files:
        sys.exit(f"patch-mains: no main_test.go under {root}")
    for path in files:
        text = path.read_text()
        new, calls = MAIN_CALL.subn(
            r"complement.TestMain(m, \1, complement.WithDeployment(myelindeploy.Deploy), "
            r"complement.WithCleanup(myelindeploy.Cleanup))",
            text,
        )
        if calls != 1 or IMPORT not in new:
            sys.exit(f"patch-mains: {path} does not look like Complement's main_test.go any more; update tools/results.py")
        new = new.replace(IMPORT, IMPORT + "\n\t" + OUR_IMPORT, 1)
        path.write_text(new)
    print(f"complement/run.sh: patched {len(files)} main_test.go files")


def events(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def stream(raw):
    with open(raw, "a", encoding="utf-8") as out:
        for line in sys.stdin:
            out.write(line)
            out.flush()
            stripped = line.strip()
            if not stripped.startswith("{"):
                print(stripped, flush=True)
                continue
            try:
                ev = json.loads(stripped)
            except json.JSONDecodeError:
                print(stripped, flush=True)
                continue
            action, test, pkg = ev.get("Action"), ev.get("Test"), ev.get("Package", "")
            if action == "build-output":
                print(ev.get("Output", "").rstrip("\n"), flush=True)
            elif action in ("pass", "fail", "skip") and test and "/" not in test:
                print(f"  {action.upper():4} {test} ({ev.get('Elapsed', 0):.1f}s)", flush=True)
            elif action in ("pass", "fail", "skip") and not test:
                print(f"{action.upper()} package {pkg} ({ev.get('Elapsed', 0):.0f}s)", flush=True)
            elif action == "output" and not test and ev.get("Output", "").startswith(("panic:", "FAIL\t", "# ")):
                print(ev["Output"].rstrip("\n"), flush=True)


def pending(raw, package, listfile, skip_regex):
    listed = [l.strip() for l in pathlib.Path(listfile).read_text().splitlines() if l.strip()]
    skip = re.compile(skip_regex)
    started, ended = {}, set()
    for ev in events(raw):
        test = ev.get("Test")
        if not test or ev.get("Package") != package:
            continue
        if ev.get("Action") == "run":
            started[(ev.get("Package"), test)] = ev
        elif ev.get("Action") in ("pass", "fail", "skip"):
            ended.add((ev.get("Package"), test))
    unfinished = [k for k in started if k not in ended]
    if unfinished:
        with open(raw, "a", encoding="utf-8") as f:
            for pkg, test in unfinished:
                f.write(json.dumps({"Action": "output", "Package": pkg, "Test": test,
                                    "Output": "complement/run.sh: the test binary died while this test ran\n"}) + "\n")
                f.write(json.dumps({"Action": "fail", "Package": pkg, "Test": test, "Elapsed": 0}) + "\n")
                if "/" not in test:
                    print(f"  FAIL {test} (the test binary died while it ran)", file=sys.stderr)
    started_tops = {test for _, test in started}
    print(" ".join(t for t in listed if t not in started_tops and not skip.search(t)))


def load(path):
    entries = set()
    p = pathlib.Path(path)
    if not p.exists():
        return entries
    for line in p.read_text().splitlines():
        line = line.strip()
        if line:
            d = json.loads(line)
            entries.add((d["Action"], d["Test"]))
    return entries


def dump(entries, path):
    lines = [json.dumps({"Action": a, "Test": t}, separators=(",", ":")) for a, t in sorted(entries, key=lambda e: (e[1], e[0]))]
    pathlib.Path(path).write_text("".join(l + "\n" for l in lines))


def outcomes(raw):
    """(package, test) -> set of its outcomes over every attempt in RAW."""
    seen = {}
    for ev in events(raw):
        if ev.get("Action") in ("pass", "fail", "skip") and ev.get("Test"):
            seen.setdefault((ev.get("Package", ""), ev["Test"]), set()).add(ev["Action"])
    return seen


def final(actions):
    # A retried test counts as passing when any attempt passed.
    return "pass" if "pass" in actions else "fail" if "fail" in actions else "skip"


def reduce(raw, out):
    dump({(final(actions), test) for (_, test), actions in outcomes(raw).items()}, out)


def flaky(raw):
    tops = sorted({test for (_, test), actions in outcomes(raw).items()
                   if "/" not in test and {"pass", "fail"} <= actions})
    if tops:
        print(f"complement/run.sh: passed only when retried (flaky): {' '.join(tops)}")


def counts_of(entries):
    c = {"pass": 0, "fail": 0, "skip": 0}
    for a, _ in entries:
        c[a] = c.get(a, 0) + 1
    return c


def counts(path):
    entries = load(path)
    c = counts_of(entries)
    top = counts_of({e for e in entries if "/" not in e[1]})
    print(f"complement: pass {c['pass']}, fail {c['fail']}, skip {c['skip']} (tests and subtests); "
          f"top-level tests: pass {top['pass']}, fail {top['fail']}, skip {top['skip']}")


def names(path):
    p = pathlib.Path(path)
    return {l.strip() for l in p.read_text().splitlines() if l.strip()} if p.exists() else set()


def check(baseline, fresh, selected, skip_regex, elsewhere, regressed_out):
    base = load(baseline)
    new = load(fresh)
    listed = names(selected)
    # Results carry no package, so a name also defined in a package this run left out (TestSync
    # is in csapi and msc4222) cannot be told apart: such names are not checked in this run.
    ambiguous = listed & names(elsewhere)
    skip = re.compile(skip_regex)
    for t in sorted(ambiguous):
        print(f"complement --check: not checked: {t} is also a test of a package this run left out")

    def in_scope(test):
        top = test.split("/", 1)[0]
        return top in listed and top not in ambiguous and not skip.search(top)

    defended = sorted(t for a, t in base if a == "pass" and in_scope(t))
    new_passes = {t for a, t in new if a == "pass"}
    regressions = [t for t in defended if t not in new_passes]
    base_passes = {t for a, t in base if a == "pass"}
    improvements = sorted(t for t in new_passes if t not in base_passes)
    if not defended:
        print("complement --check: the baseline has no passing test among the tests this run selected; nothing to defend.")
    for t in improvements:
        print(f"complement --check: newly passing (not yet in the baseline): {t}")
    pathlib.Path(regressed_out).write_text("".join(sorted({t.split("/", 1)[0] + "\n" for t in regressions})))
    if regressions:
        for t in regressions:
            outcome = "fail" if ("fail", t) in new else "skip" if ("skip", t) in new else "missing"
            print(f"complement --check: REGRESSION: {t} passed in the baseline, now {outcome}")
        print(f"complement --check: FAILED: {len(regressions)} of the {len(defended)} baseline passes in scope no longer pass")
        sys.exit(1)
    print(f"complement --check: OK: all {len(defended)} baseline passes in scope still pass"
          + (f"; {len(improvements)} newly passing (run complement/run.sh to update the baseline)" if improvements else ""))


# Complement prints its failures in red (ct.Errorf, ct.Fatalf); plain t.Errorf lines are caught
# by their wording.
FAILURE_LINE = re.compile(r"\x1b\[31m|returned non-2xx|timed out|failed|Fatal|[Ee]rror|[Ee]xpected|wanted|got |want ")
BYTES = re.compile(r"\[((?:\d{1,3} )+\d{1,3})\]")
ID_SEGMENT = re.compile(r"/(?:[!@#$+][^/]*|[^/]*%(?:3A|21|40|23|24)[^/]*)", re.IGNORECASE)


def cause_of(line):
    """A short, ID-free description of one failure line."""
    line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
    # gomatrixserverlib prints response bodies as Go byte slices: contents=[123 34 ...].
    line = BYTES.sub(lambda m: bytes(int(b) & 0xFF for b in m.group(1).split()).decode("utf-8", "replace"), line)
    line = re.sub(r"^\S+\.go:\d+: ", "", line)
    m = re.search(r"(GET|POST|PUT|DELETE) https?://[^/\s]+(/\S*) returned non-2xx code: (\d+)", line)
    if m:
        path = ID_SEGMENT.sub("/{id}", m.group(2).split("?")[0])
        e = re.search(r'"errcode":\s*"([A-Z_]+)"', line)
        return f"{m.group(1)} {path} -> {m.group(3)}" + (f" {e.group(1)}" if e else "")
    line = re.sub(r"![A-Za-z0-9_-]+:\S+|@[^\s:]+:\S+|\$[A-Za-z0-9_-]+", "{id}", line)
    line = re.sub(r"\d+(\.\d+)?(ms|s|µs)\b", "N", line)
    return line[:140]


def cause_groups(raw):
    """Failing top-level tests of RAW under their first failing request or message, largest
    group first: [(cause, [test, ...]), ...]."""
    failed = set()
    first = {}
    for ev in events(raw):
        test = ev.get("Test")
        if not test:
            continue
        top = test.split("/", 1)[0]
        if ev.get("Action") == "fail" and "/" not in test:
            failed.add(top)
        if ev.get("Action") == "output" and top not in first:
            out = ev.get("Output", "")
            if FAILURE_LINE.search(out) and "myelindeploy" not in out and "--- FAIL" not in out and "=== " not in out:
                first[top] = cause_of(out)
    groups = {}
    for top in sorted(failed):
        groups.setdefault(first.get(top, "(no failure message)"), []).append(top)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def causes(raw):
    for cause, tests in cause_groups(raw):
        print(f"{len(tests):4}  {cause}")
        print("      " + " ".join(tests))


def report(path, raw):
    entries = load(path)
    c = counts_of(entries)
    top_entries = {e for e in entries if "/" not in e[1]}
    top = counts_of(top_entries)
    # A top-level test is listed as failing only if it failed in the results file (a retry that
    # passed counts as passing there).
    failing = {t for a, t in top_entries if a == "fail"}
    print("| | pass | fail | skip |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| tests and subtests (the entries of `results.jsonl`) | {c['pass']} | {c['fail']} | {c['skip']} |")
    print(f"| top-level tests | {top['pass']} | {top['fail']} | {top['skip']} |")
    print()
    passing = sorted(t for a, t in top_entries if a == "pass")
    print(f"Top-level tests that pass ({len(passing)}): " + ", ".join(f"`{t}`" for t in passing) + ".")
    print()
    print("| first failing request or check | tests | which |")
    print("| --- | ---: | --- |")
    for cause, tests in cause_groups(raw):
        tests = [t for t in tests if t in failing]
        if tests:
            cell = cause.replace("|", "\\|")
            print(f"| {cell} | {len(tests)} | {' '.join(tests)} |")


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "patch-mains" and len(args) == 1:
        patch_mains(*args)
    elif cmd == "stream" and len(args) == 1:
        stream(*args)
    elif cmd == "reduce" and len(args) == 2:
        reduce(*args)
    elif cmd == "counts" and len(args) == 1:
        counts(*args)
    elif cmd == "pending" and len(args) == 4:
        pending(*args)
    elif cmd == "causes" and len(args) == 1:
        causes(*args)
    elif cmd == "report" and len(args) == 2:
        report(*args)
    elif cmd == "flaky" and len(args) == 1:
        flaky(*args)
    elif cmd == "check" and len(args) == 6:
        check(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
