"""Packed fully connected layers (models.prepack) against nn.Linear, per model and batch size.

Times each model's batched forward as the service runs it (AlexNet: logits of a channels-last
batch; VAE: encode and decode) on this machine's CPU, with its nn.Linear layers as loaded
("dense"), every one packed for oneDNN ("packed", MODELSERVE_PREPACK_LINEAR=true), and each
packed only for the batch sizes where timing it both ways found oneDNN faster ("auto", the
default: `models.prepack.packing_threshold`), and the largest difference from the dense
outputs. The default models are the shipped ones and, when `python -m
benchmarks.make_checkpoints` has written it, the full-size AlexNet. Prints a table and writes
JSON.

    python -m benchmarks.experiments.prepack --threads 1 --out benchmarks/results/prepack-cpu-1thread.json
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks import ops
from benchmarks.experiments.lrn import _time_ms
from models.checkpoint import CARD_FILE, ModelCard
from models.prepack import packing_summary, prepack_linear, serving_rows

DEFAULT_DIRS = sorted(p.parent for p in Path("models").glob(f"*/{CARD_FILE}")) + sorted(
    p.parent for p in Path("runs/bench/models/full").glob(f"*/{CARD_FILE}")
)


def operations(model: nn.Module, card: ModelCard, batch: int) -> dict[str, Callable[[], Tensor]]:
    """The model's served operations at `batch`, each a call on fixed random input."""
    gen = torch.Generator().manual_seed(0)
    if card.architecture == "alexnet":
        c, (h, w) = card.input.channels, card.input.size
        x = torch.randn(batch, c, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
        return {"classify": lambda: model(x)}
    h, w = card.config["image_shape"]
    x = torch.rand(batch, 1, h, w, generator=gen)
    z = torch.randn(batch, card.config["latent"], generator=gen)
    return {
        "encode": lambda: torch.cat(model.encode(x), dim=1),  # type: ignore[operator]
        "decode": lambda: model.decode(z),  # type: ignore[operator]
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("models", nargs="*", type=Path, help="checkpoint directories")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="batch sizes")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per point (default: 10)")
    p.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/prepack.json"), help="JSON output"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    print(f"threads={torch.get_num_threads()}")
    print("| model | op | batch | dense ms | packed ms | auto ms | packed speed-up "
          "| auto speed-up | max abs diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for d in args.models or DEFAULT_DIRS:
        dense, card = ops.load(d, prepack=False)
        packed, auto = copy.deepcopy(dense), copy.deepcopy(dense)
        n_packed = prepack_linear(packed)
        prepack_linear(auto, rows=serving_rows(max(args.batches)))
        for b in args.batches:
            variants = {k: operations(m, card, b) for k, m in
                        (("dense", dense), ("packed", packed), ("auto", auto))}  # fmt: skip
            for op in variants["dense"]:
                with torch.inference_mode():
                    ref = variants["dense"][op]()
                    diff = max(
                        (variants[k][op]() - ref).abs().max().item() for k in ("packed", "auto")
                    )
                    ms = {
                        k: _time_ms(v[op], args.repeat, lambda: None) for k, v in variants.items()
                    }
                row = {"model": card.name, "op": op, "batch": b, "layers_packed": n_packed,
                       "auto_layers": packing_summary(auto), "dense_ms": ms["dense"],
                       "packed_ms": ms["packed"], "auto_ms": ms["auto"], "max_abs_diff": diff}  # fmt: skip
                rows.append(row)
                print(f"| {card.name} | {op} | {b} | {ms['dense']:.2f} | {ms['packed']:.2f} "
                      f"| {ms['auto']:.2f} | {ms['dense'] / ms['packed']:.2f}x "
                      f"| {ms['dense'] / ms['auto']:.2f}x | {diff:.1e} |", flush=True)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from benchmarks.machine import machine

    report = {"threads": torch.get_num_threads(), "machine": machine(), "rows": rows}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
