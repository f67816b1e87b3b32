"""The Open Inference Protocol v2 routes, driven by the real clients (tritonclient in binary and
JSON mode, KServe's REST client): answers equal our own routes', errors are `{"error"}`."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from PIL import Image
from tritonclient.utils import InferenceServerException

from app.images import decode_image
from app.main import create_app
from models import load_checkpoint
from tests.app.conftest import LABELS, LATENT, png_bytes, serve_in_thread, test_settings, wait_ready
from tests.app.test_main import patch_classifier

IMAGES = [png_bytes(), png_bytes(color=(10, 200, 40)), png_bytes((20, 50), (90, 90, 250))]
D = 28 * 28
TOP_HALF = np.repeat(np.array([1.0, 0.0], dtype=np.float32), D // 2)  # mask: top half missing
JSON_ACCEPT = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def url(model_dir: Path) -> Iterator[str]:
    """One real server for the module's client tests."""
    with serve_in_thread(test_settings(model_dir)) as base:
        yield base


@pytest.fixture
def ours(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url) as c:
        yield c


@pytest.fixture
def tc(url: str) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url.removeprefix("http://"))
    yield c
    c.close()


def files(blobs: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]


def png_grey(a: np.ndarray) -> bytes:
    """(H, W) values in [0, 1] -> a grey PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.rint(a * 255).astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def tensor(name: str, a: np.ndarray, binary: bool) -> triton.InferInput:
    datatype = "BYTES" if a.dtype == object else {"float32": "FP32", "int64": "INT64"}[str(a.dtype)]
    t = triton.InferInput(name, list(a.shape), datatype)
    return t.set_data_from_numpy(a, binary_data=binary)


def wanted(*names: str, binary: bool, **params: Any) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(n, binary_data=binary, **params) for n in names]


def version(ours: httpx.Client, model: str) -> str:
    return str(ours.get(f"/models/{model}").json()["weights_sha256"][:12])


# --- health and metadata ----------------------------------------------------------------
def test_health_and_server_metadata(tc: triton.InferenceServerClient, ours: httpx.Client) -> None:
    assert tc.is_server_live() and tc.is_server_ready()
    meta = tc.get_server_metadata()
    assert (
        meta["name"] == "modelserve"
        and meta["version"] == ours.get("/openapi.json").json()["info"]["version"]
    )
    assert set(meta["extensions"]) == {"binary_tensor_data", "classification"}
    assert ours.get("/v2/health/live").json() == {"live": True}
    assert ours.get("/v2/health/ready").json() == {"ready": True}


def test_model_metadata_and_ready_with_and_without_version(
    tc: triton.InferenceServerClient, ours: httpx.Client
) -> None:
    d = 28 * 28
    expected = {
        "alexnet-cifar10": (
            [("image", "BYTES", [-1])],
            [("probabilities", "FP32", [-1, len(LABELS)])],
        ),
        "vae-mnist.encode": (
            [("image", "BYTES", [-1]), ("pixels", "FP32", [-1, d])],
            [("mean", "FP32", [-1, LATENT]), ("log_var", "FP32", [-1, LATENT])],
        ),
        "vae-mnist.decode": ([("z", "FP32", [-1, LATENT])], [("images", "FP32", [-1, d])]),
        "vae-mnist.sample": (
            [("n", "INT64", [1]), ("seed", "INT64", [1])],
            [("images", "FP32", [-1, d]), ("z", "FP32", [-1, LATENT])],
        ),
        "vae-mnist.impute": (
            [
                ("image", "BYTES", [-1]),
                ("mask", "BYTES", [-1]),
                ("steps", "INT64", [1]),
                ("seed", "INT64", [1]),
                ("method", "BYTES", [1]),
                ("pixels", "FP32", [-1, d]),
            ],
            [("images", "FP32", [-1, d])],
        ),
        "vae-mnist.denoise": (
            [("image", "BYTES", [-1]), ("pixels", "FP32", [-1, d])],
            [("images", "FP32", [-1, d])],
        ),
        "vae-mnist.score": (
            [
                ("image", "BYTES", [-1]),
                ("k", "INT64", [1]),
                ("seed", "INT64", [1]),
                ("pixels", "FP32", [-1, d]),
            ],
            [("elbo", "FP32", [-1]), ("log_likelihood", "FP32", [-1])],
        ),
    }
    for name, (inputs, outputs) in expected.items():
        v = version(ours, name.split(".")[0])
        meta = tc.get_model_metadata(name)
        assert meta["name"] == name and meta["versions"] == [v]
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == inputs
        assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == outputs
        assert tc.get_model_metadata(name, model_version=v) == meta
        assert tc.is_model_ready(name) and tc.is_model_ready(name, model_version=v)
        assert not tc.is_model_ready(name, model_version="1")
        r = ours.get(f"/v2/models/{name}/versions/1")
        assert r.status_code == 404 and v in r.json()["error"]
    assert not tc.is_model_ready("nope")
    with pytest.raises(InferenceServerException) as e:
        tc.get_model_metadata("vae-mnist")  # a VAE is served as its operations
    assert e.value.status() == "404" and "vae-mnist.encode" in str(e.value.message())


# --- answers equal our own routes' -------------------------------------------------------
def classify_probs(ours: httpx.Client, blobs: list[bytes]) -> np.ndarray:
    """/classify with every class: (B, N) probabilities by class index."""
    r = ours.post("/classify", params={"top_k": len(LABELS)}, files=files(blobs))
    body = r.json()
    results = body.get("results", [body])
    out = np.zeros((len(results), len(LABELS)), dtype=np.float32)
    for i, res in enumerate(results):
        for p in res["predictions"]:
            out[i, p["index"]] = p["probability"]
    return out


@pytest.mark.parametrize("binary", [True, False])
def test_classify_image_files_equal_classify_route(
    tc: triton.InferenceServerClient, ours: httpx.Client, binary: bool
) -> None:
    # Image files are not UTF-8: JSON mode cannot carry them, so they always go binary; the
    # answer comes back in the mode asked.
    x = tensor("image", np.array(IMAGES, dtype=object), binary=True)
    r = tc.infer("alexnet-cifar10", [x], outputs=wanted("probabilities", binary=binary))
    probs = r.as_numpy("probabilities")
    assert probs.dtype == np.float32 and probs.shape == (len(IMAGES), len(LABELS))
    np.testing.assert_allclose(probs, classify_probs(ours, IMAGES), atol=1e-6)
    assert r.get_response()["model_version"] == version(ours, "alexnet-cifar10")


@pytest.mark.parametrize("binary", [True, False])
def test_classify_preprocessed_fp32_equals_classify_route(
    tc: triton.InferenceServerClient, ours: httpx.Client, model_dir: Path, binary: bool
) -> None:
    """An FP32 (B, 3, H, W) tensor already preprocessed as the card's input spec says."""
    _, card = load_checkpoint(model_dir / "alexnet-cifar10")
    x = np.stack([decode_image(b, card.input, 10**7).numpy() for b in IMAGES])
    r = tc.infer(
        "alexnet-cifar10",
        [tensor("image", x, binary)],
        outputs=wanted("probabilities", binary=binary),
    )
    np.testing.assert_allclose(r.as_numpy("probabilities"), classify_probs(ours, IMAGES), atol=1e-5)


