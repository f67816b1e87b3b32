"""Per-kind predictors: the hooks between HTTP payloads and a loaded model (after LitServe).

Each predictor has `setup` (load and place the model), `decode_request` (payload -> one CPU
tensor per item; thumbnails on the event loop, larger images in a thread pool, many at once),
`predict` (one batched forward of a named operation, on the inference thread) and
`encode_response` (outputs -> response schema).
Routes call these hooks and never touch torch; `app.registry` owns batching.
Shapes: B batch, C/H/W image, N classes, Z latent, D = H*W pixels.
"""

from __future__ import annotations

import io
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from app import schemas
from app.images import decode_mask, decode_opened, normalize, open_image, stack_pixels
from app.marginal import ImputeItem, ScoreItem, float32, impute_batch, score_batch
from models.checkpoint import ModelCard, load_checkpoint
from models.precision import DtypeSetting, candidates, choose_format, dtype_name
from models.prepack import packing_summary, prepack_linear, serving_rows
from models.vae import VAE

log = logging.getLogger("app.predictors")
Prepack = bool | Literal["auto"]


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

    @classmethod
    def setup(
        cls,
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


class VAEPredictor(Predictor):
    """AEVB VAE: encode images to q(z|x), decode latent codes to mean images, and the marginal
    operations (impute, denoise, score; `app.marginal`)."""

    kind = "vae"
    ops = ("encode", "decode", "impute", "denoise", "score")

    _float32: VAE | None = None  # the model for /score, made on first use

    @property
    def vae(self) -> VAE:
        return self.model  # type: ignore[return-value]  # a VAE, or torch.compile's wrapper of one

    @property
    def latent_dim(self) -> int:
        return int(self.model_config("latent"))

    @property
    def image_shape(self) -> tuple[int, int]:
        h, w = self.model_config("image_shape")
        return int(h), int(w)

    def model_config(self, key: str) -> Any:
        return self.card.config[key]

    @torch.inference_mode()
    def predict_encode(self, items: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        x = self._model_batch(items)  # (B, 1, H, W) in the model's [0, 1] space
        # (B, Z) each
        mean, log_var = self.model.encode(x)  # type: ignore[operator]
        mean, log_var = mean.float().cpu(), log_var.float().cpu()
        return list(zip(mean.unbind(0), log_var.unbind(0), strict=True))

    @torch.inference_mode()
    def predict_decode(self, items: list[Tensor]) -> list[Tensor]:
        z = self._model_batch(items)  # (B, Z)
        # (B, D) decoder means, one device-to-host copy per batch
        images = self.model.decode(z).float().flatten(1).cpu()  # type: ignore[operator]
        return list(images.unbind(0))

    @torch.inference_mode()
    def predict_impute(self, items: list[ImputeItem]) -> list[Tensor]:
        x = self._model_batch([it.pixels for it in items]).flatten(1)  # (B, D)
        return impute_batch(self.vae, x, items)

    @torch.inference_mode()
    def predict_denoise(self, items: list[Tensor]) -> list[Tensor]:
        """Posterior-mean reconstructions: the decoder's mean at the mean of q(z|x)."""
        mean, _ = self.vae.encode(self._model_batch(items))  # (B, Z)
        return list(self.vae.decode(mean).float().flatten(1).cpu().unbind(0))

    @torch.inference_mode()
    def predict_score(self, items: list[ScoreItem]) -> list[tuple[float, float]]:
        """(elbo, log p(x)) per item, in float32 whatever number format the model serves in."""
        if self._float32 is None:
            self._float32 = float32(self.vae)
        x = self._model_batch([it.pixels for it in items]).flatten(1)
        return score_batch(self._float32, x, items)

    def warmup(self, max_batch_size: int) -> None:
        h, w = self.image_shape
        pixels = torch.zeros(1, h, w, dtype=torch.uint8)
        missing = torch.zeros(h, w, dtype=torch.bool)
        missing[: h // 2] = True
        for b in sorted({1, max_batch_size}):
            self.predict_encode([pixels] * b)
            self.predict_decode([torch.zeros(self.latent_dim)] * b)
            self.predict_denoise([pixels] * b)
            self.predict_score([ScoreItem(pixels, 2, 0)] * b)
            for method in ("pseudo-gibbs", "mwg"):
                self.predict_impute([ImputeItem(pixels, missing, 2, method, 0)] * b)

    # --- decode_request ----------------------------------------------------------------
    def decode_pixels(self, pixels: list[Any], what: str = "pixels") -> list[Tensor]:
        """JSON pixels ((B, D), (H, W) or (B, H, W), values in [0, 1]) -> B tensors (1, H, W)."""
        h, w = self.image_shape
        try:
            a = np.asarray(pixels, dtype=np.float32)
        except ValueError:  # ragged rows: numpy refuses an inhomogeneous shape
            raise PayloadError(f"{what} must be a non-empty rectangular array") from None
        if a.dtype == object or a.size == 0:
            raise PayloadError(f"{what} must be a non-empty rectangular array")
        if a.ndim == 2 and a.shape == (h, w) and h * w != a.shape[1]:
            a = a[None]  # one image given as H rows of W values
        elif a.ndim == 2 and a.shape[1] == h * w:
            a = a.reshape(-1, h, w)
        if a.ndim != 3 or a.shape[1:] != (h, w):
            raise PayloadError(
                f"{what} have shape {list(np.shape(pixels))}; model {self.name} takes "
                f"(B, {h * w}) flat rows, ({h}, {w}) or (B, {h}, {w})"
            )
        return list(torch.from_numpy(a).unsqueeze(1).unbind(0))

    def decode_latents(self, z: list[list[float]]) -> list[Tensor]:
        """JSON z rows -> B tensors (Z,); every row must have latent_dim values."""
        bad = [i for i, row in enumerate(z) if len(row) != self.latent_dim]
        if bad:
            raise PayloadError(
                f"model {self.name} has latent_dim {self.latent_dim}; row {bad[0]} has "
                f"{len(z[bad[0]])} values"
            )
        return list(torch.tensor(z, dtype=torch.float32).unbind(0))

    @staticmethod
    def check_mask_count(images: int, masks: int) -> None:
        """422 unless every image has exactly one mask."""
        if images != masks:
            raise PayloadError(f"{images} images but {masks} masks; give one mask per image")

    def decode_masks(
        self, images: list[bytes], masks: list[bytes], max_pixels: int
    ) -> list[Tensor]:
        """Uploaded mask PNGs (white = missing), each the size of its image -> (H, W) bool at
        the model's size. Runs in a worker thread: it reads every image's header again."""
        out = []
        for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
            size = open_image(image, max_pixels).size
            m = open_image(mask, max_pixels)
            if m.size != size:
                raise PayloadError(
                    f"mask {i} is {m.size[0]}x{m.size[1]}, its image {size[0]}x{size[1]}"
                )
            out.append(decode_mask(m, self.card.input))
        return out

    def impute_items(
        self, pixels: list[Tensor], masks: list[Tensor], steps: int, method: str, seed: int
    ) -> list[ImputeItem]:
        """Pair images with masks ((H, W) or (1, H, W), nonzero = missing); 422 unless every
        image has exactly one mask and at least one observed pixel."""
        self.check_mask_count(len(pixels), len(masks))
        items = []
        for i, (x, m) in enumerate(zip(pixels, masks, strict=True)):
            missing = m.reshape(self.image_shape) != 0
            if bool(missing.all()):
                raise PayloadError(f"mask {i} leaves no pixel observed; nothing to condition on")
            items.append(ImputeItem(x, missing, steps, method, seed))  # type: ignore[arg-type]
        return items

    def prior_latents(self, n: int, seed: int) -> list[Tensor]:
        """n draws of z ~ N(0, I) from `seed`: the same seed gives the same codes anywhere."""
        g = torch.Generator().manual_seed(seed)
        return list(torch.randn((n, self.latent_dim), generator=g).unbind(0))

    # --- encode_response ---------------------------------------------------------------
    def encode_response(
        self, outputs: list[tuple[Tensor, Tensor]], sample: bool, seed: int | None
    ) -> schemas.EncodeResponse:
        """Posterior (mean, log_var) per image -> response; z = mean + sigma * eps if sample."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        results = []
        for mean, log_var in outputs:
            z = None
            if sample:
                eps = torch.randn(mean.shape, generator=g)
                z = (mean + torch.exp(0.5 * log_var) * eps).tolist()
            results.append(schemas.EncodeResult(mean=mean.tolist(), log_var=log_var.tolist(), z=z))
        return schemas.EncodeResponse(model=self.name, latent_dim=self.latent_dim, results=results)

    def score_response(
        self, outputs: list[tuple[float, float]], k: int, seed: int
    ) -> schemas.ScoreResponse:
        """(elbo, log p(x)) per image -> response."""
        likelihood = self.model_config("likelihood")
        return schemas.ScoreResponse(
            model=self.name,
            likelihood=likelihood,
            binarized=likelihood == "bernoulli",
            seed=seed,
            results=[schemas.ScoreResult(elbo=e, log_likelihood=p, k=k) for e, p in outputs],
        )

    def images_json(self, images: list[Tensor]) -> schemas.DecodeResponse:
        """(D,) mean images -> JSON rows at full float32 precision."""
        return schemas.DecodeResponse(
            model=self.name, shape=list(self.image_shape), images=[im.tolist() for im in images]
        )

    def images_png(self, images: list[Tensor]) -> bytes:
        """(D,) mean images -> one PNG: the image itself, or a grid with 2-pixel gaps."""
        return png_grid(torch.stack(images).view(-1, *self.image_shape).numpy())


def png_grid(images: np.ndarray, pad: int = 2) -> bytes:
    """(B, H, W) values in [0, 1] -> PNG bytes; B > 1 tiles a near-square grid, row-major."""
    b, h, w = images.shape
    pixels = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    if b == 1:
        grid = pixels[0]
    else:
        cols = math.ceil(math.sqrt(b))
        rows = math.ceil(b / cols)
        grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.uint8)
        for i in range(b):
            r, c = divmod(i, cols)
            top, left = pad + r * (h + pad), pad + c * (w + pad)
            grid[top : top + h, left : left + w] = pixels[i]
    buf = io.BytesIO()
    Image.fromarray(grid, "L").save(buf, "PNG")
    return buf.getvalue()


PREDICTORS: dict[str, type[Predictor]] = {"alexnet": ClassifierPredictor, "vae": VAEPredictor}
