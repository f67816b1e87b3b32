"""What is specific to training AlexNet: data, augmentation per batch, loss, top-k evaluation, card.

alexnet-small (CIFAR-10 or any small-image ImageFolder tree): every training image sits decoded
in one uint8 tensor (N, 3, 32, 32) on the training device; each batch gets a random 28x28 crop,
a horizontal flip and PCA colour noise as tensor ops, so a 2-core CPU spends its time in the
network rather than in PIL. alexnet (ImageNet-style tree): a DataLoader with worker processes
decodes and crops (resize 256, random 224), and the colour noise is added on the device.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from models.alexnet import PRESETS, AlexNet
from models.checkpoint import DatasetInfo, InputSpec, ModelCard
from training.augment import (
    center_crop,
    compute_pca_stats,
    pca_color_noise,
    random_crop_flip,
    ten_crop,
)
from training.data import (
    ImageSet,
    TensorBatches,
    channel_stats,
    load_small_images,
    resolve_image_source,
    split_indices,
)
from training.loop import Batches, Task

SMALL = {"size": 32, "crop": 28}
FULL = {"size": 256, "crop": 224}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `alexnet` subcommand's model-specific options."""
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="alexnet-small",
        help="alexnet-small: 28x28 crops of 32x32 images (CIFAR-10); alexnet: the ImageNet network, 224x224 crops (default: alexnet-small)",
    )
    p.add_argument(
        "--dataset",
        choices=["cifar10", "imagefolder"],
        default="cifar10",
        help="cifar10: torchvision's CIFAR10 (with --download or when present), else <data-dir>/cifar10/train, else a .pack file; imagefolder: an ImageFolder tree at --data-dir (default: cifar10)",
    )
    p.add_argument(
        "--packed",
        type=Path,
        default=None,
        help="read the training images from this pack file (see pack-imagefolder) instead of --data-dir",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the decoded uint8 image tensor is cached (alexnet-small; default: <run-dir>/cache)",
    )
    p.add_argument(
        "--val-size",
        type=int,
        default=5000,
        help="training images held out for validation, seeded by --seed (default: 5000)",
    )
    p.add_argument(
        "--label-smoothing",
        type=float,
        default=0.0,
        help="cross-entropy label smoothing (default: 0, off)",
    )
    p.add_argument(
        "--pca-std",
        type=float,
        default=0.1,
        help="std of the PCA colour noise coefficients, 0 turns it off (paper: 0.1; default: 0.1)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=4,
        help="DataLoader worker processes (full-size preset only; default: 4)",
    )
    p.set_defaults(
        optimizer="sgd", lr=0.05, batch_size=128, epochs=30, schedule="onecycle", weight_decay=5e-4
    )


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> standardised per channel; mean and std (3,)."""
    return (x - mean[:, None, None]) / std[:, None, None]


def topk_errors(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is not among the top-k scores, for each k: (N, C), (N,)."""
    k_max = min(max(ks), scores.shape[1])
    top = scores.topk(k_max, dim=1).indices  # (N, k_max)
    hit = top == labels[:, None]
    return {k: 1.0 - hit[:, : min(k, k_max)].any(1).float().mean().item() for k in ks}


@torch.no_grad()
def predict_small(
    model: nn.Module,
    images: Tensor,
    mean: Tensor,
    std: Tensor,
    crop: int,
    use_ten_crop: bool = False,
    batch_size: int = 500,
) -> Tensor:
    """Softmax probabilities (N, C) for uint8 images (N, 3, H, W): centre crop or ten-crop mean."""
    p = next(model.parameters())
    mean, std = mean.to(p.device), std.to(p.device)
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(p.device).float().div_(255)
        views = ten_crop(x, crop) if use_ten_crop else center_crop(x, crop)[None]  # (V, B, 3, c, c)
        v, b = views.shape[:2]
        logits = model(normalize(views.flatten(0, 1), mean, std))  # (V*B, C)
        out.append(logits.float().softmax(-1).view(v, b, -1).mean(0))
    return torch.cat(out)


