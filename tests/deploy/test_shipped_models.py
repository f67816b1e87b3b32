"""The checkpoints shipped in models/: what `make serve` serves out of the box, and what the
README says about them."""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("alexnet-cifar10", "vae-frey", "vae-mnist", "vae-mnist-paper")
README = (REPO / "README.md").read_text()
TRAINING_DOC = (REPO / "docs" / "training.md").read_text()


def card(name: str) -> dict:
    return json.loads((REPO / "models" / name / "config.json").read_text())


@pytest.fixture(scope="module")
def shipped() -> Iterator[TestClient]:
    """The app on models/ with the default settings (none taken from this shell's
    environment), as `make serve` starts it."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("MODELSERVE_")}
    try:
        app = create_app(Settings(model_dir=REPO / "models", log_level="WARNING"))
        with TestClient(app) as client:
            deadline = time.monotonic() + 120
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "the shipped models never became ready"
                time.sleep(0.05)
            yield client
    finally:
        os.environ.update(saved)


def test_every_shipped_model_loads_with_its_checksum(shipped: TestClient) -> None:
    body = shipped.get("/models").json()
    assert body["failed"] == []
    names = {m["name"]: m for m in body["models"]}
    assert sorted(names) == list(SHIPPED)
    for name, info in names.items():
        assert info["weights_sha256"] == card(name)["weights_sha256"]
    assert names["alexnet-cifar10"]["default"] and names["vae-mnist"]["default"]


def test_the_example_cat_is_a_cat(shipped: TestClient) -> None:
    """The README's first curl: examples/cat.jpg through the default classifier."""
    with open(REPO / "examples" / "cat.jpg", "rb") as f:
        r = shipped.post("/classify", files={"image": ("cat.jpg", f, "image/jpeg")})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 5
    assert predictions[0]["label"] == "cat", predictions


def test_the_example_digit_comes_back_through_encode_and_decode(shipped: TestClient) -> None:
    """examples/digit.png (white on black, as MNIST) encoded to its posterior mean and decoded:
    the reconstruction looks like the digit."""
    png = (REPO / "examples" / "digit.png").read_bytes()
    r = shipped.post("/encode", files={"image": ("digit.png", png, "image/png")})
    assert r.status_code == 200, r.text
    mean = r.json()["results"][0]["mean"]
    assert len(mean) == card("vae-mnist")["config"]["latent"]
    r = shipped.post("/decode", json={"z": [mean]}, headers={"Accept": "application/json"})
    assert r.status_code == 200, r.text
    decoded = np.array(r.json()["images"][0], dtype=np.float64)
    digit = Image.open(io.BytesIO(png)).convert("L").resize((28, 28))
    pixels = np.asarray(digit, dtype=np.float64).ravel() / 255
    assert np.corrcoef(decoded, pixels)[0, 1] > 0.8


def test_samples_from_the_shipped_vae_are_reproducible(shipped: TestClient) -> None:
    first = shipped.get("/sample", params={"n": 4, "seed": 7})
    again = shipped.get("/sample", params={"n": 4, "seed": 7})
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.content == again.content
    assert Image.open(io.BytesIO(first.content)).size[0] > 28  # a grid, not one digit


def _row(name: str) -> str:
    rows = [line for line in README.splitlines() if line.startswith(f"| `{name}` |")]
    assert len(rows) == 1, f"README's shipped-models table has no single row for {name}"
    return rows[0]


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        (
            "vae-frey",
            {
                "val_elbo": "**{:.1f} nats**",
                "train_elbo": "train {:.1f}",
                "val_log_px": "**{:.1f} nats**",
            },
        ),
        ("vae-mnist", {"test_elbo": "**{:.2f} nats**", "test_log_px": "**{:.2f} nats**"}),
        ("vae-mnist-paper", {"test_elbo": "**{:.2f} nats**", "test_log_px": "**{:.2f} nats**"}),
        (
            "alexnet-cifar10",
            {
                "val_top1_err": "top-1 error **{:.1%}**",
                "val_top1_err_tencrop": "ten-crop {:.1%}",
                "val_top5_err": "top-5 error **{:.1%}**",
                "val_top5_err_tencrop": "ten-crop {:.1%}",
            },
        ),
    ],
)
def test_the_readme_quotes_the_shipped_cards(name: str, quoted: dict[str, str]) -> None:
    """The shipped-models table says what the cards say (and so what GET /models serves):
    retraining a model without updating the README fails here."""
    row, c = _row(name), card(name)
    for key, template in quoted.items():
        assert template.format(c["metrics"][key]) in row, (name, key, c["metrics"][key])
    assert f"{c['num_parameters']:,} weights" in row
    epochs = c["training"]["epochs"]
    command = [line for line in TRAINING_DOC.splitlines() if line.startswith(f"- `{name}`: ")]
    assert len(command) == 1, f"docs/training.md has no single reproduce command for {name}"
    assert re.search(rf"--epochs {epochs}\b", command[0]), f"{name}: the command is not the card's"
