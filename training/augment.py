"""Batched image augmentation of Krizhevsky et al. (2012), sec. 4.1, as tensor ops (CPU or CUDA).

Training: random crops (translations) with horizontal flips, and PCA colour noise. Test time:
centre crop, or ten crops (four corners and centre, then the same five of the mirror image)
whose predictions are averaged.

Every function takes a batch (B, C, H, W) and returns a new tensor; random ones take an optional
`torch.Generator`, which may live on the CPU while the batch is on CUDA (draws are made on the
generator's device and moved), so a seeded CPU generator gives the same augmentation everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Pixels (over all images) per float64 chunk in compute_pca_stats: 3 * 2**22 * 8 B = 96 MiB.
_PCA_CHUNK_PIXELS = 1 << 22


def _check_batch(batch: Tensor) -> None:
    if batch.dim() != 4:
        raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(batch.shape)}")


def _gen_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Where to draw random numbers: the generator's device if one is given."""
    return generator.device if generator is not None else device


def compute_pca_stats(images: Tensor, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Eigenvalues (3,) descending and eigenvectors (3, 3), one per COLUMN, of the RGB covariance.

    `images` (N, 3, H, W) uint8 (scaled to [0, 1]) or float (taken as is). The covariance is over
    every pixel of every image, accumulated in float64 over chunks of `chunk_size` images (default:
    about 4M pixels a chunk) so a whole training set never needs a float copy. Each eigenvector's
    sign is fixed (largest-magnitude entry positive) so the result is deterministic.
    """
    _check_batch(images)
    n, c, h, w = images.shape
    if c != 3:
        raise ValueError(f"PCA colour statistics need 3 channels, got {c}")
    if n == 0:
        raise ValueError("no images")
    step = chunk_size or max(1, _PCA_CHUNK_PIXELS // (h * w))
    scale = 1 / 255 if images.dtype == torch.uint8 else 1.0
    total = torch.zeros(3, dtype=torch.float64, device=images.device)  # sum of x
    outer = torch.zeros(3, 3, dtype=torch.float64, device=images.device)  # sum of x x^T
    for start in range(0, n, step):
        # (b, 3, H, W) -> (3, b*H*W) pixel columns
        x = images[start : start + step].to(torch.float64).mul_(scale)
        x = x.transpose(0, 1).reshape(3, -1)
        total += x.sum(1)
        outer += x @ x.T
    count = n * h * w
    mean = total / count
    # Population covariance; with ~1e7 pixels the N vs N-1 distinction is immaterial.
    cov = outer / count - torch.outer(mean, mean)
    eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
    eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
    pivot = eigvecs.abs().argmax(0)  # (3,) row of each column's largest entry
    signs = torch.sign(eigvecs[pivot, torch.arange(3, device=eigvecs.device)])
    eigvecs = eigvecs * signs
    return eigvals.clamp_min(0).float(), eigvecs.float()


def pca_color_noise(
    batch: Tensor,
    eigvals: Tensor,
    eigvecs: Tensor,
    std: float = 0.1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Add `eigvecs @ (alpha * eigvals)` to every pixel of each image, alpha ~ N(0, std^2) (3,).

    The paper's PCA colour augmentation: alpha is drawn once per image, so the offset is one RGB
    colour per image, along the principal axes of the training set's pixel colours. `batch`
    (B, 3, H, W) float on the [0, 1] scale the statistics were computed on; not clipped.
    """
    _check_batch(batch)
    if batch.shape[1] != 3:
        raise ValueError(f"PCA colour noise needs 3 channels, got {batch.shape[1]}")
    b = batch.shape[0]
    alpha = torch.randn(
        (b, 3), generator=generator, device=_gen_device(generator, batch.device)
    ).to(batch.device)
    alpha = alpha * std
    vals = eigvals.to(batch.device, torch.float32)
    vecs = eigvecs.to(batch.device, torch.float32)
    # row form of eigvecs @ (alpha_i * eigvals) for every image: (B, 3) @ (3, 3) -> (B, 3)
    offset = (alpha * vals) @ vecs.T
    return batch + offset.to(batch.dtype)[:, :, None, None]


def random_crop_flip(batch: Tensor, size: int, generator: torch.Generator | None = None) -> Tensor:
    """(B, C, H, W) -> (B, C, size, size): an independent random window and 50% mirror per image.

    One gather with index tensors, no loop over images.
    """
    _check_batch(batch)
    b, c, h, w = batch.shape
    if not 0 < size <= min(h, w):
        raise ValueError(f"crop size {size} does not fit images of {h}x{w}")
    gdev = _gen_device(generator, batch.device)
    top = torch.randint(0, h - size + 1, (b,), generator=generator, device=gdev).to(batch.device)
    left = torch.randint(0, w - size + 1, (b,), generator=generator, device=gdev).to(batch.device)
    flip = (torch.rand((b,), generator=generator, device=gdev) < 0.5).to(batch.device)
    steps = torch.arange(size, device=batch.device)
    rows = top[:, None] + steps  # (B, size)
    cols = left[:, None] + steps  # (B, size)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # mirrored window reads right to left
    bi = torch.arange(b, device=batch.device)[:, None, None, None]
    ci = torch.arange(c, device=batch.device)[None, :, None, None]
    return batch[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, size, size)


def _crop(batch: Tensor, top: int, left: int, size: int) -> Tensor:
    return batch[..., top : top + size, left : left + size]


def _center_offsets(h: int, w: int, size: int) -> tuple[int, int]:
    # Same rounding as torchvision.transforms.functional.center_crop.
    return round((h - size) / 2.0), round((w - size) / 2.0)


def center_crop(batch: Tensor, size: int) -> Tensor:
    """(B, C, H, W) -> the central (B, C, size, size) window (torchvision's rounding)."""
    _check_batch(batch)
    h, w = batch.shape[-2:]
    if not 0 < size <= min(h, w):
        raise ValueError(f"crop size {size} does not fit images of {h}x{w}")
    return _crop(batch, *_center_offsets(h, w, size), size).clone()


def _five_crop(batch: Tensor, size: int) -> list[Tensor]:
    h, w = batch.shape[-2:]
    return [
        _crop(batch, 0, 0, size),  # top left
        _crop(batch, 0, w - size, size),  # top right
        _crop(batch, h - size, 0, size),  # bottom left
        _crop(batch, h - size, w - size, size),  # bottom right
        _crop(batch, *_center_offsets(h, w, size), size),  # centre
    ]


def ten_crop(batch: Tensor, size: int) -> Tensor:
    """(B, C, H, W) -> (10, B, C, size, size): corners and centre, then those of the mirror image.

    Order as torchvision's ten_crop: top-left, top-right, bottom-left, bottom-right, centre.
    """
    _check_batch(batch)
    h, w = batch.shape[-2:]
    if not 0 < size <= min(h, w):
        raise ValueError(f"crop size {size} does not fit images of {h}x{w}")
    return torch.stack(_five_crop(batch, size) + _five_crop(batch.flip(-1), size))
