"""Helpers shared by the model routes: parallel image decoding, inference that notices a client
leaving, and the documented error responses."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import Receive

from app import timing
from app.images import open_image
from app.predictors import Predictor
from app.registry import Registry
from app.schemas import ErrorResponse
from app.settings import Settings

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": why}
    for code, why in {
        400: "Empty, truncated or corrupt image",
        401: "Missing or wrong X-API-Key (when a key is configured)",
        404: "Unknown model",
        413: "Body over the upload limit, image over the pixel limit, or too many items",
        415: "Not a supported image format / content type",
        422: "Invalid parameters or body",
        503: "Models loading or server overloaded (Retry-After)",
        504: "Inference deadline exceeded",
    }.items()
}


def image_parts_content(description: str) -> dict[str, Any]:
    """OpenAPI content of a multipart/form-data body of `image` parts, for the routes that read
    their form themselves (`read_image_parts`) and so declare the body in `openapi_extra`."""
    return {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "string", "format": "binary"},
                        "description": description,
                    }
                },
            }
        }
    }


async def read_image_parts(request: Request, settings: Settings) -> list[bytes]:
    """The bytes of every `image` part of a multipart/form-data body, in upload order.

    422 when there is none (also for a body of another type), 413 past `max_batch_images`.
    Read here rather than declared as a FastAPI `File` parameter: the form is parsed the same
    way (Starlette's parser, python-multipart), without FastAPI validating every part again
    through pydantic on each request.
    """
    return (await read_parts(request, settings, ("image",)))["image"]


async def read_parts(
    request: Request, settings: Settings, names: Sequence[str]
) -> dict[str, list[bytes]]:
    """The bytes of the file parts of each field in `names`, in upload order; each field is
    required (422) and holds at most `max_batch_images` parts (413)."""
    # One file over the limit is still parsed, so that the answer is our 413, not a 400.
    async with request.form(max_files=settings.max_batch_images * len(names) + 1) as form:
        parts = {n: [f for f in form.getlist(n) if isinstance(f, UploadFile)] for n in names}
        for name, files in parts.items():
            if not files:
                raise RequestValidationError(
                    [{"type": "missing", "loc": ("body", name), "msg": "Field required"}]
                )
            if len(files) > settings.max_batch_images:
                raise HTTPException(
                    413,
                    f"{len(files)} {name}s in one request; the limit is {settings.max_batch_images}",
                )
        return {name: [await f.read() for f in files] for name, files in parts.items()}


# Images up to this many pixels (a 128x128 thumbnail, every CIFAR-10 or MNIST image) decode in
# well under a millisecond: faster on the event loop than the round trip to the thread pool.
INLINE_DECODE_MAX_PIXELS = 128 * 128


async def decode_uploads(
    blobs: Sequence[bytes], predictor: Predictor, settings: Settings
) -> list[Any]:
    """Decode every uploaded image, keeping the order: small images right here, larger ones in
    the thread pool (in parallel, off the event loop)."""

    async def decode(b: bytes) -> Any:
        im = open_image(b, settings.max_image_pixels)  # the header only: format, declared size
        width, height = im.size
        if width * height <= INLINE_DECODE_MAX_PIXELS:
            return predictor.decode_image(im)
        return await run_in_threadpool(predictor.decode_image, im)

    with timing.phase("decode"):
        if len(blobs) == 1:  # the common case; gather would wrap it in a task of its own
            return [await decode(blobs[0])]
        return list(await asyncio.gather(*(decode(b) for b in blobs)))


# nginx's "client closed request": logged and counted, never seen by the client.
CLIENT_GONE = 499


async def _disconnected(receive: Receive) -> None:
    """Return when the client goes away (the body has been read: next comes http.disconnect)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def infer(
    request: Request, registry: Registry, predictor: Predictor, op: str, items: list[Any]
) -> list[Any]:
    """`registry.infer`, abandoned (its queue slots freed) if the client disconnects first.

    The request's own task awaits the result; a watcher task cancels it if the client goes.
    (One task fewer than racing a second task against the watcher with asyncio.wait: at c=1
    every scheduling step after the forward is on the latency.)
    """
    task = asyncio.current_task()
    assert task is not None, "infer runs inside the request's task"
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnected(request.receive)
        gone = True
        task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await registry.infer(predictor, op, items)
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from outside (shutdown): not ours to absorb
        task.uncancel()
    finally:
        watcher.cancel()
    request.app.state.metrics.reject("disconnected")
    raise HTTPException(CLIENT_GONE, "client disconnected before the answer was ready")
