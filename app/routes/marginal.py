"""The VAE's marginal inference: POST /impute (missing pixels), /denoise, /score (log p(x)).

Same inputs as /encode (multipart `image` parts or JSON pixels in the model's [0, 1] space),
same answers as /decode (PNG or JSON by Accept); the work runs through the registry's batchers
as the predictor's `impute`, `denoise` and `score` operations (`app.marginal`). The limits and
defaults below (`impute_steps`, `check_score`, `resolve_seed`, `masked_uploads`) are the
Open Inference Protocol's too (`app.routes.v2_models`).
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from app import timing
from app.deps import RegistryDep, SettingsDep
from app.marginal import ScoreItem
from app.routes.uploads import ERRORS, decode_uploads, image_parts_content, infer, read_parts
from app.routes.vae import (
    JSON,
    AcceptHeader,
    ModelQuery,
    image_answer,
    image_responses,
    media_type,
    negotiate,
    read_images,
)
from app.schemas import (
    MAX_SEED,
    DecodeResponse,
    EncodeRequest,
    ImputeMethod,
    ImputeRequest,
    ImputeResponse,
    ScoreRequest,
    ScoreResponse,
)
from app.settings import Settings
from app.vae_predictor import VAEPredictor

router = APIRouter(tags=["vae"])

# The sampler with the lower imputation error on MNIST test digits (docs/marginal.md).
DEFAULT_METHOD: ImputeMethod = "pseudo-gibbs"
DEFAULT_STEPS = 100
DEFAULT_K = 100

SeedQuery = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_SEED,
        description="Same seed, same answer (or `seed` in a JSON body); default random, reported",
    ),
]


def _body(schema: type[EncodeRequest], parts: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI request body: multipart `image` parts (and `parts`), or JSON `schema`."""
    multipart = image_parts_content("One or more images; converted as the card says")
    multipart["multipart/form-data"]["schema"]["properties"].update(parts)
    multipart["multipart/form-data"]["schema"]["required"] += list(parts)
    content = {**multipart, JSON: {"schema": schema.model_json_schema()}}
    return {"requestBody": {"required": True, "content": content}}


MASK_PART = {
    "mask": {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": "One per image, in the same order and of the same size: white = missing",
    }
}
IMPUTE_BODY = _body(ImputeRequest, MASK_PART)
IMAGES_BODY = _body(EncodeRequest, {})
SCORE_BODY = _body(ScoreRequest, {})


# --- limits and defaults, shared with the Open Inference Protocol's models ----------------
def resolve_seed(seed: int | None) -> int:
    """The given seed (422 outside 0..MAX_SEED), or a random one when none is given."""
    if seed is None:
        return secrets.randbelow(2**31)
    if not 0 <= seed <= MAX_SEED:
        raise HTTPException(422, f"seed={seed}; it must be between 0 and {MAX_SEED}")
    return seed


def impute_steps(steps: int | None, settings: Settings) -> int:
    """The chain's sweeps: DEFAULT_STEPS (or max_impute_steps if lower) when not given, 422
    outside 1..max_impute_steps."""
    if steps is None:
        return min(DEFAULT_STEPS, settings.max_impute_steps)
    if steps < 1:
        raise HTTPException(422, f"steps={steps}; it must be at least 1")
    if steps > settings.max_impute_steps:
        raise HTTPException(
            422, f"steps={steps} exceeds max_impute_steps={settings.max_impute_steps}"
        )
    return steps


def check_score(k: int, images: int, settings: Settings) -> None:
    """422 unless 1 <= k <= max_score_k; 413 past max_score_samples samples in all."""
    if k < 1:
        raise HTTPException(422, f"k={k}; it must be at least 1")
    if k > settings.max_score_k:
        raise HTTPException(422, f"k={k} exceeds max_score_k={settings.max_score_k}")
    if k * images > settings.max_score_samples:
        raise HTTPException(
            413,
            f"k={k} x {images} images = {k * images} samples; "
            f"limit max_score_samples={settings.max_score_samples}",
        )


async def masked_uploads(
    predictor: VAEPredictor, settings: Settings, images: list[bytes], masks: list[bytes]
) -> tuple[list[Any], list[Tensor]]:
    """Image files with one mask file each (white = missing, the image's size) -> the
    predictor's inputs and (H, W) masks; 422 for a missing or misfit mask."""
    predictor.check_mask_count(len(images), len(masks))
    pixels = await decode_uploads(images, predictor, settings)
    with timing.phase("decode"):
        decoded = await run_in_threadpool(
            predictor.decode_masks, images, masks, settings.max_image_pixels
        )
    return pixels, decoded


