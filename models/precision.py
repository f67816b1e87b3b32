"""The number format a classifier is served in, chosen once when it is loaded for inference.

bfloat16 keeps float32's exponent range with an 8-bit mantissa: on CUDA devices that support it
and on CPUs with AMX-BF16 or AVX512-BF16 (`models.hardware.bf16_native`) convolutions and matrix
products run on native bf16 instructions, with half the weight and activation bytes to move.
Where bf16 is emulated it is slower than float32, so `auto` never picks it there, and costs
nothing: nothing is timed. On a CPU whose flags report bf16 the flags do not say how fast this
build's kernels are for this model at these batch sizes (on the 2-core AMD EPYC with AVX512-BF16
and no AMX of this project's runs, bf16 ran the AlexNets 1.4-1.75x faster in CPU time, yet 0.6x
as fast at batch 1 by the wall clock while other work shared the cores;
`python -m benchmarks.dtype`), so `auto` times both at load, each as it will be served (with its
own packed fully connected layers, `models.prepack`), and keeps the faster (`fastest`). On CUDA
bf16 is taken without timing: the devices that support it run it on tensor cores.

float16 is only ever taken when asked for. On a CPU without native float16 arithmetic (none of
this project's machines has AVX512-FP16 or AMX-FP16) PyTorch computes it correctly but 2.5-5x
slower than float32 (the AlexNets at batch 1 and 8, CPU time on one AMD EPYC thread); a model whose float16 forward fails or overflows (`trial_failure`) is
served in float32 instead, with the reason logged.

Only the network's arithmetic changes: the predictor casts each batch after preprocessing and
takes the softmax and the top-k in float32 (`app.predictors`). VAEs always run in float32.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, TypeVar

import torch
from torch import Tensor, nn

from models.hardware import bf16_native

log = logging.getLogger("models.precision")
K = TypeVar("K")
DtypeSetting = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16", as settings, the API and metrics spell it."""
    return str(dtype).removeprefix("torch.")


def candidates(setting: DtypeSetting, device: torch.device) -> tuple[torch.dtype, ...]:
    """The formats a classifier on `device` may run in under `setting`, float32 first; more than
    one means time them (`fastest`). auto: bf16 alone on a CUDA device that supports it,
    float32 and bf16 on a CPU with native bf16, float32 alone elsewhere."""
    if setting != "auto":
        return (DTYPES[setting],)
    if not bf16_native(device):
        return (torch.float32,)
    if device.type == "cuda":
        return (torch.bfloat16,)
    return (torch.float32, torch.bfloat16)


def slow_format(dtype: torch.dtype, device: torch.device) -> str | None:
    """Why an explicitly asked-for `dtype` runs slower than float32 on `device` (for a log
    line), or None when it should not."""
    if dtype == torch.bfloat16 and not bf16_native(device):
        return "this device has no native bf16 arithmetic: it is emulated, slower than float32"
    if dtype == torch.float16 and device.type == "cpu":
        return (
            "CPUs without AVX512-FP16 compute float16 2.5-5x slower than float32 "
            "(docs/precision.md); bfloat16 is the fast format of CPUs that have one"
        )
    return None


def trial_failure(model: nn.Module, x: Tensor) -> str | None:
    """Why `model` cannot serve in its format (its forward on `x` raises, or gives a value that
    is not finite), or None when it can."""
    try:
        with torch.inference_mode():
            out = model(x)
    except (RuntimeError, NotImplementedError) as e:  # a kernel missing for this dtype
        return f"forward failed: {e}"
    if not torch.isfinite(out).all():
        return "forward gave values that are not finite (overflow)"
    return None


