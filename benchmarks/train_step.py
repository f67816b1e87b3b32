"""Training step time per number format: fp32 against bf16 autocast, on real batches.

Builds the task a training command would (`python -m training alexnet|vae ...`, everything
after `--`), then times single training steps of it under each `--amp` mode asked for, the
modes alternating over `--rounds` so that a shared machine's load falls on each alike. Prints
a table (ms per step, images/s, the epoch extrapolated from the median step) and writes JSON
with the machine, its native bf16 instruction sets and the load average around the run.

Beside wall time, each step's CPU time (all of this process's threads): on a machine whose
cores other work shares, wall time also counts the waits for a core, CPU time does not, and CPU
time over the thread count is what a step would take on idle cores that scale perfectly.

    python -m benchmarks.train_step --amp off bf16 --steps 20 --rounds 2 -- \
        alexnet --packed data/cifar10-train.pack --cache-dir runs/cache --no-progress
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.run import machine
from models.hardware import cpu_bf16_flags
from training import alexnet, vae
from training.cli import build_parser, loop_options
from training.devices import AMP_MODES, select_device
from training.timing import time_steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--amp", nargs="+", choices=AMP_MODES, default=["off", "bf16"])
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode and round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each round's")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the modes")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: print only)")
    p.add_argument("training", nargs=argparse.REMAINDER, help="-- then a training command")
    args = p.parse_args(argv)
    if args.training[:1] == ["--"]:
        args.training = args.training[1:]
    if not args.training or args.training[0] not in ("alexnet", "vae"):
        p.error("give a training command after --: alexnet ... or vae ...")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time every mode; returns the JSON document."""
    targs = build_parser().parse_args(args.training)
    if targs.run_dir is None:  # where an alexnet task caches its decoded images
        targs.run_dir = Path("runs") / f"{targs.command}-{targs.dataset}"
    device = select_device(targs.device)
    module = alexnet if targs.command == "alexnet" else vae
    task = module.build_task(targs, device, 1, 0)
    steps_per_epoch = len(task.train_batches)
    load_before = os.getloadavg()
    samples: dict[str, list[float]] = {m: [] for m in args.amp}
    cpu: dict[str, list[float]] = {m: [] for m in args.amp}
    precisions: dict[str, str] = {}
    for _ in range(args.rounds):
        for mode in args.amp:
            opts = loop_options(targs)
            opts.amp = mode
            times = time_steps(task, opts, device, args.steps, 1, args.warmup, evaluate=False)
            samples[mode] += times.block_step_s
            cpu[mode] += times.block_cpu_s
            precisions[mode] = times.precision
    rows, threads = [], torch.get_num_threads()
    for mode, s in samples.items():
        median, cpu_median = statistics.median(s), statistics.median(cpu[mode])
        rows.append(
            {
                "amp": mode,
                "precision": precisions[mode],
                "steps": len(s),
                "ms_per_step_median": round(median * 1e3, 1),
                "ms_per_step_mean": round(statistics.fmean(s) * 1e3, 1),
                "ms_per_step_min": round(min(s) * 1e3, 1),
                "ms_per_step_max": round(max(s) * 1e3, 1),
                "examples_per_s": round(targs.batch_size / median, 1),
                "epoch_min": float(
                    f"{steps_per_epoch * median / 60:.3g}"
                ),  # 3 figures: tiny epochs too
                "cpu_ms_per_step_median": round(cpu_median * 1e3, 1),
                "epoch_min_idle": float(f"{steps_per_epoch * cpu_median / threads / 60:.3g}"),
            }
        )
    return {
        "command": targs.command,
        "training_argv": args.training,
        "batch_size": targs.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16_flags": cpu_bf16_flags(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }


def render(doc: dict[str, Any]) -> str:
    """The table printed last."""
    head = (
        f"{doc['command']}, batch {doc['batch_size']}, {doc['steps_per_epoch']} steps/epoch, "
        f"{doc['device']} ({doc['machine']['cpu']}, bf16 flags: "
        f"{' '.join(doc['cpu_bf16_flags']) or 'none'}), {doc['torch_threads']} threads, "
        f"load {doc['load_average_before'][0]} -> {doc['load_average_after'][0]}"
    )
    lines = [
        head,
        "| amp | precision | steps | ms/step median | min | max | examples/s | epoch (min) "
        "| CPU ms/step | epoch on idle cores (min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['amp']} | {r['precision']} | {r['steps']} | {r['ms_per_step_median']} | "
            f"{r['ms_per_step_min']} | {r['ms_per_step_max']} | {r['examples_per_s']} | "
            f"{r['epoch_min']} | {r['cpu_ms_per_step_median']} | {r['epoch_min_idle']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    doc = run(args)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(render(doc), file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
