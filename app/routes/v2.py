"""The Open Inference Protocol (KServe v2) REST API beside our own, from the same predictors.

Every loaded model appears as v2 models (`app.routes.v2_models`); a v2 call reaches the model
only through the predictor's hooks and `Registry.infer`, like /classify and /encode do, so
batching, limits, queue, deadline, metrics and auth are the same. `app.oip` reads and writes
the tensors; errors are the protocol's `{"error": message}` (`app.errors`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app import oip
from app.deps import RegistryDep, SettingsDep
from app.registry import Registry
from app.routes.v2_models import Call, apply_classification, match, resolve
from app.settings import Settings

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
# Liveness and readiness: open like /healthz and /readyz unless open_probes is off.
probes = APIRouter(prefix="/v2", tags=["open inference protocol"])

EXTENSIONS = ["binary_tensor_data", "classification"]
# Bodies up to this size are parsed on the event loop, faster than the round trip to a thread.
INLINE_PARSE_MAX_BYTES = 64 * 1024
OIP_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": why, "content": {"application/json": {"example": {"error": "..."}}}}
    for code, why in {
        400: "Malformed request, or tensors that do not fit the model",
        401: "Missing or wrong X-API-Key (when a key is configured)",
        404: "Unknown model or version",
        413: "Body over the upload limit, image over the pixel limit, or too many items",
        415: "Not a supported image format, or a compressed body (Content-Encoding)",
        503: "Models loading or server overloaded (Retry-After)",
        504: "Inference deadline exceeded",
    }.items()
}


async def _infer(
    request: Request, registry: Registry, settings: Settings, name: str, version: str | None
) -> Response:
    model = resolve(registry, name, version)
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise HTTPException(415, "compressed request bodies are not accepted")
    body, length = await request.body(), request.headers.get(oip.HEADER_LENGTH)
    if len(body) <= INLINE_PARSE_MAX_BYTES:
        parsed, x = oip.read_request(body, length)
    else:  # a big JSON tensor takes milliseconds to parse: off the event loop
        parsed, x = await run_in_threadpool(oip.read_request, body, length)
    known = {s.name for s in model.signature.outputs}
    for o in parsed.outputs or []:
        if o.name not in known:
            raise oip.BadTensor(f"model {model.name} has no output {o.name!r}; has {sorted(known)}")
    chosen = match(model, x)
    for s in chosen:
        if s.shape and s.shape[0] == "B" and len(x[s.name]) > settings.max_batch_images:
            raise HTTPException(
                413,
                f"{len(x[s.name])} items in one request; the limit is {settings.max_batch_images}",
            )
    call = Call(request, registry, settings, model.predictor)
    out = await model.signature.run(call, x)
    apply_classification(model, parsed, out)
    if parsed.outputs is not None:
        out = {o.name: out[o.name] for o in parsed.outputs}
    content, headers = oip.write_response(model.name, model.version, parsed, out)
    return Response(content, headers=headers)


# --- routes ----------------------------------------------------------------------------
class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class MetadataTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]


INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": oip.InferRequest.model_json_schema()},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"JSON header of {oip.HEADER_LENGTH} bytes, then tensor data",
            },
        },
    }
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Inference response (JSON, or JSON header and binary tensor data)",
        "content": {"application/json": {}, "application/octet-stream": {}},
    },
    **OIP_ERRORS,
}


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


# The spec's answer is the status alone; the bodies are what KServe's servers add and its
# client reads.
@probes.get("/health/live", response_model=Live, responses=OIP_ERRORS, summary="v2 server live")
async def live() -> Live:
    """200 while the process serves HTTP."""
    return Live(live=True)


@probes.get("/health/ready", response_model=Ready, responses=OIP_ERRORS, summary="v2 ready")
async def ready(registry: RegistryDep) -> Ready:
    """200 once models are loaded and warmed; 503 before."""
    registry.require_ready()
    return Ready(ready=True)


@router.get("", response_model=ServerMetadata, responses=OIP_ERRORS, summary="v2 server metadata")
async def server_metadata(request: Request) -> ServerMetadata:
    """Name, version and the protocol extensions served."""
    return ServerMetadata(name="modelserve", version=request.app.version, extensions=EXTENSIONS)


@router.get(
    "/models/{model_name}",
    response_model=ModelMetadata,
    responses=OIP_ERRORS,
    summary="v2 model metadata",
)
async def model_metadata(model_name: str, registry: RegistryDep) -> JSONResponse:
    """Inputs and outputs with name, datatype and shape (-1: any batch size)."""
    return JSONResponse(resolve(registry, model_name, None).metadata())


@router.get(
    "/models/{model_name}/versions/{model_version}",
    response_model=ModelMetadata,
    responses=OIP_ERRORS,
    summary="v2 model metadata (version)",
)
async def version_metadata(
    model_name: str, model_version: str, registry: RegistryDep
) -> JSONResponse:
    """As /v2/models/{model_name}, for the model's one version."""
    return JSONResponse(resolve(registry, model_name, model_version).metadata())


@router.get(
    "/models/{model_name}/ready",
    response_model=Ready,
    responses=OIP_ERRORS,
    summary="v2 model ready",
)
async def model_ready(model_name: str, registry: RegistryDep) -> Ready:
    """200 when the model is loaded and serving."""
    resolve(registry, model_name, None)
    return Ready(ready=True)


@router.get(
    "/models/{model_name}/versions/{model_version}/ready",
    response_model=Ready,
    responses=OIP_ERRORS,
    summary="v2 model ready (version)",
)
async def version_ready(model_name: str, model_version: str, registry: RegistryDep) -> Ready:
    """As /v2/models/{model_name}/ready, for the model's one version."""
    resolve(registry, model_name, model_version)
    return Ready(ready=True)


@router.post(
    "/models/{model_name}/infer",
    responses=INFER_RESPONSES,
    openapi_extra=INFER_BODY,
    summary="v2 inference",
)
async def model_infer(
    model_name: str, request: Request, registry: RegistryDep, settings: SettingsDep
) -> Response:
    """Tensors in, tensors out; JSON or the binary tensor data extension, both ways."""
    return await _infer(request, registry, settings, model_name, None)


@router.post(
    "/models/{model_name}/versions/{model_version}/infer",
    responses=INFER_RESPONSES,
    openapi_extra=INFER_BODY,
    summary="v2 inference (version)",
)
async def version_infer(
    model_name: str,
    model_version: str,
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
) -> Response:
    """As /v2/models/{model_name}/infer, for the model's one version."""
    return await _infer(request, registry, settings, model_name, model_version)
