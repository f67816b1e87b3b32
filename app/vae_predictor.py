"""The VAE's predictor: encode, decode and the marginal operations, with the request
decoding and response encoding they need (hooks as in `app.predictors`).
Shapes: B batch, H/W image, Z latent, D = H*W pixels.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from app import schemas
from app.images import decode_mask, open_image
from app.marginal import ImputeItem, ScoreItem, float32, impute_batch, score_batch
from app.predictors import PayloadError, Predictor
from models.vae import VAE


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
