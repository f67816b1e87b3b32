"""Checkpoint format: ``model.safetensors`` + ``config.json`` (the model card) in one directory.

Loading never unpickles: safetensors holds only tensors, the card is JSON validated by pydantic,
and the sha256 of the weights recorded in the card is checked before the weights are read.
Optimiser state for resuming training is written by ``training/`` to a separate file that is
never shipped.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from models.registry import build_model

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "config.json"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint directory that cannot be loaded; the message names the file and the fault."""


class InputSpec(BaseModel):
    """How to turn an uploaded image into the model's input tensor."""

    model_config = ConfigDict(extra="forbid")

    channels: Literal[1, 3] = Field(description="1: greyscale ('L'), 3: RGB")
    size: tuple[int, int] = Field(description="(height, width) of the tensor the network takes")
    resize: int | None = Field(
        default=None,
        description="Resize the shorter side to this many pixels, then centre-crop to `size`; "
        "null: resize straight to `size`",
    )
    mean: list[float] = Field(description="Per-channel mean subtracted after scaling to [0, 1]")
    std: list[float] = Field(description="Per-channel std divided by after subtracting the mean")
    invert: bool = Field(
        default=False,
        description="Invert grey levels after scaling (for a model trained on the opposite "
        "polarity of what users upload)",
    )
    background: int = Field(
        default=255,
        ge=0,
        le=255,
        description="Grey level transparent areas are composited onto: 255 (white) for photos "
        "and dark ink on paper, 0 for light-on-dark data such as MNIST digits",
    )


class DatasetInfo(BaseModel):
    """Where the model was trained and evaluated."""

    name: str
    train_split: str = ""
    eval_split: str = ""
    seed: int | None = None
    notes: str = ""


class ModelCard(BaseModel):
    """Everything about a checkpoint except its weights; written as config.json."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: int = FORMAT_VERSION
    name: str
    architecture: Literal["vae", "alexnet"]
    config: dict[str, Any] = Field(description="Arguments of the architecture's config dataclass")
    task: Literal["classification", "generation"]
    input: InputSpec
    labels: list[str] = Field(default_factory=list, description="Class names, index order")
    dataset: DatasetInfo
    metrics: dict[str, float] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    code_version: str = ""
    created_at: str = ""
    weights_sha256: str = ""
    num_parameters: int = 0


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """The git commit of the code that wrote the checkpoint ('unknown' outside a checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save_checkpoint(directory: str | Path, model: nn.Module, card: ModelCard) -> ModelCard:
    """Write weights and card into `directory`; fills sha256, sizes, version and time."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    weights = directory / WEIGHTS_FILE
    # safetensors' own save_file creates the file 0600 whatever the umask, so a checkpoint
    # trained by one user (or container) could not be served by another; written by Python, the
    # file gets the usual permissions (0644 under the common umask), like config.json.
    weights.write_bytes(save(state, metadata={"format": "pt", "name": card.name}))
    card = card.model_copy(
        update={
            "weights_sha256": sha256_file(weights),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "code_version": card.code_version or code_version(),
            "created_at": card.created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    (directory / CARD_FILE).write_text(card.model_dump_json(indent=2) + "\n")
    return card


def read_card(directory: str | Path) -> ModelCard:
    """Parse and validate a directory's config.json."""
    path = Path(directory) / CARD_FILE
    try:
        return ModelCard.model_validate_json(path.read_bytes())
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: model card not found") from e
    except (ValidationError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid model card: {e}") from e


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """Verify and load a checkpoint directory; returns the model in eval mode and its card."""
    directory = Path(directory)
    card = read_card(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file not found")
    digest = sha256_file(weights)
    if digest != card.weights_sha256:
        raise CheckpointError(
            f"{weights}: sha256 {digest} does not match the card's {card.weights_sha256}"
        )
    try:
        # Built on the meta device: no time spent drawing random weights that are replaced
        # at once (1.6 s for the full-size AlexNet); load_state_dict(assign=True) materialises.
        with torch.device("meta"):
            model = build_model(card.architecture, card.config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / CARD_FILE}: bad architecture config: {e}") from e
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: unreadable safetensors file: {e}") from e
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{weights}: weights do not match the card's architecture: {e}"
        ) from e
    return model.to(device).eval(), card
