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
from training.augment import center_crop, compute_pca_stats, pca_color_noise, random_crop_flip
from training.classification import (
    confusion_matrix,
    normalize,
    predict_loader,
    predict_small,
    val_errors,
)
from training.data import (
    DataError,
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
        "--init",
        choices=["kaiming", "paper"],
        default="kaiming",
        help="weight init: kaiming (He-normal); paper: N(0, 0.01) with unit biases, which "
        "starts with input-independent outputs and trains slowly (default: kaiming)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=4,
        help="DataLoader worker processes (full-size preset only; default: 4)",
    )
    p.set_defaults(
        optimizer="sgd",
        lr=0.02,
        clip_grad=5.0,
        batch_size=128,
        epochs=30,
        schedule="onecycle",
        weight_decay=5e-4,
    )


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
    predict: Callable[[nn.Module], tuple[Tensor, Tensor]],
    classes: list[str],
    split: tuple[DatasetInfo, dict[str, int]],
) -> Task:
    """Step function, evaluation, card and figures shared by both presets.

    `predict` gives (softmax scores (N, C), labels (N,)) on the validation split.
    """
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

    def make_figures(m: nn.Module, run_dir: Path) -> None:
        from training import plots

        keys = ["train_loss", "val_top1_err", "val_top5_err", "lr"]
        plots.plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", keys)
        with torch.no_grad():
            scores, labels = predict(m)
        plots.plot_confusion(confusion_matrix(scores, labels), classes, run_dir / "confusion.png")

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
            dataset=split[0],
            metrics=metrics,
            training={
                **training,
                "augmentation": f"resize {prep.size}, random {c}x{c} crop, horizontal flip, "
                f"PCA colour noise std {args.pca_std}",
                "label_smoothing": args.label_smoothing,
                "pca_eigvals": prep.eigvals.tolist(),
                "pca_eigvecs": prep.eigvecs.tolist(),
                "preset": args.preset,
                **split[1],
            },
        )

    return Task(
        model=model,
        train_batches=batches,
        step_fn=step,
        evaluate=lambda m, epoch: val_errors(*predict(m)),
        make_card=make_card,
        make_figures=make_figures,
        best_metric=("val_top1_err", False),
    )


def _split(
    args: argparse.Namespace, n_val: int, total: int, source: str
) -> tuple[DatasetInfo, dict[str, int]]:
    """The card's dataset entry, and the sizes eval-alexnet needs to rebuild the split."""
    info = DatasetInfo(
        name=args.dataset,
        train_split=f"{total - n_val} of {total} training images ({source})",
        eval_split=f"val: {n_val} training images held out by a seeded random split "
        f"(seed {args.seed}); not the official test set",
        seed=args.seed,
    )
    return info, {"val_size": n_val, "dataset_size": total}


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
    model = AlexNet(replace(PRESETS[args.preset], num_classes=len(data.classes), init=args.init))
    batches = TensorBatches(
        [train_x.to(device), train_y.to(device)],
        args.batch_size,
        seed=args.seed,
        world_size=world_size,
        rank=rank,
    )
    mean_t, std_t = torch.tensor(mean), torch.tensor(std)

    def predict(m: nn.Module) -> tuple[Tensor, Tensor]:
        return predict_small(m, val_x, mean_t, std_t, prep.crop), val_y

    split = _split(args, len(va), len(data.labels), data.source)
    return _task(args, device, model, batches, prep, True, predict, data.classes, split)


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


def eval_image_folder(root: Path, size: int) -> Any:
    """ImageFolder giving (3, size, size) uint8 images: resize the shorter side, centre crop."""
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(root), T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()]))


def full_image_folder(source: Path, dataset: str) -> Path:
    """The ImageFolder root the full preset reads; packs are for the small preset only (they
    are decoded whole into memory, which ImageNet-sized data does not fit)."""
    root = resolve_image_source(source, dataset)
    if root.is_file():
        raise DataError(
            f"{root} is a pack file: the full preset reads an ImageFolder tree (--data-dir "
            "DIR with one folder per class); packs serve --preset alexnet-small"
        )
    return root


def _build_full_task(
    args: argparse.Namespace, device: torch.device, world_size: int, rank: int, progress: bool
) -> Task:
    """Full-size AlexNet on an ImageFolder tree (ImageNet layout): resize 256, crop 224."""
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    size, crop = FULL["size"], FULL["crop"]
    root = full_image_folder(args.packed or Path(args.data_dir), args.dataset)
    train_tf = T.Compose(
        [T.Resize(size), T.RandomCrop(crop), T.RandomHorizontalFlip(), T.PILToTensor()]
    )
    full_train, full_eval = ImageFolder(str(root), train_tf), eval_image_folder(root, size)
    tr, va = split_indices(len(full_train), args.val_size, args.seed)
    train_ds, val_ds = Subset(full_train, tr.tolist()), Subset(full_eval, va.tolist())

    # Colour statistics from a seeded sample of training images (centre crops): a few
    # thousand images pin down a 3x3 covariance; decoding all of ImageNet for it would not pay.
    sample = tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(args.seed))[:2000]]
    stats_loader = DataLoader(
        Subset(full_eval, sample.tolist()), batch_size=100, num_workers=args.workers
    )
    sample_x = torch.cat([center_crop(x, crop) for x, _ in stats_loader])  # (n, 3, 224, 224) uint8
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
    model = AlexNet(
        replace(PRESETS[args.preset], num_classes=len(full_train.classes), init=args.init)
    )
    mean_t, std_t = torch.tensor(mean), torch.tensor(std)

    def predict(m: nn.Module) -> tuple[Tensor, Tensor]:
        return predict_loader(m, val_loader, mean_t, std_t, crop)

    split = _split(args, len(va), len(full_train), f"ImageFolder {root}")
    return _task(args, device, model, batches, prep, False, predict, full_train.classes, split)
