"""Classifier evaluation on tensors: centre-crop or ten-crop predictions, top-k errors, confusion.

Shared by AlexNet's validation during training and its `eval-alexnet` command.
Shapes: N images, C classes, V views (1 or 10), B batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from training.augment import center_crop, ten_crop


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> standardised per channel; mean and std (3,)."""
    return (x - mean[:, None, None]) / std[:, None, None]


def topk_errors(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is not among the top-k scores, for each k: (N, C), (N,)."""
    k_max = min(max(ks), scores.shape[1])
    top = scores.topk(k_max, dim=1).indices  # (N, k_max)
    hit = top == labels[:, None]
    return {k: 1.0 - hit[:, : min(k, k_max)].any(1).float().mean().item() for k in ks}


@torch.no_grad()
def predict_small(
    model: nn.Module,
    images: Tensor,
    mean: Tensor,
    std: Tensor,
    crop: int,
    use_ten_crop: bool = False,
    batch_size: int = 500,
    progress: bool = False,
) -> Tensor:
    """Softmax probabilities (N, C) for uint8 images (N, 3, H, W): centre crop or ten-crop mean."""
    from tqdm import tqdm

    p = next(model.parameters())
    mean, std = mean.to(p.device), std.to(p.device)
    out = []
    starts = range(0, len(images), batch_size)
    for i in tqdm(starts, desc="predict", unit="batch", disable=not progress, leave=False):
        x = images[i : i + batch_size].to(p.device).float().div_(255)
        views = ten_crop(x, crop) if use_ten_crop else center_crop(x, crop)[None]  # (V, B, 3, c, c)
        v, b = views.shape[:2]
        # (V*B, C), in the model's number format (eval-alexnet --dtype); softmax in float32
        logits = model(normalize(views.flatten(0, 1), mean, std).to(p.dtype))
        out.append(logits.float().softmax(-1).view(v, b, -1).mean(0))
    return torch.cat(out)


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: DataLoader,
    mean: Tensor,
    std: Tensor,
    crop: int,
    use_ten_crop: bool = False,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Softmax probabilities (N, C) and labels (N,) over a loader of (uint8 images, labels)."""
    from tqdm import tqdm

    scores, labels = [], []
    for x, y in tqdm(loader, desc="predict", unit="batch", disable=not progress, leave=False):
        scores.append(predict_small(model, x, mean, std, crop, use_ten_crop, batch_size=len(x)))
        labels.append(y)
    return torch.cat(scores), torch.cat(labels)


def confusion_matrix(scores: Tensor, labels: Tensor) -> Tensor:
    """(N, C) scores, (N,) labels -> (C, C) counts, rows true class, columns predicted."""
    c = scores.shape[1]
    pred = scores.argmax(1).cpu()
    return torch.bincount(labels.cpu() * c + pred, minlength=c * c).view(c, c)


def val_errors(scores: Tensor, labels: Tensor, suffix: str = "") -> dict[str, float]:
    """Top-1 and top-5 error as the card records them: val_top1_err{suffix}, val_top5_err{suffix}."""
    errors = topk_errors(scores, labels.to(scores.device))
    return {f"val_top1_err{suffix}": errors[1], f"val_top5_err{suffix}": errors[5]}


def format_errors(ref: Tensor, scores: Tensor, labels: Tensor, suffix: str) -> dict[str, float]:
    """Top-1/top-5 error of `scores` from a run in another number format (`suffix`, e.g.
    "_bfloat16") and how it differs from the float32 run `ref` on the same images: the change
    in top-1 error, the fraction of images whose top class is the same, the largest
    difference in any probability."""
    errors, base = val_errors(scores, labels, suffix), val_errors(ref, labels)
    return errors | {
        f"val_top1_err_delta{suffix}": errors[f"val_top1_err{suffix}"] - base["val_top1_err"],
        f"val_top1_agree{suffix}": (scores.argmax(1) == ref.argmax(1)).float().mean().item(),
        f"val_prob_max_diff{suffix}": (scores - ref).abs().max().item(),
    }
