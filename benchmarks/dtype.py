"""Classifier forwards in float32 against bfloat16 (MODELSERVE_DTYPE), in process, per batch size.

Loads each AlexNet checkpoint as the service does (`app.loading.load_for_inference`:
channels-last, fully connected layers packed where timing says so) in float32 and in bfloat16,
each also with no packing ("dense"), and times their forwards on the same random batch, taking
turns within every repeat (`models.precision.forward_samples`), on this machine's CPU with
`--threads` torch threads. Reports the median and the fastest call (on a shared machine the
fastest is the better guess at the uncontended time; with `--clock cpu` each call's CPU time,
which with `--threads 1` is what it takes on an idle core however busy the machine is: wall
times on a 2-core machine shared with other work say more about the others than about the
model), bf16's speed-up over float32, the largest
difference in a softmax probability, and what `MODELSERVE_DTYPE=auto` picks for the model here.
The default models are the shipped alexnet-cifar10 and the full-size AlexNet (written with
random weights under runs/bench/models/full by `benchmarks.make_checkpoints` when missing).
Prints a table and writes JSON.

    python -m benchmarks.dtype --threads 2 --out benchmarks/results/dtype-cpu-2threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from app.loading import load_for_inference
from app.predictors import model_dtype
from benchmarks.make_checkpoints import full_alexnet
from models.checkpoint import CARD_FILE, ModelCard
from models.hardware import cpu_bf16_flags, cpu_model_name
from models.precision import DTYPES, dtype_name, forward_samples

SMALL = Path("models/alexnet-cifar10")
FULL = Path("runs/bench/models/full/alexnet-imagenet-random")
# name -> (number format, prepack): as served, and with every fc layer left dense
VARIANTS = {
    "float32": ("float32", "auto"),
    "bfloat16": ("bfloat16", "auto"),
    "float32 dense": ("float32", False),
    "bfloat16 dense": ("bfloat16", False),
}


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def measure(
    directory: Path, batches: list[int], repeat: int, clock: str = "wall"
) -> list[dict[str, Any]]:
    """One row per batch size for the checkpoint in `directory`."""
    top = max(batches)
    models: dict[str, nn.Module] = {}
    card: ModelCard | None = None
    for name, (dt, prepack) in VARIANTS.items():
        models[name], card = load_for_inference(directory, "cpu", True, prepack, top, dt)  # type: ignore[arg-type]
    assert card is not None
    auto = dtype_name(
        model_dtype(load_for_inference(directory, "cpu", True, "auto", top, "auto")[0])
    )
    c, (h, w) = card.input.channels, card.input.size

    def example(batch: int, name: str) -> Tensor:  # the same images in each variant's format
        x = torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(batch))
        return x.to(DTYPES[VARIANTS[name][0]]).contiguous(memory_format=torch.channels_last)

    samples = forward_samples(models, example, batches, repeat, CLOCKS[clock])
    rows = []
    with torch.inference_mode():
        for i, b in enumerate(batches):
            probs = {k: torch.softmax(m(example(b, k)).float(), 1) for k, m in models.items()}
            diff = (probs["bfloat16"] - probs["float32"]).abs().max().item()
            agree = (probs["bfloat16"].argmax(1) == probs["float32"].argmax(1)).float().mean()
            median = {k: statistics.median(s[i]) for k, s in samples.items()}
            fastest = {k: min(s[i]) for k, s in samples.items()}
            rows.append({"model": card.name, "batch": b, "median_ms": median,
                         "min_ms": fastest, "max_prob_diff": diff,
                         "top1_agree": agree.item(), "auto_picks": auto})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("models", nargs="*", type=Path, help="AlexNet checkpoint directories")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="batch sizes")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per point (default: 10)")
    p.add_argument(
        "--clock",
        choices=list(CLOCKS),
        default="wall",
        help="wall time, or the process's CPU time per call (use with --threads 1 on a busy "
        "machine) (default: %(default)s)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/dtype.json"), help="JSON output"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dirs = args.models or [SMALL, FULL]
    if FULL in dirs and not (FULL / CARD_FILE).is_file():
        full_alexnet(FULL)
    load_before = os.getloadavg()
    print(f"{cpu_model_name()}, bf16 flags {cpu_bf16_flags()}, threads={args.threads}, "
          f"{args.clock} clock, load average {load_before[0]:.1f}")  # fmt: skip
    print("| model | batch | fp32 ms | bf16 ms | fp32 dense ms | bf16 dense ms | bf16 speed-up "
          "| fp32 img/s | bf16 img/s | max prob diff | top-1 agree | auto picks |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows: list[dict[str, Any]] = []
    for d in dirs:
        for r in measure(d, args.batches, args.repeat, args.clock):
            rows.append(r)
            m, b = r["min_ms"], r["batch"]
            cells = " | ".join(f"{m[k]:.1f} ({r['median_ms'][k]:.0f})" for k in VARIANTS)
            print(f"| {r['model']} | {b} | {cells} | {m['float32'] / m['bfloat16']:.2f}x "
                  f"| {b * 1e3 / m['float32']:.0f} | {b * 1e3 / m['bfloat16']:.0f} "
                  f"| {r['max_prob_diff']:.1e} | {r['top1_agree']:.2f} | {r['auto_picks']} |",
                  flush=True)  # fmt: skip
    print("ms: fastest call (median in brackets); speed-up and img/s from the fastest calls")
    from benchmarks.run import machine

    report = {"threads": args.threads, "repeat": args.repeat, "clock": args.clock, "machine": machine(),
              "bf16_flags": cpu_bf16_flags(), "torch": torch.__version__,
              "load_average": {"before": load_before, "after": os.getloadavg()}, "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
