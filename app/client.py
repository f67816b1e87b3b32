"""Python client of the service: `Client` (sync) and `AsyncClient`, both on httpx.

Results are the server's own pydantic models (`app.schemas`); a 4xx/5xx raises
`ModelServeError` carrying the server's message, status and request id. Imports no torch.

    from app.client import Client
    with Client("http://localhost:8000") as c:
        print(c.classify("cat.jpg").predictions[0].label)
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from app.schemas import (
    ClassifyBatchResponse,
    ClassifyResponse,
    DecodeResponse,
    EncodeResponse,
    ImputeResponse,
    ModelInfo,
    ModelsResponse,
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
class _Call(Generic[T]):
    """One HTTP call and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _model(cls: type[BaseModel]) -> Callable[[httpx.Response], Any]:
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
) -> _Call[T]:
    """A POST of `image` parts (and `mask` parts) or of JSON pixels (and mask)."""
    if (images is None) == (pixels is None):
        raise ValueError("give exactly one of images= or pixels=")
    if images is not None:
        files = [_image_part(im, i) for i, im in enumerate(images)]
        files += [("mask", _image_part(m, i)[1]) for i, m in enumerate(masks or ())]
        return _Call("POST", path, parse, params, files=files, headers=headers or {})
    body = {"pixels": pixels} | ({"mask": mask} if mask is not None else {})
    return _Call("POST", path, parse, params, json=body, headers=headers or {})


def _image_answer(
    png: bool, model: type[BaseModel]
) -> tuple[Callable[[httpx.Response], Any], dict[str, str]]:
    """How to read an image endpoint's answer, and the Accept header that asks for it."""
    if png:
        return (lambda r: r.content), {"Accept": "image/png"}
    return _model(model), {"Accept": "application/json"}


def _error(r: httpx.Response) -> ModelServeError:
    try:
        body = r.json()
        detail = str(body.get("detail", r.text))
    except ValueError:
        body, detail = {}, r.text or r.reason_phrase
    return ModelServeError(r.status_code, detail, r.headers.get("x-request-id"))


def _readiness(r: httpx.Response) -> bool:
    """/readyz's answer -> ready or not; any status but 200 and 503 is an error of the call."""
    if r.status_code in (200, 503):
        return r.status_code == 200
    raise _error(r)


class _Calls:
    """The API as `_Call`s: shared by the sync and async clients, which only differ in I/O."""

    @staticmethod
    def classify(images: Sequence[ImageInput], top_k: int | None, model: str | None) -> _Call[Any]:
        parse = _model(ClassifyResponse if len(images) == 1 else ClassifyBatchResponse)
        files = [_image_part(im, i) for i, im in enumerate(images)]
        return _Call("POST", "/classify", parse, _params(top_k=top_k, model=model), files=files)

    @staticmethod
    def encode(
        images: Sequence[ImageInput] | None,
        pixels: Any,
        sample: bool,
        seed: int | None,
        model: str | None,
    ) -> _Call[EncodeResponse]:
        params = _params(sample=sample, seed=seed, model=model)
        return _images("/encode", _model(EncodeResponse), params, images, pixels)

    @staticmethod
    def decode(z: Sequence[Sequence[float]], model: str | None, png: bool) -> _Call[Any]:
        parse, headers = _image_answer(png, DecodeResponse)
        body = {"z": [list(map(float, row)) for row in z]}
        return _Call("POST", "/decode", parse, _params(model=model), body, None, headers)

    @staticmethod
    def sample(n: int, seed: int | None, model: str | None, png: bool) -> _Call[Any]:
        parse, headers = _image_answer(png, SampleResponse)
        params = _params(n=n, seed=seed, model=model)
        return _Call("GET", "/sample", parse, params, headers=headers)

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
    ) -> _Call[Any]:
        if (images is None) != (masks is None) or (pixels is None) != (mask is None):
            raise ValueError("give images= with masks=, or pixels= with mask=")
        parse, headers = _image_answer(png, ImputeResponse)
        params = _params(steps=steps, method=method, seed=seed, model=model)
        return _images("/impute", parse, params, images, pixels, headers, masks, mask)

    @staticmethod
    def denoise(
        images: Sequence[ImageInput] | None, pixels: Any, model: str | None, png: bool
    ) -> _Call[Any]:
        parse, headers = _image_answer(png, DecodeResponse)
        return _images("/denoise", parse, _params(model=model), images, pixels, headers)

    @staticmethod
    def score(
        images: Sequence[ImageInput] | None,
        pixels: Any,
        k: int | None,
        seed: int | None,
        model: str | None,
    ) -> _Call[ScoreResponse]:
        params = _params(k=k, seed=seed, model=model)
        return _images("/score", _model(ScoreResponse), params, images, pixels)


