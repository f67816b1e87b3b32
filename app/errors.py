"""Every error as JSON with the right status; never a stack trace to clients.

Our routes answer `ErrorResponse`; the Open Inference Protocol routes under /v2 answer the
protocol's `{"error": message}` (its clients read that field), from the same handlers.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

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


OIP_PREFIX = "/v2"


def is_oip(scope: Scope) -> bool:
    """Whether the request is on an Open Inference Protocol route (/v2...)."""
    path = str(scope.get("path", "")).removeprefix(str(scope.get("root_path", "")))
    return path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")


def error_response(
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
    scope: Scope | None = None,
    **extra: Any,
) -> JSONResponse:
    """The JSON error of the request's protocol: ours with the request id, or on /v2 the Open
    Inference Protocol's `{"error"}`, whose invalid requests are 400 (it has no 422)."""
    if scope is not None and is_oip(scope):
        status = 400 if status == 422 else status
        return JSONResponse({"error": detail}, status_code=status, headers=headers)
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
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), dict(e.headers or {}), request.scope)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = [_clean(err) for err in e.errors()]
        return error_response(422, _summary(errors), scope=request.scope, errors=errors)

    @app.exception_handler(images.ImageError)
    async def image_error(request: Request, e: images.ImageError) -> JSONResponse:
        return error_response(IMAGE_STATUS.get(type(e), 400), str(e), scope=request.scope)

    @app.exception_handler(PayloadError)
    async def payload_error(request: Request, e: PayloadError) -> JSONResponse:
        return error_response(422, str(e), scope=request.scope)

    @app.exception_handler(UnknownModel)
    async def unknown_model(request: Request, e: UnknownModel) -> JSONResponse:
        return error_response(404, str(e.args[0]), scope=request.scope)

    @app.exception_handler(NoModel)
    async def no_model(request: Request, e: NoModel) -> JSONResponse:
        # No Retry-After: retrying will not load it.
        return error_response(503, str(e), scope=request.scope)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, e: NotReady) -> JSONResponse:
        return error_response(503, str(e), {"Retry-After": "1"}, request.scope)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, e: Overloaded) -> JSONResponse:
        request.app.state.metrics.reject("overloaded")
        return error_response(503, str(e), {"Retry-After": str(e.retry_after)}, request.scope)

    @app.exception_handler(DeadlineExceeded)
    async def deadline(request: Request, e: DeadlineExceeded) -> JSONResponse:
        request.app.state.metrics.reject("deadline")
        return error_response(504, str(e), scope=request.scope)


def not_acceptable(offered: list[str]) -> HTTPException:
    """406 naming what the endpoint can produce."""
    return HTTPException(406, f"cannot produce the Accept type; available: {', '.join(offered)}")
