"""One model's process in `python -m training.gpu_run run` (its `child` command): time the
training steps on real batches while the other model does the same, plan as many epochs as fit
the time left, train them on the shared loop with the model's recipe, and evaluate the
checkpoint as its card reports it; the result goes to result.json in the run directory."""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from models.vae import VAE
from training import alexnet, alexnet_eval, vae
from training.cli import build_parser as training_parser
from training.cli import loop_options
from training.data import load_mnist
from training.devices import setup_distributed
from training.loop import fit, save_state
from training.timing import StepTimes, synchronize, time_steps

# Flags of `python -m training <model>` beyond its defaults, on the GPU
RECIPES = {
    "alexnet": ["--preset", "alexnet-small", "--dataset", "cifar10", "--amp", "bf16"],
    # the IWAE paper's VAE anchors (two deterministic layers, 50 latent units) made wider;
    # fp32: the steps are launch-bound, so bf16 would save no time and cost likelihood digits
    "vae": [
        *("--dataset", "mnist", "--depth", "2", "--hidden", "500", "--latent", "50"),
        *("--schedule", "cosine", "--amp", "off"),
    ],
}
# A dry run: batches that tiny data fills, and one epoch
DRY_RUN = {"alexnet": ["--val-size", "6", "--batch-size", "8"], "vae": ["--batch-size", "10"]}
# Importance samples and batching of the final log p(x): (k, images per batch, samples per pass)
VAE_EVAL = {"gpu": (5000, 100, 1000), "dry": (10, 10, 10)}
EPOCH_SAFETY = 0.9  # the share of the time left that the planned epochs may fill
FIXED_RESERVE_S = 15.0  # figures, export and the final card per model
EPOCH_BOOKKEEPING_S = 0.01  # an epoch's metrics line, log line and schedule bookkeeping
BARRIER_TIMEOUT_S = 300.0


def _barrier(directory: Path, name: str, peers: list[str]) -> None:
    """Wait until every peer has loaded its data and model, so each times its steps while the
    other runs too (as it will train) rather than while the other is still decoding images."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.ready").touch()
    waited = time.monotonic() + BARRIER_TIMEOUT_S
    while time.monotonic() < waited:
        if all((directory / f"{p}.ready").exists() for p in peers):
            return
        time.sleep(0.1)


def _final_eval_s(
    name: str,
    task_model: torch.nn.Module,
    times: StepTimes,
    mnist: Path,
    device: torch.device,
    dry: bool,
) -> float:
    """What the final evaluation will take: ten crops are ten centre-crop evaluations; the
    VAE's log p(x) is timed on one batch of test digits and scaled to all of them."""
    if name == "alexnet":
        return 10 * times.evaluate_s
    k, batch, chunk = VAE_EVAL["dry" if dry else "gpu"]
    test_u8, _ = load_mnist(mnist, train=False)
    x = vae.binarize_fixed(test_u8[:batch])
    model = copy.deepcopy(task_model).to(device).eval()
    assert isinstance(model, VAE)
    synchronize(device)
    t0 = time.perf_counter()
    vae.importance_log_px(model, x, k, batch, chunk)
    synchronize(device)
    return (time.perf_counter() - t0) * len(test_u8) / len(x)


def _save_s(model: torch.nn.Module, run_dir: Path) -> float:
    """Seconds the per-epoch resumable state takes to write: weights and two optimiser moments
    per weight (Adam's; SGD's one is less), the slower of two writes, as `fit` writes it."""
    weights = model.state_dict()
    moments = {k: (v.clone(), v.clone()) for k, v in weights.items()}  # own storage: full size
    probe, times = run_dir / "probe.pt", []
    for _ in range(2):
        t0 = time.perf_counter()
        save_state(probe, {"model": weights, "optimizer": moments})
        times.append(time.perf_counter() - t0)
    probe.unlink()
    return max(times) + EPOCH_BOOKKEEPING_S


def train_one(ns: argparse.Namespace) -> int:
    """The `child` command: plan the epochs of one model from its measured steps, train, evaluate."""
    name, run_dir, dry = ns.model, Path(ns.run_dir), ns.dry_run
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = [name, *RECIPES[name], "--run-dir", str(run_dir), "--device", ns.device]
    if name == "alexnet":
        argv += ["--packed", ns.pack, "--cache-dir", str(run_dir / "cache")]
    else:
        argv += ["--data-dir", ns.mnist]
    argv += ["--no-progress", *(DRY_RUN[name] if dry else []), *shlex.split(ns.extra)]
    targs = training_parser().parse_args(argv)
    device, info = setup_distributed(targs.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolutions once
    module = alexnet if name == "alexnet" else vae
    task = module.build_task(targs, device, 1, 0)
    _barrier(Path(ns.barrier), name, ns.peers)

    opts = loop_options(targs)
    blocks, block_steps, warmup = (1, 1, 1) if dry else (3, 20, 10)
    times = time_steps(task, opts, device, blocks, block_steps, warmup)
    final_s = _final_eval_s(name, task.model, times, Path(ns.mnist), device, dry)
    epoch_s = (
        len(task.train_batches) * times.step_s + times.evaluate_s + _save_s(task.model, run_dir)
    )
    left = ns.deadline - time.time() - 1.5 * final_s - FIXED_RESERVE_S
    fitting = int(EPOCH_SAFETY * left / epoch_s)
    epochs = max(1, min(ns.max_epochs, fitting))
    plan = {
        "step_s": round(times.step_s, 5),
        "warmup_s": round(times.warmup_s, 2),
        "evaluate_s": round(times.evaluate_s, 3),
        "epoch_s_planned": round(epoch_s, 3),
        "final_eval_s_planned": round(final_s, 1),
        "epochs_fitting": fitting,
        "epochs": epochs,
    }
    print(f"plan: {json.dumps(plan)}", file=sys.stderr, flush=True)
    opts.epochs = targs.epochs = epochs
    task.extra_training["command"] = "python -m training " + shlex.join(
        [*argv, "--epochs", str(epochs)]
    )
    task.extra_training["epochs_from"] = (
        f"python -m training.gpu_run: a {ns.budget_s:.0f} s budget for both models side by side "
        f"on one device, {times.step_s * 1e3:.2f} ms per step measured first"
    )
    t0 = time.time()
    card = fit(task, opts, device, info)
    train_s = time.time() - t0

    t0 = time.time()
    export = str(run_dir / "export")
    common = ["--device", ns.device, "--no-progress"]
    if name == "alexnet":
        cache = str(run_dir / "cache")
        eargs = ["eval-alexnet", export, "--packed", ns.pack, "--cache-dir", cache, "--ten-crop"]
    else:
        k, batch, chunk = VAE_EVAL["dry" if dry else "gpu"]
        eargs = ["eval-vae", export, "--data-dir", ns.mnist, "--k", str(k)]
        eargs += ["--batch-size", str(batch), "--chunk", str(chunk)]
    evaluator = alexnet_eval if name == "alexnet" else vae
    card = evaluator.evaluate_checkpoint(training_parser().parse_args([*eargs, *common]))
    result = {
        "model": card.name,
        "plan": plan,
        "train_s": round(train_s, 1),
        "final_eval_s": round(time.time() - t0, 1),
        "precision": card.training["precision"],
        "device_name": card.training["machine"]["device_name"],
        "torch": torch.__version__,
        "metrics": card.metrics,
        "evaluation": {k: v for k, v in card.training.items() if k.startswith("log_px_evaluation")},
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0
