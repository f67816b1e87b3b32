"""App-wide behaviour: start-up faults, API key, request ids, 413 streaming, 500s, lazy app."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import (
    LATENT,
    make_alexnet,
    make_vae,
    png_bytes,
    test_settings,
    wait_ready,
)

JSON_TYPE = "application/json"

IMAGE = [("image", ("x.png", png_bytes(), "image/png"))]


def broken_dir(tmp_path: Path, fault: str) -> Path:
    make_alexnet(tmp_path)
    make_vae(tmp_path)
    make_vae(tmp_path, name="vae-frey")
    target = tmp_path / "vae-frey"
    weights = target / "model.safetensors"
    if fault == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
        card = json.loads((target / "config.json").read_text())
        card["weights_sha256"] = __import__("hashlib").sha256(weights.read_bytes()).hexdigest()
        (target / "config.json").write_text(json.dumps(card))
    elif fault == "sha256":
        weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    elif fault == "card":
        card = json.loads((target / "config.json").read_text())
        card["config"]["hidden"] = 32  # the weights have 16
        (target / "config.json").write_text(json.dumps(card))
    elif fault == "missing-weights":
        weights.unlink()
    return tmp_path


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ("truncated", "unreadable safetensors"),
        ("sha256", "does not match the card"),
        ("card", "do not match the card's architecture"),
        ("missing-weights", "weights file not found"),
    ],
)
def test_a_bad_checkpoint_is_left_out_and_reported(tmp_path: Path, fault: str, words: str) -> None:
    root = broken_dir(tmp_path, fault)
    with TestClient(create_app(test_settings(root))) as c:
        wait_ready(c)
        ready = c.get("/readyz").json()
        assert ready["models"] == ["alexnet-cifar10", "vae-mnist"]
        [failed] = ready["failed"]
        assert (
            failed["name"] == "vae-frey"
            and words in failed["error"]
            and "vae-frey" in failed["error"]
        )
        assert c.get("/models").json()["failed"] == ready["failed"]
        # ... and to Prometheus, for an alert (deploy/alerts.yml): the failed one only
        metrics = c.get("/metrics").text
        assert 'modelserve_model_load_failed{model="vae-frey"} 1.0' in metrics
        assert metrics.count("modelserve_model_load_failed{") == 1
        assert c.post("/decode?model=vae-frey", json={"z": [[0.0] * 3]}).status_code == 404
        assert c.post("/decode", json={"z": [[0.0] * 3]}).status_code == 200


def test_require_all_models_refuses_to_start(tmp_path: Path) -> None:
    root = broken_dir(tmp_path, "sha256")
    app = create_app(test_settings(root, require_all_models=True))
    with pytest.raises(RuntimeError, match="vae-frey"), TestClient(app):
        pass


def test_empty_model_dir_refuses_to_start(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="no models in"),
        TestClient(create_app(test_settings(tmp_path))),
    ):
        pass


def test_no_loadable_model_is_never_ready(tmp_path: Path) -> None:
    make_vae(tmp_path)
    (tmp_path / "vae-mnist" / "model.safetensors").write_bytes(b"junk")
    with TestClient(create_app(test_settings(tmp_path))) as c:
        for _ in range(200):
            if c.app.state.registry.loaded:  # type: ignore[attr-defined]
                break
            time.sleep(0.01)
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"] == "no model could be loaded"
        assert c.get("/healthz").status_code == 200


def test_default_falls_back_to_first_loaded_of_its_kind(tmp_path: Path) -> None:
    make_alexnet(tmp_path, name="alexnet-other")
    make_vae(tmp_path, name="vae-frey")
    with TestClient(create_app(test_settings(tmp_path))) as c:
        wait_ready(c)
        assert c.post("/classify", files=IMAGE).json()["model"] == "alexnet-other"
        assert (
            c.get("/sample?n=1", headers={"Accept": "application/json"}).json()["model"]
            == "vae-frey"
        )


def test_configured_defaults_pick_the_model_served_without_model_param(tmp_path: Path) -> None:
    make_alexnet(tmp_path)
    make_alexnet(tmp_path, name="alexnet-other", seed=1)
    make_vae(tmp_path)
    make_vae(tmp_path, name="vae-other", seed=1)
    settings = test_settings(tmp_path, default_classifier="alexnet-other", default_vae="vae-other")
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        assert c.post("/classify", files=IMAGE).json()["model"] == "alexnet-other"
        r = c.get("/sample?n=1", headers={"Accept": "application/json"})
        assert r.json()["model"] == "vae-other"
        defaults = {m["name"] for m in c.get("/models").json()["models"] if m["default"]}
        assert defaults == {"alexnet-other", "vae-other"}
        named = c.post("/classify?model=alexnet-cifar10", files=IMAGE)
        assert named.json()["model"] == "alexnet-cifar10"  # ?model= still reaches the others


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA"
)
def test_device_cuda_without_a_gpu_refuses_to_start(model_dir: Path) -> None:
    app = create_app(test_settings(model_dir, device="cuda"))
    with (
        pytest.raises(RuntimeError, match="MODELSERVE_DEVICE=cuda but torch sees no CUDA"),
        TestClient(app),
    ):
        pass


def test_an_endpoint_whose_model_failed_to_load_says_so(tmp_path: Path) -> None:
    make_vae(tmp_path)  # no classifier at all...
    make_alexnet(tmp_path)
    (tmp_path / "alexnet-cifar10" / "model.safetensors").write_bytes(b"junk")  # ...that loads
    with TestClient(create_app(test_settings(tmp_path))) as c:
        wait_ready(c)
        r = c.post("/classify", files=IMAGE)
        assert r.status_code == 503 and "retry-after" not in r.headers  # retrying cannot help
        detail = r.json()["detail"]
        assert detail.startswith("no classifier model is loaded (failed to load: alexnet-cifar10")
        assert c.post("/decode", json={"z": [[0.0] * 3]}).status_code == 200  # the rest serves


def test_api_key(model_dir: Path) -> None:
    key = "s3cret-key-123"
    with TestClient(create_app(test_settings(model_dir, api_key=key))) as c:
        wait_ready(c)
        r = c.post("/classify", files=IMAGE)
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
        assert c.get("/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/models", headers={"X-API-Key": key}).status_code == 200
        assert c.post("/classify", files=IMAGE, headers={"X-API-Key": key}).status_code == 200
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert c.get(probe).status_code == 200
    with TestClient(create_app(test_settings(model_dir, api_key=key, open_probes=False))) as c:
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert c.get(probe).status_code == 401, probe
        assert c.get("/healthz", headers={"X-API-Key": key}).status_code == 200
        for path in ("/openapi.json", "/docs", "/redoc"):  # the API's description stays open...
            assert c.get(path).status_code == 200, path
    with TestClient(create_app(test_settings(model_dir, api_key=key, docs=False))) as c:
        for path in ("/docs", "/redoc", "/openapi.json"):  # ...unless switched off
            assert c.get(path).status_code == 404


def server_timing(r: httpx.Response) -> dict[str, float]:
    """`Server-Timing: a;dur=1.5, b;dur=2` -> {"a": 1.5, "b": 2.0}, in the header's order."""
    entries = (e.strip().split(";dur=") for e in r.headers["server-timing"].split(","))
    return {name: float(ms) for name, ms in entries}


