"""The FastAPI application: `create_app(settings)` and its lifespan.

`uvicorn app.main:app` works: the module-level `app` is built on first access (module
`__getattr__`), so importing this module reads no environment and tests build their own apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from pydantic import ValidationError

from app import errors
from app.deps import require_api_key
from app.logs import configure_logging
from app.metrics import Metrics
from app.middleware import ServingMiddleware
from app.registry import Registry
from app.routes import classify, health, marginal, models, ui, v2, vae
from app.settings import Settings, describe_error

log = logging.getLogger("app.main")

try:
    __version__ = version("modelserve")
except PackageNotFoundError:  # running from a checkout without `pip install -e .`
    __version__ = "0.0.0+local"

# Every router the app serves besides the probes; known_routes reads them too.
API_ROUTERS = (classify.router, vae.router, marginal.router, models.router, v2.router)
PROBE_ROUTERS = (health.router, v2.probes)

DESCRIPTION = """Serving for AlexNet (classification) and the AEVB variational autoencoder.
Errors are JSON `{"detail", "status", "request_id"}` (on the Open Inference Protocol routes
under /v2, the protocol's `{"error"}`); every response carries `X-Request-ID`."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load models (in the background unless require_all_models), serve, then drain."""
    settings: Settings = app.state.settings
    configure_logging(settings.log_level, settings.log_format)
    registry = Registry(settings, app.state.metrics)
    torch.set_num_threads(registry.threads)
    app.state.metrics.set_build_info(__version__, torch.__version__)
    app.state.registry = registry
    log.info(
        "loading %d model(s) from %s on %s", len(registry.dirs), settings.model_dir, registry.device
    )
    task: asyncio.Task[None] | None = None
    if settings.require_all_models:
        await registry.load()
        if registry.failed:
            await registry.close()
            raise RuntimeError(f"require_all_models: failed to load {registry.failed}")
    else:
        # /healthz answers at once; /readyz turns 200 when loading and warm-up are done.
        task = asyncio.create_task(registry.load())
    try:
        yield
    finally:
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await registry.close()
        app.state.metrics.worker_exiting()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; `settings` defaults to the environment (MODELSERVE_*)."""
    settings = settings if settings is not None else Settings()
    docs = settings.docs
    app = FastAPI(
        title="modelserve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    errors.install(app)
    # Declared only when a key is configured, so the OpenAPI schema says what the service does:
    # with no key, X-API-Key is not required (require_api_key would let everything through).
    auth = [Depends(require_api_key)] if settings.api_key is not None else []
    for router in API_ROUTERS:
        app.include_router(router, dependencies=auth)
    for router in PROBE_ROUTERS:
        app.include_router(router, dependencies=[] if settings.open_probes else auth)
    if settings.ui:
        app.include_router(ui.router)  # no auth: the page holds no data (app/routes/ui.py)
    app.add_middleware(
        ServingMiddleware, metrics=app.state.metrics, max_body=settings.max_upload_bytes
    )
    app.state.metrics.known_routes(
        (route.path, method)
        for router in (*API_ROUTERS, *PROBE_ROUTERS)
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in sorted(route.methods or ())
    )
    return app


def __getattr__(name: str) -> Any:
    """`app.main.app`: built once, from the environment, on first access (uvicorn)."""
    if name != "app":
        raise AttributeError(name)
    try:
        built = create_app()
    except ValidationError as e:
        raise SystemExit(describe_error(e)) from None
    # Here too, not only at startup: every worker process imports this module, and uvicorn
    # logs its first lines before the lifespan runs.
    configure_logging(built.state.settings.log_level, built.state.settings.log_format)
    globals()["app"] = built
    return built
