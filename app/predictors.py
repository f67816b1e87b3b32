"""Per-kind predictors: the hooks between HTTP payloads and a loaded model (after LitServe).

Each predictor is built by `app.loading.load_predictor` (load and place the model) and has
`decode_request` (payload -> one CPU tensor per item; thumbnails on the event loop, larger
images in a thread pool, many at once), `predict` (one batched forward of a named operation, on
the inference thread) and `encode_response` (outputs -> response schema). This module holds the
common base and the classifier; the VAE's predictor is `app.vae_predictor`.
Routes call these hooks and never touch torch; `app.registry` owns batching.
Shapes: B batch, C/H/W image, N classes, Z latent, D = H*W pixels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor, nn

from app import schemas
from app.images import decode_opened, normalize, stack_pixels
from app.marginal import ImputeItem, ScoreItem
from models.checkpoint import ModelCard
from models.precision import dtype_name


def model_dtype(model: nn.Module) -> torch.dtype:
    """The number format a loaded model runs in: its parameters' (`load_for_inference`)."""
    return next(model.parameters()).dtype


class PayloadError(ValueError):
    """A well-formed request whose values do not fit the model (answered 422)."""


class Predictor(ABC):
    """A loaded model and the hooks that serve it."""

    kind: ClassVar[str]
    ops: ClassVar[tuple[str, ...]]

    def __init__(self, model: nn.Module, card: ModelCard, device: torch.device) -> None:
        self.model = model
        self.card = card
        self.device = device
        self.dtype = model_dtype(model)  # chosen at load; batches are cast to it
        self.name = card.name

    def batch_fn(self, op: str) -> Callable[[list[Any]], list[Any]]:
        """The batched function of operation `op` (runs on the inference thread)."""
        fns: dict[str, Callable[[list[Any]], list[Any]]] = {
            "classify": self.predict_classify,
            "encode": self.predict_encode,
            "decode": self.predict_decode,
            "impute": self.predict_impute,
            "denoise": self.predict_denoise,
            "score": self.predict_score,
        }
        return fns[op]

    def _model_batch(self, items: list[Tensor]) -> Tensor:
        """CPU items -> one batch in model space on the device: stacked, moved once (pinned,
        async on CUDA), uint8 pixels normalised.

        Decoded images arrive as uint8 pixels and are stacked in Pillow's pixel order (a
        channels-last batch, `stack_pixels`) and normalised here, once per batch and after the
        copy (a quarter of the bytes to move); float items (JSON pixels, latents) are already in
        model space. A batch mixing both normalises its uint8 items one by one.
        """
        if all(t.dtype == torch.uint8 for t in items):
            x = stack_pixels(items)
        else:
            x = torch.stack([self._model_space(t) if t.dtype == torch.uint8 else t for t in items])
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        return self._model_space(x) if x.dtype == torch.uint8 else x

    def _model_space(self, pixels: Tensor) -> Tensor:
        """uint8 pixels (..., C, H, W) -> the model's normalised float input."""
        return normalize(pixels, self.card.input)

    @abstractmethod
    def warmup(self, max_batch_size: int) -> None:
        """Run every operation at batch 1 and at the largest batch, so first requests are fast."""

    def predict_classify(self, items: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError(f"{self.kind} does not classify")

    def predict_encode(self, items: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        raise NotImplementedError(f"{self.kind} does not encode")

    def predict_decode(self, items: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError(f"{self.kind} does not decode")

    def predict_impute(self, items: list[ImputeItem]) -> list[Tensor]:
        raise NotImplementedError(f"{self.kind} does not impute")

    def predict_denoise(self, items: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError(f"{self.kind} does not denoise")

    def predict_score(self, items: list[ScoreItem]) -> list[tuple[float, float]]:
        raise NotImplementedError(f"{self.kind} does not score")

    def decode_image(self, im: Image.Image) -> Tensor:
        """An opened upload (`app.images.open_image`) -> the (C, H, W) uint8 pixels the card's
        input spec asks for; `_model_batch` normalises them with the rest of the batch."""
        return decode_opened(im, self.card.input)

    def info(self, default: bool) -> schemas.ModelInfo:
        """The card as the API shows it."""
        c = self.card
        spec = schemas.InputSpecInfo(
            **c.input.model_dump(exclude={"size"}), size=list(c.input.size)
        )
        return schemas.ModelInfo(
            name=c.name,
            kind=self.kind,  # type: ignore[arg-type]
            architecture=c.architecture,
            task=c.task,
            dataset=c.dataset.model_dump(),
            metrics=c.metrics,
            input=spec,
            labels=c.labels,
            config=c.config,
            num_parameters=c.num_parameters,
            weights_sha256=c.weights_sha256,
            code_version=c.code_version,
            created_at=c.created_at,
            device=str(self.device),
            dtype=dtype_name(self.dtype),  # type: ignore[arg-type]
            default=default,
        )


class ClassifierPredictor(Predictor):
    """AlexNet: image -> softmax over the card's labels."""

    kind = "classifier"
    ops = ("classify",)

    @property
    def num_classes(self) -> int:
        return int(self.card.config.get("num_classes", len(self.card.labels)))

    @torch.inference_mode()
    def predict_classify(self, items: list[Tensor]) -> list[Tensor]:
        # (B, C, H, W) in the model's format; channels-last already when built from decoded
        # uploads (a no-op then)
        x = self._model_batch(items).to(dtype=self.dtype, memory_format=torch.channels_last)
        # softmax in float32 whatever the model's format; (B, N), one sync per batch
        probs = torch.softmax(self.model(x).float(), dim=1).cpu()
        return list(probs.unbind(0))

    def warmup(self, max_batch_size: int) -> None:
        c, (h, w) = self.card.input.channels, self.card.input.size
        for b in sorted({1, max_batch_size}):
            self.predict_classify([torch.zeros(c, h, w, dtype=torch.uint8)] * b)

    def encode_response(self, probs: Tensor, top_k: int) -> schemas.ClassifyResult:
        """(N,) probabilities -> the top_k classes, most probable first."""
        p, idx = probs.topk(top_k)
        labels = self.card.labels
        return schemas.ClassifyResult(
            predictions=[
                schemas.Prediction(
                    label=labels[i] if i < len(labels) else str(i), index=i, probability=q
                )
                for q, i in zip(p.tolist(), idx.tolist(), strict=True)
            ]
        )
