"""Loaders: pack files round-trip, the decoded-image cache, and the real datasets when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.conftest import SHARED
from training.cli import main
from training.data import DataError, load_frey, load_mnist, load_small_images
from training.pack import PackError, list_image_folder, read_pack, write_pack

needs_data = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"datasets not found at {SHARED} (see its README.md)"
)


def test_pack_round_trip_gives_the_same_images_labels_and_order(
    tiny_imagefolder: Path, tmp_path: Path
) -> None:
    pack = tmp_path / "tiny.pack"
    assert main(["pack-imagefolder", str(tiny_imagefolder), str(pack)]) == 0
    header, body = read_pack(pack)
    classes, items = list_image_folder(tiny_imagefolder)
    assert header["classes"] == classes == ["bird", "cat", "ship"]
    first, _ = items[0]
    assert bytes(body[: header["lengths"][0]]) == first.read_bytes()  # raw bytes, not re-encoded
    packed = load_small_images(pack, "cifar10", progress=False)
    folder = load_small_images(tiny_imagefolder, "cifar10", progress=False)
    assert packed.images.shape == (24, 3, 32, 32) and packed.images.dtype == torch.uint8
    assert torch.equal(packed.images, folder.images)
    assert torch.equal(packed.labels, folder.labels)
    assert packed.classes == folder.classes


def test_an_xz_pack_reads_back_the_same_bytes_and_a_subset_keeps_each_class_first(
    tiny_imagefolder: Path, tmp_path: Path
) -> None:
    plain, packed = tmp_path / "tiny.pack", tmp_path / "tiny.pack.xz"
    assert main(["pack-imagefolder", str(tiny_imagefolder), str(plain)]) == 0
    assert main(["pack-imagefolder", str(tiny_imagefolder), str(packed)]) == 0
    assert packed.read_bytes()[:6] == b"\xfd7zXZ\x00"  # compressed on disk ...
    assert read_pack(packed) == read_pack(plain)  # ... the same pack once read
    sub = tmp_path / "sub.pack.xz"
    assert write_pack(tiny_imagefolder, sub, per_class=2) == 6
    header, _ = read_pack(sub)
    assert header["labels"] == [0, 0, 1, 1, 2, 2]
    assert header["names"][:2] == ["bird/0000.jpg", "bird/0001.jpg"]
    sub.write_bytes(sub.read_bytes()[:-20])
    with pytest.raises(PackError, match="corrupt xz"):
        read_pack(sub)


def test_a_corrupt_pack_is_refused(tiny_imagefolder: Path, tmp_path: Path) -> None:
    pack = tmp_path / "tiny.pack"
    assert main(["pack-imagefolder", str(tiny_imagefolder), str(pack)]) == 0
    pack.write_bytes(pack.read_bytes()[:-100])  # truncated: the index points past the end
    with pytest.raises(PackError, match="corrupt"):
        read_pack(pack)
    pack.write_bytes(b"not a pack at all")
    with pytest.raises(PackError, match="magic"):
        read_pack(pack)


def test_decoded_images_are_cached_and_reused(tiny_imagefolder: Path, tmp_path: Path) -> None:
    first = load_small_images(tiny_imagefolder, "cifar10", cache_dir=tmp_path, progress=False)
    (cache,) = tmp_path.glob("*.safetensors")
    for f in tiny_imagefolder.glob("*/*.jpg"):  # the cache alone must now suffice
        f.write_bytes(b"")
    again = load_small_images(tiny_imagefolder, "cifar10", cache_dir=tmp_path, progress=False)
    assert torch.equal(first.images, again.images) and again.classes == first.classes
    assert cache.stat().st_size > first.images.numel()


def test_missing_data_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="MNIST"):
        load_mnist(tmp_path, train=True)
    with pytest.raises(DataError, match=r"frey_rawface\.mat"):
        load_frey(tmp_path)
    with pytest.raises(DataError, match="cifar10"):
        load_small_images(tmp_path, "cifar10", progress=False)


def test_frey_reshapes_columns_row_major(tiny_frey: Path) -> None:
    from scipy.io import loadmat

    faces = load_frey(tiny_frey)
    ff = loadmat(str(tiny_frey / "frey_rawface.mat"))["ff"]
    assert faces.shape == (60, 28, 20)
    assert faces[5, 1, 0].item() == ff[20, 5]  # row 1, column 0 of image 5 = element 1*20 + 0


@pytest.mark.data
@needs_data
def test_real_mnist_and_frey() -> None:
    x, y = load_mnist(SHARED, train=True)
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8 and int(y.max()) == 9
    assert load_mnist(SHARED, train=False)[0].shape == (10000, 28, 28)
    assert load_frey(SHARED).shape == (1965, 28, 20)


@pytest.mark.data
@needs_data
def test_real_cifar10_tree_layout() -> None:
    classes, items = list_image_folder(SHARED / "cifar10" / "train")
    assert len(classes) == 10 and "airplane" in classes and len(items) == 50000
