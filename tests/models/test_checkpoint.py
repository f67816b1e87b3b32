"""Checkpoint format: round trip, and every broken directory rejected with a clear message."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from models.alexnet import PRESETS, AlexNet, AlexNetConfig
from models.checkpoint import (
    CARD_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    DatasetInfo,
    InputSpec,
    ModelCard,
    load_checkpoint,
    read_card,
    save_checkpoint,
    sha256_file,
)
from models.vae import VAE, VAEConfig

TINY_ALEXNET = AlexNetConfig(
    num_classes=3, widths=(8, 8, 8, 8, 8), conv1_kernel=5, conv1_stride=1, pool_size=2, hidden=16
)


def _alexnet_card(config: AlexNetConfig) -> ModelCard:
    return ModelCard(
        name="tiny-alexnet",
        architecture="alexnet",
        config=config.to_dict(),
        task="classification",
        input=InputSpec(channels=3, size=(28, 28), mean=[0.5] * 3, std=[0.25] * 3),
        labels=["a", "b", "c"][: config.num_classes],
        dataset=DatasetInfo(name="synthetic"),
        metrics={"val_top1_error": 0.5},
    )


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, AlexNet]:
    """A tiny AlexNet written to tmp_path/ckpt."""
    torch.manual_seed(0)
    model = AlexNet(TINY_ALEXNET).eval()
    save_checkpoint(tmp_path / "ckpt", model, _alexnet_card(TINY_ALEXNET))
    return tmp_path / "ckpt", model


def test_round_trip_gives_identical_outputs(saved: tuple[Path, AlexNet]) -> None:
    directory, model = saved
    loaded, card = load_checkpoint(directory)
    assert not loaded.training, "returned in eval mode"
    x = torch.randn(3, 3, 28, 28)
    assert torch.equal(loaded(x), model(x))
    assert card.weights_sha256 == sha256_file(directory / WEIGHTS_FILE)
    assert card.num_parameters == sum(p.numel() for p in model.parameters())
    assert card.created_at and card.code_version
    assert card.labels == ["a", "b", "c"] and card.metrics == {"val_top1_error": 0.5}
    assert read_card(directory) == card


def test_files_get_the_umasks_permissions(tmp_path: Path) -> None:
    # Another user (the container's) must be able to serve what training wrote: safetensors'
    # save_file alone makes the weights 0600.
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "ckpt", AlexNet(TINY_ALEXNET), _alexnet_card(TINY_ALEXNET))
    finally:
        os.umask(old)
    for name in (WEIGHTS_FILE, "config.json"):
        assert stat.S_IMODE((tmp_path / "ckpt" / name).stat().st_mode) == 0o644, name


def test_vae_round_trip(tmp_path: Path) -> None:
    config = VAEConfig(image_shape=(28, 20), hidden=8, latent=2, likelihood="gaussian")
    vae = VAE(config).eval()
    card = ModelCard(
        name="tiny-vae",
        architecture="vae",
        config=config.to_dict(),
        task="generation",
        input=InputSpec(channels=1, size=(28, 20), mean=[0.0], std=[1.0]),
        dataset=DatasetInfo(name="synthetic"),
    )
    save_checkpoint(tmp_path, vae, card)
    loaded, _ = load_checkpoint(tmp_path)
    assert isinstance(loaded, VAE) and loaded.config == config
    z = torch.randn(4, 2)
    assert torch.equal(loaded.decode(z), vae.decode(z))


def test_tampered_weights_are_rejected(saved: tuple[Path, AlexNet]) -> None:
    directory, _ = saved
    weights = directory / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01  # one bit inside the last tensor's data: still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 .* does not match"):
        load_checkpoint(directory)


def test_missing_files_are_named(saved: tuple[Path, AlexNet]) -> None:
    directory, _ = saved
    (directory / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: weights file not found"):
        load_checkpoint(directory)
    (directory / CARD_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: model card not found"):
        load_checkpoint(directory)


def _rewrite_card(directory: Path, **changes: object) -> None:
    card = json.loads((directory / CARD_FILE).read_text())
    card.update(changes)
    (directory / CARD_FILE).write_text(json.dumps(card))


def test_truncated_weights_are_rejected(saved: tuple[Path, AlexNet]) -> None:
    directory, _ = saved
    weights = directory / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(directory)
    # even with a card that vouches for the truncated bytes, safetensors refuses them
    _rewrite_card(directory, weights_sha256=sha256_file(weights))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unreadable safetensors file"):
        load_checkpoint(directory)


def test_invalid_card_json(saved: tuple[Path, AlexNet]) -> None:
    directory, _ = saved
    (directory / CARD_FILE).write_text('{"name": "x", ')
    with pytest.raises(CheckpointError, match=r"config\.json: invalid model card"):
        load_checkpoint(directory)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("architecture", "resnet", "invalid model card"),  # not one the card format knows
        ("labels", "cat", "invalid model card"),  # wrong type
        ("unexpected", 1, "invalid model card"),  # unknown fields are refused, not ignored
    ],
)
def test_invalid_card_fields(
    saved: tuple[Path, AlexNet], field: str, value: object, message: str
) -> None:
    directory, _ = saved
    _rewrite_card(directory, **{field: value})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(directory)


def test_card_config_that_does_not_match_the_weights(saved: tuple[Path, AlexNet]) -> None:
    directory, _ = saved
    config = TINY_ALEXNET.to_dict()
    _rewrite_card(directory, config={**config, "hidden": 32})
    with pytest.raises(CheckpointError, match="weights do not match the card's architecture"):
        load_checkpoint(directory)
    _rewrite_card(directory, config={**config, "depth": 3})  # not an AlexNet argument
    with pytest.raises(CheckpointError, match="bad architecture config"):
        load_checkpoint(directory)


def test_loading_never_unpickles(
    saved: tuple[Path, AlexNet], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, model = saved

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("load_checkpoint must not unpickle")

    for target, name in [
        (pickle, "Unpickler"),
        (pickle, "load"),
        (pickle, "loads"),
        (torch, "load"),
    ]:
        monkeypatch.setattr(target, name, refuse)
    loaded, _ = load_checkpoint(directory)
    x = torch.randn(1, 3, 28, 28)
    assert torch.equal(loaded(x), model(x))


def test_shipped_small_preset_round_trips(tmp_path: Path) -> None:
    """The CIFAR-10 preset's real size: the file the service ships, under 25 MB."""
    model = AlexNet(PRESETS["alexnet-small"]).eval()
    save_checkpoint(tmp_path, model, _alexnet_card(PRESETS["alexnet-small"]))
    assert (tmp_path / WEIGHTS_FILE).stat().st_size < 25 * 2**20
    loaded, card = load_checkpoint(tmp_path)
    assert card.num_parameters == sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
