"""The Python client against the real app: sync over HTTP to uvicorn, async via ASGI."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.client import AsyncClient, Client, ModelServeError
from app.main import create_app
from app.schemas import (
    ClassifyBatchResponse,
    ClassifyResponse,
    DecodeResponse,
    ImputeResponse,
    SampleResponse,
    ScoreResponse,
)
from app.settings import Settings
from tests.app.conftest import LATENT, png_bytes, serve_in_thread, test_settings


@pytest.fixture
def sync_client(settings: Settings) -> Iterator[Client]:
    with serve_in_thread(settings) as url:
        yield Client(url, retries=0)


def test_sync_client_every_method(sync_client: Client, tmp_path: Path) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(png_bytes())
    pil = Image.new("RGB", (32, 32), (10, 20, 30))
    for image in (str(path), path, path.read_bytes(), pil):
        result = sync_client.classify(image, top_k=2)
        assert isinstance(result, ClassifyResponse) and len(result.predictions) == 2
    many = sync_client.classify_many([path, pil])
    assert isinstance(many, ClassifyBatchResponse) and len(many.results) == 2

    enc = sync_client.encode([path], sample=True, seed=1)
    assert enc.latent_dim == LATENT and enc.results[0].z is not None
    assert len(sync_client.encode(pixels=[[0.1] * 784] * 2).results) == 2

    dec = sync_client.decode([[0.0] * LATENT] * 2)
    assert isinstance(dec, DecodeResponse) and dec.shape == [28, 28] and len(dec.images) == 2
    png = sync_client.decode_png([[0.0] * LATENT])
    assert Image.open(io.BytesIO(png)).size == (28, 28)

    s = sync_client.sample(3, seed=5)
    assert isinstance(s, SampleResponse) and s.seed == 5 and len(s.z) == 3
    assert sync_client.sample(3, seed=5) == s
    assert sync_client.sample_png(3, seed=5).startswith(b"\x89PNG")

    assert {m.name for m in sync_client.models().models} == {"alexnet-cifar10", "vae-mnist"}
    assert sync_client.model("vae-mnist").kind == "vae"
    assert sync_client.ready()


def test_sync_client_raises_the_servers_message(sync_client: Client) -> None:
    with pytest.raises(ModelServeError) as info:
        sync_client.decode([[0.0] * (LATENT + 1)])
    assert info.value.status == 422 and "latent_dim" in info.value.detail and info.value.request_id
    with pytest.raises(ModelServeError) as info:
        sync_client.model("nope")
    assert info.value.status == 404
    with pytest.raises(ValueError, match="exactly one"):
        sync_client.encode()
    with pytest.raises(TypeError):
        sync_client.classify(12345)


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The sync client's waits between tries, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr("modelserve_client._sync.time.sleep", waits.append)
    return waits


def test_retries_on_503_honour_retry_after(slept: list[float]) -> None:
    """Retry-After is waited for, capped at 10 s; without one the client backs off; after
    `retries` retries the server's error is raised."""
    answers = iter(["3", "30", None])
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        after = next(answers, "missing")
        if after == "missing":
            return httpx.Response(200, json={"models": [], "failed": []})
        headers = {"Retry-After": after} if after else {}
        return httpx.Response(503, json={"detail": "busy", "status": 503}, headers=headers)

    c = Client("http://x", transport=httpx.MockTransport(handler), retries=3)
    assert c.models().models == []
    assert len(calls) == 4
    assert slept == [3.0, 10.0, 0.4]  # as told, capped, then 0.1 * 2**attempt
    answers = iter(["0", "0"])
    slept.clear()
    c = Client("http://x", transport=httpx.MockTransport(handler), retries=1)
    with pytest.raises(ModelServeError, match="busy") as info:
        c.models()
    assert info.value.status == 503 and slept == [0.0]


def test_errors_that_retrying_cannot_fix_are_raised_at_once(slept: list[float]) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(422, json={"detail": "bad top_k", "status": 422})

    with pytest.raises(ModelServeError, match="bad top_k"):
        Client("http://x", transport=httpx.MockTransport(handler), retries=3).models()
    assert calls == [1] and slept == []


def test_connection_errors_are_retried_then_raised_as_httpx_errors(slept: list[float]) -> None:
    """docs/api.md: a server that stays unreachable raises httpx's own TransportError."""
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) <= 2:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"models": [], "failed": []})

    assert Client("http://x", transport=httpx.MockTransport(handler), retries=2).models()
    assert len(calls) == 3 and slept == [0.1, 0.2]
    calls.clear()
    with pytest.raises(httpx.ConnectError):
        Client("http://x", transport=httpx.MockTransport(handler), retries=1).models()
    assert len(calls) == 2


