"""Every registered architecture builds from a small config and gives finite outputs."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models.registry import ARCHITECTURES, build_model
from models.vae import VAE

# A small config and an input shape per architecture; a new architecture must add one here.
SMALL: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "vae": ({"image_shape": [7, 5], "hidden": 16, "latent": 3}, (4, 1, 7, 5)),
    "alexnet": (
        {
            "num_classes": 6,
            "widths": [8, 12, 16, 16, 8],
            "conv1_kernel": 5,
            "conv1_stride": 1,
            "pool_size": 2,
            "hidden": 32,
        },
        (4, 3, 28, 28),
    ),
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_builds_and_runs(name: str) -> None:
    assert name in SMALL, f"add a small config for {name!r} to SMALL"
    config, shape = SMALL[name]
    torch.manual_seed(0)
    model = build_model(name, config).eval()
    x = torch.rand(shape)
    with torch.no_grad():
        if isinstance(model, VAE):
            loss = model(x)  # negative lower bound, nats
            assert loss.shape == () and torch.isfinite(loss) and loss > 0
            out = model.decode(model.encode(x)[0])
            assert out.shape == shape
        else:
            out = model(x)
            assert out.shape == (shape[0], config["num_classes"])
    assert torch.isfinite(out).all()


def test_unknown_architecture_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        build_model("resnet", {})