@pytest.mark.parametrize("binary", [True, False])
def test_classification_extension_equals_top_k(
    tc: triton.InferenceServerClient, ours: httpx.Client, binary: bool
) -> None:
    x = tensor("image", np.array(IMAGES, dtype=object), binary=True)
    r = tc.infer(
        "alexnet-cifar10", [x], outputs=wanted("probabilities", binary=binary, class_count=2)
    )
    got = r.as_numpy("probabilities")
    assert got.shape == (len(IMAGES), 2)
    body = ours.post("/classify", params={"top_k": 2}, files=files(IMAGES)).json()
    for row, res in zip(got, body["results"], strict=True):
        for cell, p in zip(row, res["predictions"], strict=True):
            text = cell.decode() if binary else cell  # JSON mode: as_numpy gives str
            score, index, label = text.split(":")
            assert (int(index), label) == (p["index"], p["label"])
            assert float(score) == pytest.approx(p["probability"], abs=1e-6)


@pytest.mark.parametrize("binary", [True, False])
def test_encode_equals_encode_route(
    tc: triton.InferenceServerClient, ours: httpx.Client, binary: bool
) -> None:
    images = tensor("image", np.array(IMAGES, dtype=object), binary=True)
    r = tc.infer("vae-mnist.encode", [images], outputs=wanted("mean", "log_var", binary=binary))
    ref = ours.post("/encode", files=files(IMAGES)).json()["results"]
    np.testing.assert_allclose(r.as_numpy("mean"), [x["mean"] for x in ref], atol=1e-6)
    np.testing.assert_allclose(r.as_numpy("log_var"), [x["log_var"] for x in ref], atol=1e-6)

    pixels = np.random.default_rng(0).random((2, 784), dtype=np.float32)
    r = tc.infer("vae-mnist.encode", [tensor("pixels", pixels, binary)])
    ref = ours.post("/encode", json={"pixels": pixels.tolist()}).json()["results"]
    np.testing.assert_allclose(r.as_numpy("mean"), [x["mean"] for x in ref], atol=1e-6)
    np.testing.assert_allclose(r.as_numpy("log_var"), [x["log_var"] for x in ref], atol=1e-6)