class _Base:
    def __init__(self, base_url: str, timeout: float, retries: int, api_key: str | None) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.headers = {"X-API-Key": api_key} if api_key else {}

    def _request_kwargs(self, call: _Call[Any]) -> dict[str, Any]:
        return dict(params=call.params, json=call.json, files=call.files, headers=call.headers)

    def _retry_delay(self, attempt: int, r: httpx.Response | None) -> float | None:
        """Seconds before the next try, or None to stop (Retry-After honoured, capped)."""
        if attempt >= self.retries:
            return None
        if r is not None and r.status_code not in RETRY_STATUSES:
            return None
        after = r.headers.get("retry-after", "") if r is not None else ""
        return min(float(after), 10.0) if after.isdigit() else min(0.1 * 2**attempt, 5.0)


class Client(_Base):
    """Synchronous client. `transport` lets tests talk to an in-process app."""

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        *,
        timeout: float = 30.0,
        retries: int = 2,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout, retries, api_key)
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=self.headers, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                r: httpx.Response | None = self._http.request(
                    call.method, call.path, **self._request_kwargs(call)
                )
            except httpx.TransportError:
                r = None
                if attempt >= self.retries:
                    raise
            if r is not None and r.is_success:
                return call.parse(r)
            delay = self._retry_delay(attempt, r)
            if delay is None:
                assert r is not None
                raise _error(r)
            time.sleep(delay)
            attempt += 1

    def classify(
        self, image: ImageInput, top_k: int | None = None, model: str | None = None
    ) -> ClassifyResponse:
        """Top-k classes of one image (path, bytes or PIL image)."""
        result: ClassifyResponse = self._send(_Calls.classify([image], top_k, model))
        return result

    def classify_many(
        self, images: Sequence[ImageInput], top_k: int | None = None, model: str | None = None
    ) -> ClassifyBatchResponse:
        """Top-k classes of several images in one request, results in order."""
        if len(images) < 2:
            raise ValueError("classify_many takes two or more images; use classify for one")
        result: ClassifyBatchResponse = self._send(_Calls.classify(images, top_k, model))
        return result

    def encode(
        self,
        images: Sequence[ImageInput] | None = None,
        *,
        pixels: Any = None,
        sample: bool = False,
        seed: int | None = None,
        model: str | None = None,
    ) -> EncodeResponse:
        """Posterior mean and log-variance (and z if sample) of images or raw pixels."""
        return self._send(_Calls.encode(images, pixels, sample, seed, model))

    def decode(self, z: Sequence[Sequence[float]], model: str | None = None) -> DecodeResponse:
        """Decoder mean images (full precision) of latent rows."""
        result: DecodeResponse = self._send(_Calls.decode(z, model, png=False))
        return result

    def decode_png(self, z: Sequence[Sequence[float]], model: str | None = None) -> bytes:
        """The decoded images as one PNG (a grid when several)."""
        result: bytes = self._send(_Calls.decode(z, model, png=True))
        return result

    def sample(
        self, n: int = 16, seed: int | None = None, model: str | None = None
    ) -> SampleResponse:
        """n images from the prior, with the z's and the seed used."""
        result: SampleResponse = self._send(_Calls.sample(n, seed, model, png=False))
        return result

    def sample_png(self, n: int = 16, seed: int | None = None, model: str | None = None) -> bytes:
        """n images from the prior as one PNG grid."""
        result: bytes = self._send(_Calls.sample(n, seed, model, png=True))
        return result

    def impute(
        self,
        images: Sequence[ImageInput] | None = None,
        masks: Sequence[ImageInput] | None = None,
        *,
        pixels: Any = None,
        mask: Any = None,
        steps: int | None = None,
        method: str | None = None,
        seed: int | None = None,
        model: str | None = None,
    ) -> ImputeResponse:
        """Images with their missing pixels filled: images= with one mask each (white =
        missing), or pixels= with mask= (1 = missing); full-precision JSON."""
        call = _Calls.impute(images, masks, pixels, mask, steps, method, seed, model, png=False)
        result: ImputeResponse = self._send(call)
        return result

    def impute_png(
        self,
        images: Sequence[ImageInput] | None = None,
        masks: Sequence[ImageInput] | None = None,
        *,
        pixels: Any = None,
        mask: Any = None,
        steps: int | None = None,
        method: str | None = None,
        seed: int | None = None,
        model: str | None = None,
    ) -> bytes:
        """The filled images as one PNG (a grid when several)."""
        call = _Calls.impute(images, masks, pixels, mask, steps, method, seed, model, png=True)
        result: bytes = self._send(call)
        return result

    def denoise(
        self,
        images: Sequence[ImageInput] | None = None,
        *,
        pixels: Any = None,
        model: str | None = None,
    ) -> DecodeResponse:
        """Posterior-mean reconstructions of images or raw pixels, full-precision JSON."""
        result: DecodeResponse = self._send(_Calls.denoise(images, pixels, model, png=False))
        return result

    def denoise_png(
        self,
        images: Sequence[ImageInput] | None = None,
        *,
        pixels: Any = None,
        model: str | None = None,
    ) -> bytes:
        """The reconstructions as one PNG (a grid when several)."""
        result: bytes = self._send(_Calls.denoise(images, pixels, model, png=True))
        return result

    def score(
        self,
        images: Sequence[ImageInput] | None = None,
        *,
        pixels: Any = None,
        k: int | None = None,
        seed: int | None = None,
        model: str | None = None,
    ) -> ScoreResponse:
        """Lower bound and importance-sampled log p(x) per image, in nats."""
        return self._send(_Calls.score(images, pixels, k, seed, model))

    def models(self) -> ModelsResponse:
        """Loaded models with their cards, and failed ones."""
        return self._send(_Call("GET", "/models", _model(ModelsResponse)))

    def model(self, name: str) -> ModelInfo:
        """One loaded model's card."""
        return self._send(_Call("GET", f"/models/{name}", _model(ModelInfo)))

    def ready(self) -> bool:
        """Whether /readyz answers 200: False on 503 or no connection; `ModelServeError` on
        anything else (401: the key is wrong), which says nothing about readiness."""
        try:
            r = self._http.get("/readyz")
        except httpx.TransportError:
            return False
        return _readiness(r)


