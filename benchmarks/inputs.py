"""The inputs every contender gets: real image files when the datasets are present, else generated.

One corpus per run, built once and handed to the load generator and the in-process ceiling alike,
so the three contenders decode the very same bytes.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "datasets"


@dataclass(frozen=True)
class Corpus:
    """Encoded image files plus where they came from (reported beside the results)."""

    files: list[bytes]
    source: str

    def __getitem__(self, i: int) -> bytes:
        return self.files[i % len(self.files)]


def cifar_jpegs(data_dir: Path, n: int, seed: int = 0) -> Corpus | None:
    """`n` CIFAR-10 training JPEGs (32x32, quality 75) drawn across classes; None if absent."""
    root = data_dir / "cifar10" / "train"
    if not root.is_dir():
        return None
    paths = sorted(root.glob("*/*.jpg"))
    if not paths:
        return None
    picked = random.Random(seed).sample(paths, min(n, len(paths)))
    return Corpus([p.read_bytes() for p in picked], f"CIFAR-10 train JPEGs from {root} (n={n})")


def mnist_pngs(data_dir: Path, n: int, seed: int = 0) -> Corpus | None:
    """`n` MNIST test digits encoded as 28x28 grey PNGs; None if the raw files are absent."""
    path = data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    if not path.is_file():
        return None
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    idx = np.random.default_rng(seed).choice(len(raw), size=min(n, len(raw)), replace=False)
    files = [_encode(Image.fromarray(raw[i], "L"), "PNG") for i in idx]
    return Corpus(files, f"MNIST test digits as PNG from {path.parent} (n={n})")


def generated(n: int, size: tuple[int, int], mode: str, fmt: str, seed: int = 0) -> Corpus:
    """Smooth random images (gradients plus noise) so JPEG/PNG sizes resemble real photos."""
    rng = np.random.default_rng(seed)
    h, w = size
    ch = 3 if mode == "RGB" else 1
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    files = []
    for _ in range(n):
        a, b, c = rng.uniform(-1, 1, size=(3, ch, 1, 1)).astype(np.float32)
        base = 128 + 60 * np.sin(a * xx / 4 + b * yy / 4 + c * 6)  # (ch, H, W)
        pixels = np.clip(base + rng.normal(0, 20, size=base.shape), 0, 255).astype(np.uint8)
        arr = pixels.transpose(1, 2, 0) if ch == 3 else pixels[0]
        files.append(_encode(Image.fromarray(arr, mode), fmt))
    return Corpus(files, f"generated {mode} {fmt} {w}x{h} (n={n}, seed={seed})")


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 75} if fmt == "JPEG" else {}))
    return buf.getvalue()


def rgb_corpus(data_dir: Path | None, n: int = 512) -> Corpus:
    """What /classify gets: CIFAR-10 JPEGs, or generated 32x32 JPEGs without the dataset."""
    found = cifar_jpegs(data_dir, n) if data_dir else None
    return found or generated(n, (32, 32), "RGB", "JPEG")


def grey_corpus(data_dir: Path | None, n: int = 512) -> Corpus:
    """What /encode gets: MNIST digits as PNG, or generated 28x28 grey PNGs."""
    found = mnist_pngs(data_dir, n) if data_dir else None
    return found or generated(n, (28, 28), "L", "PNG")


def latent_rows(n: int, dim: int, seed: int = 0) -> list[list[float]]:
    """`n` draws from the VAE prior N(0, I) for /decode, as JSON-ready lists."""
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32).tolist()
