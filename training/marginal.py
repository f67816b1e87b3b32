"""`eval-impute` and `eval-ood`: the VAE's marginal inference measured on a checkpoint.

- eval-impute: MNIST test digits (binarised as the card's eval split) with the top half or a
  random half of the pixels missing, filled by both samplers of `models.vae.impute` (the code
  /impute runs) and by the training set's per-pixel mean; mean binary cross-entropy of the
  filled pixels against the truth, and a figure of completions.
- eval-ood: log p(x) of `models.vae.VAE.score` (the code /score runs, input binarised at 0.5
  as the service does) on MNIST test digits against CIFAR-10 images in 28x28 grey, Frey faces
  resized to 28x28 and uniform noise: AUROC per source, a histogram per source, and the
  out-of-distribution images the model finds most likely.

Each writes <out>/marginal-<name>.json and .md and figures under <out>/figures/marginal/, so
a stronger checkpoint is measured again by rerunning the command.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from models.checkpoint import load_checkpoint
from models.vae import IMPUTE_METHODS, VAE, impute, scoring_input
from training import plots
from training.data import DataError, load_frey, load_mnist, resolve_image_source
from training.loop import select_device
from training.pack import list_image_folder
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
    if args.command == "eval-impute":
        result = {**head, **evaluate_imputation(model, args, figures)}
        text = impute_markdown(result)
    else:
        result = {**head, **evaluate_ood(model, args, figures)}
        text = ood_markdown(result)
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
        _save_grid(images, figures / f"impute-{kind}.png", nrow=8)
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


# --- out-of-distribution scores ------------------------------------------------------------
def _resize_grey(images: list[Image.Image]) -> Tensor:
    """PIL images -> (N, 28, 28) grey levels in [0, 1], bilinear."""
    out = [
        np.asarray(im.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR), np.float32)
        for im in images
    ]
    return torch.from_numpy(np.stack(out) / 255.0)


def ood_sources(data_dir: Path, n: int, seed: int) -> dict[str, Tensor]:
    """n seeded images of each source, (n, 28, 28) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    root = resolve_image_source(data_dir, "cifar10")
    if not root.is_dir():
        raise DataError(f"eval-ood reads CIFAR-10 as an ImageFolder tree, not {root}")
    _, items = list_image_folder(root)
    cifar = []
    for i in torch.randperm(len(items), generator=g)[:n].tolist():
        with Image.open(items[i][0]) as im:
            cifar.append(im.convert("L"))
    faces = load_frey(data_dir)
    frey = [
        Image.fromarray(faces[i].numpy(), "L") for i in torch.randperm(len(faces), generator=g)[:n]
    ]
    return {
        "CIFAR-10 (grey, 28x28)": _resize_grey(cifar),
        "Frey Face (28x20 resized to 28x28)": _resize_grey(frey),
        "uniform noise": torch.rand((n, SIDE, SIDE), generator=g),
    }


