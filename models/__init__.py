"""Networks, the checkpoint format and the shipped weights (one directory per model).

Imported by both ``training`` and ``app``; imports neither.
"""

from models.alexnet import AlexNet, AlexNetConfig
from models.checkpoint import (
    CheckpointError,
    InputSpec,
    ModelCard,
    load_checkpoint,
    read_card,
    save_checkpoint,
)
from models.registry import ARCHITECTURES, build_model
from models.vae import VAE, VAEConfig

__all__ = [
    "ARCHITECTURES",
    "VAE",
    "AlexNet",
    "AlexNetConfig",
    "CheckpointError",
    "InputSpec",
    "ModelCard",
    "VAEConfig",
    "build_model",
    "load_checkpoint",
    "read_card",
    "save_checkpoint",
]
