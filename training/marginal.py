"""`eval-impute` and `eval-ood`: the VAE's marginal inference measured on a checkpoint.

- eval-impute: MNIST test digits (binarised as the card's eval split) with the top half or a
  random half of the pixels missing, filled by both samplers of `models.vae.impute` (the code
  /impute runs) and by the training set's per-pixel mean; mean binary cross-entropy of the
  filled pixels against the truth, and a figure of completions.
- eval-ood: log p(x) of `models.vae.VAE.score` (the code /score runs, input binarised at 0.5
  as the service does) on MNIST test digits against CIFAR-10 images in 28x28 grey, Frey faces
  resized to 28x28 and uniform noise: AUROC per source, a histogram per source, and the
  out-of-distribution images the model finds most likely.

The out-of-distribution half lives in `training.ood`. Each command writes
<out>/marginal-<name>.json and .md and figures under <out>/figures/marginal/, so a stronger
checkpoint is measured again by rerunning it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.checkpoint import load_checkpoint
from models.vae import IMPUTE_METHODS, VAE, impute
from training import plots
from training.data import DataError, load_mnist
from training.devices import select_device
from training.vae import binarize_fixed

COMMANDS = ("eval-impute", "eval-ood")
MASKS = ("top", "random")
SIDE = 28  # MNIST's images are 28x28; every source is brought to it


def add_parsers(sub: Any) -> None:
    """The two subcommands, on the CLI's subparsers."""
    for name, help_, desc in (
        (
            "eval-impute",
            "imputation error of a VAE on MNIST test digits (both /impute samplers)",
            "Fill the top half, or a random half, of MNIST test digits with both samplers of "
            "/impute and with the training mean; write mean binary cross-entropy and a figure.",
        ),
        (
            "eval-ood",
            "AUROC of log p(x) for MNIST test digits vs out-of-distribution images",
            "Score MNIST test digits and CIFAR-10 (grey 28x28), Frey Face (resized) and uniform "
            "noise with /score's estimator; write AUROC per source and a figure per source.",
        ),
    ):
        p = sub.add_parser(name, help=help_, description=desc)
        p.add_argument("checkpoint", type=Path, help="MNIST VAE checkpoint directory")
        p.add_argument(
            "--data-dir",
            type=Path,
            default=Path("data"),
            help="MNIST/raw, frey_rawface.mat, cifar10/train (default: %(default)s)",
        )
        p.add_argument(
            "--limit", type=int, default=1000, help="images per source (default: %(default)s)"
        )
        p.add_argument("--out", type=Path, default=Path("docs"), help="default: %(default)s")
        p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
        p.add_argument("--device", default="cpu", help="cpu, cuda, auto (default: %(default)s)")
        p.add_argument("--batch-size", type=int, default=250, help="default: %(default)s")
        if name == "eval-impute":
            p.add_argument(
                "--steps",
                type=int,
                nargs="+",
                default=[10, 100],
                help="sweeps per chain, one run each (default: %(default)s)",
            )
        else:
            p.add_argument(
                "--k", type=int, default=100, help="importance samples (default: %(default)s)"
            )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run `args.command`; returns what it wrote to JSON."""
    device = select_device(args.device)
    model, card = load_checkpoint(args.checkpoint, device)
    if not isinstance(model, VAE) or tuple(model.config.image_shape) != (SIDE, SIDE):
        raise DataError(f"{args.checkpoint} is not a {SIDE}x{SIDE} VAE (an MNIST checkpoint)")
    head = {
        "checkpoint": str(args.checkpoint),
        "weights_sha256": card.weights_sha256,
        "card_metrics": card.metrics,
        "limit": args.limit,
        "seed": args.seed,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    figures = args.out / "figures" / "marginal"
    from training import ood  # imports this module for its helpers

    if args.command == "eval-impute":
        result = {**head, **evaluate_imputation(model, args, figures)}
        text = impute_markdown(result)
    else:
        result = {**head, **ood.evaluate_ood(model, args, figures)}
        text = ood.ood_markdown(result)
    name = args.command.removeprefix("eval-")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"marginal-{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"marginal-{name}.md").write_text(text)
    return result


# --- imputation ---------------------------------------------------------------------------
def make_masks(kind: str, n: int, seed: int) -> Tensor:
    """(n, 784) bool, True = missing: the top 14 rows, or a random half of each image."""
    if kind == "top":
        m = torch.zeros(n, SIDE, SIDE, dtype=torch.bool)
        m[:, : SIDE // 2] = True
        return m.flatten(1)
    g = torch.Generator().manual_seed(seed)
    order = torch.rand((n, SIDE * SIDE), generator=g).argsort(1)
    return order < SIDE * SIDE // 2


def _error_rate(p: Tensor, truth: Tensor, missing: Tensor) -> float:
    """Share of missing pixels on the wrong side of 0.5."""
    return ((p[missing] >= 0.5) != (truth[missing] >= 0.5)).double().mean().item()


def _bce(p: Tensor, truth: Tensor, missing: Tensor) -> float:
    """Mean binary cross-entropy (nats per missing pixel); logs clamped at -100 (PyTorch's)."""
    return F.binary_cross_entropy(p[missing].double(), truth[missing].double()).item()


def evaluate_imputation(model: VAE, args: argparse.Namespace, figures: Path) -> dict[str, Any]:
    test_u8, _ = load_mnist(args.data_dir, train=False)
    truth = binarize_fixed(test_u8)[: args.limit].flatten(1)  # the card's binarised test split
    train_u8, _ = load_mnist(args.data_dir, train=True)
    train_mean = train_u8.float().div(255).mean(0).flatten()  # E[binarised pixel] per pixel
    rows: list[dict[str, Any]] = []
    shown: dict[str, list[Tensor]] = {}
    for kind in MASKS:
        missing = make_masks(kind, len(truth), args.seed)
        fill = torch.where(missing, train_mean.expand_as(truth), truth)
        rows.append(
            {
                "mask": kind,
                "method": "training mean",
                "steps": 0,
                "bce": _bce(fill, truth, missing),
                "error_rate": _error_rate(fill, truth, missing),
                "seconds": 0.0,
            }
        )
        shown[kind] = [torch.where(missing, 0.5, truth)[:8]]
        for steps in args.steps:
            for method in IMPUTE_METHODS:
                t0 = time.perf_counter()
                stats: list[dict[str, float]] = []
                filled = torch.cat(
                    [
                        _impute_batch(model, truth, missing, i, args, steps, method, stats)
                        for i in range(0, len(truth), args.batch_size)
                    ]
                )
                seconds = time.perf_counter() - t0
                acceptance = [st["acceptance"] for st in stats if "acceptance" in st]
                row = {
                    "mask": kind,
                    "method": method,
                    "steps": steps,
                    "bce": _bce(filled, truth, missing),
                    "error_rate": _error_rate(filled, truth, missing),
                    "seconds": seconds,
                    "acceptance": sum(acceptance) / len(acceptance) if acceptance else None,
                }
                rows.append(row)
                print(
                    f"{kind:6s} {method:12s} steps {steps:4d}  BCE {row['bce']:.4f}  "
                    f"{seconds:.1f}s",
                    flush=True,
                )
                if steps == max(args.steps):
                    shown[kind].append(filled[:8])
        shown[kind].append(truth[:8])
        images = torch.cat(shown[kind]).view(-1, 1, SIDE, SIDE)
        save_grid(images, figures / f"impute-{kind}.png", nrow=8)
    best = {
        kind: min(
            (r for r in rows if r["mask"] == kind and r["steps"] == max(args.steps)),
            key=lambda r: r["bce"],
        )["method"]
        for kind in MASKS
    }
    return {"images": len(truth), "steps": args.steps, "rows": rows, "best": best}


def _impute_batch(
    model: VAE,
    truth: Tensor,
    missing: Tensor,
    i: int,
    args: argparse.Namespace,
    steps: int,
    method: str,
    stats: list[dict[str, float]],
) -> Tensor:
    """Images i .. i + batch_size filled; image j's chain from seed + j, as a request with that
    seed would run it."""
    device = next(model.parameters()).device
    j = range(i, min(i + args.batch_size, len(truth)))
    stats.append({})
    return impute(
        model,
        truth[j.start : j.stop].to(device),
        missing[j.start : j.stop].to(device),
        torch.full((len(j),), steps),
        method,  # type: ignore[arg-type]
        [torch.Generator(device).manual_seed(args.seed + n) for n in j],
        stats[-1],
    ).cpu()


def impute_markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Imputation on MNIST test digits",
        "",
        "Generated by `python -m training eval-impute` (training/marginal.py); do not edit.",
        f"Checkpoint `{r['checkpoint']}` (weights {r['weights_sha256'][:12]}), the first "
        f"{r['images']} test digits binarised as the card's eval split (seed 0), chains seeded "
        f"{r['seed']} + image index, on {r['device']} with {r['torch_threads']} thread(s).",
        "",
        "Mean binary cross-entropy of the filled pixels against the true ones, in nats per "
        "missing pixel (lower is better; a confidently wrong pixel costs many nats), and the "
        "share of missing pixels on the wrong side of 0.5. *top*: rows 0-13 missing; *random*: "
        "a random half of each image's pixels missing. The samplers return the mean of the "
        "decoder's probabilities over the second half of the chain (what /impute returns); "
        "MH acceptance: the share of mwg's proposals accepted.",
        "",
        "| mask | method | steps | BCE (nats/pixel) | pixels wrong | MH acceptance | wall time |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        steps = row["steps"] or "—"
        accept = "—" if row.get("acceptance") is None else f"{100 * row['acceptance']:.2f}%"
        lines.append(
            f"| {row['mask']} | {row['method']} | {steps} | {row['bce']:.4f} "
            f"| {100 * row['error_rate']:.2f}% | {accept} "
            f"| {row['seconds']:.1f} s |"
        )
    lines += [
        "",
        f"Lowest error at {max(r['steps'])} steps: "
        + ", ".join(f"{k} mask: **{v}**" for k, v in r["best"].items())
        + ".",
        "",
        "Completions (figures/marginal/impute-top.png, impute-random.png): rows are the input "
        "(missing pixels grey), pseudo-gibbs, mwg, the truth.",
        "",
        "![top half missing](figures/marginal/impute-top.png)",
        "![random half missing](figures/marginal/impute-random.png)",
        "",
    ]
    return "\n".join(lines)


def save_grid(images: Tensor, out_png: Path, nrow: int, scale: int = 3) -> None:
    """A grid of (N, 1, 28, 28) images, each pixel drawn as scale x scale (legible in docs)."""
    plots.save_image_grid(F.interpolate(images, scale_factor=scale), out_png, nrow=nrow)
