"""Turn torchvision's published AlexNet ImageNet weights into this project's checkpoint format.

    python -m models.torchvision_import alexnet-owt-7be5be79.pth models/alexnet-imagenet

The user supplies the `.pth` file (https://download.pytorch.org/models/alexnet-owt-7be5be79.pth,
233 MB, too large to ship in git); it is read with `torch.load(weights_only=True)`, which refuses
anything but tensors and plain containers. torchvision trained it without LRN, so the network is
`AlexNet(AlexNetConfig(lrn=False))`. The card carries torchvision's 1,000 class names and its
ImageNet figures -- but only when the file's sha256 matches the published one, since those figures
say nothing about other weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torchvision.models import AlexNet_Weights

from models.alexnet import AlexNet, AlexNetConfig, convert_torchvision_state_dict
from models.checkpoint import DatasetInfo, InputSpec, ModelCard, save_checkpoint, sha256_file

WEIGHTS = AlexNet_Weights.IMAGENET1K_V1
# torch.hub names published files <name>-<first 8 hex digits of their sha256>.pth
PUBLISHED_SHA256_PREFIX = "7be5be79"


def build_card(name: str, source: Path, source_sha256: str) -> ModelCard:
    """The model card for torchvision's AlexNet, its figures only if the file is the published one."""
    meta = WEIGHTS.meta
    published = source_sha256.startswith(PUBLISHED_SHA256_PREFIX)
    metrics: dict[str, float] = {}
    if published:
        acc = meta["_metrics"]["ImageNet-1K"]  # percentages: acc@1 56.522, acc@5 79.066
        metrics = {
            "val_top1_err": round(1 - acc["acc@1"] / 100, 5),
            "val_top5_err": round(1 - acc["acc@5"] / 100, 5),
        }
    return ModelCard(
        name=name,
        architecture="alexnet",
        config=AlexNetConfig(lrn=False).to_dict(),
        task="classification",
        input=InputSpec(
            channels=3,
            size=(224, 224),
            resize=256,
            mean=[0.485, 0.456, 0.406],
            std=[0.229, 0.224, 0.225],
        ),
        labels=list(meta["categories"]),
        dataset=DatasetInfo(
            name="ImageNet-1k (ILSVRC-2012)",
            train_split="train (1.28M images)",
            eval_split="val (50,000 images), one 224x224 centre crop of the 256-resized image",
            notes="Trained by torchvision, not by this project; figures are torchvision's own"
            if published
            else f"sha256 does not start with torchvision's {PUBLISHED_SHA256_PREFIX}: not the "
            "published file, so torchvision's figures are not claimed",
        ),
        metrics=metrics,
        training={
            "source": "torchvision.models.AlexNet_Weights.IMAGENET1K_V1",
            "source_url": WEIGHTS.url,
            "source_file": source.name,
            "source_sha256": source_sha256,
            "source_is_published_file": published,
            "recipe": meta["recipe"],
            "lrn": "off: torchvision's AlexNet has no local response normalisation",
        },
    )


def import_torchvision_alexnet(
    pth: str | Path, out_dir: str | Path, name: str | None = None
) -> ModelCard:
    """Load torchvision's AlexNet state dict from `pth` and write a checkpoint to `out_dir`."""
    pth, out_dir = Path(pth), Path(out_dir)
    try:
        state = torch.load(pth, map_location="cpu", weights_only=True)
    except OSError:  # missing or unreadable file: the caller's message is enough
        raise
    except Exception as e:  # weights_only refuses arbitrary pickles with UnpicklingError
        raise ValueError(f"{pth}: not a loadable state dict: {e}") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{pth}: expected a state dict of tensors (torchvision's AlexNet)")
    # Built on the meta device and given the file's tensors (assign=True): no 61M-parameter
    # random init that would be overwritten at once.
    with torch.device("meta"):
        model = AlexNet(AlexNetConfig(lrn=False))
    state = {k: v.float() for k, v in state.items()}
    try:
        model.load_state_dict(convert_torchvision_state_dict(state), strict=True, assign=True)
    except (KeyError, RuntimeError) as e:
        raise ValueError(f"{pth}: not torchvision's 1000-class AlexNet: {e}") from e
    card = build_card(name or out_dir.name, pth, sha256_file(pth))
    return save_checkpoint(out_dir, model.eval(), card)


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m models.torchvision_import PTH OUT_DIR [--name NAME]`."""
    parser = argparse.ArgumentParser(
        prog="python -m models.torchvision_import",
        description="Convert torchvision's AlexNet ImageNet weights (a local .pth state dict) "
        "into a servable checkpoint directory (model.safetensors + config.json).",
    )
    parser.add_argument("pth", type=Path, help="torchvision's alexnet-owt-7be5be79.pth")
    parser.add_argument("out_dir", type=Path, help="checkpoint directory to write")
    parser.add_argument("--name", help="model name in the card (default: OUT_DIR's name)")
    args = parser.parse_args(argv)
    try:
        card = import_torchvision_alexnet(args.pth, args.out_dir, args.name)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out_dir}: {card.name}, {card.num_parameters:,} parameters")
    if card.metrics:
        print(f"ImageNet val (torchvision): {card.metrics}")
    else:
        print(f"warning: {card.dataset.notes}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
