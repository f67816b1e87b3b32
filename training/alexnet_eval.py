"""`eval-alexnet`: top-1/top-5 error of an AlexNet checkpoint on the held-out split it was
trained beside (the same seeded split of the same images), optionally over ten crops and in
another number format, written into the checkpoint's card."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from models.checkpoint import ModelCard, load_checkpoint
from models.precision import DTYPES
from training.alexnet import eval_image_folder, full_image_folder
from training.classification import format_errors, predict_loader, predict_small, val_errors
from training.data import TORCHVISION_CIFAR10, DataError, load_small_images, split_indices
from training.devices import select_device
from training.loop import update_card


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The `eval-alexnet` subcommand's options beyond the common ones (cli.py)."""
    p.add_argument(
        "--packed", type=Path, default=None, help="read the images from this pack file instead"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="reuse or write the decoded-image cache here (default: none)",
    )
    p.add_argument(
        "--ten-crop",
        action="store_true",
        help="average the softmax over ten crops (corners, centre, and their mirror images); "
        "stored as val_top1_err_tencrop / val_top5_err_tencrop",
    )
    p.add_argument(
        "--batch-size", type=int, default=250, help="images per forward pass (default: %(default)s)"
    )
    p.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="also evaluate with the weights and activations in this number format, as "
        "MODELSERVE_DTYPE serves them: stored as val_top1_err_<dtype>, val_top5_err_<dtype> "
        "and the difference to float32 on the same images: val_top1_err_delta_<dtype>, "
        "val_top1_agree_<dtype> (fraction with the same top class), val_prob_max_diff_<dtype> "
        "(default: %(default)s, float32 only)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=4,
        help="DataLoader workers, full-size preset only (default: %(default)s)",
    )


def evaluate_checkpoint(args: argparse.Namespace) -> ModelCard:
    """`eval-alexnet`: top-1/top-5 error on the card's validation split, written into the card."""
    device = select_device(args.device)
    model, card = load_checkpoint(args.checkpoint, device)
    t, name = card.training, card.dataset.name
    n_val, total, seed = int(t["val_size"]), int(t["dataset_size"]), card.dataset.seed or 0
    size, crop = card.input.resize or card.input.size[0], card.input.size[0]
    mean, std = torch.tensor(card.input.mean), torch.tensor(card.input.std)
    progress = args.progress and sys.stderr.isatty()
    source = args.packed or Path(args.data_dir)
    if t.get("preset", "alexnet-small") == "alexnet-small":
        data = load_small_images(
            source,
            name,
            size=size,
            cache_dir=args.cache_dir,
            download=args.download,
            progress=progress,
        )
        classes, n = data.classes, len(data.labels)
        # torchvision's CIFAR10 holds the same images as the JPEG tree (and a pack of it) in
        # another order: the seeded split would pick other images, many of them trained on.
        tv = TORCHVISION_CIFAR10
        if (tv in card.dataset.train_split) != (data.source == tv):
            raise DataError(
                f"{source} gives {data.source}, but the checkpoint's split was drawn from "
                f"{card.dataset.train_split!r}: the images are in another order there, so the "
                "held-out indices would pick other images; point --data-dir at the same kind of "
                "source (an ImageFolder tree or its pack, or cifar-10-batches-py)"
            )
    else:
        folder = eval_image_folder(full_image_folder(source, name), size)
        classes, n = folder.classes, len(folder)
    if n != total or classes != card.labels:
        raise DataError(
            f"{source} holds {n} images of classes {classes[:3]}...; the checkpoint was trained on "
            f"{total} images of {card.labels[:3]}...: not the same data, so not the same split"
        )
    _, va = split_indices(total, n_val, seed)

    def predict(m: nn.Module) -> tuple[Tensor, Tensor]:  # probabilities (N, C), labels (N,)
        if t.get("preset", "alexnet-small") == "alexnet-small":
            x, labels = data.images[va], data.labels[va]
            return predict_small(
                m, x, mean, std, crop, args.ten_crop, args.batch_size, progress=progress
            ), labels
        loader = DataLoader(
            Subset(folder, va.tolist()), batch_size=args.batch_size, num_workers=args.workers
        )
        return predict_loader(m, loader, mean, std, crop, args.ten_crop, progress=progress)

    suffix = "_tencrop" if args.ten_crop else ""
    scores, labels = predict(model)
    metrics = val_errors(scores, labels, suffix)
    if args.dtype != "float32":  # the same images again, the weights cast to that format
        low, _ = predict(model.to(DTYPES[args.dtype]))
        metrics |= format_errors(scores, low, labels, f"{suffix}_{args.dtype}")
    return update_card(args.checkpoint, card, metrics)