async def test_async_client_retries_like_the_sync_one(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    monkeypatch.setattr("modelserve_client._async.asyncio.sleep", sleep)
    answers = iter(["2", "0"])

    def handler(request: httpx.Request) -> httpx.Response:
        after = next(answers, None)
        if after is None:
            return httpx.Response(200, json={"models": [], "failed": []})
        return httpx.Response(
            503, json={"detail": "busy", "status": 503}, headers={"Retry-After": after}
        )

    async with AsyncClient("http://x", transport=httpx.MockTransport(handler), retries=2) as c:
        assert (await c.models()).models == []
    assert slept == [2.0, 0.0]
    answers = iter(["1"])
    async with AsyncClient("http://x", transport=httpx.MockTransport(handler), retries=0) as c:
        with pytest.raises(ModelServeError) as info:
            await c.models()
    assert info.value.status == 503


def test_client_sends_the_api_key(model_dir: Path) -> None:
    with serve_in_thread(test_settings(model_dir, api_key="k" * 12)) as url:
        with pytest.raises(ModelServeError) as info:
            Client(url).models()
        assert info.value.status == 401
        ok = Client(url, api_key="k" * 12)
        assert ok.models().models
    closed = test_settings(model_dir, api_key="k" * 12, open_probes=False)
    with serve_in_thread(closed, ready=False) as url:
        with pytest.raises(ModelServeError) as info:  # a wrong key is not "not ready"
            Client(url).ready()
        assert info.value.status == 401
        ok = Client(url, api_key="k" * 12)
        assert ok.ready() in (True, False)  # loading or loaded: an answer, not an error
        deadline = time.monotonic() + 10
        while not ok.ready():
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.01)
        assert httpx.get(f"{url}/readyz", headers={"X-API-Key": "k" * 12}).status_code == 200


async def test_async_client_against_the_asgi_app(model_dir: Path) -> None:
    app = create_app(test_settings(model_dir))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient("http://testserver", transport=transport, retries=0) as c:
            import asyncio

            for _ in range(500):
                if await c.ready():
                    break
                await asyncio.sleep(0.01)
            images = [png_bytes(color=(i * 50, 0, 255 - i * 50)) for i in range(4)]
            single = await asyncio.gather(*(c.classify(im) for im in images))
            together = await c.classify_many(images)
            # batching never mixes answers up; batch composition may move the last float bits
            for one, r in zip(single, together.results, strict=True):
                assert [(p.label, p.index) for p in one.predictions] == [
                    (p.label, p.index) for p in r.predictions
                ]
                assert [p.probability for p in one.predictions] == pytest.approx(
                    [p.probability for p in r.predictions], rel=1e-5, abs=1e-7
                )
            distinct = {round(s.predictions[0].probability, 4) for s in single}
            assert len(distinct) > 1  # the four images really get different answers
            s = await c.sample(2, seed=9)
            d = await c.decode(s.z)
            assert d.images == s.images
            assert (await c.encode(pixels=[[0.0] * 784])).results[0].z is None
            assert (await c.models()).models and (await c.model("vae-mnist")).name == "vae-mnist"
            assert (await c.decode_png([[0.0] * LATENT])).startswith(b"\x89PNG")
            assert (await c.sample_png(2, seed=1)).startswith(b"\x89PNG")
            with pytest.raises(ModelServeError) as info:
                await c.sample(10_000)
            assert info.value.status == 422


def test_sync_client_marginal_methods(sync_client: Client, tmp_path: Path) -> None:
    digit, mask = tmp_path / "digit.png", tmp_path / "mask.png"
    Image.new("L", (28, 28), 0).save(digit)
    m = Image.new("L", (28, 28), 0)
    m.paste(255, (0, 0, 28, 14))
    m.save(mask)
    r = sync_client.impute([digit], [mask], steps=3, seed=2)
    assert isinstance(r, ImputeResponse) and r.steps == 3 and r.seed == 2
    assert sync_client.impute(pixels=[[0.0] * 784], mask=[[1] * 392 + [0] * 392], steps=3, seed=2)
    assert sync_client.impute_png([digit], [mask], steps=2).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="masks"):
        sync_client.impute([digit])
    d = sync_client.denoise([digit, digit])
    assert isinstance(d, DecodeResponse) and len(d.images) == 2
    assert sync_client.denoise_png(pixels=[[0.0] * 784]).startswith(b"\x89PNG")
    s = sync_client.score([digit], k=5, seed=1)
    assert isinstance(s, ScoreResponse) and s.binarized and s.results[0].k == 5
    assert sync_client.score(pixels=[[1.0] * 784], k=5, seed=1) == s  # the card inverts: black = 1
    with pytest.raises(ModelServeError) as info:
        sync_client.impute(pixels=[[0.0] * 784], mask=[[1] * 784])
    assert info.value.status == 422 and "no pixel observed" in info.value.detail


async def test_async_client_marginal_methods(model_dir: Path) -> None:
    app = create_app(test_settings(model_dir))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient("http://testserver", transport=transport, retries=0) as c:
            import asyncio

            while not await c.ready():
                await asyncio.sleep(0.01)
            half = [[1] * 392 + [0] * 392]
            r = await c.impute(pixels=[[0.0] * 784], mask=half, method="mwg", steps=3, seed=1)
            assert isinstance(r, ImputeResponse) and r.method == "mwg"
            png = await c.impute_png(pixels=[[0.0] * 784], mask=half, steps=2)
            assert png.startswith(b"\x89PNG")
            assert len((await c.denoise(pixels=[[0.0] * 784])).images) == 1
            assert (await c.denoise_png(pixels=[[0.0] * 784])).startswith(b"\x89PNG")
            s = await c.score(pixels=[[0.0] * 784, [1.0] * 784], k=4, seed=3)
            assert isinstance(s, ScoreResponse) and len(s.results) == 2