def test_image_files_as_base64_json(ours: httpx.Client) -> None:
    """JSON cannot carry raw image bytes; base64 strings with `content_type: base64` (MLServer's
    convention) can."""
    data = [base64.b64encode(b).decode() for b in IMAGES]
    image = {"name": "image", "datatype": "BYTES", "shape": [len(IMAGES)], "data": data}
    r = ours.post(
        "/v2/models/vae-mnist.encode/infer",
        json={"inputs": [{**image, "parameters": {"content_type": "base64"}}]},
    )
    assert r.status_code == 200, r.text
    mean = next(o for o in r.json()["outputs"] if o["name"] == "mean")
    assert mean["shape"] == [len(IMAGES), LATENT] and mean["datatype"] == "FP32"
    ref = ours.post("/encode", files=files(IMAGES)).json()["results"]
    np.testing.assert_allclose(
        np.reshape(mean["data"], mean["shape"]), [x["mean"] for x in ref], atol=1e-6
    )
    # Without the parameter the strings are the elements' UTF-8 bytes: not an image.
    r = ours.post("/v2/models/vae-mnist.encode/infer", json={"inputs": [image]})
    assert r.status_code == 415 and "not a supported image" in r.json()["error"]


@pytest.mark.parametrize("binary", [True, False])
def test_decode_and_sample_equal_their_routes(
    tc: triton.InferenceServerClient, ours: httpx.Client, binary: bool
) -> None:
    json_accept = {"Accept": "application/json"}
    z = np.random.default_rng(1).standard_normal((3, LATENT)).astype(np.float32)
    r = tc.infer(
        "vae-mnist.decode", [tensor("z", z, binary)], outputs=wanted("images", binary=binary)
    )
    ref = ours.post("/decode", json={"z": z.tolist()}, headers=json_accept).json()
    np.testing.assert_allclose(r.as_numpy("images"), ref["images"], atol=1e-6)

    n, seed = np.array([4], dtype=np.int64), np.array([123], dtype=np.int64)
    r = tc.infer("vae-mnist.sample", [tensor("n", n, binary), tensor("seed", seed, binary)])
    ref = ours.get("/sample", params={"n": 4, "seed": 123}, headers=json_accept).json()
    np.testing.assert_allclose(r.as_numpy("z"), ref["z"], atol=0)
    np.testing.assert_allclose(r.as_numpy("images"), ref["images"], atol=1e-6)


