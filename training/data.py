"""Datasets as tensors: MNIST, Frey Face, CIFAR-10 / small ImageFolder trees, packed JPEG files.

Small datasets live whole in memory (uint8) and are batched by `TensorBatches`, which shuffles
with a `DistributedSampler` (so DDP shards them like any other dataset) and leaves augmentation
to the model module, done per batch in tensors on the training device.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data.distributed import DistributedSampler

from training.pack import list_image_folder, read_pack

# ImageSet.source of torchvision's CIFAR10 arrays, which hold the JPEG tree's images in another
# order (eval-alexnet compares it with the source named on the card).
TORCHVISION_CIFAR10 = "torchvision CIFAR10"


class DataError(Exception):
    """Data that cannot be found or read; the message says where we looked."""


class TensorBatches:
    """Minibatches of rows of in-memory tensors, reshuffled each epoch, sharded across DDP ranks.

    Indexing happens on the tensors' own device, so data already on the GPU never leaves it.
    """

    def __init__(
        self,
        tensors: Sequence[Tensor],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        self.tensors = tuple(tensors)
        n = len(self.tensors[0])
        if any(len(t) != n for t in self.tensors):
            raise ValueError("all tensors need the same number of rows")
        self.batch_size = batch_size
        self.drop_last = drop_last
        # DistributedSampler over row numbers: the same seeded shuffle and sharding DDP uses.
        self.sampler: DistributedSampler[int] = DistributedSampler(
            range(n),  # type: ignore[arg-type]  # any sized sequence works
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
        )

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (deterministic in seed and epoch, so resumes repeat it)."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            idx = idx.to(self.tensors[0].device)
            yield tuple(t[idx] for t in self.tensors)


def split_indices(n: int, n_val: int, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded random split of range(n) into (train, val) index tensors, each sorted."""
    if not 0 <= n_val < n:
        raise ValueError(f"validation size {n_val} must be in [0, {n})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


# --- MNIST and Frey Face ----------------------------------------------------------------


def load_mnist(data_dir: Path, train: bool, download: bool = False) -> tuple[Tensor, Tensor]:
    """MNIST via torchvision from `<data_dir>/MNIST/raw`: images (N, 28, 28) uint8, labels (N,)."""
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(str(data_dir), train=train, download=download)
    except RuntimeError as e:
        raise DataError(
            f"MNIST not found under {data_dir / 'MNIST' / 'raw'} (pass --data-dir, or --download): {e}"
        ) from e
    return ds.data.clone(), ds.targets.clone()


def load_frey(data_dir: Path) -> Tensor:
    """Frey Face from `<data_dir>/frey_rawface.mat`: (1965, 28, 20) uint8."""
    from scipy.io import loadmat

    path = data_dir / "frey_rawface.mat" if data_dir.is_dir() else data_dir
    if not path.is_file():
        raise DataError(f"Frey Face file not found: {path}")
    ff = loadmat(str(path))["ff"]  # (560, 1965): one row-major 28x20 image per column
    return torch.from_numpy(ff.T.copy()).reshape(-1, 28, 20)


# --- CIFAR-10 and other small-image trees -----------------------------------------------


@dataclass
class ImageSet:
    """Decoded images (N, 3, H, W) uint8, labels (N,) int64, class names; `source` for the card."""

    images: Tensor
    labels: Tensor
    classes: list[str]
    source: str


def decode_image(data: bytes, size: int) -> Tensor:
    """Encoded image bytes -> (3, size, size) uint8, resized only if not already that size."""
    with Image.open(io.BytesIO(data)) as f:
        im = f.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3)


def _decode_all(blobs: Iterator[bytes], n: int, size: int, desc: str, progress: bool) -> Tensor:
    from tqdm import tqdm

    out = torch.empty((n, size, size, 3), dtype=torch.uint8)
    for i, blob in enumerate(tqdm(blobs, total=n, desc=desc, disable=not progress, leave=False)):
        out[i] = decode_image(blob, size)
    return out.permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W)


def resolve_image_source(data_dir: Path, dataset: str) -> Path:
    """The pack file or ImageFolder root to read a small-image dataset from."""
    if data_dir.is_file():
        return data_dir
    for cand in (data_dir / dataset / "train", data_dir / "train", data_dir):
        if cand.is_dir() and any(p.is_dir() for p in cand.iterdir()):
            return cand
    raise DataError(
        f"no {dataset} data under {data_dir}: expected {data_dir / dataset / 'train'} "
        "(ImageFolder tree), an ImageFolder tree at the path itself, or a .pack file"
    )


def load_small_images(
    data_dir: Path,
    dataset: str = "cifar10",
    *,
    size: int = 32,
    cache_dir: Path | None = None,
    download: bool = False,
    progress: bool = True,
) -> ImageSet:
    """All training images of a small-image dataset as one uint8 tensor, decoded once and cached.

    Sources, in order: torchvision's CIFAR10 (with `download`, or when `cifar-10-batches-py`
    is present), a pack file, an ImageFolder tree. Decoding 50k JPEGs takes a while on 2 cores,
    so the decoded tensor is cached as safetensors keyed by the source path, size and file size.
    """
    if dataset == "cifar10" and (download or (data_dir / "cifar-10-batches-py").is_dir()):
        from torchvision.datasets import CIFAR10

        ds = CIFAR10(str(data_dir), train=True, download=download)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return ImageSet(images, torch.tensor(ds.targets), list(ds.classes), TORCHVISION_CIFAR10)

    src = resolve_image_source(data_dir, dataset)
    key = hashlib.sha256(
        f"{src.resolve()}|{size}|{src.stat().st_size if src.is_file() else ''}".encode()
    ).hexdigest()[:16]
    cache = cache_dir / f"{dataset}-{size}-{key}.safetensors" if cache_dir else None
    if cache is not None and cache.is_file():
        t = load_file(str(cache))
        with safe_open(str(cache), "pt") as f:  # class names sit in the header's metadata
            meta = f.metadata()
        return ImageSet(t["images"], t["labels"], json.loads(meta["classes"]), meta["source"])

    if src.is_file():
        header, body = read_pack(src)
        classes, labels = header["classes"], header["labels"]
        spans = zip(header["offsets"], header["lengths"], strict=True)
        blobs = (bytes(body[o : o + n]) for o, n in spans)
        source = f"pack file {src.name}"
    else:
        classes, items = list_image_folder(src)
        labels = [label for _, label in items]
        blobs = (p.read_bytes() for p, _ in items)
        source = f"ImageFolder {src}"
    images = _decode_all(blobs, len(labels), size, f"decoding {dataset}", progress)
    result = ImageSet(images, torch.tensor(labels, dtype=torch.long), list(classes), source)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        meta = {"classes": json.dumps(result.classes), "source": source}
        save_file({"images": images, "labels": result.labels}, str(cache), metadata=meta)
    return result


def channel_stats(images: Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] scale."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].to(torch.float64) / 255  # (b, C, H, W)
        s += x.sum((0, 2, 3))
        s2 += (x**2).sum((0, 2, 3))
    count = images.numel() / c
    mean = s / count
    std = (s2 / count - mean**2).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()
