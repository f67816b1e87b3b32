"""Tiny on-disk datasets in the real formats (MNIST idx files, Frey .mat, ImageFolder JPEGs)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in MNIST's idx format (magic 0x08 = uint8, then big-endian dims)."""
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """<root>/MNIST/raw with 200 train and 100 test 28x28 images: bright strokes on black."""
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 200), ("t10k", 100)):
        images = np.zeros((n, 28, 28), np.uint8)
        labels = rng.integers(0, 10, n)
        for i, label in enumerate(labels):  # one bar per class so the data has structure
            images[i, 4:24, 2 + 2 * label : 5 + 2 * label] = 255
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return tmp_path


@pytest.fixture
def tiny_frey(tmp_path: Path) -> Path:
    """frey_rawface.mat with 60 random 28x20 faces, stored like the original: ff (560, N)."""
    from scipy.io import savemat

    ff = np.random.default_rng(0).integers(0, 256, (560, 60), dtype=np.uint8)
    savemat(tmp_path / "frey_rawface.mat", {"ff": ff})
    return tmp_path


@pytest.fixture
def tiny_imagefolder(tmp_path: Path) -> Path:
    """ImageFolder tree of 3 classes x 8 JPEGs, 32x32, each class a different colour."""
    root = tmp_path / "tree"
    rng = np.random.default_rng(0)
    colours = {"bird": (200, 40, 40), "cat": (40, 200, 40), "ship": (40, 40, 200)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i:04d}.jpg", quality=90)
    return root
