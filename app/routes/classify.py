"""POST /classify: top-k classes of one or several uploaded images."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from app.deps import RegistryDep, SettingsDep
from app.routes.uploads import ERRORS, decode_uploads, image_parts_content, infer, read_image_parts
from app.schemas import ClassifyBatchResponse, ClassifyResponse

router = APIRouter(tags=["classify"])

CLASSIFY_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": image_parts_content("One or more image parts (JPEG, PNG, WebP, GIF, BMP, TIFF)"),
    }
}


@router.post(
    "/classify",
    response_model=ClassifyResponse | ClassifyBatchResponse,
    responses=ERRORS,
    openapi_extra=CLASSIFY_BODY,
    summary="Classify images",
)
async def classify(
    request: Request,
    registry: RegistryDep,
    settings: SettingsDep,
    top_k: Annotated[
        int | None,
        Query(ge=1, description="Classes per image (default min(5, classes))", examples=[5]),
    ] = None,
    model: Annotated[
        str | None, Query(description="Classifier name (default: the configured one)")
    ] = None,
) -> Response:
    """Multipart `image` parts: one answers `{model, predictions}`; several answer
    `{model, results}` with one `{predictions}` per part, in upload order."""
    predictor = registry.classifier(model)
    k = top_k if top_k is not None else min(5, predictor.num_classes)
    if k > predictor.num_classes:
        raise HTTPException(
            422, f"top_k={k} exceeds the {predictor.num_classes} classes of {predictor.name}"
        )
    blobs = await read_image_parts(request, settings)
    inputs = await decode_uploads(blobs, predictor, settings)
    probs = await infer(request, registry, predictor, "classify", inputs)
    results = [predictor.encode_response(p, k) for p in probs]
    out: ClassifyResponse | ClassifyBatchResponse
    if len(results) == 1:
        out = ClassifyResponse(model=predictor.name, predictions=results[0].predictions)
    else:
        out = ClassifyBatchResponse(model=predictor.name, results=results)
    # Serialised here, not validated again against response_model (that is for the docs).
    return Response(out.model_dump_json(), media_type="application/json")
