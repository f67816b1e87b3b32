"""Probes and metrics: GET /healthz, GET /readyz, GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.deps import RegistryDep
from app.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz() -> HealthResponse:
    """200 while the process serves HTTP, models loaded or not."""
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Loading, or no model loaded"}},
    summary="Readiness",
)
async def readyz(registry: RegistryDep) -> JSONResponse:
    """200 once models are loaded and warmed (listing any that failed); 503 before."""
    if registry.ready:
        detail = (
            "ready" if not registry.failed else f"ready; {len(registry.failed)} model(s) failed"
        )
    else:
        detail = "loading models" if not registry.loaded else "no model could be loaded"
    body = ReadyResponse(
        ready=registry.ready,
        models=sorted(registry.predictors),
        failed=registry.failed_models(),
        detail=detail,
    )
    headers = None if registry.ready else {"Retry-After": "1"}
    return JSONResponse(
        body.model_dump(), status_code=200 if registry.ready else 503, headers=headers
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition (all workers' in multiprocess mode)."""
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)