def scalar(name: str, value: int | str, binary: bool) -> triton.InferInput:
    """An INT64 [1] input, or a BYTES [1] one for a string."""
    if isinstance(value, str):
        return tensor(name, np.array([value.encode()], dtype=object), binary)
    return tensor(name, np.array([value], dtype=np.int64), binary)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("method", [None, "mwg"])
def test_impute_pixels_equal_impute_route(
    tc: triton.InferenceServerClient, ours: httpx.Client, binary: bool, method: str | None
) -> None:
    """Pixels and a 0/1 mask, with steps, seed and (optionally) the method as inputs."""
    pixels = np.random.default_rng(2).random((2, D), dtype=np.float32)
    mask = np.stack([TOP_HALF, TOP_HALF[::-1]])  # top half missing, then bottom half
    inputs = [tensor("pixels", pixels, binary), tensor("mask", mask, binary)]
    inputs += [scalar("steps", 4, binary), scalar("seed", 7, binary)]
    if method is not None:
        inputs.append(scalar("method", method, binary))
    r = tc.infer("vae-mnist.impute", inputs, outputs=wanted("images", binary=binary))
    got = r.as_numpy("images")
    assert got.dtype == np.float32 and got.shape == (2, D)
    params = {"steps": 4, "seed": 7} | ({"method": method} if method else {})
    ref = ours.post(
        "/impute",
        params=params,
        json={"pixels": pixels.tolist(), "mask": mask.astype(int).tolist()},
        headers=JSON_ACCEPT,
    ).json()
    assert ref["method"] == (method or "pseudo-gibbs")
    np.testing.assert_allclose(got, ref["images"], rtol=0, atol=1e-6)
    observed = mask == 0
    np.testing.assert_array_equal(got[observed], pixels[observed])  # sent pixels unchanged
    other = tc.infer("vae-mnist.impute", [*inputs[:3], scalar("seed", 8, binary), *inputs[4:]])
    assert not np.array_equal(other.as_numpy("images"), got)  # the seed is the chain's


