#!/usr/bin/env python3
"""Summarise myelin-bench JSON lines into a Markdown table: per scenario and server, the
median over runs of each run's figure, and Myelin/Synapse ratios per database.

    python3 crates/bench/summarize.py RESULTS.jsonl [MORE.jsonl ...]
"""
import json
import statistics
import sys
from collections import defaultdict


def rooms_of(r):
    """How sync-initial's rooms are named: their count, and their messages when they have some."""
    messages = r.get("messages_per_room", 0)
    if messages:
        return f"{r['rooms']} rooms of {messages} messages"
    return f"{r['rooms']} rooms"


def key_and_value(r):
    """(row name, figure, unit, lower_is_better) for one run, or None."""
    s = r["scenario"]
    if s == "memory":
        return (f"RSS {r['tag']}", r["rss_kib"] / 1024, "MiB", True)
    if s == "register":
        return ("registration, median", r["latency"]["median_ms"], "ms", True)
    if s == "send-seq":
        return ("sequential send, median", r["latency"]["median_ms"], "ms", True)
    if s == "send-concurrent":
        return (f"concurrent send ({r['clients']} clients), throughput", r["events_per_second"], "events/s", False)
    if s == "sync-initial":
        return (f"initial sync, {rooms_of(r)}, median", r["latency"]["median_ms"], "ms", True)
    if s == "wakeup":
        return ("wake-up latency, median", r["latency"]["median_ms"], "ms", True)
    if s == "join-remote":
        mode = "lazy-loading" if r["lazy_load_members"] else "full-state"
        return (f"remote join to room in /sync ({mode} sync)", r["join_to_sync_s"], "s", True)
    if s == "keys-claim":
        return (f"/keys/claim of {r['devices']} devices, median", r["latency"]["median_ms"], "ms", True)
    if s == "keys-query":
        return (f"/keys/query of {r['devices']} devices, median", r["latency"]["median_ms"], "ms", True)
    if s == "media-upload":
        return (f"media upload ({r['clients']} clients, {r['file_bytes'] // 1024} KiB files), throughput",
                r["mib_per_second"], "MiB/s", False)
    if s == "media-download":
        return (f"media download ({r['clients']} clients, {r['file_bytes'] // 1024} KiB files), throughput",
                r["mib_per_second"], "MiB/s", False)
    if s == "thumbnail":
        return (f"thumbnail of a new size ({r['source']}), median", r["latency"]["median_ms"], "ms", True)
    return None


def extra_rows(r):
    s = r["scenario"]
    out = []
    if s == "send-seq":
        out.append(("sequential send, p95", r["latency"]["p95_ms"], "ms", True))
    if s == "register":
        out.append(("registrations/s (sequential)", r["per_second"], "/s", False))
    if s == "wakeup":
        out.append(("wake-up: the send alone, median", r["send_latency"]["median_ms"], "ms", True))
    if s == "sync-initial":
        out.append((f"initial sync, {rooms_of(r)}, p95", r["latency"]["p95_ms"], "ms", True))
    if s == "join-remote":
        mode = "lazy-loading" if r["lazy_load_members"] else "full-state"
        out.append((f"remote join: the /join request alone ({mode} sync)", r["join_request_s"], "s", True))
    if s in ("keys-claim", "keys-query"):
        what = "claim" if s == "keys-claim" else "query"
        out.append((f"/keys/{what} of {r['devices']} devices, p95", r["latency"]["p95_ms"], "ms", True))
        if r["latency"]["count"]:
            out.append((f"/keys/{what} of {r['devices']} devices, response size", r["response_bytes"] / 1024, "KiB", True))
    if s in ("media-upload", "media-download"):
        what = "upload" if s == "media-upload" else "download"
        out.append((f"media {what}: one file, median", r["latency"]["median_ms"], "ms", True))
        out.append((f"media {what}: one file, p95", r["latency"]["p95_ms"], "ms", True))
    if s == "thumbnail":
        out.append((f"thumbnail of a new size ({r['source']}), p95", r["latency"]["p95_ms"], "ms", True))
        out.append((f"upload of the {r['source']} ({r['source_bytes'] / 2**20:.1f} MiB)", r["upload_ms"], "ms", True))
    return out


def server_of(r):
    """The server column: the joining Myelin of run-join-large.sh (myelin-b-<db>, beside the
    resident myelin-a-<db>) is compared with Synapse as myelin-<db>."""
    return r["server"].replace("myelin-b-", "myelin-", 1)


def lines(paths):
    for path in paths:
        yield from open(path)


def main(paths):
    runs = defaultdict(list)  # (row, server) -> [values]
    units = {}
    order = []
    errors = []
    for line in lines(paths):
        line = line.strip()
        if not line:
            continue
        r = json.loads(line)
        if "error" in r:
            errors.append(f"{r['server']} {r['scenario']} {r['tag']}: {r['error']}")
            continue
        kv = key_and_value(r)
        if kv is None:
            continue
        for row, value, unit, lower in [kv] + extra_rows(r):
            if value is None:  # e.g. no timed request finished within the time limit
                continue
            if row not in units:
                order.append(row)
            units[row] = (unit, lower)
            runs[(row, server_of(r))].append(value)
    servers = sorted({srv for (_, srv) in runs})
    dbs = sorted({srv.split("-", 1)[1] for srv in servers if "-" in srv})
    header = ["measure"] + servers + [f"Synapse/Myelin ({db})" for db in dbs]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in order:
        unit, lower = units[row]
        cells = [f"{row} ({unit})"]
        med = {}
        for srv in servers:
            vals = runs.get((row, srv), [])
            if vals:
                med[srv] = statistics.median(vals)
                cells.append(f"{med[srv]:.3g} (n={len(vals)})" if len(vals) > 1 else f"{med[srv]:.3g}")
            else:
                cells.append("–")
        for db in dbs:
            m, s = med.get(f"myelin-{db}"), med.get(f"synapse-{db}")
            if m and s:
                # Always "how many times better Myelin is": >1 means Myelin wins.
                ratio = s / m if lower else m / s
                cells.append(f"{ratio:.2f}×")
            else:
                cells.append("–")
        print("| " + " | ".join(cells) + " |")
    if errors:
        print("\nErrors:")
        for e in errors:
            print(f"- {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
