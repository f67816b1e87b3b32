"""Model directories for the benchmark: one per model group, each served on its own.

* `full/alexnet-imagenet-random`: the full-size 224x224 AlexNet (1000 classes, ~61M parameters,
  ~0.7 GMAC per image) with random weights -- speed does not depend on the weights. Not committed.
* `small/` and `vae/`: the shipped `models/alexnet-cifar10` and `models/vae-mnist-paper` (the
  paper's 784-500-20, the VAE the tables are measured on), symlinked; when a shipped checkpoint
  is missing, a randomly initialised stand-in of the same architecture is written instead and
  its name ends in `-random`, so the report cannot pass one for the other.

    python -m benchmarks.make_checkpoints runs/bench/models
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

from models.alexnet import PRESETS, AlexNet
from models.checkpoint import CARD_FILE, DatasetInfo, InputSpec, ModelCard, save_checkpoint
from models.vae import VAE, VAEConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CIFAR_LABELS = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _random_alexnet(
    directory: Path, preset: str, spec: InputSpec, labels: list[str], notes: str, seed: int
) -> ModelCard:
    torch.manual_seed(seed)
    config = PRESETS[preset]
    card = ModelCard(
        name=directory.name,
        architecture="alexnet",
        config=config.to_dict(),
        task="classification",
        input=spec,
        labels=labels,
        dataset=DatasetInfo(name="none", notes=f"{notes} (random weights, seed {seed})"),
    )
    return save_checkpoint(directory, AlexNet(config), card)


def full_alexnet(directory: Path, seed: int = 0) -> ModelCard:
    """Write the ImageNet-size AlexNet (1000 classes) with random weights into `directory`."""
    spec = InputSpec(channels=3, size=(224, 224), resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    labels = [f"class_{i}" for i in range(PRESETS["alexnet"].num_classes)]
    return _random_alexnet(directory, "alexnet", spec, labels, "for benchmarks only", seed)


def small_alexnet_standin(directory: Path, seed: int = 0) -> ModelCard:
    """A random CIFAR-10-size AlexNet (the shipped preset) for when the trained one is absent."""
    spec = InputSpec(channels=3, size=(28, 28), resize=32, mean=[0.5] * 3, std=[0.25] * 3)
    notes = "stand-in for models/alexnet-cifar10"
    return _random_alexnet(directory, "alexnet-small", spec, CIFAR_LABELS, notes, seed)


def vae_standin(directory: Path, seed: int = 0) -> ModelCard:
    """A random VAE of the shipped shape (784-500-20, Bernoulli) for when vae-mnist-paper is absent."""
    torch.manual_seed(seed)
    config = VAEConfig()
    card = ModelCard(
        name=directory.name,
        architecture="vae",
        config=config.to_dict(),
        task="generation",
        input=InputSpec(channels=1, size=(28, 28), mean=[0.0], std=[1.0]),
        dataset=DatasetInfo(name="none", notes="random stand-in for models/vae-mnist-paper"),
    )
    return save_checkpoint(directory, VAE(config), card)


def _link_or_standin(group: Path, shipped: str, standin: Callable[[Path], ModelCard]) -> str:
    """Symlink the shipped checkpoint into `group`, or write a `-random` stand-in; its name."""
    src = SHIPPED / shipped
    if (src / CARD_FILE).is_file():
        link = group / shipped
        if not link.exists():
            link.symlink_to(src, target_is_directory=True)
        return shipped
    name = f"{shipped}-random"
    if not (group / name / CARD_FILE).is_file():
        standin(group / name)
    return name


def prepare(root: Path) -> dict[str, tuple[Path, str]]:
    """Create the three group directories under `root`; group -> (model dir, model name)."""
    groups = {g: root / g for g in ("small", "full", "vae")}
    for d in groups.values():
        d.mkdir(parents=True, exist_ok=True)
    full_name = "alexnet-imagenet-random"
    if not (groups["full"] / full_name / CARD_FILE).is_file():
        full_alexnet(groups["full"] / full_name)
    return {
        "small": (
            groups["small"],
            _link_or_standin(groups["small"], "alexnet-cifar10", small_alexnet_standin),
        ),
        "full": (groups["full"], full_name),
        "vae": (groups["vae"], _link_or_standin(groups["vae"], "vae-mnist-paper", vae_standin)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("root", type=Path, nargs="?", default=REPO / "runs" / "bench" / "models")
    args = parser.parse_args(argv)
    for group, (directory, name) in prepare(args.root).items():
        print(f"{group:6s} {directory / name}")


if __name__ == "__main__":
    main()
