"""POST /encode, POST /decode, GET /sample: values, shapes, seeds, negotiation, bad input."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from models import VAE, load_checkpoint
from tests.app.conftest import LATENT, png_bytes

JSON_ACCEPT = {"Accept": "application/json"}


def vae(client: TestClient) -> VAE:
    model, _ = load_checkpoint(client.app.state.settings.model_dir / "vae-mnist")  # type: ignore[attr-defined]
    assert isinstance(model, VAE)
    return model


def test_encode_json_pixels_matches_the_model(client: TestClient) -> None:
    x = torch.rand(2, 784)
    r = client.post("/encode", json={"pixels": x.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "vae-mnist" and body["latent_dim"] == LATENT
    with torch.inference_mode():
        mean, log_var = vae(client).encode(x)
    for i, res in enumerate(body["results"]):
        assert res["mean"] == pytest.approx(mean[i].tolist(), abs=1e-5)
        assert res["log_var"] == pytest.approx(log_var[i].tolist(), abs=1e-5)
        assert res["z"] is None


def test_encode_accepts_nested_shapes(client: TestClient) -> None:
    img = torch.rand(28, 28)
    one = client.post("/encode", json={"pixels": img.tolist()}).json()["results"]
    many = client.post("/encode", json={"pixels": [img.tolist(), img.tolist()]}).json()["results"]
    flat = client.post("/encode", json={"pixels": [img.flatten().tolist()]}).json()["results"]
    assert len(one) == 1 and len(many) == 2
    assert one[0]["mean"] == pytest.approx(flat[0]["mean"], abs=1e-6)
    assert many[1]["mean"] == pytest.approx(flat[0]["mean"], abs=1e-6)


def test_encode_image_is_grey_inverted_and_resized(client: TestClient) -> None:
    # A white 56x56 upload: grey, inverted (card says invert) and resized -> all zeros.
    buf = io.BytesIO()
    Image.new("RGB", (56, 56), (255, 255, 255)).save(buf, "PNG")
    r = client.post("/encode", files=[("image", ("w.png", buf.getvalue(), "image/png"))])
    zeros = client.post("/encode", json={"pixels": [[0.0] * 784]})
    assert r.json()["results"][0]["mean"] == pytest.approx(
        zeros.json()["results"][0]["mean"], abs=1e-6
    )


def test_encode_sample_is_reparameterised_and_seeded(client: TestClient) -> None:
    body = {"pixels": [[0.3] * 784]}
    a = client.post("/encode?sample=true&seed=7", json=body).json()["results"][0]
    b = client.post("/encode?sample=true&seed=7", json=body).json()["results"][0]
    c = client.post("/encode?sample=true&seed=8", json=body).json()["results"][0]
    assert a["z"] == b["z"] and a["z"] != c["z"]
    eps = torch.randn(LATENT, generator=torch.Generator().manual_seed(7))
    expect = torch.tensor(a["mean"]) + torch.exp(0.5 * torch.tensor(a["log_var"])) * eps
    assert a["z"] == pytest.approx(expect.tolist(), abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"json": {"pixels": [[0.5] * 783]}}, 422),
        ({"json": {"pixels": [[1.5] * 784]}}, 422),
        ({"json": {"pixels": []}}, 422),
        ({"json": {"pixels": [[0.5] * 784], "extra": 1}}, 422),
        ({"content": b'{"pixels": [[0.5, ', "headers": {"content-type": "application/json"}}, 422),
        ({"content": b'{"pixels": [[NaN]]}', "headers": {"content-type": "application/json"}}, 422),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415),
        ({"files": [("img", ("x.png", png_bytes(), "image/png"))]}, 422),
        ({"files": [("image", ("x.png", b"nope", "image/png"))]}, 415),
    ],
    ids=[
        "short-row",
        "out-of-range",
        "empty",
        "unknown-field",
        "malformed",
        "nan",
        "text",
        "wrong-field",
        "not-image",
    ],
)
def test_encode_bad_input(client: TestClient, kwargs: dict, status: int) -> None:
    r = client.post("/encode", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["status"] == status and r.json()["detail"]


def test_decode_json_is_the_decoder_mean_at_full_precision(client: TestClient) -> None:
    z = [[0.0, 0.5, -1.0], [2.0, -0.3, 0.1]]
    r = client.post("/decode", json={"z": z}, headers=JSON_ACCEPT)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["shape"] == [28, 28] and len(body["images"]) == 2
    with torch.inference_mode():
        expect = vae(client).decode(torch.tensor(z)).flatten(1)
    got = torch.tensor(body["images"], dtype=torch.float32)
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)  # float32 survives JSON


@pytest.mark.parametrize(
    "accept", [None, "*/*", "image/png", "image/*", "application/json;q=0.5, image/png"]
)
def test_decode_png_by_default_and_on_request(client: TestClient, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    r = client.post("/decode", json={"z": [[0.0] * LATENT]}, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (28, 28)


def test_decode_grid_png(client: TestClient) -> None:
    r = client.post("/decode", json={"z": [[0.0] * LATENT] * 5}, headers={"Accept": "image/png"})
    grid = Image.open(io.BytesIO(r.content))
    assert grid.size == (3 * 30 + 2, 2 * 30 + 2)  # 3 columns, 2 rows, 2-pixel gaps
    assert r.headers["x-image-count"] == "5"


@pytest.mark.parametrize(
    "accept", ["text/html", "application/xml", "image/png;q=0, application/json;q=0"]
)
def test_decode_unsupported_accept_is_406(client: TestClient, accept: str) -> None:
    r = client.post("/decode", json={"z": [[0.0] * LATENT]}, headers={"Accept": accept})
    assert r.status_code == 406 and "image/png" in r.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"z": [[0.0, 0.0]]},
        {"z": []},
        {"z": [[1e9, 0.0, 0.0]]},
        {"z": [["a", 0.0, 0.0]]},
        {"zz": [[0.0] * 3]},
        {"z": [[0.0] * 3]} | {"extra": True},
    ],
    ids=["wrong-length", "empty", "absurd", "string", "wrong-key", "unknown-field"],
)
def test_decode_bad_latents_are_422(client: TestClient, body: dict) -> None:
    assert client.post("/decode", json=body).status_code == 422


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_decode_non_finite_is_422(client: TestClient, value: str) -> None:
    content = json.dumps({"z": [[0.0, 0.0]]}).replace("0.0]", f"{value}, 0.0]").encode()
    r = client.post("/decode", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "finite" in r.json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [{"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}, {}],
)
def test_decode_body_not_json_is_415(client: TestClient, headers: dict[str, str]) -> None:
    # curl -d without -H 'Content-Type: application/json' sends form-urlencoded
    r = client.post("/decode", content=json.dumps({"z": [[0.0] * LATENT]}), headers=headers)
    assert r.status_code == 415 and "application/json" in r.json()["detail"]


def test_decode_json_with_a_charset_is_json(client: TestClient) -> None:
    body = json.dumps({"z": [[0.0] * LATENT]})
    headers = {"content-type": "application/json; charset=utf-8", "accept": "application/json"}
    assert client.post("/decode", content=body, headers=headers).status_code == 200


def test_decode_too_many_rows_is_413(client: TestClient) -> None:
    r = client.post("/decode", json={"z": [[0.0] * LATENT] * 65})
    assert r.status_code == 413


def test_sample_same_seed_same_images(client: TestClient) -> None:
    a = client.get("/sample?n=4&seed=3", headers=JSON_ACCEPT).json()
    b = client.get("/sample?n=4&seed=3", headers=JSON_ACCEPT).json()
    c = client.get("/sample?n=4&seed=4", headers=JSON_ACCEPT).json()
    assert a == b and a["images"] != c["images"]
    assert a["seed"] == 3 and len(a["z"]) == 4 and len(a["z"][0]) == LATENT
    z = torch.randn((4, LATENT), generator=torch.Generator().manual_seed(3))
    assert a["z"] == z.tolist()  # float32 values round-trip exactly
    with torch.inference_mode():
        expect = vae(client).decode(z).flatten(1)
    torch.testing.assert_close(torch.tensor(a["images"]), expect, rtol=0, atol=1e-6)
    png1 = client.get("/sample?n=4&seed=3")
    png2 = client.get("/sample?n=4&seed=3")
    assert png1.headers["content-type"] == "image/png" and png1.content == png2.content
    assert png1.headers["x-seed"] == "3"


def test_sample_without_seed_reports_the_seed_it_used(client: TestClient) -> None:
    r = client.get("/sample", headers=JSON_ACCEPT).json()
    assert len(r["images"]) == 16  # n defaults to 16
    again = client.get(f"/sample?n=16&seed={r['seed']}", headers=JSON_ACCEPT).json()
    assert again["images"] == r["images"]
    png = client.get("/sample?n=2")
    seed = png.headers["x-seed"]  # the PNG's seed is in the header
    assert client.get(f"/sample?n=2&seed={seed}").content == png.content


@pytest.mark.parametrize(
    "query", ["n=0", "n=65", "n=x", "seed=-1", f"seed={2**64}", "model=alexnet-cifar10"]
)
def test_sample_bad_parameters(client: TestClient, query: str) -> None:
    r = client.get(f"/sample?{query}")
    assert r.status_code == (404 if "model" in query else 422), r.text


def test_concurrent_decodes_are_routed_back_in_order(client: TestClient) -> None:
    zs = [[[float(i), -float(i) / 2, 0.1 * i]] for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(
            pool.map(lambda z: client.post("/decode", json={"z": z}, headers=JSON_ACCEPT), zs)
        )
    with torch.inference_mode():
        expect = vae(client).decode(torch.tensor([z[0] for z in zs])).flatten(1)
    for i, r in enumerate(answers):
        torch.testing.assert_close(
            torch.tensor(r.json()["images"][0]), expect[i], rtol=0, atol=1e-5
        )


def test_unknown_vae_is_404(client: TestClient) -> None:
    r = client.post("/decode?model=vae-frey", json={"z": [[0.0] * LATENT]})
    assert r.status_code == 404 and "vae-frey" in r.json()["detail"]
