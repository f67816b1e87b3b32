"""Does the interpreter lock slow inference lanes down? Two forward loops beside a busy thread.

One process with two inference lanes shares one interpreter lock between its event loop and
the lanes' forwards (each torch operation gives the lock back while it computes and takes it
again to return). This script runs what the lanes run, one single-threaded /classify loop per
core (decode + preprocess + forward, as `benchmarks.inprocess`'s side-by-side ceiling), first
alone and then beside a pure-Python thread that holds the lock for `--busy-ms` out of every
`--period-ms` (as the event loop does while it answers a batch's requests and reads the next
ones). Without a lock convoy the loops lose only the core time the busy thread takes:
expected = alone * (1 - busy cores / cores). Each configuration runs `--rounds` times,
alternating; prints a table and writes JSON.

    python -m benchmarks.gil --out benchmarks/results/gil-full-classify.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import ops
from benchmarks.inprocess import make_step, side_by_side
from benchmarks.inputs import DEFAULT_DATA_DIR, rgb_corpus

DEFAULT_MODEL = Path("runs/bench/models/full/alexnet-imagenet-random")


def busy_python(stop: threading.Event, busy_s: float, period_s: float, spent: list[float]) -> None:
    """Hold the interpreter (pure Python, no I/O) for `busy_s` of every `period_s` until
    `stop`; adds the seconds spent busy to `spent[0]` and the seconds it ran to `spent[1]`."""
    t0 = time.perf_counter()
    while not stop.is_set():
        t = time.perf_counter()
        while time.perf_counter() - t < busy_s:
            sum(range(100))
        spent[0] += time.perf_counter() - t
        stop.wait(period_s - busy_s)
    spent[1] += time.perf_counter() - t0


def one_run(step: Any, lanes: int, batch: int, duration: float, busy_s: float, period_s: float
            ) -> dict[str, float]:  # fmt: skip
    """Items/s of `lanes` single-threaded loops, beside a busy thread when `busy_s` > 0."""
    if busy_s <= 0:
        items, seconds = side_by_side(step, lanes, 1, batch, duration)
        return {"items_per_s": items / seconds, "busy_cores": 0.0}
    stop, spent = threading.Event(), [0.0, 0.0]
    busy = threading.Thread(target=busy_python, args=(stop, busy_s, period_s, spent))
    busy.start()
    items, seconds = side_by_side(step, lanes, 1, batch, duration)
    stop.set()
    busy.join()
    # busy over the thread's own lifetime, which spans the loops' warm-up too
    return {"items_per_s": items / seconds, "busy_cores": spent[0] / spent[1]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--batch", type=int, default=32, help="batch size of each loop (default 32)")
    p.add_argument("--busy-ms", type=float, default=30.0, help="busy stretch (default 30 ms)")
    p.add_argument("--period-ms", type=float, default=200.0, help="one busy stretch per this")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="runs of each configuration")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gil.json"))
    args = p.parse_args(argv)
    if not 0 < args.busy_ms < args.period_ms:
        p.error("--busy-ms must be positive and below --period-ms")
    cores = os.cpu_count() or 1
    torch.set_num_threads(1)
    model, card = ops.load(args.model, max_batch_size=args.batch)
    step = make_step("classify", model, card, rgb_corpus(args.data_dir), [])
    runs: dict[str, list[dict[str, float]]] = {"alone": [], "beside a busy thread": []}
    for _ in range(args.rounds):
        for name, busy_ms in (("alone", 0.0), ("beside a busy thread", args.busy_ms)):
            r = one_run(step, cores, args.batch, args.duration, busy_ms / 1e3, args.period_ms / 1e3)
            runs[name].append(r)
            print(f"{name}: {r['items_per_s']:.1f} items/s, busy thread {r['busy_cores']:.3f} "
                  "cores", file=sys.stderr, flush=True)  # fmt: skip
    alone = statistics.median(r["items_per_s"] for r in runs["alone"])
    beside = statistics.median(r["items_per_s"] for r in runs["beside a busy thread"])
    busy_cores = statistics.median(r["busy_cores"] for r in runs["beside a busy thread"])
    expected = alone * (1 - busy_cores / cores)
    print(f"{cores} single-threaded loops at batch {args.batch}, {card.name}, "
          f"{args.rounds} rounds of {args.duration:g} s (medians)")  # fmt: skip
    print("| configuration | items/s | busy thread cores | no-convoy expectation |")
    print("|---|---|---|---|")
    print(f"| alone | {alone:.1f} | - | - |")
    print(f"| beside a busy thread ({args.busy_ms:g} of every {args.period_ms:g} ms) "
          f"| {beside:.1f} | {busy_cores:.3f} | {expected:.1f} |")  # fmt: skip
    from benchmarks.run import machine

    report = {"model": card.name, "cores": cores, "batch": args.batch, "busy_ms": args.busy_ms,
              "period_ms": args.period_ms, "duration_s": args.duration, "runs": runs,
              "alone_items_per_s": alone, "beside_items_per_s": beside,
              "busy_cores": busy_cores, "expected_items_per_s": expected,
              "switch_interval_s": sys.getswitchinterval(), "machine": machine()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