@pytest.mark.parametrize("binary", [True, False])
def test_impute_image_and_mask_files_equal_impute_route(
    tc: triton.InferenceServerClient, ours: httpx.Client, binary: bool
) -> None:
    rng = np.random.default_rng(3)
    images = [png_grey(rng.random((28, 28))) for _ in range(2)]
    masks = [png_grey(np.repeat([[1.0], [0.0]], 14, axis=0) * np.ones((1, 28)))] * 2
    inputs = [
        tensor("image", np.array(images, dtype=object), binary=True),
        tensor("mask", np.array(masks, dtype=object), binary=True),
        scalar("seed", 3, binary),
        scalar("steps", 3, binary),
    ]
    r = tc.infer("vae-mnist.impute", inputs, outputs=wanted("images", binary=binary))
    parts = files(images) + [("mask", (f"m{i}.png", m, "image/png")) for i, m in enumerate(masks)]
    ref = ours.post(
        "/impute", params={"steps": 3, "seed": 3}, files=parts, headers=JSON_ACCEPT
    ).json()
    np.testing.assert_allclose(r.as_numpy("images"), ref["images"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("binary", [True, False])
def test_denoise_and_score_equal_their_routes(
    tc: triton.InferenceServerClient, ours: httpx.Client, binary: bool
) -> None:
    pixels = np.random.default_rng(4).random((3, D), dtype=np.float32)
    r = tc.infer("vae-mnist.denoise", [tensor("pixels", pixels, binary)])
    ref = ours.post("/denoise", json={"pixels": pixels.tolist()}, headers=JSON_ACCEPT).json()
    np.testing.assert_allclose(r.as_numpy("images"), ref["images"], rtol=0, atol=1e-6)
    images = tensor("image", np.array(IMAGES, dtype=object), binary=True)
    r = tc.infer("vae-mnist.denoise", [images], outputs=wanted("images", binary=binary))
    ref = ours.post("/denoise", files=files(IMAGES), headers=JSON_ACCEPT).json()
    np.testing.assert_allclose(r.as_numpy("images"), ref["images"], rtol=0, atol=1e-6)

    sent: list[tuple[list[triton.InferInput], dict[str, Any]]] = [
        ([tensor("pixels", pixels, binary)], {"json": {"pixels": pixels.tolist()}}),
        ([images], {"files": files(IMAGES)}),
    ]
    for x, body in sent:
        r = tc.infer(
            "vae-mnist.score",
            [*x, scalar("k", 20, binary), scalar("seed", 5, binary)],
            outputs=wanted("elbo", "log_likelihood", binary=binary),
        )
        ref = ours.post("/score", params={"k": 20, "seed": 5}, **body).json()["results"]
        assert r.as_numpy("elbo").dtype == np.float32
        np.testing.assert_allclose(r.as_numpy("elbo"), [s["elbo"] for s in ref], rtol=0, atol=0)
        np.testing.assert_allclose(
            r.as_numpy("log_likelihood"), [s["log_likelihood"] for s in ref], rtol=0, atol=0
        )
    # without k: /score's default
    r = tc.infer(
        "vae-mnist.score", [tensor("pixels", pixels[:1], binary), scalar("seed", 1, binary)]
    )
    ref = ours.post("/score?seed=1", json={"pixels": pixels[:1].tolist()}).json()["results"]
    assert ref[0]["k"] == 100 and r.as_numpy("elbo")[0] == np.float32(ref[0]["elbo"])


def test_versioned_infer_and_request_id(
    tc: triton.InferenceServerClient, ours: httpx.Client
) -> None:
    v = version(ours, "vae-mnist")
    z = tensor("z", np.zeros((1, LATENT), dtype=np.float32), True)
    r = tc.infer("vae-mnist.decode", [z], model_version=v, request_id="req-7")
    assert r.get_response()["id"] == "req-7" and r.get_response()["model_version"] == v
    with pytest.raises(InferenceServerException) as e:
        tc.infer("vae-mnist.decode", [z], model_version="1")
    assert e.value.status() == "404"


@pytest.mark.parametrize("binary", [True, False])
def test_kserve_rest_client(url: str, ours: httpx.Client, binary: bool) -> None:
    kserve = pytest.importorskip("kserve")
    from kserve.protocol.infer_type import RequestedOutput

    async def run() -> tuple[Any, ...]:
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2"))
        try:
            live = await client.is_server_live(url)
            ready = await client.is_server_ready(url)
            model_ready = await client.is_model_ready(url, "vae-mnist.decode")
            z = kserve.InferInput("z", [2, LATENT], "FP32")
            z.set_data_from_numpy(np.eye(2, LATENT, dtype=np.float32), binary_data=binary)
            out = RequestedOutput("images", parameters={"binary_data": binary})
            request = kserve.InferRequest(
                "vae-mnist.decode", infer_inputs=[z], request_outputs=[out]
            )
            response = await client.infer(url, request, model_name="vae-mnist.decode")
            return live, ready, model_ready, response
        finally:
            await client.close()

    live, ready, model_ready, response = asyncio.run(run())
    assert live and ready and model_ready
    (images,) = response.outputs
    ref = ours.post(
        "/decode",
        json={"z": np.eye(2, LATENT).tolist()},
        headers={"Accept": "application/json"},
    ).json()["images"]
    np.testing.assert_allclose(images.as_numpy(), ref, atol=1e-6)


def test_v2_counts_in_the_same_metrics(
    tc: triton.InferenceServerClient, ours: httpx.Client
) -> None:
    def items() -> float:
        m = re.search(
            r'^modelserve_inference_items_total\{model="alexnet-cifar10",op="classify"\} (\S+)$',
            ours.get("/metrics").text,
            re.M,
        )
        return float(m.group(1)) if m else 0.0

    before = items()
    tc.infer("alexnet-cifar10", [tensor("image", np.array(IMAGES[:2], dtype=object), True)])
    assert items() == before + 2
    text = ours.get("/metrics").text
    assert (
        'modelserve_http_requests_total{method="POST",route="/v2/models/{model_name}/infer",'
        'status="200"}' in text
    )


# --- errors -------------------------------------------------------------------------------
def assert_oip_error(r: Any, status: int, words: str = "") -> None:
    """The protocol's error shape: `{"error": message}` and nothing of ours."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and words.lower() in body["error"].lower(), body


Z_OK = {"name": "z", "datatype": "FP32", "shape": [1, LATENT], "data": [0.0] * LATENT}


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v2/models/nope/infer", {"inputs": [Z_OK]}, 404, "unknown model"),
        ("/v2/models/vae-mnist/infer", {"inputs": [Z_OK]}, 404, "vae-mnist.decode"),
        ("/v2/models/vae-mnist.fly/infer", {"inputs": [Z_OK]}, 404, "unknown model"),
        (
            "/v2/models/vae-mnist.decode/infer",
            {"inputs": [{**Z_OK, "datatype": "FP64"}]},
            400,
            "takes z FP32",
        ),
        (
            "/v2/models/vae-mnist.decode/infer",
            {"inputs": [{**Z_OK, "shape": [LATENT]}]},
            400,
            "shape",
        ),
        (
            "/v2/models/vae-mnist.decode/infer",
            {"inputs": [{**Z_OK, "shape": [1, LATENT + 1]}]},
            400,
            "values for shape",
        ),
        (
            "/v2/models/vae-mnist.decode/infer",
            {"inputs": [{**Z_OK, "shape": [1, 2], "data": [0.0, 0.0]}]},
            400,
            f"takes [-1, {LATENT}]",
        ),
        (
            "/v2/models/vae-mnist.decode/infer",
            {"inputs": [{**Z_OK, "data": ["a"] * 3}]},
            400,
            "FP32",
        ),
        (
            "/v2/models/vae-mnist.decode/infer",
            {"inputs": [{**Z_OK, "data": [1e9] * LATENT}]},
            400,
            "finite values",
        ),
        ("/v2/models/vae-mnist.decode/infer", {"inputs": []}, 400, "inputs"),
        (
            "/v2/models/vae-mnist.decode/infer",
            {"inputs": [Z_OK], "outputs": [{"name": "logits"}]},
            400,
            "no output 'logits'",
        ),
        (
            "/v2/models/vae-mnist.decode/infer",
            {
                "inputs": [Z_OK],
                "outputs": [{"name": "images", "parameters": {"classification": 2}}],
            },
            400,
            "no classes",
        ),
        (
            "/v2/models/vae-mnist.encode/infer",
            {
                "inputs": [
                    {"name": "pixels", "datatype": "FP32", "shape": [1, 784], "data": [2.0] * 784}
                ]
            },
            400,
            "[0, 1]",
        ),
        (
            "/v2/models/vae-mnist.encode/infer",
            {
                "inputs": [
                    {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not an image"]}
                ]
            },
            415,
            "not a supported image",
        ),
        (
            "/v2/models/vae-mnist.sample/infer",
            {"inputs": [{"name": "n", "datatype": "INT64", "shape": [1], "data": [10**6]}]},
            400,
            "max_sample_n",
        ),
        (
            "/v2/models/alexnet-cifar10/infer",
            {
                "inputs": [
                    {"name": "image", "datatype": "FP32", "shape": [1, 3, 5, 5], "data": [0.0] * 75}
                ],
            },
            400,
            "takes [-1, 3, 28, 28]",
        ),
        (
            "/v2/models/alexnet-cifar10/infer",
            {
                "inputs": [{"name": "image", "datatype": "BYTES", "shape": [0], "data": []}],
            },
            400,
            "empty batch",
        ),
    ],
)
def test_bad_requests_are_protocol_errors(
    ours: httpx.Client, path: str, body: dict[str, Any], status: int, words: str
) -> None:
    assert_oip_error(ours.post(path, json=body), status, words)


def _input(name: str, value: Any, datatype: str = "INT64") -> dict[str, Any]:
    rows = value if isinstance(value, list) else [value]
    shape = [len(rows), D] if isinstance(rows[0], list) else [1]
    return {"name": name, "datatype": datatype, "shape": shape, "data": rows}


PIXELS = _input("pixels", [[0.5] * D], "FP32")
MASK = _input("mask", [TOP_HALF.tolist()], "FP32")


@pytest.mark.parametrize(
    ("model", "inputs", "status", "words"),
    [
        ("impute", [PIXELS, _input("mask", [[0.5] * D], "FP32")], 400, "0 (observed) or 1"),
        ("impute", [PIXELS, _input("mask", [[1.0] * D], "FP32")], 400, "no pixel observed"),
        ("impute", [PIXELS, _input("mask", ["x"], "BYTES")], 400, "takes image BYTES"),
        ("impute", [PIXELS], 400, "takes image BYTES [-1] + mask BYTES [-1]"),
        ("impute", [PIXELS, MASK, _input("steps", 501)], 400, "max_impute_steps=500"),
        ("impute", [PIXELS, MASK, _input("steps", 0)], 400, "steps=0"),
        ("impute", [PIXELS, MASK, _input("method", "gibbs", "BYTES")], 400, "pseudo-gibbs, mwg"),
        ("impute", [PIXELS, MASK, _input("seed", -1)], 400, "seed=-1"),
        ("score", [PIXELS, _input("k", 1001)], 400, "max_score_k=1000"),
        ("score", [PIXELS, _input("k", 0)], 400, "k=0"),
        ("score", [_input("pixels", [[0.0] * D] * 17, "FP32"), _input("k", 1000)], 413,
         "max_score_samples=16384"),
        ("score", [_input("pixels", [[1.5] * D], "FP32")], 400, "[0, 1]"),
        ("denoise", [_input("z", [[0.0] * D], "FP32")], 400, "takes image BYTES"),
    ],
    ids=["mask-value", "all-missing", "mask-datatype", "no-mask", "steps-over", "steps-zero",
         "method", "seed-negative", "k-over", "k-zero", "k-times-images", "pixel-range",
         "denoise-input"],
)  # fmt: skip
def test_marginal_bad_requests_are_protocol_errors(
    ours: httpx.Client, model: str, inputs: list[dict[str, Any]], status: int, words: str
) -> None:
    """Under /impute's and /score's limits, as the protocol's errors (400 where ours say 422)."""
    r = ours.post(f"/v2/models/vae-mnist.{model}/infer", json={"inputs": inputs})
    assert_oip_error(r, status, words)


def test_mask_file_of_another_size_is_400(tc: triton.InferenceServerClient) -> None:
    image = tensor("image", np.array([png_grey(np.zeros((28, 28)))], dtype=object), True)
    mask = tensor("mask", np.array([png_grey(np.ones((28, 20)))], dtype=object), True)
    with pytest.raises(InferenceServerException) as e:
        tc.infer("vae-mnist.impute", [image, mask])
    assert e.value.status() == "400" and "mask 0 is 20x28" in str(e.value.message())


def test_bad_binary_bodies_are_400(ours: httpx.Client) -> None:
    head = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, LATENT], "parameters": {}}]}
    url = "/v2/models/vae-mnist.decode/infer"

    def post(header: dict[str, Any], data: bytes, length: str | None = None) -> httpx.Response:
        raw = json.dumps(header).encode()
        h = {"Inference-Header-Content-Length": length or str(len(raw))}
        return ours.post(url, content=raw + data, headers=h)

    z = np.zeros(LATENT, dtype=np.float32).tobytes()
    head["inputs"][0]["parameters"] = {"binary_data_size": len(z)}
    assert post(head, z).status_code == 200
    assert_oip_error(post(head, z + b"x"), 400, "after the last binary input")
    assert_oip_error(post(head, z[:-4]), 400, "runs past")
    assert_oip_error(post(head, z, length="999999"), 400, "does not fit")
    head["inputs"][0]["parameters"] = {"binary_data_size": len(z) - 4}
    assert_oip_error(post(head, z[:-4]), 400, "bytes for FP32")
    assert_oip_error(ours.post(url, content=b"{not json"), 400, "invalid inference request")
    r = ours.post(url, json={"inputs": [Z_OK]}, headers={"Content-Encoding": "gzip"})
    assert_oip_error(r, 415, "compressed")


