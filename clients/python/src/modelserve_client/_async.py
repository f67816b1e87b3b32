"""`AsyncClient`: the asynchronous client, on `httpx.AsyncClient`; `Client`'s methods, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx

from modelserve_client._calls import (
    BaseClient,
    Call,
    Calls,
    ImageInput,
    T,
    error_from,
    parse_model,
    readiness,
)
from modelserve_client.schemas import (
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


class AsyncClient(BaseClient):
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

    async def _send(self, call: Call[T]) -> T:
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
                raise error_from(r)
            await asyncio.sleep(delay)
            attempt += 1

    async def classify(
        self, image: ImageInput, top_k: int | None = None, model: str | None = None
    ) -> ClassifyResponse:
        """Top-k classes of one image (path, bytes or PIL image)."""
        result: ClassifyResponse = await self._send(Calls.classify([image], top_k, model))
        return result

    async def classify_many(
        self, images: Sequence[ImageInput], top_k: int | None = None, model: str | None = None
    ) -> ClassifyBatchResponse:
        """Top-k classes of several images in one request, results in order."""
        if len(images) < 2:
            raise ValueError("classify_many takes two or more images; use classify for one")
        result: ClassifyBatchResponse = await self._send(Calls.classify(images, top_k, model))
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
        return await self._send(Calls.encode(images, pixels, sample, seed, model))

    async def decode(
        self, z: Sequence[Sequence[float]], model: str | None = None
    ) -> DecodeResponse:
        """Decoder mean images (full precision) of latent rows."""
        result: DecodeResponse = await self._send(Calls.decode(z, model, png=False))
        return result

    async def decode_png(self, z: Sequence[Sequence[float]], model: str | None = None) -> bytes:
        """The decoded images as one PNG (a grid when several)."""
        result: bytes = await self._send(Calls.decode(z, model, png=True))
        return result

    async def sample(
        self, n: int = 16, seed: int | None = None, model: str | None = None
    ) -> SampleResponse:
        """n images from the prior, with the z's and the seed used."""
        result: SampleResponse = await self._send(Calls.sample(n, seed, model, png=False))
        return result

    async def sample_png(
        self, n: int = 16, seed: int | None = None, model: str | None = None
    ) -> bytes:
        """n images from the prior as one PNG grid."""
        result: bytes = await self._send(Calls.sample(n, seed, model, png=True))
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
        call = Calls.impute(images, masks, pixels, mask, steps, method, seed, model, png=False)
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
        call = Calls.impute(images, masks, pixels, mask, steps, method, seed, model, png=True)
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
        result: DecodeResponse = await self._send(Calls.denoise(images, pixels, model, png=False))
        return result

    async def denoise_png(
        self,
        images: Sequence[ImageInput] | None = None,
        *,
        pixels: Any = None,
        model: str | None = None,
    ) -> bytes:
        """The reconstructions as one PNG (a grid when several)."""
        result: bytes = await self._send(Calls.denoise(images, pixels, model, png=True))
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
        return await self._send(Calls.score(images, pixels, k, seed, model))

    async def models(self) -> ModelsResponse:
        """Loaded models with their cards, and failed ones."""
        return await self._send(Call("GET", "/models", parse_model(ModelsResponse)))

    async def model(self, name: str) -> ModelInfo:
        """One loaded model's card."""
        return await self._send(Call("GET", f"/models/{name}", parse_model(ModelInfo)))

    async def ready(self) -> bool:
        """Whether /readyz answers 200: False on 503 or no connection; `ModelServeError` on
        anything else (401: the key is wrong), which says nothing about readiness."""
        try:
            r = await self._http.get("/readyz")
        except httpx.TransportError:
            return False
        return readiness(r)
