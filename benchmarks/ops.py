"""The model work of each benchmarked endpoint, with no serving around it.

Shared by the in-process ceiling and the LitServe contender so both run the same tensors through
the same calls; our service has its own engine (app/) and is measured only over HTTP.
Shapes: B batch, C channels, H/W image size, Z latent size, K top-k.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from app.images import decode_opened, normalize, open_image, stack_pixels
from app.loading import Prepack, load_for_inference
from models.checkpoint import ModelCard
from models.precision import DtypeSetting

# Same limit as the service's default (app/settings.py max_image_pixels).
MAX_PIXELS = 40_000_000
ENDPOINTS = ("classify", "encode", "decode", "sample")


def load(
    model_dir: Path,
    channels_last: bool = True,
    device: str | torch.device = "cpu",
    prepack: Prepack = "auto",
    max_batch_size: int = 32,
    dtype: DtypeSetting = "float32",
) -> tuple[nn.Module, ModelCard]:
    """Load a checkpoint for inference on `device` as the service does
    (`app.loading.load_for_inference`): convolutional models in channels-last, fully
    connected layers packed for oneDNN on the CPU where that is faster, each optionally;
    classifiers in the number format `dtype` (MODELSERVE_DTYPE's values; VAEs stay float32)."""
    return load_for_inference(model_dir, device, channels_last, prepack, max_batch_size, dtype)


def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights live."""
    return next(model.parameters()).device


def decode_pixels(files: Sequence[bytes], card: ModelCard) -> Tensor:
    """Decode uploads as the service does -> (B, C, H, W) uint8 pixels on the host."""
    return stack_pixels([decode_opened(open_image(f, MAX_PIXELS), card.input) for f in files])


def to_model_batch(
    pixels: Tensor,
    card: ModelCard,
    channels_last: bool,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """(B, C, H, W) uint8 -> normalised and cast to `dtype` on `device`, as the service's batch
    step does (`app.predictors`): one pinned host-to-device copy of the uint8 pixels on CUDA,
    then normalisation in float32 there, then the cast to the model's format (`model_dtype`)."""
    x = pixels
    if torch.device(device).type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = normalize(x, card.input).to(dtype)
    return (
        x.contiguous(memory_format=torch.channels_last) if channels_last and x.shape[1] == 3 else x
    )


def images_to_batch(
    files: Sequence[bytes],
    card: ModelCard,
    channels_last: bool,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Decode and preprocess uploads exactly as the service does -> (B, C, H, W) in `dtype` on
    `device`."""
    return to_model_batch(decode_pixels(files, card), card, channels_last, device, dtype)


@torch.inference_mode()
def classify(model: nn.Module, x: Tensor, top_k: int = 5) -> tuple[Tensor, Tensor]:
    """(B, C, H, W) -> top-k probabilities (B, K) and class indices (B, K)."""
    probs = torch.softmax(model(x).float(), dim=1)
    p, idx = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return p.cpu(), idx.cpu()  # the answer on the host: one device sync per batch


@torch.inference_mode()
def encode(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 1, H, W) in [0, 1] -> posterior mean (B, Z) and log-variance (B, Z)."""
    mean, log_var = model.encode(x)  # type: ignore[operator]
    return mean.cpu(), log_var.cpu()


@torch.inference_mode()
def decode(model: nn.Module, z: Tensor) -> Tensor:
    """(B, Z) -> decoder mean images (B, 1, H, W), on the host."""
    out: Tensor = model.decode(z.to(device_of(model)))  # type: ignore[operator]
    return out.cpu()


@torch.inference_mode()
def sample(model: nn.Module, seeds: Sequence[int]) -> tuple[Tensor, Tensor]:
    """One prior draw per seed (the same z for the same seed) -> z (B, Z), images (B, 1, H, W)."""
    latent: int = model.config.latent  # type: ignore[union-attr,assignment]
    z = torch.stack(
        [torch.randn(latent, generator=torch.Generator().manual_seed(s)) for s in seeds]
    )
    images: Tensor = model.decode(z.to(device_of(model)))  # type: ignore[operator]
    return z, images.cpu()