class AsyncClient(_Base):
    """Asynchronous client; the same methods as `Client`, awaited."""

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        *,
        timeout: float = 30.0,
        retries: int = 2,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, timeout, retries, api_key)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=self.headers, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                r: httpx.Response | None = await self._http.request(
                    call.method, call.path, **self._request_kwargs(call)
                )
            except httpx.TransportError:
                r = None
                if attempt >= self.retries:
                    raise
            if r is not None and r.is_success:
                return call.parse(r)
            delay = self._retry_delay(attempt, r)
            if delay is None:
                assert r is not None
                raise _error(r)
            await asyncio.sleep(delay)
            attempt += 1

    async def classify(
        self, image: ImageInput, top_k: int | None = None, model: str | None = None
    ) -> ClassifyResponse:
        """Top-k classes of one image (path, bytes or PIL image)."""
        result: ClassifyResponse = await self._send(_Calls.classify([image], top_k, model))
        return result

    async def classify_many(
        self, images: Sequence[ImageInput], top_k: int | None = None, model: str | None = None
    ) -> ClassifyBatchResponse:
        """Top-k classes of several images in one request, results in order."""
        if len(images) < 2:
            raise ValueError("classify_many takes two or more images; use classify for one")
        result: ClassifyBatchResponse = await self._send(_Calls.classify(images, top_k, model))
        return result

    async def encode(
        self,
        images: Sequence[ImageInput] | None = None,
        *,
        pixels: Any = None,
        sample: bool = False,
        seed: int | None = None,
        model: str | None = None,
    ) -> EncodeResponse:
        """Posterior mean and log-variance (and z if sample) of images or raw pixels."""
        return await self._send(_Calls.encode(images, pixels, sample, seed, model))

    async def decode(
        self, z: Sequence[Sequence[float]], model: str | None = None
    ) -> DecodeResponse:
        """Decoder mean images (full precision) of latent rows."""
        result: DecodeResponse = await self._send(_Calls.decode(z, model, png=False))
        return result

    async def decode_png(self, z: Sequence[Sequence[float]], model: str | None = None) -> bytes:
        """The decoded images as one PNG (a grid when several)."""
        result: bytes = await self._send(_Calls.decode(z, model, png=True))
        return result

    async def sample(
        self, n: int = 16, seed: int | None = None, model: str | None = None
    ) -> SampleResponse:
        """n images from the prior, with the z's and the seed used."""
        result: SampleResponse = await self._send(_Calls.sample(n, seed, model, png=False))
        return result

    async def sample_png(
        self, n: int = 16, seed: int | None = None, model: str | None = None
    ) -> bytes:
        """n images from the prior as one PNG grid."""
        result: bytes = await self._send(_Calls.sample(n, seed, model, png=True))
        return result

    async def impute(
        self,
        images: Sequence[ImageInput] | None = None,
        masks: Sequence[ImageInput] | None = None,
        *,
        pixels: Any = None,
        mask: Any = None,
        steps: int | None = None,
        method: str | None = None,
        seed: int | None = None,
        model: str | None = None,
    ) -> ImputeResponse:
        """Images with their missing pixels filled: images= with one mask each (white =
        missing), or pixels= with mask= (1 = missing); full-precision JSON."""
        call = _Calls.impute(images, masks, pixels, mask, steps, method, seed, model, png=False)
        result: ImputeResponse = await self._send(call)
        return result

    async def impute_png(
        self,
        images: Sequence[ImageInput] | None = None,
        masks: Sequence[ImageInput] | None = None,
        *,
        pixels: Any = None,
        mask: Any = None,
        steps: int | None = None,
        method: str | None = None,
        seed: int | None = None,
        model: str | None = None,
    ) -> bytes:
        """The filled images as one PNG (a grid when several)."""
        call = _Calls.impute(images, masks, pixels, mask, steps, method, seed, model, png=True)
        result: bytes = await self._send(call)
        return result

    async def denoise(
        self,
        images: Sequence[ImageInput] | None = None,
        *,
        pixels: Any = None,
        model: str | None = None,
    ) -> DecodeResponse:
        """Posterior-mean reconstructions of images or raw pixels, full-precision JSON."""
        result: DecodeResponse = await self._send(_Calls.denoise(images, pixels, model, png=False))
        return result

    async def denoise_png(
        self,
        images: Sequence[ImageInput] | None = None,
        *,
        pixels: Any = None,
        model: str | None = None,
    ) -> bytes:
        """The reconstructions as one PNG (a grid when several)."""
        result: bytes = await self._send(_Calls.denoise(images, pixels, model, png=True))
        return result

    async def score(
        self,
        images: Sequence[ImageInput] | None = None,
        *,
        pixels: Any = None,
        k: int | None = None,
        seed: int | None = None,
        model: str | None = None,
    ) -> ScoreResponse:
        """Lower bound and importance-sampled log p(x) per image, in nats."""
        return await self._send(_Calls.score(images, pixels, k, seed, model))

    async def models(self) -> ModelsResponse:
        """Loaded models with their cards, and failed ones."""
        return await self._send(_Call("GET", "/models", _model(ModelsResponse)))

    async def model(self, name: str) -> ModelInfo:
        """One loaded model's card."""
        return await self._send(_Call("GET", f"/models/{name}", _model(ModelInfo)))

    async def ready(self) -> bool:
        """Whether /readyz answers 200: False on 503 or no connection; `ModelServeError` on
        anything else (401: the key is wrong), which says nothing about readiness."""
        try:
            r = await self._http.get("/readyz")
        except httpx.TransportError:
            return False
        return _readiness(r)
