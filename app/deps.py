"""FastAPI dependencies as `Annotated` aliases: the registry, the settings, the API key.

Every dependency is `async def` although none awaits anything: FastAPI runs a plain `def`
dependency in the thread pool, which would cost each request a round trip to a worker thread
per dependency (two or three per model request) for a dictionary lookup.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from app.registry import Registry
from app.settings import Settings

# auto_error=False: a missing key is our 401 with our message, not FastAPI's 403.
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Service API key")


async def get_registry(request: Request) -> Registry:
    """The app's registry of loaded models."""
    registry: Registry = request.app.state.registry
    return registry


async def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


RegistryDep = Annotated[Registry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def require_api_key(
    settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)] = None
) -> None:
    """401 unless the X-API-Key header matches the configured key (constant-time compare)."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    if key is None or not hmac.compare_digest(key.encode(), expected):
        raise HTTPException(401, "missing or invalid X-API-Key", {"WWW-Authenticate": "APIKey"})