def score(model: VAE, x: Tensor, k: int, batch_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """(elbo, log p(x)) of grey images (N, 28, 28), binarised at 0.5 as /score does."""
    device = next(model.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    elbos, log_pxs = [], []
    for i in range(0, len(x), batch_size):
        xb = scoring_input(x[i : i + batch_size].flatten(1).to(device), model.config.likelihood)
        eps = torch.randn((k, len(xb), model.config.latent), generator=g, device=device)
        elbo, log_px = model.score(xb, eps)
        elbos.append(elbo.cpu())
        log_pxs.append(log_px.cpu())
    return torch.cat(elbos), torch.cat(log_pxs)


def auroc(inside: Tensor, outside: Tensor) -> float:
    """P(score of an in-distribution image > score of an outside one), ties half."""
    from scipy.stats import mannwhitneyu

    u = mannwhitneyu(inside.numpy(), outside.numpy(), alternative="two-sided").statistic
    return float(u) / (len(inside) * len(outside))


def evaluate_ood(model: VAE, args: argparse.Namespace, figures: Path) -> dict[str, Any]:
    test_u8, _ = load_mnist(args.data_dir, train=False)
    mnist = test_u8[: args.limit].float() / 255
    sources = ood_sources(args.data_dir, args.limit, args.seed)
    t0 = time.perf_counter()
    m_elbo, m_log_px = score(model, mnist, args.k, args.batch_size, args.seed)
    summary = {"images": len(mnist), "log_px": _stats(m_log_px), "elbo": _stats(m_elbo)}
    rows: list[dict[str, Any]] = []
    for name, x in sources.items():
        elbo, log_px = score(model, x, args.k, args.batch_size, args.seed)
        above = float((log_px > m_log_px.median()).double().mean())
        rows.append(
            {
                "source": name,
                "images": len(x),
                "auroc_log_px": auroc(m_log_px, log_px),
                "auroc_elbo": auroc(m_elbo, elbo),
                "log_px": _stats(log_px),
                "share_above_mnist_median": above,
            }
        )
        print(f"{name:36s} AUROC {rows[-1]['auroc_log_px']:.4f}", flush=True)
        slug = name.split(" ")[0].lower()
        _histogram(m_log_px, log_px, name, rows[-1]["auroc_log_px"], figures / f"ood-{slug}.png")
        top = log_px.argsort(descending=True)[:16]  # the ones it finds most likely
        binarised = scoring_input(x[top].flatten(1), "bernoulli").view(-1, 1, SIDE, SIDE)
        images = torch.cat([x[top, None], binarised])
        _save_grid(images, figures / f"ood-{slug}-most-likely.png", nrow=16)
    return {"k": args.k, "mnist": summary, "sources": rows, "seconds": time.perf_counter() - t0}


def _save_grid(images: Tensor, out_png: Path, nrow: int, scale: int = 3) -> None:
    """A grid of (N, 1, 28, 28) images, each pixel drawn as scale x scale (legible in docs)."""
    plots.save_image_grid(F.interpolate(images, scale_factor=scale), out_png, nrow=nrow)


def _stats(v: Tensor) -> dict[str, float]:
    q = torch.quantile(v.double(), torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64))
    return {
        "mean": v.double().mean().item(),
        "p05": q[0].item(),
        "median": q[1].item(),
        "p95": q[2].item(),
        "max": v.max().item(),
    }


def _histogram(inside: Tensor, outside: Tensor, name: str, auc: float, out_png: Path) -> None:
    """Histograms of -log p(x) on a log axis: digits sit near 10^2 nats, other images span
    10^1 to 10^4, which a linear axis would squash into one bar."""
    fig = plots._figure(6.0, 3.5)
    ax = fig.add_subplot(1, 1, 1)
    nll_in, nll_out = (-inside).clamp_min(1.0), (-outside).clamp_min(1.0)
    lo = float(min(nll_in.min(), nll_out.min()))
    hi = float(max(nll_in.max(), nll_out.max()))
    bins = np.geomspace(lo, hi, 60).tolist()
    ax.hist(nll_in.numpy(), bins=bins, alpha=0.6, label="MNIST test")
    ax.hist(nll_out.numpy(), bins=bins, alpha=0.6, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("-log p(x), nats (input binarised at 0.5); left = more likely")
    ax.set_ylabel("images")
    ax.set_title(f"MNIST vs {name}: AUROC {auc:.3f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plots._save(fig, out_png)


def ood_markdown(r: dict[str, Any]) -> str:
    m = r["mnist"]["log_px"]
    lines = [
        "# Likelihood scores: MNIST test digits against other images",
        "",
        "Generated by `python -m training eval-ood` (training/marginal.py); do not edit.",
        f"Checkpoint `{r['checkpoint']}` (weights {r['weights_sha256'][:12]}), {r['limit']} "
        f"images per source (seed {r['seed']}), k = {r['k']} importance samples, every image "
        "binarised at 0.5 as /score does, on "
        f"{r['device']} with {r['torch_threads']} thread(s), {r['seconds']:.0f} s.",
        "",
        f"MNIST test log p(x): median {m['median']:.1f} nats (5%-95%: {m['p05']:.1f} to "
        f"{m['p95']:.1f}).",
        "",
        "| source | AUROC of log p(x) | AUROC of ELBO | median log p(x) | max log p(x) "
        "| share above the MNIST median |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in r["sources"]:
        lines.append(
            f"| {s['source']} | {s['auroc_log_px']:.4f} | {s['auroc_elbo']:.4f} "
            f"| {s['log_px']['median']:.1f} | {s['log_px']['max']:.1f} "
            f"| {100 * s['share_above_mnist_median']:.1f}% |"
        )
    lines += [
        "",
        "AUROC: the probability that a random MNIST digit scores higher than a random image of "
        "the source (1 = perfectly separated, 0.5 = chance, below 0.5 = the source looks *more* "
        "likely than digits).",
        "",
    ]
    for s in r["sources"]:
        slug = s["source"].split(" ")[0].lower()
        lines += [
            f"![{s['source']}](figures/marginal/ood-{slug}.png)",
            "",
            f"The 16 {s['source']} images with the highest log p(x), as given (top) and as "
            "scored, binarised (bottom):",
            "",
            f"![most likely {s['source']}](figures/marginal/ood-{slug}-most-likely.png)",
            "",
        ]
    return "\n".join(lines)
