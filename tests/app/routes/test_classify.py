"""POST /classify: answers, batching order, top_k, bad uploads."""

from __future__ import annotations

import io
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.images import decode_image
from app.main import create_app
from models import load_checkpoint
from models.prepack import PackedLinear, can_prepack, packing_summary
from tests.app.conftest import LABELS, png_bytes, test_settings, wait_ready


def part(data: bytes, name: str = "x.png") -> tuple[str, tuple[str, bytes, str]]:
    return "image", (name, data, "application/octet-stream")


def reference_probs(client: TestClient, data: bytes) -> torch.Tensor:
    """Softmax of an unbatched forward of the same checkpoint: what the service must answer."""
    settings = client.app.state.settings  # type: ignore[attr-defined]
    model, card = load_checkpoint(settings.model_dir / "alexnet-cifar10")
    with torch.inference_mode():
        x = decode_image(data, card.input, 10**7)[None]
        return torch.softmax(model(x), 1)[0]


def test_one_image_answers_sorted_top_k_softmax(client: TestClient) -> None:
    data = png_bytes()
    r = client.post("/classify", files=[part(data)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "alexnet-cifar10" and set(body) == {"model", "predictions"}
    preds = body["predictions"]
    assert len(preds) == 3  # default min(5, classes)
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    ref = reference_probs(client, data)
    for p in preds:
        assert p["label"] == LABELS[p["index"]]
        assert p["probability"] == pytest.approx(float(ref[p["index"]]), abs=1e-5)


@pytest.mark.skipif(not can_prepack("cpu"), reason="no oneDNN")
@pytest.mark.parametrize(("threshold", "expected"), [(None, {"dense"}), (1, {"oneDNN"})])
def test_prepack_auto_serves_what_the_timing_decided(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, threshold: int | None, expected: set[str]
) -> None:
    """MODELSERVE_PREPACK_LINEAR=auto reaches the served models as "auto" (timed per layer),
    not as "pack everything": a timing that never favours packing leaves every layer dense."""
    from models import prepack

    monkeypatch.setattr(prepack, "packing_threshold", lambda *args, **kwargs: threshold)
    with TestClient(create_app(test_settings(model_dir, prepack_linear="auto"))) as c:
        wait_ready(c)
        for name in ("alexnet-cifar10", "vae-mnist"):
            model = c.app.state.registry.predictors[name].model  # type: ignore[attr-defined]
            assert set(packing_summary(model).values()) == expected, name


@pytest.mark.parametrize(
    "prepack",
    [
        pytest.param(True, marks=pytest.mark.skipif(not can_prepack("cpu"), reason="no oneDNN")),
        False,
        "auto",
    ],
)
def test_prepack_setting_packs_the_fc_layers_and_answers_the_same(
    model_dir: Path, prepack: bool | str
) -> None:
    data = png_bytes(color=(10, 200, 90))
    with TestClient(create_app(test_settings(model_dir, prepack_linear=prepack))) as c:
        wait_ready(c)
        for name in ("alexnet-cifar10", "vae-mnist"):
            model = c.app.state.registry.predictors[name].model  # type: ignore[attr-defined]
            layers = packing_summary(model).values()
            if prepack == "auto":  # timed per layer at load: each one way or the other
                assert layers and all(v == "dense" or v.startswith("oneDNN") for v in layers)
            else:
                assert any(isinstance(m, PackedLinear) for m in model.modules()) == prepack, name
                assert ("dense" in layers) != prepack, name
        r = c.post("/classify?top_k=3", files=[part(data)])
        assert r.status_code == 200, r.text
        ref = reference_probs(c, data)
    got = {p["index"]: p["probability"] for p in r.json()["predictions"]}
    assert got == pytest.approx({i: float(ref[i]) for i in got}, abs=1e-5)


def test_several_parts_answer_in_upload_order(client: TestClient) -> None:
    images = [
        png_bytes(color=(i * 40, 255 - i * 40, (i * 90) % 256), size=(30 + i, 40)) for i in range(5)
    ]
    r = client.post("/classify?top_k=3", files=[part(d) for d in images])
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "results"} and len(body["results"]) == 5
    for data, result in zip(images, body["results"], strict=True):
        ref = reference_probs(client, data)
        got = {p["index"]: p["probability"] for p in result["predictions"]}
        assert got == pytest.approx({i: float(ref[i]) for i in range(3)}, abs=1e-5)


def test_concurrent_requests_each_get_their_own_answer(client: TestClient) -> None:
    images = [png_bytes(color=(i * 25, (i * 70) % 256, 255 - i * 25)) for i in range(10)]
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda d: client.post("/classify", files=[part(d)]), images))
    for data, r in zip(images, responses, strict=True):
        assert r.status_code == 200
        ref = reference_probs(client, data)
        top = r.json()["predictions"][0]
        assert top["index"] == int(ref.argmax())
        assert top["probability"] == pytest.approx(float(ref.max()), abs=1e-5)


def test_large_images_decode_off_the_event_loop(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # thumbnails decode inline (cheaper than a thread hop); anything larger goes to the pool,
    # so a big upload never stalls other requests; the answers are the same either way
    import app.routes.uploads as uploads

    pooled: list[tuple[int, int]] = []
    real = uploads.run_in_threadpool

    async def counting(fn: Callable[..., Any], im: Any, *args: Any) -> Any:
        pooled.append(im.size)
        return await real(fn, im, *args)

    monkeypatch.setattr(uploads, "run_in_threadpool", counting)
    small, large = png_bytes(size=(32, 32)), png_bytes(size=(300, 200), color=(10, 200, 30))
    r = client.post("/classify", files=[part(small), part(large)])
    assert r.status_code == 200, r.text
    assert pooled == [(300, 200)]
    for data, result in zip((small, large), r.json()["results"], strict=True):
        top = result["predictions"][0]
        assert top["probability"] == pytest.approx(
            float(reference_probs(client, data).max()), abs=1e-5
        )


def test_top_k_and_model_parameters(client: TestClient) -> None:
    data = png_bytes()
    assert len(client.post("/classify?top_k=1", files=[part(data)]).json()["predictions"]) == 1
    for bad in ("0", "4", "-1", "x"):
        r = client.post(f"/classify?top_k={bad}", files=[part(data)])
        assert r.status_code == 422 and "top_k" in r.json()["detail"]
    r = client.post("/classify?model=nope", files=[part(data)])
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert client.post("/classify?model=vae-mnist", files=[part(data)]).status_code == 404


def _gif_two_frames() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        png_bytes(mode="L", color=(90, 0, 0)),
        png_bytes(fmt="JPEG"),
        png_bytes(fmt="BMP"),
        png_bytes(fmt="WEBP"),
        png_bytes(mode="CMYK", color=(10, 0, 0), fmt="JPEG"),
        _gif_two_frames(),
    ],
    ids=["grey", "jpeg", "bmp", "webp", "cmyk", "gif"],
)
def test_any_supported_format_and_mode_is_classified(client: TestClient, data: bytes) -> None:
    r = client.post("/classify", files=[part(data)])
    assert r.status_code == 200, r.text
    ref = reference_probs(client, data)
    for p in r.json()["predictions"]:
        assert p["probability"] == pytest.approx(float(ref[p["index"]]), abs=1e-5)


def test_too_many_images_is_413(model_dir: Path) -> None:
    with TestClient(create_app(test_settings(model_dir, max_batch_images=2))) as c:
        wait_ready(c)
        r = c.post("/classify", files=[part(png_bytes())] * 3)
        assert r.status_code == 413 and "limit is 2" in r.json()["detail"]
