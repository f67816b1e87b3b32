"""How long a task's training steps take on a device: for sizing a run to a time budget
(`training.gpu_run`) and for comparing number formats (`benchmarks.train_step`).

The steps run on a copy of the task's model with its own optimiser, so the task itself is left
as it was, random number generators included: a run sized this way trains exactly as it would
have without the measurement.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from training.devices import place_model, precision, use_amp
from training.loop import LoopOptions, Task, build_optimizer, build_scheduler, train_step


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock reads the time it took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepTimes:
    """Seconds per training step, one entry per timed block, and what one evaluation took."""

    block_step_s: list[float]
    # this process's CPU seconds (all its threads) per step, per block: on a shared machine,
    # where wall time also counts the waits for a core, what the steps themselves cost
    block_cpu_s: list[float]
    warmup_s: float  # the untimed first steps: allocation, autotuning, compilation
    evaluate_s: float  # 0 where not measured
    precision: str

    @property
    def step_s(self) -> float:
        """The median block's seconds per step."""
        ordered = sorted(self.block_step_s)
        return ordered[len(ordered) // 2]


def _cycle(batches: Any) -> Iterator[Any]:
    epoch = 0
    while True:
        batches.set_epoch(epoch)
        yield from batches
        epoch += 1


def time_steps(
    task: Task,
    opts: LoopOptions,
    device: torch.device,
    blocks: int = 3,
    block_steps: int = 10,
    warmup: int = 3,
    evaluate: bool = True,
) -> StepTimes:
    """Time `blocks` blocks of `block_steps` training steps of a copy of `task.model` on real
    batches, after `warmup` untimed steps, as `fit` runs them (same placement, optimiser,
    schedule, clipping, autocast and compilation); then, with `evaluate`, one evaluation on the
    held-out split.

    The device is synchronised only at block ends, so host and device overlap as in training.
    """
    if len(task.train_batches) == 0:
        raise ValueError("no full training batch to time: fewer examples than the batch size")
    rng_cpu = torch.get_rng_state()
    rng_cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    model = place_model(copy.deepcopy(task.model), device)
    stepped: torch.nn.Module = torch.compile(model) if opts.compile else model  # type: ignore[assignment]
    optimizer = build_optimizer(model.parameters(), opts)
    scheduler = build_scheduler(optimizer, opts, len(task.train_batches))
    amp = use_amp(opts.amp, device)
    batches = _cycle(task.train_batches)
    clip = opts.clip_grad
    model.train()

    def run(n: int) -> tuple[float, float]:
        synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            batch = next(batches)
            train_step(stepped, batch, task.step_fn, optimizer, scheduler, device, amp, clip)
        synchronize(device)
        return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n

    warmup_s = run(warmup)[0] * warmup
    timed = [run(block_steps) for _ in range(blocks)]
    block_step_s, block_cpu_s = [wall for wall, _ in timed], [cpu for _, cpu in timed]
    evaluate_s = 0.0
    if evaluate:
        model.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            task.evaluate(model, 0)
        synchronize(device)
        evaluate_s = time.perf_counter() - t0
    torch.set_rng_state(rng_cpu)
    if rng_cuda is not None:
        torch.cuda.set_rng_state(rng_cuda, device)
    task.train_batches.set_epoch(0)
    return StepTimes(block_step_s, block_cpu_s, warmup_s, evaluate_s, precision(amp))
