"""Importing torchvision's AlexNet weights: same logits, card with ImageNet labels and figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from models.checkpoint import CARD_FILE, load_checkpoint
from models.torchvision_import import PUBLISHED_SHA256_PREFIX, build_card, main


@pytest.mark.slow  # a 61M-parameter network written, imported and loaded: ~5 s on 2 cores
def test_import_gives_the_same_logits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.alexnet().eval()  # random weights, the published layout
    pth = tmp_path / "alexnet-random.pth"
    torch.save(reference.state_dict(), pth)
    assert main([str(pth), str(tmp_path / "alexnet-imagenet")]) == 0
    model, card = load_checkpoint(tmp_path / "alexnet-imagenet")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), rtol=1e-5, atol=1e-6)
    assert card.name == "alexnet-imagenet" and card.config["lrn"] is False
    assert len(card.labels) == 1000 and card.labels[:2] == ["tench", "goldfish"]
    assert card.input.size == (224, 224) and card.input.resize == 256
    assert card.input.mean == [0.485, 0.456, 0.406] and card.input.std == [0.229, 0.224, 0.225]
    assert card.num_parameters == 61_100_840
    # random weights are not the published file: torchvision's figures are not claimed
    assert card.metrics == {} and card.training["source_is_published_file"] is False
    assert "warning" in capsys.readouterr().err


def test_card_of_the_published_file_carries_torchvisions_figures() -> None:
    card = build_card(
        "alexnet-imagenet", Path("alexnet-owt-7be5be79.pth"), PUBLISHED_SHA256_PREFIX + "0" * 56
    )
    assert card.metrics == {
        "val_top1_err": pytest.approx(0.43478),
        "val_top5_err": pytest.approx(0.20934),
    }
    assert card.dataset.name == "ImageNet-1k (ILSVRC-2012)"
    assert card.training["source_sha256"].startswith(PUBLISHED_SHA256_PREFIX)
    json.loads(card.model_dump_json())  # serialisable as the card file


def test_wrong_state_dicts_are_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pth = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(1), "head.weight": torch.zeros(1)}, pth)
    assert main([str(pth), str(tmp_path / "out")]) == 1
    assert "not torchvision's 1000-class AlexNet" in capsys.readouterr().err
    torch.save([1, 2, 3], pth)
    assert main([str(pth), str(tmp_path / "out")]) == 1
    assert "expected a state dict" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.pth"), str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out" / CARD_FILE).exists()
