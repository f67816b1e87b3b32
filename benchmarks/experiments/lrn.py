"""Local response normalisation: ours (models.alexnet) against torch.nn.LocalResponseNorm.

Times the forward pass (inference) and forward + backward (training) at the shapes LRN sees in
alexnet-small and the ImageNet preset (after conv1 and conv2) for serving and training batch
sizes, in NCHW and channels-last, on this machine's CPU (or CUDA with --device cuda). Our
inference forward runs the batch a slice at a time on a CPU; "whole" is the same forward on the
whole batch at once, for what slicing saves. Prints a table and writes JSON.

    python -m benchmarks.experiments.lrn --threads 1 --out benchmarks/results/lrn.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.alexnet import LocalResponseNorm, _LRNFunction

# (B, C, H, W) at norm1 and norm2: alexnet-small at serving batch 32 and training batch 128,
# the ImageNet preset at serving batches 8 and 32
SHAPES = [(32, 64, 28, 28), (32, 192, 13, 13), (128, 64, 28, 28), (128, 192, 13, 13),
          (8, 64, 55, 55), (8, 192, 27, 27), (32, 64, 55, 55), (32, 192, 27, 27)]  # fmt: skip


class WholeBatch(LocalResponseNorm):
    """Our LRN with the whole batch in one go, also for inference (what slicing is against)."""

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)
        return out


def _time_ms(fn: Callable[[], Any], repeat: int, sync: Callable[[], None]) -> float:
    """Median milliseconds of `repeat` calls after three warm-up calls."""
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1000


def measure(
    module: nn.Module, x: Tensor, repeat: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Forward under inference_mode and forward + backward, in ms."""

    def forward() -> None:
        with torch.inference_mode():
            module(x)

    def train_step() -> None:
        leaf = x.detach().requires_grad_()
        module(leaf).sum().backward()

    return {
        "forward_ms": _time_ms(forward, repeat, sync),
        "train_ms": _time_ms(train_step, repeat, sync),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per point (default: 10)")
    p.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/lrn.json"), help="JSON output"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n, alpha, beta, k = 5, 1e-4, 0.75, 2.0  # the paper's
    contenders = {
        "torch": nn.LocalResponseNorm(n, alpha=alpha * n, beta=beta, k=k),
        "ours": LocalResponseNorm(n, alpha=alpha, beta=beta, k=k),
        "whole": WholeBatch(n, alpha=alpha, beta=beta, k=k),
    }
    rows: list[dict[str, Any]] = []
    gen = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        for layout in ("nchw", "channels_last"):
            x = torch.randn(shape, generator=gen).relu_().mul_(30).to(device)
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            for name, module in contenders.items():
                rows.append({"shape": list(shape), "layout": layout, "impl": name,
                             **measure(module, x, args.repeat, sync)})  # fmt: skip
    print(f"threads={torch.get_num_threads()} device={device}")
    print("| shape | layout | torch fwd ms | ours fwd ms | whole fwd ms | speed-up "
          "| torch fwd+bwd ms | ours fwd+bwd ms | speed-up |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    per = len(contenders)
    for i in range(0, len(rows), per):
        t, o, w = (rows[i + j] for j in range(per))
        print(f"| {tuple(t['shape'])} | {t['layout']} "
              f"| {t['forward_ms']:.1f} | {o['forward_ms']:.1f} | {w['forward_ms']:.1f} "
              f"| {t['forward_ms'] / o['forward_ms']:.1f}x "
              f"| {t['train_ms']:.1f} | {o['train_ms']:.1f} | {t['train_ms'] / o['train_ms']:.1f}x |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from benchmarks.machine import cpu_id
    from models.hardware import cpu_model_name

    report = {"threads": torch.get_num_threads(), "device": str(device), "torch": torch.__version__,
              "cpu": cpu_model_name(), "cpu_id": cpu_id(),
              "cpu_isa": torch.backends.cpu.get_cpu_capability(), "rows": rows}  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
