"""GET /healthz, GET /readyz (503 while loading), GET /metrics, GET /docs."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.registry import Registry
from tests.app.conftest import png_bytes, test_settings, wait_ready


def test_healthz_and_readyz_when_ready(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "ready": True,
        "models": ["alexnet-cifar10", "vae-mnist"],
        "failed": [],
        "detail": "ready",
    }


def test_not_ready_while_loading(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    real = Registry.load_all

    def slow_load(self: Registry) -> None:
        gate.wait(10)
        real(self)

    monkeypatch.setattr(Registry, "load_all", slow_load)
    with TestClient(create_app(test_settings(model_dir))) as c:
        assert c.get("/healthz").status_code == 200  # alive while loading
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"] == "loading models"
        assert r.headers["retry-after"] == "1"
        r = c.post("/classify", files=[("image", ("x.png", png_bytes(), "image/png"))])
        assert r.status_code == 503 and "loading" in r.json()["detail"]
        assert c.get("/models").status_code == 503
        gate.set()
        wait_ready(c)
        assert c.get("/models").status_code == 200


def _value(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and ",".join(sorted(m.group(1).split(","))) == want:
            return float(m.group(2))
    return 0.0


def test_metrics_move_after_requests(client: TestClient) -> None:
    before = client.get("/metrics").text
    client.post("/classify", files=[("image", ("x.png", png_bytes(), "image/png"))] * 2)
    client.post("/decode", json={"z": [[0.0] * 3]})
    client.get("/models/nope")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text
    items = dict(model="alexnet-cifar10", op="classify")
    assert (
        _value(after, "modelserve_inference_items_total", **items)
        == _value(before, "modelserve_inference_items_total", **items) + 2
    )
    assert _value(after, "modelserve_inference_duration_seconds_count", **items) >= 1
    assert _value(after, "modelserve_batch_size_count", **items) >= 1
    assert (
        _value(
            after, "modelserve_http_requests_total", route="/classify", method="POST", status="200"
        )
        >= 1
    )
    assert (
        _value(
            after,
            "modelserve_http_requests_total",
            route="/models/{name}",
            method="GET",
            status="404",
        )
        == 1
    )
    assert (
        _value(
            after, "modelserve_http_request_duration_seconds_count", route="/decode", method="POST"
        )
        == 1
    )
    assert "modelserve_model_info{" in after and "modelserve_build_info{" in after
    assert "modelserve_http_requests_in_flight" in after


def test_openapi_describes_every_endpoint(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/classify",
        "/encode",
        "/decode",
        "/sample",
        "/models",
        "/models/{name}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in spec["paths"], path
    encode_body = spec["paths"]["/encode"]["post"]["requestBody"]["content"]
    assert set(encode_body) == {"multipart/form-data", "application/json"}
    # /classify reads its form itself: the body is declared by hand and must still say so
    classify = spec["paths"]["/classify"]["post"]
    assert classify["requestBody"]["required"] is True
    (form,) = classify["requestBody"]["content"].values()
    assert form["schema"]["required"] == ["image"]
    assert form["schema"]["properties"]["image"]["items"]["format"] == "binary"
    assert {p["name"] for p in classify["parameters"]} == {"top_k", "model"}
    assert client.get("/docs").status_code == 200
