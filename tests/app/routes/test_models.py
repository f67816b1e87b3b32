"""GET /models, GET /models/{name}."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.app.conftest import LABELS


def test_models_lists_every_loaded_model_with_its_card(client: TestClient) -> None:
    r = client.get("/models")
    assert r.status_code == 200
    body = r.json()
    assert body["failed"] == []
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"alexnet-cifar10", "vae-mnist"}
    clf, vae = by_name["alexnet-cifar10"], by_name["vae-mnist"]
    assert clf["kind"] == "classifier" and clf["labels"] == LABELS and clf["default"]
    assert clf["input"] == {
        "channels": 3,
        "size": [28, 28],
        "resize": 32,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "invert": False,
        "background": 255,
    }
    assert (
        vae["kind"] == "vae" and vae["dataset"]["name"] == "MNIST" and vae["config"]["latent"] == 3
    )
    assert len(vae["weights_sha256"]) == 64 and vae["device"] == "cpu" and vae["num_parameters"] > 0


def test_one_model_and_unknown_model(client: TestClient) -> None:
    assert client.get("/models/vae-mnist").json()["architecture"] == "vae"
    r = client.get("/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["detail"]