def test_tritonclient_sees_the_error_message(tc: triton.InferenceServerClient) -> None:
    x = tensor("z", np.zeros((1, LATENT + 1), dtype=np.float32), True)
    with pytest.raises(InferenceServerException) as e:
        tc.infer("vae-mnist.decode", [x])
    assert e.value.status() == "400" and f"takes [-1, {LATENT}]" in str(e.value.message())


def test_our_routes_keep_their_error_shape(ours: httpx.Client) -> None:
    body = ours.get("/models/nope").json()
    assert body["status"] == 404 and "error" not in body
    assert_oip_error(ours.get("/v2/nope"), 404)
    assert_oip_error(ours.get("/v2/models/vae-mnist.decode/infer"), 405)


def test_limits_hold_on_v2(model_dir: Path) -> None:
    settings = test_settings(
        model_dir, max_batch_images=2, max_upload_bytes=4096, max_image_pixels=100
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        url = "/v2/models/alexnet-cifar10/infer"
        many = [{"name": "image", "datatype": "BYTES", "shape": [3], "data": ["a", "b", "c"]}]
        assert_oip_error(c.post(url, json={"inputs": many}), 413, "the limit is 2")
        big = {"inputs": [{**Z_OK, "shape": [1, 2000], "data": [0.0] * 2000}]}
        assert_oip_error(c.post("/v2/models/vae-mnist.decode/infer", json=big), 413, "4096-byte")
        # Declared pixels: an 11x10 image is refused from its header.
        head = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}
        blob = png_bytes((11, 10))
        packed = len(blob).to_bytes(4, "little") + blob
        head["inputs"][0]["parameters"] = {"binary_data_size": len(packed)}
        raw = json.dumps(head).encode()
        r = c.post(
            url, content=raw + packed, headers={"Inference-Header-Content-Length": str(len(raw))}
        )
        assert_oip_error(r, 413, "the limit is 100")


