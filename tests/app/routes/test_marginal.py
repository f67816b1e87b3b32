"""POST /impute, /denoise, /score on tiny real checkpoints: values against the model's own
math, seeds, batching independence, negotiation, limits and every bad input the API names."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.marginal import ImputeItem, ScoreItem
from app.vae_predictor import VAEPredictor
from models import VAE, InputSpec, ModelCard, VAEConfig, load_checkpoint, save_checkpoint
from models.checkpoint import DatasetInfo
from models.vae import impute
from tests.app.conftest import LATENT, make_vae, test_settings, wait_ready

JSON_ACCEPT = {"Accept": "application/json"}
TOP_HALF = [1] * 392 + [0] * 392
FREY = (28, 20)


def make_frey(directory: Path) -> ModelCard:
    """A 28x20 Gaussian VAE, as vae-frey is, with 16 hidden units and a 3-dim latent."""
    torch.manual_seed(1)
    config = VAEConfig(image_shape=FREY, hidden=16, latent=LATENT, likelihood="gaussian")
    card = ModelCard(
        name="vae-frey",
        architecture="vae",
        config=config.to_dict(),
        task="generation",
        input=InputSpec(channels=1, size=FREY, mean=[0.0], std=[1.0], background=255),
        dataset=DatasetInfo(name="frey-face"),
        code_version="test",
    )
    return save_checkpoint(directory / "vae-frey", VAE(config), card)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vaes")
    make_vae(root)
    make_frey(root)
    return root


@pytest.fixture(scope="module")
def client(vae_dir: Path) -> Iterator[TestClient]:
    settings = test_settings(
        vae_dir, max_impute_steps=50, max_score_k=200, max_score_samples=400, max_batch_images=8
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def model_of(client: TestClient, name: str = "vae-mnist") -> VAE:
    model, _ = load_checkpoint(client.app.state.settings.model_dir / name)  # type: ignore[attr-defined]
    assert isinstance(model, VAE)
    return model


def predictor(client: TestClient, name: str = "vae-mnist") -> VAEPredictor:
    p = client.app.state.registry.predictors[name]  # type: ignore[attr-defined]
    assert isinstance(p, VAEPredictor)
    return p


def png(array: torch.Tensor) -> bytes:
    """(H, W) values in [0, 1] -> a grey PNG."""
    buf = io.BytesIO()
    Image.fromarray((array * 255).round().to(torch.uint8).numpy(), "L").save(buf, "PNG")
    return buf.getvalue()


def expected_score(model: VAE, x: torch.Tensor, k: int, seed: int) -> tuple[float, float]:
    """What /score should answer for one image, from the model's own estimator."""
    eps = torch.randn((k, LATENT), generator=torch.Generator().manual_seed(seed))[:, None]
    with torch.inference_mode():
        elbo, log_px = model.score(x.flatten()[None], eps)
    return elbo.item(), log_px.item()


