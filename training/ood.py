"""`eval-ood`: log p(x) of MNIST test digits against other images (see `training.marginal`).

/score's estimator (`models.vae.VAE.score`, input binarised at 0.5 as the service does) on
MNIST test digits and on CIFAR-10 images in 28x28 grey, Frey faces resized to 28x28 and uniform
noise: AUROC per source, a histogram per source, and the images of each source the model finds
most likely (where a likelihood's known failure shows).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from models.vae import VAE, scoring_input
from training import plots
from training.data import DataError, load_frey, load_mnist, resolve_image_source
from training.marginal import SIDE, save_grid
from training.pack import list_image_folder


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
        save_grid(images, figures / f"ood-{slug}-most-likely.png", nrow=16)
    return {"k": args.k, "mnist": summary, "sources": rows, "seconds": time.perf_counter() - t0}


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
        "Generated by `python -m training eval-ood` (training/ood.py); do not edit.",
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
