"""The one training loop every model shares: device, AMP, DDP, checkpointing, logging.

A model module (`training/vae.py`, `training/alexnet.py`) builds a `Task`: the model, its
batches, a step function returning the loss, an evaluation function and a card builder. `fit`
does the rest, the same way on one CPU or many GPUs under torchrun:

    torchrun --nproc-per-node 8 -m training alexnet ...

Only rank 0 writes files (metrics.jsonl, state.pt, the exported checkpoint, figures).
The device, the process group and bf16 autocast come from `training.devices`.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from models.checkpoint import CARD_FILE, ModelCard, save_checkpoint
from training.devices import (
    DistInfo,
    all_reduce_sum,
    autocast,
    machine_info,
    place_model,
    precision,
    use_amp,
)

# Without a terminal (a log file, `docker compose logs`) an epoch logs a progress line this often.
LOG_EVERY_S = 60.0

# (model, batch) -> (mean loss over the batch, number of examples in it)
StepFn = Callable[[nn.Module, Any], tuple[Tensor, int]]


class Batches(Protocol):
    """What `train` iterates: batches, a length, and a per-epoch reshuffle."""

    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


@dataclass
class Task:
    """Everything model-specific the shared loop needs."""

    model: nn.Module
    train_batches: Batches
    step_fn: StepFn
    # (raw model, epoch) -> metrics of the held-out split; runs on rank 0 only, under no_grad
    evaluate: Callable[[nn.Module, int], dict[str, float]]
    # (metrics, training settings) -> the model card to export
    make_card: Callable[[dict[str, float], dict[str, Any]], ModelCard]
    # metric deciding "best so far" and whether larger is better
    best_metric: tuple[str, bool]
    # (raw model, run dir) -> None: pictures at the end of training
    make_figures: Callable[[nn.Module, Path], None] | None = None
    # extra settings recorded in the card's `training` section
    extra_training: dict[str, Any] = field(default_factory=dict)
    # name of the epoch's mean training loss in metrics.jsonl and the card, and its sign there
    # (the VAE logs train_elbo = -loss, beside test_elbo)
    loss_metric: tuple[str, float] = ("train_loss", 1.0)


@dataclass
class LoopOptions:
    """Settings of the shared loop (the CLI's common options)."""

    run_dir: Path
    epochs: int
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    batch_size: int = 100
    clip_grad: float | None = None
    device: str = "auto"
    compile: bool = False
    amp: str = "auto"  # one of AMP_MODES
    progress: bool = True
    resume: bool = False
    export: Path | None = None
    export_best: bool = False
    seed: int = 0

    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.pt"

    @property
    def export_dir(self) -> Path:
        return self.export or self.run_dir / "export"


def train_step(
    model: nn.Module,
    batch: Any,
    step_fn: StepFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    amp: bool,
    clip_grad: float | None = None,
) -> tuple[Tensor, int]:
    """One optimisation step: loss under autocast, backward, clip, update, schedule.

    Returns the detached loss (on the device: reading it would wait for the step) and the
    number of examples."""
    with autocast(device, amp):
        loss, n = step_fn(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    scheduler.step()
    return loss.detach(), n


def _trim_metrics(path: Path, keep_epochs: int) -> None:
    """Keep the lines of the first `keep_epochs` epochs of a run directory's metrics.jsonl:
    all of them on resume, none on a fresh start, so the curves never mix two runs."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(
        "".join(ln for ln in lines if ln.strip() and json.loads(ln)["epoch"] <= keep_epochs)
    )


def build_optimizer(params: Iterable[nn.Parameter], opts: LoopOptions) -> torch.optim.Optimizer:
    """Adam, Adagrad or SGD with momentum, from the options."""
    if opts.optimizer == "adam":
        return torch.optim.Adam(params, lr=opts.lr, weight_decay=opts.weight_decay)
    if opts.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=opts.lr, weight_decay=opts.weight_decay)
    if opts.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=opts.lr,
            momentum=opts.momentum,
            weight_decay=opts.weight_decay,
            nesterov=False,
        )
    raise ValueError(f"unknown optimizer {opts.optimizer!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, opts: LoopOptions, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A learning-rate schedule stepped once per batch, over the whole run."""
    total = max(1, opts.epochs * steps_per_epoch)
    if opts.schedule == "onecycle":
        # The learning rate only: OneCycleLR's default also cycles SGD's momentum (0.95 -> 0.85
        # -> 0.95), overriding --momentum, and fails outright on Adagrad, which has none.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=opts.lr, total_steps=total, cycle_momentum=False
        )
    if opts.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if opts.schedule == "step":  # x0.1 at half and three quarters of the run
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[total // 2, (3 * total) // 4], gamma=0.1
        )
    if opts.schedule == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ValueError(f"unknown schedule {opts.schedule!r}")


def train(
    batches: Batches,
    model: nn.Module,
    step_fn: StepFn,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    device: torch.device,
    opts: LoopOptions,
    show_progress: bool = True,
    log_every_s: float | None = None,
) -> float:
    """One epoch over `batches`; returns the example-weighted mean loss over all ranks.

    `show_progress`: a tqdm bar (on a terminal). `log_every_s`: otherwise (a log file, `docker
    compose logs`), one plain line at most that often, so a long epoch is not silent.
    """
    from tqdm import tqdm

    model.train()
    amp = use_amp(opts.amp, device)
    # running sums stay on the device: no host sync per step, only when the bar refreshes
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # (loss * n, n)
    desc = f"epoch {epoch + 1}/{opts.epochs}"
    bar = tqdm(batches, desc=desc, disable=not show_progress)
    start = last_log = time.perf_counter()
    for i, batch in enumerate(bar):
        loss, n = train_step(
            model, batch, step_fn, optimizer, scheduler, device, amp, opts.clip_grad
        )
        totals[0] += loss.double() * n
        totals[1] += n
        if show_progress and i % 20 == 0:
            bar.set_postfix(loss=f"{(totals[0] / totals[1]).item():.4g}")
        if log_every_s is not None and time.perf_counter() - last_log >= log_every_s:
            last_log = time.perf_counter()
            loss_so_far, seen = (totals[0] / totals[1]).item(), int(totals[1].item())
            rate = seen / (last_log - start)
            print(
                f"{desc} step {i + 1}/{len(batches)} loss={loss_so_far:.4g} {rate:.0f} examples/s",
                file=sys.stderr,
                flush=True,
            )
    totals = all_reduce_sum(totals)
    return (totals[0] / totals[1].clamp_min(1)).item()


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write the resumable state atomically (a crash mid-write keeps the previous file)."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def fit(task: Task, opts: LoopOptions, device: torch.device, info: DistInfo) -> ModelCard | None:
    """Train `task` for opts.epochs, logging, checkpointing and exporting; rank 0 returns the card.

    `device` and `info` come from `setup_distributed`, called before the task is built so the
    task can put its data on the device and shard it.
    """
    show = opts.progress and info.is_main and sys.stderr.isatty()
    log_every_s = LOG_EVERY_S if opts.progress and info.is_main and not show else None
    raw = place_model(task.model, device)
    model: nn.Module = raw
    if info.world_size > 1:
        model = DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None
        )
    if opts.compile:
        model = torch.compile(model)  # type: ignore[assignment]

    optimizer = build_optimizer(raw.parameters(), opts)
    scheduler = build_scheduler(optimizer, opts, len(task.train_batches))
    start_epoch, elapsed = 0, 0.0
    best: float | None = None
    metrics: dict[str, float] = {}
    # Earlier plans of a run made longer or shorter on resume: [{"epochs", "until_epoch"}, ...]
    schedule_history: list[dict[str, int]] = []
    if opts.resume and opts.state_path.is_file():
        state = torch.load(opts.state_path, map_location="cpu", weights_only=True)
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule_history = list(state.get("schedule_history", []))
        if state["epochs"] == opts.epochs:
            scheduler.load_state_dict(state["scheduler"])
        else:  # a longer (or shorter) run: the new schedule, advanced to where we stand
            # The schedulers compute each rate from the last one, and the loaded optimiser holds
            # the old run's last rate (0 at the end of a cosine): restart from the initial rates.
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"]
            scheduler = build_scheduler(optimizer, opts, len(task.train_batches))
            schedule_history.append({"epochs": state["epochs"], "until_epoch": state["epoch"]})
            with warnings.catch_warnings():  # "step() before optimizer.step()": intended here
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(state["epoch"] * len(task.train_batches)):
                    scheduler.step()
        start_epoch, elapsed, best = state["epoch"], state["elapsed_s"], state["best"]
        metrics = state["metrics"]
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        if info.is_main:
            print(f"resumed from {opts.state_path} at epoch {start_epoch}", file=sys.stderr)
    elif opts.resume and info.is_main:
        print(f"no {opts.state_path} to resume from; starting afresh", file=sys.stderr)

    if info.is_main:
        opts.run_dir.mkdir(parents=True, exist_ok=True)
        _trim_metrics(opts.run_dir / "metrics.jsonl", start_epoch)
    key, larger_better = task.best_metric
    settings = {
        "epochs": opts.epochs,
        "batch_size": opts.batch_size,
        "global_batch_size": opts.batch_size * info.world_size,
        "samples_per_epoch": len(task.train_batches) * opts.batch_size * info.world_size,
        "optimizer": opts.optimizer,
        "lr": opts.lr,
        "momentum": opts.momentum if opts.optimizer == "sgd" else None,
        "weight_decay": opts.weight_decay,
        "schedule": opts.schedule,
        "clip_grad": opts.clip_grad,
        "amp": opts.amp,
        "precision": precision(use_amp(opts.amp, device)),
        "compile": opts.compile,
        "seed": opts.seed,
        "machine": machine_info(device, info.world_size),
        **task.extra_training,
    }
    if schedule_history:  # the card says the schedule restarted, and where
        settings["schedule_history"] = schedule_history

    def export(epoch_metrics: dict[str, float], epochs_done: int) -> ModelCard:
        training = {**settings, "epochs_completed": epochs_done, "wall_time_s": round(elapsed, 1)}
        return save_checkpoint(opts.export_dir, raw, task.make_card(epoch_metrics, training))

    card = None
    for epoch in range(start_epoch, opts.epochs):
        task.train_batches.set_epoch(epoch)
        t0 = time.perf_counter()
        loss = train(
            task.train_batches,
            model,
            task.step_fn,
            optimizer,
            scheduler,
            epoch,
            device,
            opts,
            show,
            log_every_s,
        )
        train_s = time.perf_counter() - t0
        if info.is_main:
            raw.eval()
            with torch.no_grad():
                name, sign = task.loss_metric
                metrics = {name: sign * loss, **task.evaluate(raw, epoch)}
            elapsed += time.perf_counter() - t0
            line = {
                "epoch": epoch + 1,
                **metrics,
                "lr": scheduler.get_last_lr()[0],
                "epoch_s": round(train_s, 2),
                "elapsed_s": round(elapsed, 1),
            }
            with (opts.run_dir / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(line) + "\n")
            print(
                " ".join(
                    f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()
                ),
                file=sys.stderr,
            )
            value = metrics.get(key, math.nan)
            improved = best is None or (value > best if larger_better else value < best)
            if improved:
                best = value
                if opts.export_best:
                    card = export(metrics, epoch + 1)
            state = {
                "model": raw.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "epochs": opts.epochs,
                "elapsed_s": elapsed,
                "best": best,
                "metrics": metrics,
                "rng_cpu": torch.get_rng_state(),
                "schedule_history": schedule_history,
            }
            if device.type == "cuda":
                state["rng_cuda"] = torch.cuda.get_rng_state(device)
            save_state(opts.state_path, state)
        if dist.is_initialized():
            dist.barrier()

    if info.is_main:
        # with --export-best the best epoch's export stays (possibly from before a resume)
        if not (opts.export_best and (opts.export_dir / "config.json").is_file()):
            card = export(metrics, opts.epochs)
        if task.make_figures is not None:
            raw.eval()
            task.make_figures(raw, opts.run_dir)
        print(f"exported {opts.export_dir}", file=sys.stderr)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return card if info.is_main else None


def update_card(
    directory: Path, card: ModelCard, metrics: dict[str, float], **training: Any
) -> ModelCard:
    """Rewrite only a checkpoint's card with new metrics (and training notes).

    The weights file is not touched, so the card's weights_sha256 stays valid; created_at and
    code_version are kept too: they describe the weights, not this evaluation.
    """
    update = {"metrics": {**card.metrics, **metrics}, "training": {**card.training, **training}}
    card = card.model_copy(update=update)
    tmp = directory / f"{CARD_FILE}.tmp"
    tmp.write_text(card.model_dump_json(indent=2) + "\n")
    tmp.replace(directory / CARD_FILE)
    return card
