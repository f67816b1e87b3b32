"""int8 AlexNet on the CPU: does PyTorch's quantisation keep top-1 within 0.5 points of float32
and beat bfloat16? (MODELSERVE_DTYPE would gain an int8 only if both hold.)

Contenders, all on the shipped alexnet-cifar10 and its validation split (the card's seeded
5,000 held-out training images, centre crops, as `eval-alexnet` scores them):

* float32 and bfloat16 as the service loads them (`app.loading.load_for_inference`);
* int8 dynamic: `torch.ao.quantization.quantize_dynamic`, fully connected layers only (weights
  int8, activations quantised per batch), convolutions in float32;
* int8 static: FX graph mode with the x86 backend (`get_default_qconfig_mapping("x86")`,
  oneDNN/FBGEMM int8 kernels, VNNI where the CPU has it): convolutions and fully connected
  layers int8, calibrated on 512 training images outside the validation split; LRN stays float
  (a leaf the tracer does not enter; its branch on the device cannot be traced).

Prints top-1/top-5 and forward times at batch 1/8/32 (taking turns, `--threads` threads;
fastest call, median in the JSON; `--clock cpu` for CPU time per call, as `benchmarks.dtype`),
then the verdict, and writes JSON.

    python -m benchmarks.experiments.int8 --data-dir ../shared/datasets --cache-dir /tmp/cifar
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from app.loading import load_for_inference
from benchmarks.dtype import CLOCKS
from models.alexnet import LocalResponseNorm
from models.checkpoint import ModelCard, load_checkpoint
from models.hardware import cpu_bf16_flags, cpu_fields, cpu_model_name
from models.precision import forward_samples
from training.augment import center_crop
from training.classification import normalize, topk_errors
from training.data import load_small_images, split_indices

SHIPPED = Path("models/alexnet-cifar10")
CALIBRATION = 512


def images(card: ModelCard, data_dir: Path, cache_dir: Path | None) -> tuple[Tensor, ...]:
    """(val images, val labels, calibration images): normalised centre crops, float32."""
    t = card.training
    data = load_small_images(
        data_dir, card.dataset.name, size=card.input.resize or 32, cache_dir=cache_dir,
        progress=False,
    )  # fmt: skip
    train, val = split_indices(int(t["dataset_size"]), int(t["val_size"]), card.dataset.seed or 0)
    mean, std = torch.tensor(card.input.mean), torch.tensor(card.input.std)

    def prep(idx: Tensor) -> Tensor:
        x = center_crop(data.images[idx].float().div_(255), card.input.size[0])
        return normalize(x, mean, std).contiguous(memory_format=torch.channels_last)

    calib = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))]
    return prep(val), data.labels[val], prep(calib[:CALIBRATION].sort().values)


def static_int8(model: nn.Module, calib: Tensor) -> nn.Module:
    """FX graph mode post-training static quantisation with the x86 backend."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    custom = PrepareCustomConfig().set_non_traceable_module_classes([LocalResponseNorm])
    prepared = prepare_fx(
        copy.deepcopy(model), get_default_qconfig_mapping("x86"), (calib[:1],),
        prepare_custom_config=custom,
    )  # fmt: skip
    with torch.inference_mode():
        for i in range(0, len(calib), 64):
            prepared(calib[i : i + 64])
    return convert_fx(prepared)


