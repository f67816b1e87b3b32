"""GET /models and GET /models/{name}: loaded models with their cards."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import RegistryDep
from app.registry import UnknownModel
from app.routes.uploads import ERRORS
from app.schemas import ModelInfo, ModelsResponse

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=ModelsResponse, responses={503: ERRORS[503]}, summary="List models")
async def list_models(registry: RegistryDep) -> ModelsResponse:
    """Every loaded model with its card, and every model directory that failed to load."""
    registry.require_ready()
    return ModelsResponse(models=registry.model_infos(), failed=registry.failed_models())


@router.get(
    "/{name}",
    response_model=ModelInfo,
    responses={404: ERRORS[404], 503: ERRORS[503]},
    summary="One model's card",
)
async def get_model(name: str, registry: RegistryDep) -> ModelInfo:
    """The card of one loaded model."""
    registry.require_ready()
    for info in registry.model_infos():
        if info.name == name:
            return info
    raise UnknownModel(f"unknown model {name!r}; loaded: {sorted(registry.predictors)}")
