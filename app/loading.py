"""Loading a checkpoint for inference: placement, number format and packing, decided once
here and recorded on the model, and the predictor of its kind around it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from app.predictors import ClassifierPredictor, Predictor, model_dtype
from app.vae_predictor import VAEPredictor
from models.checkpoint import ModelCard, load_checkpoint
from models.precision import DtypeSetting, candidates, choose_format, dtype_name
from models.prepack import packing_summary, prepack_linear, serving_rows

log = logging.getLogger("app.loading")
Prepack = bool | Literal["auto"]
PREDICTORS: dict[str, type[Predictor]] = {"alexnet": ClassifierPredictor, "vae": VAEPredictor}


def load_predictor(
    directory: Path,
    device: torch.device,
    channels_last: bool = True,
    compile: bool = False,
    prepack: Prepack = False,
    max_batch_size: int = 32,
    dtype: DtypeSetting = "float32",
) -> Predictor:
    """Load a verified checkpoint onto `device` (`load_for_inference`) and build the
    predictor of its kind; not packed with `compile`, which cannot trace the packed weight."""
    model, card = load_for_inference(
        directory, device, channels_last, False if compile else prepack, max_batch_size, dtype
    )
    predictor = PREDICTORS[card.architecture](model, card, device)
    if compile:
        predictor.model = torch.compile(model)  # type: ignore[assignment]
    return predictor


def load_for_inference(
    directory: Path,
    device: torch.device | str,
    channels_last: bool = True,
    prepack: Prepack = False,
    max_batch_size: int = 32,
    dtype: DtypeSetting = "float32",
) -> tuple[nn.Module, ModelCard]:
    """A verified checkpoint on `device`, without gradients, ready to serve: classifiers in
    channels-last (`channels_last`) and in the number format `dtype` picks (`models.precision`:
    auto times float32 against bf16 here on a CPU with native bf16, each packed as it will
    run), fully connected layers packed for oneDNN where the device allows (`prepack`,
    `models.prepack`: True packs every layer, "auto" each one only for the batch sizes up to
    `max_batch_size` where it runs faster packed, timed here with the calling thread's torch
    threads). VAEs stay in float32. The format chosen is the parameters' dtype. The benchmarks'
    in-process ceiling and LitServe contender load through here too, so all three run the same
    model."""
    device = torch.device(device)
    model, card = load_checkpoint(directory, device)
    model.requires_grad_(False)
    classifier = PREDICTORS[card.architecture].kind == "classifier"
    if channels_last and classifier:
        model = model.to(memory_format=torch.channels_last)
    formats = candidates(dtype, device) if classifier else (torch.float32,)
    if not classifier and dtype not in ("auto", "float32"):
        log.info("model %s runs in float32: VAEs do under every MODELSERVE_DTYPE", card.name)

    def example(batch: int, dt: torch.dtype) -> Tensor:  # (B, C, H, W) random input
        c, (h, w) = card.input.channels, card.input.size
        x = torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(0))
        return x.to(device, dt).contiguous(memory_format=torch.channels_last)

    packed = lambda m: _packed(m, card, prepack, max_batch_size)  # noqa: E731
    batches = sorted({1, max_batch_size})
    return choose_format(model, formats, example, packed, batches, card.name, dtype != "auto"), card


def _packed(model: nn.Module, card: ModelCard, prepack: Prepack, max_batch_size: int) -> nn.Module:
    """`model` with its fully connected layers packed as `prepack` says (`load_for_inference`)."""
    if prepack:
        rows = serving_rows(max_batch_size) if prepack == "auto" else None
        prepack_linear(model, rows=rows)
        layers = ", ".join(f"{k} {v}" for k, v in packing_summary(model).items())
        dt = dtype_name(model_dtype(model))
        log.info(
            "model %s, %s fully connected layers (prepack %s): %s", card.name, dt, prepack, layers
        )
    return model
