"""Every error as JSON `ErrorResponse` with the right status; never a stack trace to clients."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import images
from app.batching import DeadlineExceeded, Overloaded
from app.logs import current_request_id
from app.predictors import PayloadError
from app.registry import NoModel, NotReady, UnknownModel
from app.schemas import ErrorResponse

log = logging.getLogger("app.errors")

# Typed faults of our own modules -> HTTP status.
IMAGE_STATUS: dict[type[images.ImageError], int] = {
    images.EmptyImageError: 400,
    images.CorruptImageError: 400,
    images.UnsupportedImageError: 415,
    images.ImageTooLargeError: 413,
}


def error_response(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The one JSON error shape, with the request id."""
    body = ErrorResponse(detail=detail, status=status, request_id=current_request_id(), **extra)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def _clean(error: dict[str, Any]) -> dict[str, Any]:
    """A pydantic error without the echoed input (may be huge or binary) or non-JSON context."""
    out = {k: v for k, v in error.items() if k in ("type", "loc", "msg")}
    if "ctx" in error:
        out["ctx"] = {k: str(v) for k, v in error["ctx"].items()}
    return out


def _summary(errors: list[dict[str, Any]]) -> str:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = ".".join(str(p) for p in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {first.get('msg', 'invalid')}{more}" if loc else f"{first.get('msg')}{more}"


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), dict(e.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = [_clean(err) for err in e.errors()]
        return error_response(422, _summary(errors), errors=errors)

    @app.exception_handler(images.ImageError)
    async def image_error(_: Request, e: images.ImageError) -> JSONResponse:
        return error_response(IMAGE_STATUS.get(type(e), 400), str(e))

    @app.exception_handler(PayloadError)
    async def payload_error(_: Request, e: PayloadError) -> JSONResponse:
        return error_response(422, str(e))

    @app.exception_handler(UnknownModel)
    async def unknown_model(_: Request, e: UnknownModel) -> JSONResponse:
        return error_response(404, str(e.args[0]))

    @app.exception_handler(NoModel)
    async def no_model(_: Request, e: NoModel) -> JSONResponse:
        return error_response(503, str(e))  # no Retry-After: retrying will not load it

    @app.exception_handler(NotReady)
    async def not_ready(_: Request, e: NotReady) -> JSONResponse:
        return error_response(503, str(e), {"Retry-After": "1"})

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, e: Overloaded) -> JSONResponse:
        request.app.state.metrics.reject("overloaded")
        return error_response(503, str(e), {"Retry-After": str(e.retry_after)})

    @app.exception_handler(DeadlineExceeded)
    async def deadline(request: Request, e: DeadlineExceeded) -> JSONResponse:
        request.app.state.metrics.reject("deadline")
        return error_response(504, str(e))


def not_acceptable(offered: list[str]) -> HTTPException:
    """406 naming what the endpoint can produce."""
    return HTTPException(406, f"cannot produce the Accept type; available: {', '.join(offered)}")