def _seed(query: int | None, body: ScoreRequest | None) -> int:
    """The request's seed: query or body (422 when both differ), else a random one."""
    given = body.seed if body is not None else None
    if query is not None and given is not None and query != given:
        raise HTTPException(422, f"seed {query} in the query but {given} in the body")
    return resolve_seed(query if query is not None else given)


# --- routes ----------------------------------------------------------------------------


@router.post(
    "/impute",
    response_model=ImputeResponse,
    responses=image_responses(ImputeResponse),
    openapi_extra=IMPUTE_BODY,
    summary="Fill the missing pixels of images from the model",
)
async def impute(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    model: ModelQuery = None,
    steps: Annotated[
        int | None,
        Query(
            ge=1,
            description=f"Sweeps of the chain (<= max_impute_steps); default {DEFAULT_STEPS}, "
            "or max_impute_steps if lower",
        ),
    ] = None,
    method: Annotated[
        ImputeMethod,
        Query(
            description="pseudo-gibbs (Rezende et al. 2014) or mwg: Metropolis-within-Gibbs "
            "(Mattei & Frellsen 2018), which samples the model's exact conditional"
        ),
    ] = DEFAULT_METHOD,
    seed: SeedQuery = None,
    accept: AcceptHeader = None,
) -> Response:
    """Multipart `image` parts with one `mask` part each (white = missing), or JSON pixels
    and mask (1 = missing). Observed pixels come back unchanged, missing ones as the mean of
    the decoder's means over the chain's second half. PNG (grid for several) or JSON."""
    predictor = registry.vae(model)
    media = negotiate(accept)
    steps = impute_steps(steps, settings)
    body: ImputeRequest | None = None
    if media_type(request) == "multipart/form-data":
        parts = await read_parts(request, settings, ("image", "mask"))
        pixels, masks = await masked_uploads(predictor, settings, parts["image"], parts["mask"])
    else:
        pixels, body = await read_images(request, settings, predictor, ImputeRequest)
        assert body is not None
        with timing.phase("decode"):
            masks = await run_in_threadpool(predictor.decode_pixels, body.mask, "mask")
    seed = _seed(seed, body)
    items = predictor.impute_items(pixels, masks, steps, method, seed)
    images = await infer(request, registry, predictor, "impute", items)
    out = None
    if media == JSON:
        plain = predictor.images_json(images).model_dump()
        out = ImputeResponse(**plain, method=method, steps=steps, seed=seed)
    return await image_answer(predictor, media, images, {"X-Seed": str(seed)}, out)


@router.post(
    "/denoise",
    response_model=DecodeResponse,
    responses=image_responses(DecodeResponse),
    openapi_extra=IMAGES_BODY,
    summary="Reconstruct images through the posterior mean",
)
async def denoise(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    model: ModelQuery = None,
    accept: AcceptHeader = None,
) -> Response:
    """Decoder mean at the mean of q(z|x) per image: the image as the model would draw it,
    stray pixels and noise the model does not explain left out. PNG or JSON."""
    predictor = registry.vae(model)
    media = negotiate(accept)
    inputs, _ = await read_images(request, settings, predictor, EncodeRequest)
    images = await infer(request, registry, predictor, "denoise", inputs)
    return await image_answer(predictor, media, images, {})


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses=ERRORS,
    openapi_extra=SCORE_BODY,
    summary="Lower bound and importance-sampled log-likelihood of images",
)
async def score(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    model: ModelQuery = None,
    k: Annotated[
        int, Query(ge=1, description="Importance samples per image (<= max_score_k)")
    ] = DEFAULT_K,
    seed: SeedQuery = None,
) -> Response:
    """ELBO and log p(x) (k importance samples from q(z|x)) per image, in nats, computed in
    float32. A Bernoulli model scores the image binarised at 0.5 (`binarized` says so); a
    Gaussian one scores the density of the grey levels. Higher is more typical of the
    training data: an out-of-distribution signal, with the caveats of docs/marginal.md."""
    predictor = registry.vae(model)
    check_score(k, 1, settings)  # k alone, before reading the body
    inputs, body = await read_images(request, settings, predictor, ScoreRequest)
    check_score(k, len(inputs), settings)
    seed = _seed(seed, body)
    outputs = await infer(
        request, registry, predictor, "score", [ScoreItem(x, k, seed) for x in inputs]
    )
    return Response(predictor.score_response(outputs, k, seed).model_dump_json(), media_type=JSON)
