"""The VAE's marginal inference on a batch: missing pixels (/impute) and likelihoods (/score).

Items of one batch come from different requests and may each carry their own parameters
(method, steps, k, seed). Items that share them run as one chain or one scoring pass; every
item draws its noise from a generator seeded with its own seed, so a request's answer does
not depend on what else was in its batch (up to float rounding of the batched matmuls).
The math is `models.vae`'s, shared with the evaluation (`training.marginal`).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from models.vae import VAE, ImputeMethod, impute, scoring_input

# K x B rows of decoder output per pass while scoring: bounds memory, not the answer.
SCORE_ROWS = 2**14


@dataclass(frozen=True)
class ImputeItem:
    """One image of /impute with its own chain parameters."""

    pixels: Tensor  # (1, H, W): uint8 upload pixels or float model-space values
    missing: Tensor  # (H, W) bool, True where the pixel is to be filled
    steps: int
    method: ImputeMethod
    seed: int


@dataclass(frozen=True)
class ScoreItem:
    """One image of /score with its own sample count and seed."""

    pixels: Tensor  # (1, H, W), as ImputeItem.pixels
    k: int
    seed: int


def groups(keys: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """Positions of equal keys, in first-seen order."""
    out: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        out[key].append(i)
    return out


def generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def impute_batch(model: VAE, x: Tensor, items: Sequence[ImputeItem]) -> list[Tensor]:
    """x (B, D) in model space, the items' pixels -> B filled images (D,) float32 on the CPU."""
    missing = torch.stack([it.missing for it in items]).flatten(1).to(x.device)
    out: list[Tensor] = [x[0]] * len(items)
    for method, idx in groups([it.method for it in items]).items():
        steps = torch.tensor([items[i].steps for i in idx])
        gens = [generator(items[i].seed, x.device) for i in idx]
        filled = impute(model, x[idx], missing[idx], steps, method, gens)  # type: ignore[arg-type]
        for i, row in zip(idx, filled.float().cpu().unbind(0), strict=True):
            out[i] = row
    return out


def float32(model: VAE) -> VAE:
    """The model itself when its weights are float32, else a float32 copy: likelihoods are
    sums over hundreds of pixels, which a 16-bit format would round by whole nats."""
    if all(p.dtype == torch.float32 for p in model.parameters()):
        return model
    return copy.deepcopy(model).float()


def score_batch(model: VAE, x: Tensor, items: Sequence[ScoreItem]) -> list[tuple[float, float]]:
    """x (B, D) in model space -> (elbo, log p(x)) per item, computed in float32."""
    latent = model.config.latent
    with torch.autocast(x.device.type, enabled=False):
        x = scoring_input(x.float(), model.config.likelihood)
        out: list[tuple[float, float]] = [(0.0, 0.0)] * len(items)
        for k, idx in groups([it.k for it in items]).items():
            # eps (K, B, Z): column b drawn from item b's own seed
            eps = torch.stack(
                [
                    torch.randn(
                        (int(k), latent),  # type: ignore[call-overload]
                        generator=generator(items[i].seed, x.device),
                        device=x.device,
                    )
                    for i in idx
                ],
                dim=1,
            )
            elbo, log_px = model.score(x[idx], eps, chunk=max(1, SCORE_ROWS // len(idx)))
            for i, pair in zip(idx, zip(elbo.tolist(), log_px.tolist(), strict=True), strict=True):
                out[i] = pair
    return out
