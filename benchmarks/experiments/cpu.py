"""CPU time per request: where the machine's cores go while our server is under load.

For each configuration asked for (one process with N inference lanes, `lN`; N worker
processes, `wN`), starts our service on one model group, warms it up, then drives one endpoint
at one concurrency for `--duration` seconds and reads, before and after, the CPU time of every
thread of the server's process tree (/proc, user + system) and of this process, which runs the
load generator. Reports requests/s, the server's and the load generator's CPU milliseconds per
request, and the cores each used on average: what py-spy cannot say (it counts a thread
waiting for a core as busy, and does not see OpenMP threads). Linux only. Prints a table and
writes JSON. The CPU is read just before the load generator starts its clients and just after
it stops, and divided by the requests answered inside its window: the requests still in flight
at the end (at most the concurrency) make the figure per request a little high, about 2% for
64 clients over 15 s of the full AlexNet. Errors are counted and printed.

    python -m benchmarks.experiments.cpu --group full --endpoint classify --concurrency 64 --configs l2 w2 \
        --rounds 2 --out benchmarks/results/cpu-full-classify-c64.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import loadgen
from benchmarks.experiments.profile import add_target_arguments, target
from benchmarks.machine import machine
from benchmarks.servers import serve_ours

CONFIG = re.compile(r"^(?P<kind>[lw])(?P<n>[1-9][0-9]*)$")


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (uvicorn's worker processes)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            out += process_tree(int(child))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of every process in `pid`'s tree (a process's own counts
    keep the time of its threads that have ended)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:  # the process ended between listing and reading
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
    return total / tick


def measure(args: argparse.Namespace, config: str) -> dict[str, Any]:
    """One configuration's point: throughput and CPU per request, server and load generator."""
    m = CONFIG.match(config)
    if not m:
        raise SystemExit(f"bad configuration {config!r}: lN (lanes) or wN (workers)")
    n = int(m["n"])
    lanes, workers = (n, 1) if m["kind"] == "l" else (1, n)
    group_dir, model, request = target(args.models_root, args.group, args.endpoint, args.data_dir)

    def load(seconds: float) -> loadgen.PointResult:
        return loadgen.run(
            loadgen.sweep(
                url, "ours", args.endpoint, model, request, [args.concurrency], seconds, warmup=0.0
            )
        )[0]

    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-cpu-{os.getpid()}.log"
    with serve_ours(
        group_dir, model, args.max_batch_size, args.batch_timeout_ms, log,
        workers=workers, lanes=lanes,
    ) as (url, pid):  # fmt: skip
        warm = load(args.warmup)
        if len(process_tree(pid)) < workers + (workers > 1):  # uvicorn's parent + N workers
            raise SystemExit(f"{config}: found {process_tree(pid)} under the server, not all")
        server0, client0, t0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
        point = load(args.duration)
        server1, client1, t1 = cpu_seconds(pid), time.process_time(), time.perf_counter()
    wall, requests = t1 - t0, max(point.requests, 1)
    return {
        "config": config,
        "lanes": lanes,
        "workers": workers,
        "requests": point.requests,
        "requests_per_s": point.requests_per_s,
        "errors": {**point.errors},
        "warmup_errors": {**warm.errors},
        "p99_ms": point.p99_ms,
        "server_cpu_ms_per_request": 1000 * (server1 - server0) / requests,
        "server_cores": (server1 - server0) / wall,
        "client_cpu_ms_per_request": 1000 * (client1 - client0) / requests,
        "client_cores": (client1 - client0) / wall,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_target_arguments(parser, group="full", endpoint="classify", concurrency=64)
    parser.add_argument(
        "--configs", nargs="+", default=["l2", "w2"], help="lN: N lanes, wN: N worker processes"
    )
    parser.add_argument("--rounds", type=int, default=1, help="every configuration this often")
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = []
    print(f"/{args.endpoint} {args.group} c={args.concurrency}, {args.duration:g} s per point")
    print("| config | req/s | p99 ms | server CPU ms/req | server cores | loadgen CPU ms/req "
          "| loadgen cores |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for _ in range(args.rounds):
        for config in args.configs:
            r = measure(args, config)
            rows.append(r)
            if r["errors"]:
                print(f"{config}: errors {r['errors']}: the CPU per request counts failed requests")
            print(f"| {config} | {r['requests_per_s']:.1f} | {r['p99_ms'] or 0:.0f} "
                  f"| {r['server_cpu_ms_per_request']:.2f} | {r['server_cores']:.2f} "
                  f"| {r['client_cpu_ms_per_request']:.2f} | {r['client_cores']:.2f} |",
                  flush=True)  # fmt: skip
    if args.out:
        report = {
            "command": f"python -m benchmarks.experiments.cpu {shlex.join(argv or sys.argv[1:])}",
            "endpoint": args.endpoint,
            "group": args.group,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "machine": machine(),
            "rows": rows,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
