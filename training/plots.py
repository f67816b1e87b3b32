"""Pictures written at the end of a training run: curves, image grids, VAE manifold, confusion.

matplotlib is imported inside the functions that need it and used through its object API
(`Figure`, no pyplot), so importing this module costs nothing, no GUI backend or global state is
touched, and serving code never loads matplotlib.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from models.vae import VAE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
PANEL_SIZE = (4.5, 3.5)  # inches per curve panel: 450x350 px at DPI
# "train_loss" and "val_loss" share the panel "loss"; "val_top1_error" and "val_top5_error" share
# "error": strip the split prefix and a top-k qualifier to get the family.
_SPLIT = re.compile(r"^(train|val|valid|test)_")
_TOPK = re.compile(r"(^|_)top\d+_")


def metric_family(key: str) -> str:
    """Panel a metric is drawn in: 'val_top5_error' -> 'error', 'train_loss' -> 'loss'."""
    return _TOPK.sub(r"\1", _SPLIT.sub("", key))


def read_metrics(metrics_jsonl: Path) -> dict[str, dict[int | float, float]]:
    """Metric name -> {epoch: value} from a JSON-lines file; a repeated epoch keeps its last value.

    Resumed runs may append an epoch again, so the latest line wins. Non-numeric fields are ignored.
    """
    series: dict[str, dict[int | float, float]] = defaultdict(dict)
    for lineno, line in enumerate(Path(metrics_jsonl).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{metrics_jsonl}:{lineno}: not JSON: {e}") from e
        if not isinstance(row, dict) or "epoch" not in row:
            raise ValueError(f"{metrics_jsonl}:{lineno}: expected an object with an 'epoch'")
        epoch = row["epoch"]
        for key, value in row.items():
            numeric = isinstance(value, int | float) and not isinstance(value, bool)
            if key != "epoch" and numeric and math.isfinite(value):
                series[key][epoch] = float(value)
    return dict(series)


def _figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=DPI)


def _save(fig: Figure, out_png: Path) -> None:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, format="png", dpi=DPI)  # fixed size: no bbox_inches="tight"


def plot_curves(metrics_jsonl: Path, out_png: Path, keys: list[str] | None = None) -> None:
    """One panel per metric family (loss, elbo, error, lr, ...) against epoch, three to a row."""
    series = read_metrics(metrics_jsonl)
    if keys is not None:
        missing = [k for k in keys if k not in series]
        if missing:
            raise ValueError(f"{metrics_jsonl}: no numeric values for {missing}")
        series = {k: series[k] for k in keys}
    if not series:
        raise ValueError(f"{metrics_jsonl}: no numeric metrics to plot")
    families: dict[str, list[str]] = defaultdict(list)
    for key in series:
        families[metric_family(key)].append(key)
    cols = min(3, len(families))
    rows = math.ceil(len(families) / cols)
    fig = _figure(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (family, members) in zip(axes.flat, families.items(), strict=False):
        for key in members:
            epochs = sorted(series[key])
            ax.plot(
                epochs,
                [series[key][e] for e in epochs],
                marker="." if len(epochs) < 30 else "",
                label=key,
            )
        if family == "lr" and all(v > 0 for k in members for v in series[k].values()):
            ax.set_yscale("log")
        ax.set_title(family)
        ax.set_xlabel("epoch")
        ax.set_ylabel(family)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(families) :]:
        ax.set_visible(False)
    fig.suptitle(Path(metrics_jsonl).parent.name or Path(metrics_jsonl).stem)
    fig.tight_layout()
    _save(fig, out_png)


def image_grid(images: Tensor, nrow: int, padding: int = 2) -> Image.Image:
    """(N, C, H, W) in [0, 1] -> one picture, `nrow` images per row, white `padding` between.

    Grey images (C = 1) give an 'L' picture, colour ones 'RGB'; values are clamped to [0, 1].
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1 or 3, H, W) images, got {tuple(images.shape)}")
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=padding, pad_value=1.0)
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)  # (3, H', W'), as save_image
    if images.shape[1] == 1:  # make_grid repeats grey to 3 channels; keep one
        return Image.fromarray(pixels[0].numpy(), mode="L")
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), mode="RGB")