def test_server_timing_reports_the_apps_own_time(client: TestClient) -> None:
    # Server-Timing: app;dur=<ms> on every answer, errors included, so a client can split a
    # latency into its own, the network's and the server's share.
    for r in (client.get("/healthz"), client.get("/nope")):
        assert list(server_timing(r)) == ["app"]
        assert 0 <= server_timing(r)["app"] < 60_000


def test_server_timing_splits_a_model_request_into_its_phases(client: TestClient) -> None:
    # ...and for a model request the phases it went through, in order, within the app's time.
    for r in (
        client.post("/classify", files=IMAGE),
        client.post("/decode", json={"z": [[0.0] * LATENT]}, headers={"Accept": "image/png"}),
    ):
        assert r.status_code == 200, r.text
        t = server_timing(r)
        phases = [p for p in t if p != "app"]
        assert next(iter(t)) == "app"
        assert phases == (
            ["decode", "queue", "infer"] if "decode" in t else ["queue", "infer", "png"]
        )
        assert all(t[p] >= 0 for p in phases) and t["infer"] > 0
        assert sum(t[p] for p in phases) <= t["app"] + 0.01  # rounding to 0.01 ms


def test_request_id_is_echoed_or_made_and_logged(client: TestClient) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign,assignment]
    logging.getLogger("app").addHandler(handler)
    logging.getLogger("app").setLevel(logging.INFO)
    try:
        r = client.get("/models/nope", headers={"X-Request-ID": "abc-123"})
        made = client.get("/healthz").headers["x-request-id"]
        forged = client.get("/healthz", headers={"X-Request-ID": "bad id\nINFO fake"}).headers[
            "x-request-id"
        ]
    finally:
        logging.getLogger("app").removeHandler(handler)
    assert r.headers["x-request-id"] == "abc-123" and r.json()["request_id"] == "abc-123"
    assert len(made) == 32 and forged != "bad id\nINFO fake"
    longest, too_long = "a.b:c_d-" * 16, "x" * 129  # at most 128 of A-Za-z0-9._:-
    assert client.get("/healthz", headers={"X-Request-ID": longest}).headers["x-request-id"] == (
        longest
    )
    for bad in (too_long, "a/b", "a b"):
        echoed = client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert echoed != bad and len(echoed) == 32
    access = [
        rec for rec in records if rec.name == "app.access" and "/models/nope" in rec.getMessage()
    ]
    assert access and getattr(access[0], "status", None) == 404


