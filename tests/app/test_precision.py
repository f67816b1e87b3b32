"""MODELSERVE_DTYPE: the number format each model is served in, chosen once at load, shown in
/models and in modelserve_model_info; classifiers answer as in float32, VAEs stay float32."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from app.main import create_app
from app.settings import Settings, describe_error
from models import load_checkpoint, precision, save_checkpoint
from models.precision import dtype_name, fastest
from tests.app.conftest import make_alexnet, make_vae, test_settings, wait_ready


def _client(model_dir: Path, dtype: str) -> TestClient:
    return TestClient(create_app(test_settings(model_dir, dtype=dtype)))


@pytest.fixture(scope="module")
def decisive_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoints, the classifier's last layer scaled up so that its answers are
    decisive (the tiny init gives near-uniform probabilities, where any rounding flips the top
    class)."""
    root = tmp_path_factory.mktemp("decisive")
    make_alexnet(root)
    make_vae(root)
    model, card = load_checkpoint(root / "alexnet-cifar10")
    model.classifier.fc8.weight.data.mul_(30.0)
    save_checkpoint(root / "alexnet-cifar10", model, card.model_copy(update={"weights_sha256": ""}))
    return root


def _dtypes(client: TestClient) -> dict[str, str]:
    """Each model's dtype as /models/{name} shows it."""
    names = [m["name"] for m in client.get("/models").json()["models"]]
    return {n: client.get(f"/models/{n}").json()["dtype"] for n in names}


def _info_dtypes(client: TestClient) -> dict[str, str]:
    """Each model's dtype label on modelserve_model_info."""
    families = text_string_to_metric_families(client.get("/metrics").text)
    info = next(f for f in families if f.name == "modelserve_model_info")
    return {s.labels["model"]: s.labels["dtype"] for s in info.samples}


def _noise_pngs(n: int) -> list[bytes]:
    """n 32x32 RGB images, each a seeded random colour with noise on it."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        pixels = rng.integers(0, 256, 3) + rng.integers(-40, 41, (32, 32, 3))
        buf = io.BytesIO()
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _probs(client: TestClient, images: list[bytes]) -> torch.Tensor:
    """(B, N) probabilities /classify answers, in class order."""
    files = [("image", (f"{i}.png", d, "image/png")) for i, d in enumerate(images)]
    r = client.post("/classify", files=files, params={"top_k": 3})
    assert r.status_code == 200, r.text
    rows = []
    for result in r.json()["results"]:
        row = torch.zeros(3)
        for p in result["predictions"]:
            row[p["index"]] = p["probability"]
        rows.append(row)
    return torch.stack(rows)


def test_dtype_setting_is_auto_unless_set(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSERVE_MODEL_DIR", str(model_dir))
    monkeypatch.delenv("MODELSERVE_DTYPE", raising=False)
    assert Settings().dtype == "auto"
    for value in ("float32", "bfloat16", "float16"):
        monkeypatch.setenv("MODELSERVE_DTYPE", value)
        assert Settings().dtype == value
    monkeypatch.setenv("MODELSERVE_DTYPE", "int8")
    with pytest.raises(ValidationError) as e:
        Settings()
    assert "MODELSERVE_DTYPE" in describe_error(e.value) and "'int8'" in describe_error(e.value)


def test_bfloat16_classifies_as_float32_does_and_vaes_stay_float32(decisive_dir: Path) -> None:
    images = _noise_pngs(48)
    with _client(decisive_dir, "bfloat16") as served, _client(decisive_dir, "float32") as exact:
        wait_ready(served)
        wait_ready(exact)
        assert _dtypes(served) == {"alexnet-cifar10": "bfloat16", "vae-mnist": "float32"}
        assert _info_dtypes(served) == {"alexnet-cifar10": "bfloat16", "vae-mnist": "float32"}
        assert _dtypes(exact) == {"alexnet-cifar10": "float32", "vae-mnist": "float32"}
        ref, low = _probs(exact, images), _probs(served, images)
        z = {"z": [[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]]}
        json = {"Accept": "application/json"}
        decoded = [
            c.post("/decode", json=z, headers=json).json()["images"] for c in (exact, served)
        ]
    assert decoded[0] == decoded[1]  # the VAE is the same float32 model in both
    assert torch.allclose(low.sum(1), torch.ones(len(images)), atol=1e-4)  # float32 softmax
    assert (low - ref).abs().max() < 0.01
    top2 = ref.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.02  # a lead that differences under 0.01 cannot turn
    assert len(set(ref.argmax(1)[clear].tolist())) >= 2, "too few clear answers to compare"
    assert torch.equal(low.argmax(1)[clear], ref.argmax(1)[clear])


def test_auto_without_native_bf16_serves_float32_and_times_nothing(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_timing(*args: Any) -> None:
        raise AssertionError("auto timed formats on a CPU without native bf16")

    monkeypatch.setattr(precision, "bf16_native", lambda device: False)
    monkeypatch.setattr(precision, "forward_ms", no_timing)
    with _client(model_dir, "auto") as c:
        wait_ready(c)
        assert _dtypes(c) == {"alexnet-cifar10": "float32", "vae-mnist": "float32"}


def test_auto_with_native_bf16_times_both_and_serves_the_faster(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timed: list[dict[torch.dtype, list[float]]] = []
    real = precision.forward_ms

    def spy(*args: Any, **kwargs: Any) -> dict[torch.dtype, list[float]]:
        timed.append(real(*args, **kwargs))
        return timed[-1]

    monkeypatch.setattr(precision, "bf16_native", lambda device: True)
    monkeypatch.setattr(precision, "forward_ms", spy)
    with _client(model_dir, "auto") as c:
        wait_ready(c)
        dtypes = _dtypes(c)
    assert len(timed) == 1  # the classifier, at batch 1 and the largest batch; not the VAE
    assert list(timed[0]) == [torch.float32, torch.bfloat16]
    assert all(len(ms) == 2 for ms in timed[0].values())
    assert dtypes == {"alexnet-cifar10": dtype_name(fastest(timed[0])), "vae-mnist": "float32"}


def test_float16_serves_where_it_runs_and_falls_back_where_it_overflows(tmp_path: Path) -> None:
    make_alexnet(tmp_path)
    make_vae(tmp_path)
    make_alexnet(tmp_path, "alexnet-big")
    model, card = load_checkpoint(tmp_path / "alexnet-big")
    torch.nn.init.constant_(model.classifier.fc8.bias, 7e4)  # past float16's largest, 65504
    save_checkpoint(tmp_path / "alexnet-big", model, card.model_copy(update={"weights_sha256": ""}))
    with _client(tmp_path, "float16") as c:
        wait_ready(c)
        assert _dtypes(c) == {
            "alexnet-big": "float32",
            "alexnet-cifar10": "float16",
            "vae-mnist": "float32",
        }
        r = c.post("/classify", files=[("image", ("x.png", _noise_pngs(1)[0], "image/png"))])
        assert r.status_code == 200, r.text