def save_image_grid(images: Tensor, out_png: Path, nrow: int) -> None:
    """(N, C, H, W) in [0, 1] -> PNG grid with `nrow` images per row."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, nrow).save(out_png, format="PNG")


def plot_reconstructions(
    inputs: Tensor, recons: Tensor, out_png: Path, ncol: int | None = None
) -> None:
    """Inputs in one row, their reconstructions in the row below, `ncol` (<= 10) pairs a row.

    `recons` may be flat (N, D) as long as it has as many values as `inputs` (N, C, H, W).
    """
    if recons.numel() != inputs.numel():
        raise ValueError(f"inputs {tuple(inputs.shape)} and recons {tuple(recons.shape)} differ")
    recons = recons.reshape(inputs.shape)
    n = inputs.shape[0]
    ncol = ncol or min(n, 10)
    blank = inputs.new_ones((ncol - n % ncol) % ncol, *inputs.shape[1:])  # white, like the padding
    inputs, recons = torch.cat([inputs, blank]), torch.cat([recons, blank])
    rows = [
        t for i in range(0, len(inputs), ncol) for t in (inputs[i : i + ncol], recons[i : i + ncol])
    ]
    save_image_grid(torch.cat(rows), out_png, nrow=ncol)


@torch.no_grad()
def plot_manifold(model: VAE, out_png: Path, n: int = 20) -> None:
    """Decoder means over an n x n grid of z, as the AEVB paper's Fig. 4; needs a 2-D latent.

    The unit square's cell centres (i + 0.5) / n are mapped through the inverse Gaussian CDF, so
    the grid covers the prior's mass evenly; z1 grows left to right, z2 bottom to top.
    """
    if model.config.latent != 2:
        raise ValueError(
            f"the manifold needs a 2-D latent space, this VAE has {model.config.latent}"
        )
    p = next(model.parameters())
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    z = torch.special.ndtri(u)  # (n,) quantiles of N(0, 1)
    z2, z1 = torch.meshgrid(z.flip(0), z, indexing="ij")  # row 0 = largest z2
    grid = torch.stack([z1.flatten(), z2.flatten()], 1).to(p.device, p.dtype)  # (n*n, 2)
    was_training = model.training
    model.eval()
    try:
        images = model.decode(grid)  # (n*n, 1, H, W)
    finally:
        model.train(was_training)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, nrow=n, padding=0).save(out_png, format="PNG")


def plot_confusion(matrix: Tensor, labels: list[str], out_png: Path) -> None:
    """Rows true class, columns predicted: colour = row-normalised rate, text = count.

    Counts and tick labels are drawn up to 30 and 50 classes; beyond that only colours.
    """
    k = len(labels)
    if matrix.shape != (k, k):
        raise ValueError(f"matrix {tuple(matrix.shape)} does not match {k} labels")
    counts = matrix.detach().cpu().to(torch.float64)
    totals = counts.sum(1, keepdim=True)
    rates = torch.where(totals > 0, counts / totals.clamp_min(1), torch.zeros_like(counts))
    side = min(20.0, max(5.0, 0.45 * k + 2.5))
    fig = _figure(side + 1.0, side)  # +1 inch for the colour bar
    ax = fig.subplots()
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if k <= 50:
        ax.set_xticks(range(k), labels, rotation=45, ha="right", rotation_mode="anchor")
        ax.set_yticks(range(k), labels)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                colour = "white" if rates[i, j] > 0.5 else "black"
                text = f"{counts[i, j]:.0f}"
                ax.text(j, i, text, ha="center", va="center", color=colour, fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = counts.diagonal().sum() / counts.sum().clamp_min(1)
    ax.set_title(f"confusion matrix (accuracy {accuracy:.2%})")
    fig.tight_layout()
    _save(fig, out_png)