def test_upload_over_limit_is_413(model_dir: Path) -> None:
    big = png_bytes(size=(600, 600), mode="RGB", fmt="BMP")  # ~1 MB, limit 64 KiB
    with TestClient(create_app(test_settings(model_dir, max_upload_bytes=65536))) as c:
        wait_ready(c)
        r = c.post("/classify", files=[("image", ("x.bmp", big, "image/bmp"))])
        assert r.status_code == 413 and "65536" in r.json()["detail"]

        def chunks():  # no Content-Length: the streamed count must stop it
            for _ in range(100):
                yield b"x" * 4096

        r = c.post("/encode", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/classify", files=IMAGE).status_code == 200
        # Both refusals are counted under their route, the one refused before routing too.
        metrics = c.get("/metrics").text
        for route in ("/classify", "/encode"):
            assert f'route="{route}",status="413"' in metrics.replace('method="POST",', "")


def test_max_image_pixels_is_the_configured_limit(model_dir: Path) -> None:
    with TestClient(create_app(test_settings(model_dir, max_image_pixels=1000))) as c:
        wait_ready(c)
        over = c.post("/classify", files=[("image", ("a.png", png_bytes((40, 30)), "image/png"))])
        assert over.status_code == 413 and "1000" in over.json()["detail"]
        at = c.post("/classify", files=[("image", ("b.png", png_bytes((40, 25)), "image/png"))])
        assert at.status_code == 200


class FaultyModel(torch.nn.Module):
    """Wraps a model: raises on the first `fail` calls, or blocks on `gate` before each call."""

    def __init__(
        self, inner: torch.nn.Module, fail: int = 0, gate: threading.Event | None = None
    ) -> None:
        super().__init__()
        self.inner, self.fail, self.gate = inner, fail, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("CUDA exploded at /secret/path.py line 3")
        return self.inner(x)


def patch_classifier(c: TestClient, **kwargs: object) -> None:
    p = c.app.state.registry.predictors["alexnet-cifar10"]  # type: ignore[attr-defined]
    p.model = FaultyModel(p.model, **kwargs)  # type: ignore[arg-type]


def test_inference_error_is_500_with_request_id_and_service_survives(client: TestClient) -> None:
    patch_classifier(client, fail=1)
    r = client.post("/classify", files=IMAGE, headers={"X-Request-ID": "req-500"})
    assert r.status_code == 500
    body = r.json()
    assert body["request_id"] == "req-500" and "req-500" in body["detail"]
    assert "secret" not in r.text and "Traceback" not in r.text
    assert client.post("/classify", files=IMAGE).status_code == 200
    assert (
        'modelserve_inference_errors_total{model="alexnet-cifar10",op="classify"} 1.0'
        in client.get("/metrics").text
    )


def test_overloaded_is_503_with_retry_after_and_deadline_504(model_dir: Path) -> None:
    gate = threading.Event()
    settings = test_settings(
        model_dir,
        max_batch_size=1,
        max_queue=2,
        max_batch_images=1,
        max_sample_n=1,
        # long enough that the three queued requests outlive the wait for the queue to fill on
        # a loaded machine (at 1 s one expired first there and the fourth got 504, not 503)
        request_timeout_s=3.0,
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        patch_classifier(c, gate=gate)
        batcher = c.app.state.registry.batchers["alexnet-cifar10", "classify"]  # type: ignore[attr-defined]
        try:
            with ThreadPoolExecutor(4) as pool:
                first = [pool.submit(c.post, "/classify", files=IMAGE) for _ in range(3)]
                deadline = time.monotonic() + 5
                while batcher.queued < 2 and time.monotonic() < deadline:
                    time.sleep(0.005)  # one in the forward pass, two queued: the queue is full
                r = c.post("/classify", files=IMAGE)
                assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
                statuses = sorted(f.result().status_code for f in first)
        finally:
            gate.set()
        assert statuses == [504, 504, 504]  # all blocked past the 3 s deadline
        metrics = c.get("/metrics").text
        assert 'modelserve_rejected_requests_total{reason="overloaded"} 1.0' in metrics
        assert 'modelserve_rejected_requests_total{reason="deadline"} 3.0' in metrics
        r = c.post("/classify", files=IMAGE)
        assert r.status_code == 200  # recovers


def test_module_level_app_is_built_lazily_from_the_environment(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.main as main_module

    assert "app" not in vars(main_module)  # importing read no settings
    monkeypatch.setenv("MODELSERVE_MODEL_DIR", str(model_dir))
    try:
        built = main_module.app
        assert built.state.settings.model_dir == model_dir
        assert main_module.app is built  # built once
    finally:
        vars(main_module).pop("app", None)
    monkeypatch.setenv("MODELSERVE_MAX_BATCH_SIZE", "0")
    with pytest.raises(SystemExit, match="MODELSERVE_MAX_BATCH_SIZE: Input should be greater"):
        main_module.__getattr__("app")


def _openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime torch loaded (Linux: libgomp from /proc/self/maps), or None."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return None
    for line in maps.read_text().splitlines():
        if "libgomp" in line or "libomp" in line or "libiomp" in line:
            return ctypes.CDLL(line.split()[-1])
    return None


def test_two_lanes_answer_concurrent_requests_as_one_lane_does(model_dir: Path) -> None:
    # Batches side by side on two lane threads (one intra-op thread each under load): every
    # request still gets its own image's answer.
    images = [png_bytes(color=(17 * i, 255 - 13 * i, 40 + 9 * i)) for i in range(16)]

    def classify_all(c: TestClient) -> list[list[tuple[str, float]]]:
        def one(b: bytes) -> list[tuple[str, float]]:
            r = c.post("/classify", files=[("image", ("x.png", b, "image/png"))])
            assert r.status_code == 200, r.text
            return [(p["label"], p["probability"]) for p in r.json()["predictions"]]

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, images))

    answers = []
    before = torch.get_num_threads()
    try:
        for lanes in (1, 2):
            settings = test_settings(model_dir, torch_threads=2, inference_lanes=lanes)
            with TestClient(create_app(settings)) as c:
                wait_ready(c)
                answers.append(classify_all(c))
                assert c.app.state.registry.lanes.count == lanes  # type: ignore[attr-defined]
    finally:
        torch.set_num_threads(before)
    for one_lane, two_lanes in zip(*answers, strict=True):
        assert [label for label, _ in one_lane] == [label for label, _ in two_lanes]
        assert [p for _, p in one_lane] == pytest.approx([p for _, p in two_lanes], abs=1e-5)


def test_inference_thread_has_the_configured_openmp_team(tmp_path: Path) -> None:
    # Each OS thread starts from OpenMP's default team size (all cores), whatever the main
    # thread set; MKL and oneDNN read the calling thread's own value, and torch corrects it
    # only once the thread runs one of its own parallel loops (a VAE's small batches never
    # do). The inference thread must carry the configured count from the start, or its MKL
    # calls fork a team of all cores and workers x threads oversubscribes them.
    omp = _openmp_runtime()
    if omp is None:
        pytest.skip("no OpenMP runtime found in this process")
    # A count that differs from OpenMP's default on this machine, so a thread left at the
    # default is seen.
    threads = 1 if (os.cpu_count() or 1) > 1 else 2
    make_vae(tmp_path)
    before = torch.get_num_threads()
    try:
        with TestClient(create_app(test_settings(tmp_path, torch_threads=threads))) as client:
            wait_ready(client)
            r = client.post("/decode", json={"z": [[0.0] * LATENT]}, headers={"accept": JSON_TYPE})
            assert r.status_code == 200, r.text
            registry = client.app.state.registry  # type: ignore[attr-defined]
            assert registry.executor.submit(omp.omp_get_max_threads).result() == threads
    finally:
        torch.set_num_threads(before)


def test_a_validation_422_lists_each_invalid_field(client: TestClient) -> None:
    """docs/api.md: `errors` holds one entry per invalid field, with `loc`, `msg`, `type`."""
    r = client.get("/sample", params={"n": 0, "seed": -1})
    assert r.status_code == 422
    body = r.json()
    assert body["status"] == 422 and body["request_id"] == r.headers["x-request-id"]
    assert sorted(e["loc"][-1] for e in body["errors"]) == ["n", "seed"]
    assert all(e["msg"] and e["type"] for e in body["errors"])


@pytest.mark.parametrize(("cores", "workers", "threads"), [(8, None, 8), (8, "2", 4), (2, "4", 1)])
def test_default_torch_threads_share_the_cores_among_workers(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: str | None, threads: int
) -> None:
    """docs/api.md: MODELSERVE_TORCH_THREADS defaults to cores / WEB_CONCURRENCY (at least 1)."""
    from app import registry

    monkeypatch.setattr(registry.os, "cpu_count", lambda: cores)
    if workers is None:
        monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    else:
        monkeypatch.setenv("WEB_CONCURRENCY", workers)
    assert registry.default_threads() == threads


def test_more_lanes_than_threads_run_one_lane_per_thread(model_dir: Path) -> None:
    before = torch.get_num_threads()
    try:
        settings = test_settings(model_dir, torch_threads=2, inference_lanes=4)
        with TestClient(create_app(settings)) as c:
            wait_ready(c)
            lanes = c.app.state.registry.lanes  # type: ignore[attr-defined]
            assert (lanes.count, lanes.per_lane) == (2, 1)
            assert c.post("/classify", files=IMAGE).status_code == 200
    finally:
        torch.set_num_threads(before)
