"""Train both shipped models on one borrowed GPU inside a time budget, in one command.

    python -m training.gpu_run prepare --data-dir ../shared/datasets --out data/gpu --wheels .whl
    python -m training.gpu_run run --data data/gpu --out "$OUT" --budget-s 480      # on the GPU
    python -m training.gpu_run join <returned files> --to runs/gpu                  # back here

`run` trains AlexNet (alexnet-small, CIFAR-10 from the pack, bf16 autocast) and the MNIST VAE
(two tanh layers of 500 units each side, 50 latent units, fp32) side by side, one process each:
both are small enough that launching kernels, not the GPU, bounds their steps, so two
processes share one GPU at little cost to either. The images sit on the GPU and are augmented
there (`training.alexnet`). Each process (`training.gpu_child`) times its training steps on real
batches first, then trains as many epochs as fit the budget (up to a cap), on the shared loop
(`python -m training alexnet|vae` with a recipe's flags), and evaluates the checkpoint as the
cards report it: ten-crop top-1 on the validation split, importance-sampled log p(x) (k=5000)
on all 10,000 test digits. Checkpoints, curves and logs come back as one tar in parts of at most
15 MiB with SHA256SUMS (`training.gpu_bundle`), and a summary is printed last.

`run --dry-run` is the same path on the CPU with one epoch of everything, for a data bundle made
with `prepare --limit N`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import torch

from training.gpu_bundle import (
    PART_BYTES,
    SUMS_FILE,
    BundleError,
    download_wheels,
    join_results,
    pack_results,
    prepare_inputs,
    unpack_inputs,
)
from training.gpu_child import RECIPES, train_one

MODELS = ("alexnet", "vae")
MAX_EPOCHS = {"alexnet": 150, "vae": 3000}
PACKAGING_S = 20.0  # tar, split and checksums at the end
KILL_GRACE_S = 30.0  # past the deadline before a process still running is stopped


# --- the command that runs both ---------------------------------------------------------------

EPOCH_LINE = re.compile(r"^epoch=(\d+) ")


def _forward(name: str, stream: IO[str], log: Path, every: int) -> None:
    """Copy a process's output into its log file, and to ours with the model's name in front:
    every line but the per-epoch ones, of which the first three and every `every`-th."""
    with log.open("w") as f:
        for line in stream:
            f.write(line)
            f.flush()
            m = EPOCH_LINE.match(line)
            if m is None or int(m.group(1)) <= 3 or int(m.group(1)) % every == 0:
                print(f"[{name}] {line}", end="", flush=True)


def _spawn(
    name: str, ns: argparse.Namespace, paths: dict[str, Path], deadline: float, device: str
) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "training.gpu_run", "child", name]
    cmd += ["--run-dir", str(ns.work / name), "--pack", str(paths["pack"])]
    cmd += ["--mnist", str(paths["mnist"]), "--device", device, "--deadline", str(deadline)]
    cmd += ["--barrier", str(ns.work / "barrier"), "--peers", *ns.models]
    cmd += ["--max-epochs", str(1 if ns.dry_run else getattr(ns, f"max_epochs_{name}"))]
    # '=': flags in the value ("--hidden 200") must not read as the child's own options
    cmd += ["--budget-s", str(ns.budget_s), f"--extra={getattr(ns, f'{name}_args')}"]
    cmd += ["--dry-run"] if ns.dry_run else []
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=repo
    )


def _summary_table(summary: dict[str, Any]) -> str:
    lines = [
        f"gpu_run on {summary['device_name']} (torch {summary['torch']}): "
        f"{summary['wall_s']:.0f} s of a {summary['budget_s']:.0f} s budget",
        "| model | epochs | training | precision | held-out result | goal |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in summary["models"].items():
        if "metrics" not in r:
            lines.append(f"| {name} | - | - | - | failed (exit {r.get('exit')}, see its log) | |")
            continue
        m = r["metrics"]
        if name == "alexnet":
            result = f"val top-1 {100 * (1 - m['val_top1_err']):.2f}%"
            if "val_top1_err_tencrop" in m:
                result += f", ten-crop {100 * (1 - m['val_top1_err_tencrop']):.2f}%"
            goal = "90% top-1"
        else:
            log_px = next((v for k, v in m.items() if k.startswith("test_log_px")), float("nan"))
            result = f"log p(x) {log_px:.2f} nats, ELBO {m['test_elbo']:.2f}"
            goal = "-85 nats"
        lines.append(
            f"| {r['model']} | {r['plan']['epochs']} | {r['train_s']:.0f} s | {r['precision']} "
            f"| {result} | {goal} |"
        )
    return "\n".join(lines)


def run_all(ns: argparse.Namespace) -> int:
    """The `run` command."""
    start = time.time()
    device = "cpu" if ns.dry_run else ns.device
    ns.work.mkdir(parents=True, exist_ok=True)
    for stale in (ns.work / "barrier").glob("*.ready"):
        stale.unlink()
    pack, mnist = unpack_inputs(ns.data, ns.work)
    paths = {"pack": pack, "mnist": mnist}
    deadline = start + ns.budget_s - PACKAGING_S
    procs, threads = {}, []
    for name in ns.models:
        (ns.work / name).mkdir(parents=True, exist_ok=True)
        (ns.work / name / "result.json").unlink(missing_ok=True)
        procs[name] = _spawn(name, ns, paths, deadline, device)
        assert procs[name].stdout is not None
        every = 10 if name == "alexnet" else 50
        log = ns.work / name / "train.log"
        t = threading.Thread(target=_forward, args=(name, procs[name].stdout, log, every))
        t.start()
        threads.append(t)
    exits: dict[str, int | None] = {}
    while len(exits) < len(procs):
        for name, proc in procs.items():
            if name not in exits and proc.poll() is not None:
                exits[name] = proc.returncode
                (ns.work / "barrier").mkdir(exist_ok=True)
                (ns.work / "barrier" / f"{name}.ready").touch()  # never keep a peer waiting
        if time.time() > deadline + KILL_GRACE_S:
            for name, proc in procs.items():
                if name not in exits:
                    print(f"[gpu_run] {name} is past the deadline: stopping it", flush=True)
                    proc.kill()
                    exits[name] = proc.wait()
        time.sleep(0.5)
    for t in threads:
        t.join()

    models: dict[str, Any] = {}
    members: list[Path] = []
    for name in ns.models:
        run_dir = ns.work / name
        result = run_dir / "result.json"
        models[name] = json.loads(result.read_text()) if result.is_file() else {}
        models[name]["exit"] = exits[name]
        members += [p for p in (run_dir / "export").glob("*") if p.is_file()]
        members += sorted(run_dir.glob("*.png")) + sorted(run_dir.glob("*.json*"))
        members += [run_dir / "train.log"]
    some: dict[str, Any] = next((r for r in models.values() if "device_name" in r), {})
    summary = {
        "device_name": some.get("device_name", device),
        "torch": torch.__version__,
        "budget_s": ns.budget_s,
        "wall_s": round(time.time() - start, 1),
        "models": models,
    }
    (ns.work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    parts = pack_results(ns.work, [*members, ns.work / "summary.json"], ns.out, ns.part_bytes)
    (ns.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(_summary_table(summary))
    sizes = ", ".join(f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in parts)
    print(f"returned in {ns.out}: {sizes}, {SUMS_FILE}, summary.json")
    print("back here: python -m training.gpu_run join <the returned files' folder> --to runs/gpu")
    return 0 if all(code == 0 for code in exits.values()) else 1


# --- command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.gpu_run",
        description="Train AlexNet on CIFAR-10 and the MNIST VAE on one GPU within a time budget.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "prepare",
        help="write the data bundle (and the wheels) that travel to the GPU machine",
        description="Pack CIFAR-10 (xz) and copy MNIST's gzipped idx files into --out; with "
        "--wheels, download the wheels of the packages the GPU image lacks.",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="datasets folder: cifar10/train (ImageFolder) and MNIST/raw (default: %(default)s)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("data/gpu"), help="bundle folder (default: %(default)s)"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="a dry run's bundle: the first N images of each CIFAR-10 class and MNIST split",
    )
    p.add_argument(
        "--wheels",
        type=Path,
        default=None,
        help="download the wheels of pydantic and its dependencies for Python 3.12 here (.whl)",
    )
    p = sub.add_parser(
        "run",
        help="train both models side by side on one device, then pack the results",
        description=__doc__.split("\n\n")[2] if __doc__ else None,
    )
    p.add_argument(
        "--data", type=Path, default=Path("data/gpu"), help="the bundle (default: %(default)s)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or "runs/gpu-out"),
        help="where the returned files go: the tar's parts, SHA256SUMS, summary.json "
        "(default: $OUT, else runs/gpu-out)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path("runs/gpu"),
        help="run directories: state, decoded-image cache, exports (default: %(default)s)",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="wall-clock seconds for everything, from start to the packed results; the "
        "epochs are planned to fit (default: %(default)s)",
    )
    p.add_argument("--device", default="cuda", help="default: %(default)s")
    p.add_argument(
        "--models", nargs="+", choices=MODELS, default=list(MODELS), help="default: both"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="on the CPU, one epoch each, a few importance samples: the whole path, quickly",
    )
    p.add_argument(
        "--part-mib",
        dest="part_bytes",
        type=lambda s: int(float(s) * 2**20),
        default=PART_BYTES,
        help=f"largest returned file, MiB (default: {PART_BYTES // 2**20})",
    )
    for name in MODELS:
        p.add_argument(
            f"--max-epochs-{name}",
            type=int,
            default=MAX_EPOCHS[name],
            help=f"cap on {name}'s epochs, whatever fits (default: %(default)s)",
        )
        p.add_argument(
            f"--{name}-args",
            default="",
            help=f"more flags of `python -m training {name}`, one string given with '=' "
            f"(--{name}-args='--epochs 5'); after the recipe's ({' '.join(RECIPES[name])}), so "
            "they override it",
        )
    p = sub.add_parser(
        "join",
        help="check the returned parts against SHA256SUMS, join and unpack them",
        description="Check, join and unpack the returned tar; run directories land in --to.",
    )
    p.add_argument("src", type=Path, help="folder holding gpu-run.tar.000, ... and SHA256SUMS")
    p.add_argument(
        "--to", type=Path, default=Path("runs/gpu"), help="destination (default: %(default)s)"
    )
    p = sub.add_parser("child", help="(internal) train one model for `run`")
    p.add_argument("model", choices=MODELS, help="which model")
    for flag in ("--run-dir", "--pack", "--mnist", "--device", "--barrier", "--extra"):
        p.add_argument(flag, required=True, help="given by `run`")
    p.add_argument("--deadline", type=float, required=True, help="epoch seconds to finish by")
    p.add_argument("--peers", nargs="+", required=True, help="the models training beside")
    p.add_argument("--max-epochs", type=int, required=True, help="cap on the epochs")
    p.add_argument("--budget-s", type=float, required=True, help="the run's budget, for the card")
    p.add_argument("--dry-run", action="store_true", help="one step of timing")
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        if ns.command == "prepare":
            sizes = prepare_inputs(ns.data_dir, ns.out, ns.limit)
            for name, size in sizes.items():
                print(f"{ns.out / name}: {size / 2**20:.1f} MiB")
            if ns.wheels is not None:
                for wheel in download_wheels(ns.wheels):
                    print(f"{wheel}: {wheel.stat().st_size / 2**20:.1f} MiB")
            return 0
        if ns.command == "join":
            names = join_results(ns.src, ns.to)
            print(f"unpacked {len(names)} files into {ns.to}")
            return 0
        if ns.command == "child":
            return train_one(ns)
        return run_all(ns)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