def small_image_set(args: argparse.Namespace, progress: bool) -> ImageSet:
    """The training tree of alexnet-small, decoded once (cached under --cache-dir)."""
    source = args.packed or Path(args.data_dir)
    cache = args.cache_dir or Path(args.run_dir) / "cache"
    return load_small_images(
        source,
        args.dataset,
        size=SMALL["size"],
        cache_dir=cache,
        download=args.download,
        progress=progress,
    )


@dataclass
class Prep:
    """Per-batch preprocessing on the device, from training-split statistics."""

    mean: list[float]  # (3,) per-channel, [0, 1] scale
    std: list[float]
    eigvals: Tensor  # (3,) PCA of the RGB covariance
    eigvecs: Tensor  # (3, 3) columns = eigenvectors
    size: int  # images are resized to this (shorter side) ...
    crop: int  # ... then cropped to this


def _task(
    args: argparse.Namespace,
    device: torch.device,
    model: AlexNet,
    batches: Batches,
    prep: Prep,
    crop_on_device: bool,
    evaluate: Callable[[nn.Module, int], dict[str, float]],
    classes: list[str],
    splits: tuple[str, str],
) -> Task:
    """Step function and card shared by both presets; `evaluate` and the data differ."""
    mean, std = torch.tensor(prep.mean, device=device), torch.tensor(prep.std, device=device)
    eigvals, eigvecs = prep.eigvals.to(device), prep.eigvecs.to(device)
    channels_last = device.type == "cuda"

    def step(m: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, int]:
        x, y = (t.to(device, non_blocking=True) for t in batch)  # (B, 3, S, S) uint8, (B,)
        if crop_on_device:
            x = random_crop_flip(x, prep.crop)  # (B, 3, crop, crop), flipped half the time
        x = x.float().div_(255)
        if args.pca_std > 0:
            x = pca_color_noise(x, eigvals, eigvecs, std=args.pca_std)
        x = normalize(x, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return F.cross_entropy(m(x), y, label_smoothing=args.label_smoothing), len(y)

    def make_card(metrics: dict[str, float], training: dict[str, Any]) -> ModelCard:
        c = prep.crop
        return ModelCard(
            name=f"{args.preset}-{args.dataset}".replace(
                "alexnet-small-cifar10", "alexnet-cifar10"
            ),
            architecture="alexnet",
            config=model.config.to_dict(),
            task="classification",
            input=InputSpec(
                channels=3, size=(c, c), resize=prep.size, mean=prep.mean, std=prep.std
            ),
            labels=classes,
            dataset=DatasetInfo(
                name=args.dataset, train_split=splits[0], eval_split=splits[1], seed=args.seed
            ),
            metrics=metrics,
            training={
                **training,
                "augmentation": f"resize {prep.size}, random {c}x{c} crop, horizontal flip, "
                f"PCA colour noise std {args.pca_std}",
                "label_smoothing": args.label_smoothing,
                "pca_eigvals": prep.eigvals.tolist(),
                "pca_eigvecs": prep.eigvecs.tolist(),
            },
        )

    return Task(
        model=model,
        train_batches=batches,
        step_fn=step,
        evaluate=evaluate,
        make_card=make_card,
        best_metric=("val_top1_err", False),
    )


def _split_names(n_train: int, n_val: int, total: int, source: str, seed: int) -> tuple[str, str]:
    return (
        f"{n_train} of {total} training images ({source})",
        f"val: {n_val} training images held out by a seeded random split (seed {seed}); "
        "not the official test set",
    )


def build_task(args: argparse.Namespace, device: torch.device, world_size: int, rank: int) -> Task:
    """The AlexNet training task for `args` (see `add_arguments`)."""
    progress = args.progress and rank == 0 and sys.stderr.isatty()
    if args.preset != "alexnet-small":
        return _build_full_task(args, device, world_size, rank, progress)
    data = small_image_set(args, progress=progress)
    tr, va = split_indices(len(data.labels), args.val_size, args.seed)
    train_x, train_y = data.images[tr], data.labels[tr]
    val_x, val_y = data.images[va], data.labels[va]
    mean, std = channel_stats(train_x)
    prep = Prep(mean, std, *compute_pca_stats(train_x), size=SMALL["size"], crop=SMALL["crop"])
    torch.manual_seed(args.seed)
    model = AlexNet(replace(PRESETS[args.preset], num_classes=len(data.classes)))
    batches = TensorBatches(
        [train_x.to(device), train_y.to(device)],
        args.batch_size,
        seed=args.seed,
        world_size=world_size,
        rank=rank,
    )
    mean_t, std_t = torch.tensor(mean), torch.tensor(std)

    def evaluate(m: nn.Module, epoch: int) -> dict[str, float]:
        scores = predict_small(m, val_x, mean_t, std_t, prep.crop)
        errors = topk_errors(scores, val_y.to(scores.device))
        return {"val_top1_err": errors[1], "val_top5_err": errors[5]}

    splits = _split_names(len(tr), len(va), len(data.labels), data.source, args.seed)
    return _task(args, device, model, batches, prep, True, evaluate, data.classes, splits)


class LoaderBatches:
    """A DataLoader over a DistributedSampler, with the `Batches` interface."""

    def __init__(self, loader: DataLoader, sampler: DistributedSampler) -> None:
        self.loader, self.sampler = loader, sampler

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


def _build_full_task(
    args: argparse.Namespace, device: torch.device, world_size: int, rank: int, progress: bool
) -> Task:
    """Full-size AlexNet on an ImageFolder tree (ImageNet layout): resize 256, crop 224."""
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    size, crop = FULL["size"], FULL["crop"]
    root = resolve_image_source(Path(args.data_dir), args.dataset)
    train_tf = T.Compose(
        [T.Resize(size), T.RandomCrop(crop), T.RandomHorizontalFlip(), T.PILToTensor()]
    )
    eval_tf = T.Compose([T.Resize(size), T.CenterCrop(crop), T.PILToTensor()])
    full_train, full_eval = ImageFolder(str(root), train_tf), ImageFolder(str(root), eval_tf)
    tr, va = split_indices(len(full_train), args.val_size, args.seed)
    train_ds, val_ds = Subset(full_train, tr.tolist()), Subset(full_eval, va.tolist())

    # Colour statistics from a seeded sample of training images (centre crops): a few
    # thousand images pin down a 3x3 covariance; decoding all of ImageNet for it would not pay.
    sample = tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(args.seed))[:2000]]
    stats_loader = DataLoader(
        Subset(full_eval, sample.tolist()), batch_size=100, num_workers=args.workers
    )
    sample_x = torch.cat([x for x, _ in stats_loader])  # (n, 3, 224, 224) uint8
    mean, std = channel_stats(sample_x)
    prep = Prep(mean, std, *compute_pca_stats(sample_x), size=size, crop=crop)
    del sample_x

    sampler: DistributedSampler[int] = DistributedSampler(
        train_ds, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed
    )
    loader_kw: dict[str, Any] = {
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": args.workers > 0,
    }
    batches = LoaderBatches(
        DataLoader(train_ds, sampler=sampler, drop_last=True, **loader_kw), sampler
    )
    val_loader = DataLoader(val_ds, shuffle=False, **loader_kw)
    torch.manual_seed(args.seed)
    model = AlexNet(replace(PRESETS[args.preset], num_classes=len(full_train.classes)))
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)

    def evaluate(m: nn.Module, epoch: int) -> dict[str, float]:
        scores, labels = [], []
        for x, y in val_loader:
            x = normalize(x.to(device).float().div_(255), mean_t, std_t)
            scores.append(m(x).float())
            labels.append(y.to(device))
        errors = topk_errors(torch.cat(scores), torch.cat(labels))
        return {"val_top1_err": errors[1], "val_top5_err": errors[5]}

    splits = _split_names(len(tr), len(va), len(full_train), f"ImageFolder {root}", args.seed)
    return _task(args, device, model, batches, prep, False, evaluate, full_train.classes, splits)