def test_auth_applies_and_probes_stay_open(model_dir: Path) -> None:
    with TestClient(create_app(test_settings(model_dir, api_key="k" * 16))) as c:
        wait_ready(c)
        assert c.get("/v2/health/ready").status_code == 200
        assert_oip_error(c.get("/v2"), 401, "X-API-Key")
        assert_oip_error(c.post("/v2/models/vae-mnist.decode/infer", json={"inputs": [Z_OK]}), 401)
        r = c.post(
            "/v2/models/vae-mnist.decode/infer",
            json={"inputs": [Z_OK]},
            headers={"X-API-Key": "k" * 16},
        )
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 784]


def test_not_ready_is_503_and_deadline_is_504(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.registry import Registry

    gate, real = threading.Event(), Registry.load_all

    def slow_load(self: Registry) -> None:
        gate.wait(10)
        real(self)

    monkeypatch.setattr(Registry, "load_all", slow_load)
    with TestClient(create_app(test_settings(model_dir, request_timeout_s=0.2))) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert_oip_error(c.get("/v2/health/ready"), 503, "loading")
        assert_oip_error(c.get("/v2/models/alexnet-cifar10/ready"), 503, "loading")
        assert_oip_error(c.post("/v2/models/vae-mnist.decode/infer", json={"inputs": [Z_OK]}), 503)
        gate.set()
        wait_ready(c)
        stuck = threading.Event()
        patch_classifier(c, gate=stuck)
        try:
            body = {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "FP32",
                        "shape": [1, 3, 28, 28],
                        "data": [0.0] * 2352,
                    }
                ]
            }
            assert_oip_error(c.post("/v2/models/alexnet-cifar10/infer", json=body), 504)
        finally:
            stuck.set()
