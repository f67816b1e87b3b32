"""What the sync and async clients share: the API as request descriptions (`Calls`), how
answers are read, errors and the retry policy. The two clients differ only in their I/O."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from modelserve_client.schemas import (
    ClassifyBatchResponse,
    ClassifyResponse,
    DecodeResponse,
    EncodeResponse,
    ImputeResponse,
    SampleResponse,
    ScoreResponse,
)

T = TypeVar("T")
# A path, the file's bytes, or a PIL image (anything with .save(fp, format)).
ImageInput = str | os.PathLike[str] | bytes | Any
RETRY_STATUSES = (502, 503, 504)


class ModelServeError(Exception):
    """The server answered an error; `detail` is its message."""

    def __init__(self, status: int, detail: str, request_id: str | None = None) -> None:
        super().__init__(
            f"{status}: {detail}" + (f" (request id {request_id})" if request_id else "")
        )
        self.status = status
        self.detail = detail
        self.request_id = request_id


def _image_part(image: ImageInput, i: int) -> tuple[str, tuple[str, bytes, str]]:
    """One multipart `image` part from a path, bytes or PIL image."""
    if isinstance(image, bytes | bytearray):
        return "image", (f"image{i}", bytes(image), "application/octet-stream")
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return "image", (path.name, path.read_bytes(), "application/octet-stream")
    if hasattr(image, "save"):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return "image", (f"image{i}.png", buf.getvalue(), "image/png")
    raise TypeError(f"cannot upload {type(image).__name__}: give a path, bytes or a PIL image")


def _params(**kw: Any) -> dict[str, Any]:
    return {
        k: (str(v).lower() if isinstance(v, bool) else v) for k, v in kw.items() if v is not None
    }


@dataclass
class Call(Generic[T]):
    """One HTTP call and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def parse_model(cls: type[BaseModel]) -> Callable[[httpx.Response], Any]:
    return lambda r: cls.model_validate_json(r.content)


def _images(
    path: str,
    parse: Callable[[httpx.Response], T],
    params: dict[str, Any],
    images: Sequence[ImageInput] | None,
    pixels: Any,
    headers: dict[str, str] | None = None,
    masks: Sequence[ImageInput] | None = None,
    mask: Any = None,
) -> Call[T]:
    """A POST of `image` parts (and `mask` parts) or of JSON pixels (and mask)."""
    if (images is None) == (pixels is None):
        raise ValueError("give exactly one of images= or pixels=")
    if images is not None:
        files = [_image_part(im, i) for i, im in enumerate(images)]
        files += [("mask", _image_part(m, i)[1]) for i, m in enumerate(masks or ())]
        return Call("POST", path, parse, params, files=files, headers=headers or {})
    body = {"pixels": pixels} | ({"mask": mask} if mask is not None else {})
    return Call("POST", path, parse, params, json=body, headers=headers or {})


def _image_answer(
    png: bool, model: type[BaseModel]
) -> tuple[Callable[[httpx.Response], Any], dict[str, str]]:
    """How to read an image endpoint's answer, and the Accept header that asks for it."""
    if png:
        return (lambda r: r.content), {"Accept": "image/png"}
    return parse_model(model), {"Accept": "application/json"}


def error_from(r: httpx.Response) -> ModelServeError:
    try:
        body = r.json()
        detail = str(body.get("detail", r.text))
    except ValueError:
        body, detail = {}, r.text or r.reason_phrase
    return ModelServeError(r.status_code, detail, r.headers.get("x-request-id"))


def readiness(r: httpx.Response) -> bool:
    """/readyz's answer -> ready or not; any status but 200 and 503 is an error of the call."""
    if r.status_code in (200, 503):
        return r.status_code == 200
    raise error_from(r)


class Calls:
    """The API as `Call`s: shared by the sync and async clients, which only differ in I/O."""

    @staticmethod
    def classify(images: Sequence[ImageInput], top_k: int | None, model: str | None) -> Call[Any]:
        parse = parse_model(ClassifyResponse if len(images) == 1 else ClassifyBatchResponse)
        files = [_image_part(im, i) for i, im in enumerate(images)]
        return Call("POST", "/classify", parse, _params(top_k=top_k, model=model), files=files)

    @staticmethod
    def encode(
        images: Sequence[ImageInput] | None,
        pixels: Any,
        sample: bool,
        seed: int | None,
        model: str | None,
    ) -> Call[EncodeResponse]:
        params = _params(sample=sample, seed=seed, model=model)
        return _images("/encode", parse_model(EncodeResponse), params, images, pixels)

    @staticmethod
    def decode(z: Sequence[Sequence[float]], model: str | None, png: bool) -> Call[Any]:
        parse, headers = _image_answer(png, DecodeResponse)
        body = {"z": [list(map(float, row)) for row in z]}
        return Call("POST", "/decode", parse, _params(model=model), body, None, headers)

    @staticmethod
    def sample(n: int, seed: int | None, model: str | None, png: bool) -> Call[Any]:
        parse, headers = _image_answer(png, SampleResponse)
        params = _params(n=n, seed=seed, model=model)
        return Call("GET", "/sample", parse, params, headers=headers)

    @staticmethod
    def impute(
        images: Sequence[ImageInput] | None,
        masks: Sequence[ImageInput] | None,
        pixels: Any,
        mask: Any,
        steps: int | None,
        method: str | None,
        seed: int | None,
        model: str | None,
        png: bool,
    ) -> Call[Any]:
        if (images is None) != (masks is None) or (pixels is None) != (mask is None):
            raise ValueError("give images= with masks=, or pixels= with mask=")
        parse, headers = _image_answer(png, ImputeResponse)
        params = _params(steps=steps, method=method, seed=seed, model=model)
        return _images("/impute", parse, params, images, pixels, headers, masks, mask)

    @staticmethod
    def denoise(
        images: Sequence[ImageInput] | None, pixels: Any, model: str | None, png: bool
    ) -> Call[Any]:
        parse, headers = _image_answer(png, DecodeResponse)
        return _images("/denoise", parse, _params(model=model), images, pixels, headers)

    @staticmethod
    def score(
        images: Sequence[ImageInput] | None,
        pixels: Any,
        k: int | None,
        seed: int | None,
        model: str | None,
    ) -> Call[ScoreResponse]:
        params = _params(k=k, seed=seed, model=model)
        return _images("/score", parse_model(ScoreResponse), params, images, pixels)


class BaseClient:
    def __init__(self, base_url: str, timeout: float, retries: int, api_key: str | None) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.headers = {"X-API-Key": api_key} if api_key else {}

    def _request_kwargs(self, call: Call[Any]) -> dict[str, Any]:
        return dict(params=call.params, json=call.json, files=call.files, headers=call.headers)

    def _retry_delay(self, attempt: int, r: httpx.Response | None) -> float | None:
        """Seconds before the next try, or None to stop (Retry-After honoured, capped)."""
        if attempt >= self.retries:
            return None
        if r is not None and r.status_code not in RETRY_STATUSES:
            return None
        after = r.headers.get("retry-after", "") if r is not None else ""
        return min(float(after), 10.0) if after.isdigit() else min(0.1 * 2**attempt, 5.0)
