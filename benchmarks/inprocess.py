"""The ceiling: decode + preprocess + batched forward in one process, no HTTP, same inputs.

For each endpoint it reports items/s at the serving batch size (what a perfect server could
deliver on this machine) and the single-item latency at batch 1 (what a perfect server answers
one lone request in). Decoding runs on the calling thread, the forward on torch's intra-op pool.
Configurations tried: one thread, every core as intra-op threads, and (on a CPU with several
cores) one single-threaded loop per core side by side, the most images/s a compute-bound model
gets from the machine; each figure is the best configuration's.

`--in-flight C ...` also measures, for each C, the most items/s with at most C items in flight
(one loop at batch C on every core, or one single-threaded loop per core at batch C / cores),
which is what C closed-loop clients of a perfect server could get: fewer items in flight mean
smaller batches, and on a CPU a small batch costs more per item.

    python -m benchmarks.inprocess runs/bench/models/full/alexnet-imagenet-random --endpoint classify
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from app.predictors import model_dtype
from benchmarks import ops
from benchmarks.inputs import DEFAULT_DATA_DIR, Corpus, grey_corpus, latent_rows, rgb_corpus
from models.precision import DTYPES, DtypeSetting, dtype_name
from models.prepack import packing_summary

IDLE_S = 0.005  # the pause before each call of the "after idle" single-item figure


def make_step(
    endpoint: str,
    model: torch.nn.Module,
    card: Any,
    corpus: Corpus | None,
    latents: list[list[float]],
) -> Callable[[int, int], int]:
    """A function (start index, batch size) -> items done, running one batch end to end."""
    channels_last = next(model.parameters()).is_contiguous(memory_format=torch.channels_last)
    device, dtype = ops.device_of(model), model_dtype(model)

    def run(i: int, b: int) -> int:
        if endpoint in ("classify", "encode"):
            assert corpus is not None
            files = [corpus[i + j] for j in range(b)]
            x = ops.images_to_batch(files, card, channels_last, device, dtype)
            ops.classify(model, x) if endpoint == "classify" else ops.encode(model, x)
        elif endpoint == "decode":
            z = torch.tensor([latents[(i + j) % len(latents)] for j in range(b)])
            ops.decode(model, z)
        elif endpoint == "sample":
            ops.sample(model, range(i, i + b))
        else:
            raise ValueError(f"unknown endpoint {endpoint!r}; known: {ops.ENDPOINTS}")
        return b

    return run


def timed_loop(
    step: Callable[[int, int], int], batch: int, duration: float, idle: float = 0.0
) -> tuple[int, float, list[float]]:
    """Run `step` for `duration` seconds, back to back or with `idle` seconds of sleep before
    each call (not timed): items, elapsed seconds, per-call seconds."""
    items, i, times = 0, 0, []
    t0 = time.perf_counter()
    while True:
        if idle:
            time.sleep(idle)
        t = time.perf_counter()
        items += step(i, batch)
        times.append(time.perf_counter() - t)
        i += batch
        if time.perf_counter() - t0 >= duration:
            break
    return items, time.perf_counter() - t0, times


def measure(
    model_dir: Path,
    endpoint: str,
    corpus: Corpus | None,
    batch_size: int = 32,
    duration: float = 5.0,
    threads: int | None = None,
    channels_last: bool = True,
    device: str = "cpu",
    lanes: int = 1,
    throughput_only: bool = False,
    dtype: DtypeSetting = "float32",
) -> dict[str, Any]:
    """Throughput at `batch_size` and single-item latency of one endpoint of one model.

    `lanes` > 1: that many loops side by side, each on its own thread with `threads` intra-op
    threads; throughput only (a lone item has no one to share with: see the other figures), as
    with `throughput_only`.
    Every step ends with its answer on the host, so on CUDA each step includes its sync.
    `dtype`: the classifier's number format (MODELSERVE_DTYPE's values; VAEs stay float32).
    """
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    model, card = ops.load(
        model_dir,
        channels_last=channels_last,
        device=device,
        max_batch_size=batch_size,
        dtype=dtype,
    )
    latents = latent_rows(256, int(card.config.get("latent", 1)))
    step = make_step(endpoint, model, card, corpus, latents)
    config = {
        "contender": "in-process",
        "endpoint": endpoint,
        "model": card.name,
        "batch_size": batch_size,
        "threads": threads,
        "lanes": lanes,
        "device": str(device),
        "dtype": dtype_name(model_dtype(model)),
        "channels_last": channels_last and card.architecture == "alexnet",
        "prepack_linear": packing_summary(model),
    }
    if lanes > 1:
        items, elapsed = side_by_side(step, lanes, threads, batch_size, duration)
    else:
        timed_loop(step, batch_size, min(1.0, duration / 4))  # warm-up: allocator, oneDNN kernels
        items, elapsed, _ = timed_loop(step, batch_size, duration)
    throughput = config | {
        "items": items,
        "seconds": round(elapsed, 3),
        "items_per_s": round(items / elapsed, 2),
    }
    if lanes > 1 or throughput_only:
        return throughput | {"single_p50_ms": None}
    _, _, singles = timed_loop(step, 1, min(2.0, duration / 2))
    singles_ms = sorted(1000 * t for t in singles)
    # The same single item after IDLE_S of idle, as a server sees it at concurrency 1 (its
    # forward follows the round trip of the previous answer, not another forward): for
    # reading the c=1 gap only; the target compares with the back-to-back figure above.
    _, _, after_idle = timed_loop(step, 1, min(1.0, duration / 4), idle=IDLE_S)
    return throughput | {
        "single_p50_ms": round(statistics.median(singles_ms), 3),
        "single_p99_ms": round(
            singles_ms[min(len(singles_ms) - 1, int(0.99 * len(singles_ms)))], 3
        ),
        "single_n": len(singles_ms),
        "single_after_idle_p50_ms": round(statistics.median(1000 * t for t in after_idle), 3),
        "idle_ms": IDLE_S * 1000,
    }


def side_by_side(
    step: Callable[[int, int], int], lanes: int, threads: int, batch: int, duration: float
) -> tuple[int, float]:
    """`lanes` loops of `step` at once, each on its own thread with `threads` intra-op threads
    (the OpenMP team size is per thread), each on its own stretch of the inputs: items, seconds."""
    start = threading.Barrier(lanes + 1)
    done: list[int] = [0] * lanes

    def lane(k: int) -> None:
        torch.set_num_threads(threads)

        def own(i: int, b: int) -> int:
            return step(k * 100_003 + i, b)

        timed_loop(own, batch, min(1.0, duration / 4))  # warm-up
        start.wait()
        done[k] = timed_loop(own, batch, duration)[0]

    workers = [threading.Thread(target=lane, args=(k,)) for k in range(lanes)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    return sum(done), time.perf_counter() - t0


def in_flight_bound(
    model_dir: Path,
    endpoint: str,
    corpus: Corpus | None,
    in_flight: int,
    batch_size: int,
    duration: float,
    threads: int,
    loops: int,
    channels_last: bool = True,
    device: str = "cpu",
    dtype: DtypeSetting = "float32",
) -> dict[str, Any]:
    """The most items/s with at most `in_flight` items in flight, batches at most `batch_size`,
    the best of: one loop at batch min(in_flight, batch_size) on `threads` intra-op threads
    (and on one, where fewer items than loops are in flight), and `loops` single-threaded loops
    side by side at batch min(in_flight // loops, batch_size)."""
    batch = min(in_flight, batch_size)
    options = [(threads, 1, batch)]
    if loops > 1 and in_flight >= loops:
        options.append((1, loops, min(in_flight // loops, batch_size)))
    elif threads > 1:
        options.append((1, 1, batch))
    tried = {}
    for t, n, b in options:
        r = measure(
            model_dir, endpoint, corpus, b, duration, t, channels_last, device,
            lanes=n, throughput_only=True, dtype=dtype,
        )  # fmt: skip
        tried[f"{label(r)} at batch {b}"] = r["items_per_s"]
    best = max(tried, key=lambda k: tried[k])
    return {"in_flight": in_flight, "items_per_s": tried[best], "config": best, "tried": tried}


def label(result: dict[str, Any]) -> str:
    """A configuration's name: its intra-op threads, "LxT" for L loops side by side."""
    lanes = result.get("lanes", 1)
    return f"{lanes}x{result['threads']}" if lanes > 1 else str(result["threads"])


def best_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The ceiling over several configurations: best throughput and, separately, best latency
    (of those that measure one)."""
    best = dict(max(results, key=lambda r: r["items_per_s"]))
    fastest = min(
        (r for r in results if r.get("single_p50_ms") is not None),
        key=lambda r: r["single_p50_ms"],
    )
    best.update(
        single_p50_ms=fastest["single_p50_ms"],
        single_p99_ms=fastest["single_p99_ms"],
        single_after_idle_p50_ms=fastest.get("single_after_idle_p50_ms"),
        idle_ms=fastest.get("idle_ms"),
        single_threads=fastest["threads"],
        tried={label(r): [r["items_per_s"], r.get("single_p50_ms")] for r in results},
    )
    return best


def corpus_for(endpoint: str, channels: int, data_dir: Path | None) -> Corpus | None:
    """The image corpus an endpoint decodes (None for endpoints that take latents)."""
    if endpoint not in ("classify", "encode"):
        return None
    return rgb_corpus(data_dir) if channels == 3 else grey_corpus(data_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "model_dir", type=Path, help="a checkpoint directory (config.json + weights)"
    )
    parser.add_argument("--endpoint", choices=ops.ENDPOINTS, default="classify")
    parser.add_argument(
        "--batch-size", type=int, default=32, help="set equal to the server's max batch"
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds of the throughput loop"
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="intra-op thread counts to try; the best of each figure is kept (default: 1 and all "
        "cores: on a busy machine one thread can beat two, whose barriers wait on the scheduler)",
    )
    parser.add_argument(
        "--lanes",
        type=int,
        default=None,
        help="also run this many single-threaded loops side by side, for throughput (default: "
        "the number of cores on a CPU; 1: not at all)",
    )
    parser.add_argument(
        "--in-flight",
        type=int,
        nargs="+",
        default=[],
        metavar="C",
        help="also measure the most items/s with at most C items in flight, for each C (what C "
        "closed-loop clients could get); C at or past batch size x cores is the ceiling itself",
    )
    parser.add_argument(
        "--in-flight-duration",
        type=float,
        default=None,
        help="seconds of each loop of --in-flight (default: --duration)",
    )
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),  # pinned, never auto: every contender the same
        default="float32",
        help="the classifier's number format, as MODELSERVE_DTYPE (VAEs stay float32; "
        "default: %(default)s)",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    from models.checkpoint import read_card

    card = read_card(args.model_dir)
    corpus = corpus_for(args.endpoint, card.input.channels, args.data_dir)
    options = [(t, 1) for t in args.threads or sorted({1, os.cpu_count() or 1})]
    lanes = args.lanes or ((os.cpu_count() or 1) if args.device == "cpu" else 1)
    if lanes > 1:
        options.append((1, lanes))
    result = best_of(
        [
            measure(
                args.model_dir,
                args.endpoint,
                corpus,
                args.batch_size,
                args.duration,
                t,
                args.channels_last,
                args.device,
                lanes=n,
                dtype=args.dtype,
            )
            for t, n in options
        ]
    )
    threads = max(t for t, _ in options)
    in_flight_s = args.in_flight_duration or args.duration
    result["in_flight"] = [
        in_flight_bound(
            args.model_dir,
            args.endpoint,
            corpus,
            c,
            args.batch_size,
            in_flight_s,
            threads,
            lanes,
            args.channels_last,
            args.device,
            args.dtype,
        )
        if c < args.batch_size * lanes
        else {"in_flight": c, "items_per_s": result["items_per_s"], "config": "the ceiling"}
        for c in args.in_flight
    ]
    result["inputs"] = corpus.source if corpus else "latent rows / seeds"
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