# --- /score ---------------------------------------------------------------------------
def test_score_is_the_models_estimate_of_the_binarised_image(client: TestClient) -> None:
    x = torch.rand(784, generator=torch.Generator().manual_seed(0))
    r = client.post("/score?k=50&seed=3", json={"pixels": [x.tolist()]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "vae-mnist" and body["likelihood"] == "bernoulli"
    assert body["binarized"] is True and body["seed"] == 3
    (res,) = body["results"]
    elbo, log_px = expected_score(model_of(client), (x >= 0.5).float(), 50, 3)
    assert res["k"] == 50
    assert res["elbo"] == pytest.approx(elbo, abs=1e-3)
    assert res["log_likelihood"] == pytest.approx(log_px, abs=1e-3)
    # grey levels on either side of 0.5 score as the binary image they round to
    grey = torch.where(x >= 0.5, 0.51, 0.49)
    same = client.post("/score?k=50&seed=3", json={"pixels": [grey.tolist()]}).json()
    assert same["results"] == body["results"]


def test_score_seed_k_and_defaults(client: TestClient) -> None:
    body = {"pixels": [[0.0] * 784, [1.0] * 784]}
    a = client.post("/score?seed=7", json=body).json()
    assert a == client.post("/score", json=body | {"seed": 7}).json()  # the body's seed
    assert [r["k"] for r in a["results"]] == [100, 100]  # default k
    assert a["results"][0] != a["results"][1]
    b = client.post("/score?seed=8", json=body).json()
    assert b["results"] != a["results"]
    c = client.post("/score", json=body).json()  # no seed: a random one, reported
    assert client.post(f"/score?seed={c['seed']}", json=body).json() == c


def test_score_upload_is_decoded_as_the_card_says(client: TestClient) -> None:
    # The tiny MNIST card inverts grey levels: a white upload is the all-zero image.
    white = png(torch.ones(56, 56))
    up = client.post("/score?seed=1", files=[("image", ("w.png", white, "image/png"))])
    js = client.post("/score?seed=1", json={"pixels": [[0.0] * 784]})
    assert up.status_code == 200 and up.json() == js.json()


def test_score_frey_scores_densities(client: TestClient) -> None:
    x = torch.rand(FREY, generator=torch.Generator().manual_seed(1))
    r = client.post("/score?model=vae-frey&k=20", json={"pixels": x.tolist(), "seed": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["likelihood"] == "gaussian" and body["binarized"] is False
    elbo, log_px = expected_score(model_of(client, "vae-frey"), x, 20, 2)  # not binarised
    assert body["results"][0]["log_likelihood"] == pytest.approx(log_px, abs=1e-2)
    assert body["results"][0]["elbo"] == pytest.approx(elbo, abs=1e-2)


def test_score_answer_does_not_depend_on_the_batch(client: TestClient) -> None:
    """Items of one batch with their own k and seed answer as they would alone."""
    p = predictor(client)
    xs = [torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    items = [ScoreItem(xs[0], 10, 1), ScoreItem(xs[1], 30, 2), ScoreItem(xs[2], 10, 3),
             ScoreItem(xs[3], 30, 1)]  # fmt: skip
    together = p.predict_score(items)
    alone = [p.predict_score([it])[0] for it in items]
    for t, a in zip(together, alone, strict=True):
        assert t == pytest.approx(a, abs=1e-4)
    # and over HTTP, concurrent requests batched however the batcher likes
    bodies = [{"pixels": [x.flatten().tolist()], "seed": i} for i, x in enumerate(xs)]
    ks = [10, 30, 10, 30]
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda a: client.post(f"/score?k={a[0]}", json=a[1]).json(),
                zip(ks, bodies, strict=False),
            )
        )
    for k, body, ans in zip(ks, bodies, answers, strict=True):
        solo = client.post(f"/score?k={k}", json=body).json()
        assert ans["results"][0] == pytest.approx(solo["results"][0], abs=1e-4)


@pytest.mark.parametrize(
    ("query", "kwargs", "status", "says"),
    [
        ("k=0", {"json": {"pixels": [[0.0] * 784]}}, 422, "k"),
        ("k=201", {"json": {"pixels": [[0.0] * 784]}}, 422, "max_score_k"),
        ("k=200", {"json": {"pixels": [[0.0] * 784] * 3}}, 413, "max_score_samples"),
        ("seed=1", {"json": {"pixels": [[0.0] * 784], "seed": 2}}, 422, "seed"),
        ("seed=-1", {"json": {"pixels": [[0.0] * 784]}}, 422, "seed"),
        ("", {"json": {"pixels": [[1.5] * 784]}}, 422, "less than or equal to 1"),
        ("", {"json": {"pixels": [[-0.1] * 784]}}, 422, "greater than or equal to 0"),
        ("", {"json": {"pixels": [[0.0] * 783]}}, 422, "shape"),
        ("", {"json": {"pixels": [[0.0] * 784], "k": 5}}, 422, "k"),
        ("", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "json"),
        ("model=nope", {"json": {"pixels": [[0.0] * 784]}}, 404, "nope"),
        ("", {"json": {"pixels": [[0.0] * 784] * 9}}, 413, "limit"),
    ],
    ids=["k-zero", "k-over", "k-times-images", "seed-conflict", "seed-negative", "above-one",
         "below-zero", "short-row", "unknown-field", "text", "unknown-model", "too-many"],
)  # fmt: skip
def test_score_bad_input(
    client: TestClient, query: str, kwargs: dict, status: int, says: str
) -> None:
    r = client.post(f"/score?{query}", **kwargs)
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]


# --- /impute --------------------------------------------------------------------------
def test_impute_keeps_observed_pixels_and_fills_from_the_chain(client: TestClient) -> None:
    x = torch.rand(784, generator=torch.Generator().manual_seed(2))
    missing = torch.tensor(TOP_HALF, dtype=torch.bool)
    for method in ("pseudo-gibbs", "mwg"):
        r = client.post(
            f"/impute?steps=6&method={method}",
            json={"pixels": [x.tolist()], "mask": [TOP_HALF], "seed": 4},
            headers=JSON_ACCEPT,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["shape"] == [28, 28] and body["method"] == method
        assert body["steps"] == 6 and body["seed"] == 4
        got = torch.tensor(body["images"][0])
        assert torch.equal(got[~missing], x[~missing])  # observed pixels exactly as sent
        with torch.inference_mode():
            expect = impute(
                model_of(client), x[None], missing[None], torch.tensor([6]), method,
                [torch.Generator().manual_seed(4)],
            )[0]  # fmt: skip
        torch.testing.assert_close(got, expect, rtol=0, atol=1e-5)
        assert ((got >= 0) & (got <= 1)).all()


def test_impute_methods_and_seeds_differ_same_seed_repeats(client: TestClient) -> None:
    body = {"pixels": [[0.2] * 784], "mask": [TOP_HALF]}

    def run(query: str) -> list[float]:
        r = client.post(f"/impute?steps=4&{query}", json=body, headers=JSON_ACCEPT)
        assert r.status_code == 200, r.text
        images: list[float] = r.json()["images"][0]
        return images

    assert run("seed=1") == run("seed=1")
    assert run("seed=1") != run("seed=2")
    assert run("seed=1&method=mwg") != run("seed=1&method=pseudo-gibbs")
    assert run("seed=1") == run("seed=1&method=pseudo-gibbs")  # the default method


def test_impute_answer_does_not_depend_on_the_batch(client: TestClient) -> None:
    p = predictor(client)
    missing = torch.tensor(TOP_HALF, dtype=torch.bool).view(28, 28)
    xs = [torch.rand(1, 28, 28, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    items = [ImputeItem(xs[0], missing, 3, "mwg", 1), ImputeItem(xs[1], missing, 5, "pseudo-gibbs", 2),
             ImputeItem(xs[2], ~missing, 5, "mwg", 1), ImputeItem(xs[3], missing, 2, "pseudo-gibbs", 9)]  # fmt: skip
    together = p.predict_impute(items)
    for item, t in zip(items, together, strict=True):
        torch.testing.assert_close(t, p.predict_impute([item])[0], rtol=0, atol=1e-5)


def test_impute_multipart_masks_png_and_grid(client: TestClient) -> None:
    image = torch.zeros(28, 28)
    image[14:, 5:20] = 1.0  # a white bar in the observed half
    mask = torch.zeros(56, 56)  # a mask of another size is resized as the image would be
    mask[:28] = 1.0  # top half missing
    files = [
        ("image", ("a.png", png(image), "image/png")),
        ("mask", ("m.png", png(mask), "image/png")),
    ]
    r = client.post("/impute?steps=4&seed=0", files=files, headers=JSON_ACCEPT)
    assert r.status_code == 422 and "mask 0 is 56x56, its image 28x28" in r.json()["detail"]
    files[1] = ("mask", ("m.png", png(mask[::2, ::2]), "image/png"))
    r = client.post("/impute?steps=4&seed=0", files=files, headers=JSON_ACCEPT)
    assert r.status_code == 200, r.text
    got = torch.tensor(r.json()["images"][0]).view(28, 28)
    # observed half: the upload's pixels in model space (the tiny card inverts grey levels)
    assert torch.equal(got[14:], 1.0 - image[14:])
    assert not torch.equal(got[:14], 1.0 - image[:14])
    default = client.post("/impute?steps=4&seed=0", files=files * 1)
    assert default.headers["content-type"] == "image/png"
    assert default.headers["x-seed"] == "0" and default.headers["x-image-count"] == "1"
    two = client.post("/impute?steps=2", files=files + files)
    assert Image.open(io.BytesIO(two.content)).size == (2 * 30 + 2, 30 + 2)  # a grid of two


def _mask_parts(*sizes: tuple[int, int]) -> list[tuple[str, tuple[str, bytes, str]]]:
    parts = []
    for i, (w, h) in enumerate(sizes):
        parts.append(("image", (f"{i}.png", png(torch.zeros(h, w)), "image/png")))
    return parts


def _mask(w: int, h: int, value: float = 0.0) -> tuple[str, tuple[str, bytes, str]]:
    m = torch.full((h, w), value)
    m[0, 0] = 1.0
    return ("mask", ("m.png", png(m), "image/png"))


@pytest.mark.parametrize(
    ("query", "kwargs", "status", "says"),
    [
        ("", {"files": [*_mask_parts((28, 28)), _mask(20, 28)]}, 422, "mask 0 is 20x28"),
        ("", {"files": [*_mask_parts((28, 28), (28, 28)), _mask(28, 28)]}, 422, "2 images but 1 masks"),
        ("", {"files": _mask_parts((28, 28))}, 422, "mask"),
        ("", {"files": [*_mask_parts((28, 28)), _mask(28, 28, 1.0)]}, 422, "no pixel observed"),
        ("", {"json": {"pixels": [[0.0] * 784], "mask": [[1] * 784]}}, 422, "no pixel observed"),
        ("", {"json": {"pixels": [[0.0] * 784], "mask": [[1] * 783]}}, 422, "mask have shape"),
        ("", {"json": {"pixels": [[0.0] * 784] * 2, "mask": [TOP_HALF]}}, 422, "2 images but 1 masks"),
        ("", {"json": {"pixels": [[0.0] * 784], "mask": [[2] * 784]}}, 422, "less than or equal to 1"),
        ("", {"json": {"pixels": [[0.0] * 784]}}, 422, "mask"),
        ("", {"json": {"pixels": [[1.2] * 784], "mask": [TOP_HALF]}}, 422, "less than or equal to 1"),
        ("steps=0", {"json": {"pixels": [[0.0] * 784], "mask": [TOP_HALF]}}, 422, "steps"),
        ("steps=51", {"json": {"pixels": [[0.0] * 784], "mask": [TOP_HALF]}}, 422, "max_impute_steps"),
        ("method=gibbs", {"json": {"pixels": [[0.0] * 784], "mask": [TOP_HALF]}}, 422, "method"),
        ("seed=1", {"json": {"pixels": [[0.0] * 784], "mask": [TOP_HALF], "seed": 2}}, 422, "seed"),
        ("", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "json"),
        ("", {"json": {"pixels": [[0.0] * 784] * 9, "mask": [TOP_HALF] * 9}}, 413, "limit"),
    ],
    ids=["mask-size", "mask-count", "no-mask", "all-missing-png", "all-missing-json",
         "mask-shape", "json-mask-count", "mask-value", "json-no-mask", "pixel-range",
         "steps-zero", "steps-over", "unknown-method", "seed-conflict", "text", "too-many"],
)  # fmt: skip
def test_impute_bad_input(
    client: TestClient, query: str, kwargs: dict, status: int, says: str
) -> None:
    r = client.post(f"/impute?{query}", **kwargs)
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]


def test_impute_unacceptable_accept_is_406_before_work(client: TestClient) -> None:
    body = {"pixels": [[0.0] * 784], "mask": [TOP_HALF]}
    r = client.post("/impute", json=body, headers={"Accept": "text/html"})
    assert r.status_code == 406 and "image/png" in r.json()["detail"]


def test_impute_frey(client: TestClient) -> None:
    x = torch.rand(FREY, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(FREY, dtype=torch.long)
    mask[:, :10] = 1  # left half of the face missing
    r = client.post(
        "/impute?model=vae-frey&steps=4&method=mwg",
        json={"pixels": x.tolist(), "mask": mask.tolist(), "seed": 1},
        headers=JSON_ACCEPT,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "vae-frey" and body["shape"] == list(FREY)
    got = torch.tensor(body["images"][0]).view(FREY)
    assert torch.equal(got[:, 10:], x[:, 10:])
    assert ((got >= 0) & (got <= 1)).all() and not torch.equal(got[:, :10], x[:, :10])


# --- /denoise -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vae-mnist", "vae-frey"])
def test_denoise_is_the_posterior_mean_reconstruction(client: TestClient, name: str) -> None:
    shape = (28, 28) if name == "vae-mnist" else FREY
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(3))
    r = client.post(f"/denoise?model={name}", json={"pixels": x.tolist()}, headers=JSON_ACCEPT)
    assert r.status_code == 200, r.text
    model = model_of(client, name)
    with torch.inference_mode():
        expect = model.decode(model.encode(x)[0]).flatten(1)
    torch.testing.assert_close(torch.tensor(r.json()["images"]), expect, rtol=0, atol=1e-5)
    grid = client.post(f"/denoise?model={name}", json={"pixels": x.tolist()})
    assert grid.headers["content-type"] == "image/png"


def test_denoise_upload_and_bad_input(client: TestClient) -> None:
    up = client.post("/denoise", files=[("image", ("a.png", png(torch.ones(28, 28)), "image/png"))],
                     headers=JSON_ACCEPT)  # fmt: skip
    js = client.post("/denoise", json={"pixels": [[0.0] * 784]}, headers=JSON_ACCEPT)
    assert up.status_code == 200 and up.json() == js.json()
    assert client.post("/denoise", json={"pixels": [[2.0] * 784]}).status_code == 422
    assert (
        client.post("/denoise", files=[("image", ("x", b"nope", "image/png"))]).status_code == 415
    )
    assert client.post("/denoise", json={"pixels": [[0.0] * 784]},
                       headers={"Accept": "text/html"}).status_code == 406  # fmt: skip


def test_marginal_operations_have_their_own_metrics(client: TestClient) -> None:
    client.post("/denoise", json={"pixels": [[0.0] * 784]})
    client.post("/score", json={"pixels": [[0.0] * 784]})
    client.post("/impute?steps=2", json={"pixels": [[0.0] * 784], "mask": [TOP_HALF]})
    text = client.get("/metrics").text
    for op in ("impute", "denoise", "score"):
        assert f'model="vae-mnist",op="{op}"' in text


def test_impute_default_steps_stay_within_the_limit(client: TestClient) -> None:
    body = {"pixels": [[0.0] * 784], "mask": [TOP_HALF], "seed": 0}
    r = client.post("/impute", json=body, headers=JSON_ACCEPT)
    assert r.status_code == 200 and r.json()["steps"] == 50  # max_impute_steps here, under 100
    assert r.json()["method"] == "pseudo-gibbs"
