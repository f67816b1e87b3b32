"""Augmentation: the colour noise's statistics, eigen-decomposition, crops against slicing."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from torch import Tensor

from training.augment import (
    center_crop,
    compute_pca_stats,
    pca_color_noise,
    random_crop_flip,
    ten_crop,
)


def _rotation(seed: int) -> Tensor:
    """A random 3x3 orthogonal matrix (columns orthonormal)."""
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed)))
    return q


EIGVALS = torch.tensor([0.3, 0.1, 0.02])
EIGVECS = _rotation(0)


def _offsets(n: int, std: float = 0.1, seed: int = 0) -> Tensor:
    """Colour offsets the noise adds to n images of 2x2 grey pixels: (n, 3)."""
    batch = torch.full((n, 3, 2, 2), 0.5)
    out = pca_color_noise(batch, EIGVALS, EIGVECS, std, torch.Generator().manual_seed(seed))
    return (out - batch)[:, :, 0, 0]


def test_colour_offsets_have_the_papers_covariance() -> None:
    std, n = 0.1, 40_000
    off = _offsets(n, std).double()
    expected = EIGVECS.double() @ torch.diag((std * EIGVALS.double()) ** 2) @ EIGVECS.double().T
    cov = torch.cov(off.T)
    # sample covariance of n Gaussians: relative error ~ sqrt(2/n) = 0.7%; allow 5% of the largest
    assert torch.allclose(cov, expected, atol=0.05 * expected.abs().max().item())
    assert off.mean(0).abs().max() < 4 * std * EIGVALS.max() / n**0.5


def test_projections_on_eigenvectors_are_uncorrelated_with_std_times_eigenvalue() -> None:
    std, n = 0.1, 40_000
    proj = (_offsets(n, std) @ EIGVECS).double()  # (n, 3): alpha_i * lambda_i
    corr = torch.corrcoef(proj.T)
    off_diag = corr - torch.eye(3, dtype=corr.dtype)
    assert off_diag.abs().max() < 0.03  # std error of a correlation ~ 1/sqrt(n) = 0.005
    assert torch.allclose(proj.std(0), std * EIGVALS.double(), rtol=0.03)


def test_noise_is_constant_over_each_image_and_differs_between_images() -> None:
    g = torch.Generator().manual_seed(1)
    batch = torch.rand(64, 3, 8, 8, generator=g)
    before = batch.clone()
    out = pca_color_noise(batch, EIGVALS, EIGVECS, 0.1, g)
    assert torch.equal(batch, before), "input must not be modified"
    noise = out - batch  # (64, 3, 8, 8)
    per_image = noise[:, :, :1, :1]
    assert torch.allclose(noise, per_image.expand_as(noise), atol=1e-6)
    colours = per_image.flatten(1)  # (64, 3)
    assert torch.cdist(colours, colours).add(torch.eye(64)).min() > 0  # all pairwise distinct


def test_noise_is_reproducible_with_a_generator_and_zero_for_zero_std() -> None:
    batch = torch.rand(8, 3, 4, 4)
    a = pca_color_noise(batch, EIGVALS, EIGVECS, 0.1, torch.Generator().manual_seed(5))
    b = pca_color_noise(batch, EIGVALS, EIGVECS, 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(pca_color_noise(batch, EIGVALS, EIGVECS, 0.0), batch)


def _synthetic_pixels(cov: Tensor, n: int, hw: int, seed: int) -> Tensor:
    """n images (n, 3, hw, hw) whose pixels are i.i.d. N(mean, cov)."""
    g = torch.Generator().manual_seed(seed)
    chol = torch.linalg.cholesky(cov)
    pix = torch.randn(n * hw * hw, 3, generator=g, dtype=torch.float64) @ chol.T
    pix = pix + torch.tensor([0.5, 0.4, 0.3], dtype=torch.float64)
    return pix.reshape(n, hw, hw, 3).permute(0, 3, 1, 2).float()


def test_pca_stats_recover_a_known_covariance() -> None:
    vals = torch.tensor([0.04, 0.01, 0.002], dtype=torch.float64)
    vecs = _rotation(3).double()
    images = _synthetic_pixels(vecs @ torch.diag(vals) @ vecs.T, n=200, hw=16, seed=4)
    eigvals, eigvecs = compute_pca_stats(images)
    assert eigvals.shape == (3,) and eigvecs.shape == (3, 3)
    assert torch.all(eigvals[:-1] >= eigvals[1:]), "descending"
    assert torch.allclose(eigvals.double(), vals, rtol=0.03)
    assert torch.allclose(eigvecs.T @ eigvecs, torch.eye(3), atol=1e-5), "orthonormal columns"
    # same axes up to sign: |<estimated_i, true_i>| ~ 1
    assert torch.all((eigvecs.double() * vecs).sum(0).abs() > 0.999)


def test_pca_stats_equal_numpy_covariance_for_uint8_and_any_chunking() -> None:
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (23, 3, 6, 5), generator=g, dtype=torch.uint8)
    pixels = images.double().div(255).permute(1, 0, 2, 3).reshape(3, -1)
    vals, _ = torch.linalg.eigh(torch.cov(pixels, correction=0))
    eigvals, eigvecs = compute_pca_stats(images)
    assert torch.allclose(eigvals.double(), vals.flip(0), rtol=1e-5)
    chunked = compute_pca_stats(images, chunk_size=4)  # 23 = 5 chunks of 4 and one of 3
    assert torch.allclose(chunked[0], eigvals) and torch.allclose(chunked[1], eigvecs)
    as_float = compute_pca_stats(images.float() / 255)
    assert torch.allclose(as_float[0], eigvals, rtol=1e-5)
    assert torch.allclose(as_float[1], eigvecs, atol=1e-4)


def test_pca_stats_reject_non_rgb() -> None:
    with pytest.raises(ValueError, match="3 channels"):
        compute_pca_stats(torch.rand(4, 1, 8, 8))


def _numbered(b: int, c: int, h: int, w: int) -> Tensor:
    """Every value distinct, so a crop identifies its window."""
    return torch.arange(b * c * h * w, dtype=torch.float32).reshape(b, c, h, w)


def test_random_crops_are_real_windows_some_flipped() -> None:
    b, c, h, w, s = 400, 2, 9, 7, 5
    batch = _numbered(b, c, h, w)
    out = random_crop_flip(batch, s, torch.Generator().manual_seed(0))
    assert out.shape == (b, c, s, s)
    # all windows of each image, unflipped and mirrored: (B, C, h-s+1, w-s+1, s, s)
    windows = batch.unfold(2, s, 1).unfold(3, s, 1)
    flipped, positions = 0, set()
    for i in range(b):
        cands = windows[i].permute(1, 2, 0, 3, 4)  # (h-s+1, w-s+1, C, s, s)
        plain = (cands == out[i]).flatten(2).all(-1).nonzero()
        mirror = (cands.flip(-1) == out[i]).flatten(2).all(-1).nonzero()
        assert len(plain) + len(mirror) == 1, f"image {i} is not exactly one window"
        flipped += len(mirror)
        positions.add(tuple((plain if len(plain) else mirror)[0].tolist()))
    # 50% flips: binomial(400, 0.5) has std 10, allow 5 std
    assert abs(flipped - b / 2) < 50
    assert len(positions) == (h - s + 1) * (w - s + 1), "every offset occurs"


def test_random_crop_is_reproducible_and_independent_per_image() -> None:
    batch = _numbered(1, 3, 32, 32).expand(64, -1, -1, -1)  # 64 copies of one image
    a = random_crop_flip(batch, 28, torch.Generator().manual_seed(3))
    b = random_crop_flip(batch, 28, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert len({t.sum().item() + t[0, 0, 0].item() for t in a}) > 10, "crops differ per image"


def test_crop_larger_than_image_is_rejected() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        random_crop_flip(torch.rand(2, 3, 8, 8), 9)
    with pytest.raises(ValueError, match="does not fit"):
        ten_crop(torch.rand(2, 3, 8, 8), 9)


@pytest.mark.parametrize(("h", "w", "size"), [(32, 32, 28), (33, 30, 24), (7, 8, 7)])
def test_center_and_ten_crop_match_torchvision(h: int, w: int, size: int) -> None:
    batch = torch.rand(5, 3, h, w, generator=torch.Generator().manual_seed(h))
    assert torch.equal(center_crop(batch, size), TF.center_crop(batch, [size, size]))
    crops = ten_crop(batch, size)
    assert crops.shape == (10, 5, 3, size, size)
    assert torch.equal(crops, torch.stack(TF.ten_crop(batch, [size, size])))
    assert torch.equal(crops[0], batch[..., :size, :size])  # top-left corner, by slicing
    assert torch.equal(crops[5], batch.flip(-1)[..., :size, :size])  # ... of the mirror image


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batch_with_cpu_generator_matches_cpu() -> None:
    batch = torch.rand(16, 3, 32, 32)
    for fn in (
        lambda x, g: random_crop_flip(x, 28, g),
        lambda x, g: pca_color_noise(x, EIGVALS, EIGVECS, 0.1, g),
    ):
        cpu = fn(batch, torch.Generator().manual_seed(0))
        gpu = fn(batch.cuda(), torch.Generator().manual_seed(0))
        assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1e-6)
    stats = compute_pca_stats(batch.cuda())
    assert torch.allclose(stats[0].cpu(), compute_pca_stats(batch)[0], rtol=1e-4)