def scores(model: nn.Module, x: Tensor, dtype: torch.dtype, batch: int = 250) -> Tensor:
    """Softmax (N, C) in float32 of `model` on `x` cast to `dtype`."""
    with torch.inference_mode():
        return torch.cat(
            [torch.softmax(model(x[i : i + batch].to(dtype)).float(), 1)
             for i in range(0, len(x), batch)]
        )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--cache-dir", type=Path, default=None, help="decoded-image cache")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--clock", choices=list(CLOCKS), default="wall", help="as benchmarks.dtype")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/int8-cpu.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    plain, card = load_checkpoint(SHIPPED)
    val_x, val_y, calib = images(card, args.data_dir, args.cache_dir)
    top = max(args.batches)
    plain = plain.to(memory_format=torch.channels_last)
    models: dict[str, tuple[nn.Module, torch.dtype]] = {
        "float32": (load_for_inference(SHIPPED, "cpu", True, "auto", top, "float32")[0],
                    torch.float32),
        "bfloat16": (load_for_inference(SHIPPED, "cpu", True, "auto", top, "bfloat16")[0],
                     torch.bfloat16),
        "int8 dynamic (fc)": (torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(plain), {nn.Linear}, dtype=torch.qint8), torch.float32),
        "int8 static (x86)": (static_int8(plain, calib), torch.float32),
    }  # fmt: skip
    ref = scores(models["float32"][0], val_x, torch.float32)
    acc: dict[str, dict[str, float]] = {}
    for name, (m, dt) in models.items():
        s = scores(m, val_x, dt)
        err = topk_errors(s, val_y)
        acc[name] = {"top1": 100 * (1 - err[1]), "top5": 100 * (1 - err[5]),
                     "top1_agree": (s.argmax(1) == ref.argmax(1)).float().mean().item()}  # fmt: skip
    samples = forward_samples(
        {k: m for k, (m, _) in models.items()},
        lambda b, k: val_x[:b].to(models[k][1]),
        args.batches,
        args.repeat,
        CLOCKS[args.clock],
    )
    print(f"{cpu_model_name()} (family {cpu_fields().get('cpu family')}), bf16 flags "
          f"{cpu_bf16_flags()}, threads={args.threads}, {args.clock} clock, load average {os.getloadavg()[0]:.1f}, "
          f"{len(val_y)} validation images")  # fmt: skip
    cols = " | ".join(f"ms b={b}" for b in args.batches)
    print(f"| variant | top-1 % | top-5 % | same top-1 as fp32 | {cols} | img/s b={top} |")
    print("|---|---|---|---|" + "---|" * (len(args.batches) + 1))
    rows: list[dict[str, Any]] = []
    for name in models:
        fastest = [min(ts) for ts in samples[name]]
        a = acc[name]
        rows.append({"variant": name, **a, "batches": args.batches, "min_ms": fastest,
                     "median_ms": [statistics.median(ts) for ts in samples[name]]})  # fmt: skip
        ms = " | ".join(f"{t:.2f}" for t in fastest)
        print(f"| {name} | {a['top1']:.2f} | {a['top5']:.2f} | {a['top1_agree']:.4f} | {ms} "
              f"| {top * 1e3 / fastest[-1]:.0f} |")  # fmt: skip
    bf16 = next(r for r in rows if r["variant"] == "bfloat16")
    verdict = {}
    for r in rows:
        if r["variant"].startswith("int8"):
            close = abs(r["top1"] - acc["float32"]["top1"]) <= 0.5
            # time relative to bf16, geometric mean over the batch sizes (as auto weighs them)
            ratio = statistics.geometric_mean(
                t / b for t, b in zip(r["min_ms"], bf16["min_ms"], strict=True)
            )
            faster = ratio < 0.95
            verdict[r["variant"]] = {"top1_within_0.5": close, "time_vs_bf16": ratio,
                                     "faster_than_bf16": faster, "keep": close and faster}  # fmt: skip
            print(f"{r['variant']}: top-1 within 0.5 points of float32: {close}; time against "
                  f"bfloat16 {ratio:.2f}x (geometric mean over batches) -> "
                  f"{'keep' if close and faster else 'drop'}")  # fmt: skip
    from benchmarks.run import machine

    report = {"machine": machine(), "threads": args.threads, "repeat": args.repeat, "clock": args.clock,
              "torch": torch.__version__, "quantized_engine": torch.backends.quantized.engine,
              "load_average_after": os.getloadavg(), "rows": rows, "verdict": verdict}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
