"""Name -> builder for every architecture a checkpoint can name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from models.alexnet import AlexNet, AlexNetConfig
from models.vae import VAE, VAEConfig

# architecture name -> (config class, model class)
ARCHITECTURES: dict[str, tuple[Callable[..., Any], Callable[[Any], nn.Module]]] = {
    "vae": (VAEConfig, VAE),
    "alexnet": (AlexNetConfig, AlexNet),
}


def build_model(architecture: str, config: dict[str, Any]) -> nn.Module:
    """Build an untrained model from its architecture name and config arguments."""
    try:
        config_cls, model_cls = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}"
        ) from None
    return model_cls(config_cls(**config))