def forward_samples(
    models: Mapping[K, nn.Module],
    example: Callable[[int, K], Tensor],
    batches: Sequence[int],
    repeat: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[K, list[list[float]]]:
    """Milliseconds of each model's forward at each batch size, `repeat` times, on
    `example(batch, key)` input, after one call to warm it; the models take turns within every
    repeat, so a busy spell on a shared machine slows all of them alike. `clock`: wall time,
    or `time.process_time` for the CPU time the calls took (benchmarks on a shared machine)."""
    out: dict[K, list[list[float]]] = {k: [] for k in models}
    with torch.inference_mode():
        for b in batches:
            xs = {k: example(b, k) for k in models}
            for k, m in models.items():
                m(xs[k])
                out[k].append([])
            for _ in range(repeat):
                for k, m in models.items():
                    t = clock()
                    m(xs[k])
                    if xs[k].device.type == "cuda":
                        torch.cuda.synchronize(xs[k].device)
                    out[k][-1].append((clock() - t) * 1e3)
    return out


def forward_ms(
    models: Mapping[torch.dtype, nn.Module],
    example: Callable[[int, torch.dtype], Tensor],
    batches: Sequence[int],
    repeat: int = 3,
) -> dict[torch.dtype, list[float]]:
    """Median milliseconds of each format's forward at each batch size (`forward_samples`)."""
    samples = forward_samples(models, example, batches, repeat)
    return {dt: [statistics.median(ts) for ts in per_batch] for dt, per_batch in samples.items()}


def fastest(timings: Mapping[torch.dtype, Sequence[float]], margin: float = 0.05) -> torch.dtype:
    """The first format (float32) unless another one's forward times, per batch size, have a
    geometric mean ratio to the first's below 1 - `margin`: latency at batch 1 and throughput
    at the largest batch count alike, and a tie keeps the exact format."""
    first, *others = timings
    best, best_ratio = first, 1.0 - margin
    for dt in others:
        ratios = [t / t0 for t, t0 in zip(timings[dt], timings[first], strict=True)]
        ratio = math.exp(statistics.fmean(math.log(r) for r in ratios))
        if ratio < best_ratio:
            best, best_ratio = dt, ratio
    return best


def choose_format(
    model: nn.Module,
    formats: Sequence[torch.dtype],
    example: Callable[[int, torch.dtype], Tensor],
    prepare: Callable[[nn.Module], nn.Module],
    batches: Sequence[int],
    name: str,
    asked: bool,
) -> nn.Module:
    """`model` (float32, unprepared) in the fastest of `formats` that runs (`trial_failure`),
    each `prepare`d (packed) as it will serve before it is timed at `batches` (`forward_ms`,
    `fastest`); float32 where none runs. `asked`: the format was set explicitly, so a slow
    one is logged (`slow_format`). `example(batch, dtype)`: input of the model's shape."""
    device = next(model.parameters()).device
    # Other formats are copies of the float32 model, made before it is prepared (a packed
    # layer cannot be copied); float32 stays first, the reference `fastest` compares with.
    variants: dict[torch.dtype, nn.Module] = {}
    for dt in sorted(formats, key=lambda dt: dt == torch.float32):
        m = model if dt == torch.float32 else copy.deepcopy(model).to(dt)
        failure = None if dt == torch.float32 else trial_failure(m, example(1, dt))
        if failure is not None:
            log.warning("model %s cannot run in %s (%s)", name, dtype_name(dt), failure)
            continue
        if asked and (slow := slow_format(dt, device)):
            log.warning("model %s runs in %s as asked: %s", name, dtype_name(dt), slow)
        variants[dt] = prepare(m)
    if not variants:  # an explicit format that does not run here
        log.warning("model %s runs in float32 instead", name)
        variants[torch.float32] = prepare(model)
    variants = dict(sorted(variants.items(), key=lambda kv: kv[0] != torch.float32))
    if len(variants) == 1:
        return next(iter(variants.values()))
    timings = forward_ms(variants, example, batches)
    chosen = fastest(timings)
    ms = "; ".join(
        f"{dtype_name(dt)} " + "/".join(f"{t:.2f}" for t in ts) for dt, ts in timings.items()
    )
    log.info(
        "model %s runs in %s (dtype auto; forward ms at batch %s: %s)",
        name,
        dtype_name(chosen),
        "/".join(map(str, batches)),
        ms,
    )
    return variants[chosen]
