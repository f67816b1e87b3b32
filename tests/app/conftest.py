"""Tiny randomly initialised checkpoints and apps built around them (real lifespan)."""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.settings import Settings
from models import VAE, AlexNet, AlexNetConfig, InputSpec, ModelCard, VAEConfig, save_checkpoint
from models.checkpoint import DatasetInfo

LABELS = ["cat", "dog", "ship"]
LATENT = 3


def make_alexnet(directory: Path, name: str = "alexnet-cifar10", seed: int = 0) -> ModelCard:
    """A 3-class AlexNet with widths (4, 8, 8, 8, 8) on 28x28 crops of 32x32 RGB."""
    torch.manual_seed(seed)
    config = AlexNetConfig(
        num_classes=3,
        widths=(4, 8, 8, 8, 8),
        hidden=16,
        conv1_kernel=5,
        conv1_stride=1,
        conv1_padding=2,
        pool_size=2,
    )
    card = ModelCard(
        name=name,
        architecture="alexnet",
        config=config.to_dict(),
        task="classification",
        input=InputSpec(channels=3, size=(28, 28), resize=32, mean=[0.5] * 3, std=[0.25] * 3),
        labels=LABELS,
        dataset=DatasetInfo(name="CIFAR-10"),
        code_version="test",
    )
    return save_checkpoint(directory / name, AlexNet(config), card)


def make_vae(directory: Path, name: str = "vae-mnist", seed: int = 0) -> ModelCard:
    """A 28x28 Bernoulli VAE with 16 hidden units and a 3-dimensional latent."""
    torch.manual_seed(seed)
    config = VAEConfig(image_shape=(28, 28), hidden=16, latent=LATENT)
    card = ModelCard(
        name=name,
        architecture="vae",
        config=config.to_dict(),
        task="generation",
        input=InputSpec(channels=1, size=(28, 28), mean=[0.0], std=[1.0], invert=True),
        dataset=DatasetInfo(name="MNIST"),
        code_version="test",
    )
    return save_checkpoint(directory / name, VAE(config), card)


def png_bytes(
    size: tuple[int, int] = (40, 36),
    color: tuple[int, int, int] = (200, 30, 90),
    mode: str = "RGB",
    fmt: str = "PNG",
) -> bytes:
    """An image file of one colour."""
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with one classifier and one VAE (shared: tests never write to it)."""
    root = tmp_path_factory.mktemp("models")
    make_alexnet(root)
    make_vae(root)
    return root


def test_settings(model_dir: Path, **overrides: object) -> Settings:
    """Settings for tests: tiny batches, one thread, short waits."""
    base: dict[str, object] = dict(
        model_dir=model_dir,
        device="cpu",
        torch_threads=1,
        max_batch_size=8,
        batch_timeout_ms=5.0,
        max_queue=64,
        log_level="WARNING",
        dtype="float32",  # answers compared with float32 references; tests/app/test_precision.py
    )
    return Settings(**(base | overrides))  # type: ignore[arg-type]


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def wait_ready(client: TestClient, timeout: float = 10.0) -> None:
    """Poll /readyz until the background load is done."""
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "app never became ready"
        time.sleep(0.01)


@pytest.fixture
def settings(model_dir: Path) -> Settings:
    return test_settings(model_dir)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A ready app on the tiny models, lifespan running."""
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


@contextlib.contextmanager
def serve_in_thread(settings: Settings, ready: bool = True) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread; yields its base URL.

    For clients that speak real HTTP (our httpx-based `app.client`), where TestClient's
    transport belongs to another HTTP library (httpx2 since Starlette 1.2). With `ready`,
    returns once /readyz answers 200 (open probes only).
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn never started"
            time.sleep(0.01)
        while ready and httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "app never became ready"
            time.sleep(0.01)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
