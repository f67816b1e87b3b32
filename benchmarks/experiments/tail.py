"""What a latency tail is made of: the slowest requests of a load-generator trace, by phase.

`python -m benchmarks.loadgen ... --trace trace.jsonl` writes one line per measured request
with the Server-Timing entries our service sends (app, decode, queue, infer). This prints, per
concurrency, the mean of each phase over the slowest `--share` of requests beside the same for
the requests around the median, so a p99 reads as "waited in the queue" (batching policy),
"ran in a long batch" (batch sizes, CPU contention) or "outside the app" (the client, the
loopback, the event loop before the request reached the app); then the slowest requests one by
one. `serving` is app time outside the named phases; `outside` is latency minus app.

    python -m benchmarks.experiments.tail trace.jsonl --share 0.01 --show 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

PHASES = ("decode", "queue", "infer", "serving", "outside")


def phases(record: dict[str, Any]) -> dict[str, float]:
    """One successful request's latency split into PHASES (ms); without Server-Timing, all of
    it is `outside`."""
    server = record.get("server_ms") or {}
    app = server.get("app", 0.0)
    named = {p: server.get(p, 0.0) for p in ("decode", "queue", "infer")}
    return {
        **named,
        "serving": max(0.0, app - sum(named.values())),
        "outside": record["latency_ms"] - app,
    }


def breakdown(records: list[dict[str, Any]], share: float) -> dict[str, Any]:
    """Slowest `share` of the successful requests against those around the median: count,
    mean latency and mean of each phase (ms)."""
    ok = sorted((r for r in records if r["error"] is None), key=lambda r: r["latency_ms"])
    if not ok:
        return {"requests": 0}
    n_tail = max(1, round(share * len(ok)))
    mid = len(ok) // 2
    half = max(1, n_tail // 2)
    groups = {"median": ok[max(0, mid - half) : mid + half + 1], "tail": ok[-n_tail:]}
    out: dict[str, Any] = {"requests": len(ok), "errors": len(records) - len(ok)}
    for name, group in groups.items():
        split = [phases(r) for r in group]
        out[name] = {
            "n": len(group),
            "latency_ms": round(float(np.mean([r["latency_ms"] for r in group])), 2),
            **{p: round(float(np.mean([s[p] for s in split])), 2) for p in PHASES},
        }
    return out


def load(path: Path) -> dict[int, list[dict[str, Any]]]:
    """Trace records by concurrency."""
    by_c: dict[int, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            by_c.setdefault(r["concurrency"], []).append(r)
    return by_c


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trace", type=Path, help="JSON lines from benchmarks.loadgen --trace")
    parser.add_argument("--share", type=float, default=0.01, help="the tail: slowest share")
    parser.add_argument("--show", type=int, default=10, help="slowest requests listed")
    parser.add_argument("--json", type=Path, help="also write the breakdowns here")
    args = parser.parse_args(argv)
    result = {}
    for c, records in sorted(load(args.trace).items()):
        b = breakdown(records, args.share)
        result[c] = b
        print(f"\nc={c}: {b['requests']} requests, {b.get('errors', 0)} errors")
        if not b["requests"]:
            continue
        print("| group | n | latency ms | " + " | ".join(PHASES) + " |")
        print("|---|---|---|" + "---|" * len(PHASES))
        for name in ("median", "tail"):
            g = b[name]
            cells = [name, g["n"], g["latency_ms"], *(g[p] for p in PHASES)]
            print("| " + " | ".join(str(x) for x in cells) + " |")
        ok = sorted((r for r in records if r["error"] is None), key=lambda r: -r["latency_ms"])
        for r in ok[: args.show]:
            split = phases(r)
            print(
                f"  sent {r['sent_s']:8.3f} s  client {r['client']:3d}  {r['latency_ms']:8.1f} ms  "
                + "  ".join(f"{p} {split[p]:.1f}" for p in PHASES)
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
