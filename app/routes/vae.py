"""VAE endpoints: POST /encode, POST /decode, GET /sample."""

from __future__ import annotations

import secrets
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app import timing
from app.deps import RegistryDep, SettingsDep
from app.errors import not_acceptable
from app.negotiation import choose_media
from app.registry import Registry
from app.routes.uploads import ERRORS, decode_uploads, image_parts_content, infer, read_image_parts
from app.schemas import (
    MAX_SEED,
    DecodeRequest,
    DecodeResponse,
    EncodeRequest,
    EncodeResponse,
    SampleResponse,
)
from app.vae_predictor import VAEPredictor

router = APIRouter(tags=["vae"])

PNG, JSON = "image/png", "application/json"
# PNG first: it is the answer for a missing or */* Accept (curl, browsers).
IMAGE_TYPES = [PNG, JSON]
Body = TypeVar("Body", bound=EncodeRequest)

ModelQuery = Annotated[str | None, Query(description="VAE name (default: the configured one)")]
AcceptHeader = Annotated[str | None, Header(description="image/png (default) or application/json")]

ENCODE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            **image_parts_content("One or more images; converted as the card says"),
            JSON: {"schema": EncodeRequest.model_json_schema()},
        },
    }
}


def image_responses(model: type[DecodeResponse]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "content": {
                PNG: {"schema": {"type": "string", "format": "binary"}},
                JSON: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}},
            },
            "description": "PNG (one image, or a grid row-major) or JSON mean parameters",
        },
        406: {"description": "Accept names neither image/png nor application/json"},
        **ERRORS,
    }


def validation_error(e: ValidationError) -> RequestValidationError:
    """A pydantic error on a body we parsed ourselves, reported like FastAPI's own 422s."""
    return RequestValidationError(
        [{**err, "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)]
    )


def media_type(request: Request) -> str:
    """The request body's media type, lower case, without parameters ("" when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


@router.post(
    "/encode",
    response_model=EncodeResponse,
    responses=ERRORS,
    openapi_extra=ENCODE_BODY,
    summary="Encode images to the posterior q(z|x)",
)
async def encode(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    model: ModelQuery = None,
    sample: Annotated[bool, Query(description="Also draw z from q(z|x)")] = False,
    seed: Annotated[
        int | None, Query(ge=0, le=MAX_SEED, description="Seed of the draw (sample=true)")
    ] = None,
) -> Response:
    """Multipart `image` parts or a JSON `{"pixels": ...}` body; one result per image, in order."""
    predictor = registry.vae(model)
    inputs, _ = await read_images(request, settings, predictor, EncodeRequest)
    outputs = await infer(request, registry, predictor, "encode", inputs)
    # Serialised here, not validated again against response_model (that is for the docs).
    return Response(
        predictor.encode_response(outputs, sample, seed).model_dump_json(), media_type=JSON
    )


async def read_images(
    request: Request, settings: SettingsDep, predictor: VAEPredictor, body_type: type[Body]
) -> tuple[list[Any], Body | None]:
    """The images of a multipart (`image` parts) or JSON (`body_type`, with `pixels`) body,
    decoded for `predictor`, and the JSON body itself; 413 past max_batch_images."""
    content_type = media_type(request)
    if content_type == "multipart/form-data":
        blobs = await read_image_parts(request, settings)
        return await decode_uploads(blobs, predictor, settings), None
    if content_type != JSON:
        raise HTTPException(415, "send multipart/form-data with `image` parts, or application/json")
    try:
        body = body_type.model_validate_json(await request.body())
    except ValidationError as e:
        raise validation_error(e) from None
    with timing.phase("decode"):
        inputs = await run_in_threadpool(predictor.decode_pixels, body.pixels)
    if len(inputs) > settings.max_batch_images:
        raise HTTPException(
            413, f"{len(inputs)} images in one request; limit {settings.max_batch_images}"
        )
    return inputs, body


def negotiate(accept: str | None) -> str:
    """The image type to answer in; 406 (before any work) when Accept allows neither."""
    media = choose_media(accept, IMAGE_TYPES)
    if media is None:
        raise not_acceptable(IMAGE_TYPES)
    return media


async def image_answer(
    predictor: VAEPredictor,
    media: str,
    images: list[Any],
    headers: dict[str, str],
    out: DecodeResponse | None = None,
) -> Response:
    """Model images (D,) as one PNG (a grid for several) or as JSON: `out` when given (a
    DecodeResponse with more fields), else the plain DecodeResponse."""
    headers = {"X-Image-Count": str(len(images)), **headers}
    if media == PNG:
        with timing.phase("png"):
            png = await run_in_threadpool(predictor.images_png, images)
        return Response(png, media_type=PNG, headers=headers)
    body = out if out is not None else predictor.images_json(images)
    return Response(body.model_dump_json(), media_type=JSON, headers=headers)


async def _render(
    request: Request,
    predictor: VAEPredictor,
    registry: Registry,
    accept: str | None,
    zs: list[Any],
    headers: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> Response:
    """Negotiate (406 first, before any work), decode `zs` in batches, answer PNG or JSON."""
    media = negotiate(accept)
    images = await infer(request, registry, predictor, "decode", zs)
    out = None
    if extra is not None and media == JSON:  # /sample: the seed and the z's used
        out = SampleResponse(**predictor.images_json(images).model_dump(), **extra)
    return await image_answer(predictor, media, images, headers, out)


def _json_body(request: Request) -> None:
    """415 for a body that is not JSON (FastAPI would try to validate it and answer 422)."""
    content_type = media_type(request)
    if content_type != JSON and not content_type.endswith("+json"):
        raise HTTPException(415, f"send a JSON body ({JSON}); got {content_type or 'no type'}")


@router.post(
    "/decode",
    response_model=DecodeResponse,
    dependencies=[Depends(_json_body)],
    responses=image_responses(DecodeResponse),
    summary="Decode latent codes to images",
)
async def decode(
    request: Request,
    body: DecodeRequest,
    registry: RegistryDep,
    settings: SettingsDep,
    model: ModelQuery = None,
    accept: AcceptHeader = None,
) -> Response:
    """Decoder mean images of the given z rows, as PNG (default) or JSON."""
    predictor = registry.vae(model)
    if len(body.z) > settings.max_batch_images:
        raise HTTPException(413, f"{len(body.z)} latent rows; limit {settings.max_batch_images}")
    return await _render(request, predictor, registry, accept, predictor.decode_latents(body.z), {})


@router.get(
    "/sample",
    response_model=SampleResponse,
    responses=image_responses(SampleResponse),
    summary="Sample images from the prior",
)
async def sample(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    n: Annotated[int, Query(ge=1, description="Number of images (<= max_sample_n)")] = 16,
    seed: Annotated[
        int | None, Query(ge=0, le=MAX_SEED, description="Same seed, same images; default random")
    ] = None,
    model: ModelQuery = None,
    accept: AcceptHeader = None,
) -> Response:
    """Decode n draws z ~ N(0, I); PNG grid (seed in X-Seed) or JSON with the z's and seed."""
    predictor = registry.vae(model)
    if n > settings.max_sample_n:
        raise HTTPException(422, f"n={n} exceeds max_sample_n={settings.max_sample_n}")
    seed = secrets.randbelow(2**31) if seed is None else seed
    zs = predictor.prior_latents(n, seed)
    extra = {"seed": seed, "z": [z.tolist() for z in zs]}
    return await _render(request, predictor, registry, accept, zs, {"X-Seed": str(seed)}, extra)
