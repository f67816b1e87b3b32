"""eval-vae and eval-alexnet: metrics written into the card, weights still verified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import load_checkpoint, read_card
from models.vae import VAE
from training.classification import confusion_matrix
from training.cli import main
from training.vae import binarize_fixed, evaluate_elbo, importance_log_px


def test_importance_sampled_log_px_is_above_the_elbo(tiny_mnist: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    base = ["--hidden", "16", "--latent", "2", "--batch-size", "50", "--no-progress"]
    assert (
        main(["vae", "--data-dir", str(tiny_mnist), "--run-dir", str(run), "--epochs", "1", *base])
        == 0
    )
    before = (run / "export" / "model.safetensors").read_bytes()
    argv = ["eval-vae", str(run / "export"), "--data-dir", str(tiny_mnist), "--k", "64"]
    assert main([*argv, "--limit", "40", "--no-progress"]) == 0
    model, card = load_checkpoint(run / "export")  # sha256 still matches after the rewrite
    assert isinstance(model, VAE)
    assert (run / "export" / "model.safetensors").read_bytes() == before
    m = card.metrics
    assert m["test_log_px_first40"] > m["test_elbo_first40"]
    assert card.training["log_px_evaluation_first40"]["k"] == 64  # beside its own metrics
    assert "log_px_evaluation" not in card.training  # the full evaluation's, untouched
    # per image, averaged over several ELBO samples: the IS estimate is the tighter bound
    x = binarize_fixed(torch.randint(0, 256, (30, 28, 28), dtype=torch.uint8))
    elbo = sum(evaluate_elbo(model, x, seed=s) for s in range(5)) / 5.0
    assert importance_log_px(model, x, k=64).mean().item() > elbo


def _train_tiny_alexnet(data: Path, tmp_path: Path) -> Path:
    """One epoch of the small preset on `data` (6 images held out); the run directory."""
    run = tmp_path / "run"
    argv = ["alexnet", "--data-dir", str(data), "--run-dir", str(run), "--epochs", "1"]
    assert main([*argv, "--val-size", "6", "--batch-size", "6", "--no-progress"]) == 0
    return run


def test_eval_alexnet_writes_errors_and_ten_crop(tiny_imagefolder: Path, tmp_path: Path) -> None:
    run = _train_tiny_alexnet(tiny_imagefolder, tmp_path)
    trained = read_card(run / "export").metrics["val_top1_err"]
    ev = ["eval-alexnet", str(run / "export"), "--data-dir", str(tiny_imagefolder), "--no-progress"]
    assert main(ev) == 0
    card = read_card(run / "export")
    assert card.metrics["val_top1_err"] == pytest.approx(trained)  # same split, same model
    assert main([*ev, "--ten-crop"]) == 0
    m = read_card(run / "export").metrics
    assert {"val_top1_err_tencrop", "val_top5_err_tencrop"} <= set(m)
    for key in ("val_top1_err_tencrop", "val_top5_err_tencrop"):  # fractions of 6 images
        assert m[key] * 6 == pytest.approx(round(m[key] * 6))


def test_eval_alexnet_in_bfloat16_records_its_errors_beside_float32(
    tiny_imagefolder: Path, tmp_path: Path
) -> None:
    run = _train_tiny_alexnet(tiny_imagefolder, tmp_path)
    ev = ["eval-alexnet", str(run / "export"), "--data-dir", str(tiny_imagefolder), "--no-progress"]
    assert main([*ev, "--dtype", "bfloat16"]) == 0
    model, card = load_checkpoint(run / "export")  # the weights file is untouched
    m = card.metrics
    assert m["val_top1_err_delta_bfloat16"] == pytest.approx(
        m["val_top1_err_bfloat16"] - m["val_top1_err"]
    )
    assert m["val_top5_err_bfloat16"] * 6 == pytest.approx(round(m["val_top5_err_bfloat16"] * 6))
    assert 0.0 <= m["val_top1_agree_bfloat16"] <= 1.0 and m["val_prob_max_diff_bfloat16"] < 0.1
    assert next(model.parameters()).dtype == torch.float32


def test_eval_alexnet_refuses_other_data(
    tiny_imagefolder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _train_tiny_alexnet(tiny_imagefolder, tmp_path)
    next(tiny_imagefolder.glob("ship/*.jpg")).unlink()
    ev = ["eval-alexnet", str(run / "export"), "--data-dir", str(tiny_imagefolder), "--no-progress"]
    assert main(ev) == 2
    assert "not the same data" in capsys.readouterr().err
    assert json.loads((run / "export" / "config.json").read_text())["metrics"]["val_top1_err"] >= 0


def test_eval_alexnet_refuses_the_same_images_in_another_order(
    tiny_imagefolder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A card whose split was drawn from torchvision's CIFAR10 arrays, evaluated on the JPEG
    # tree: same count and classes, other order, so other held-out images.
    run = _train_tiny_alexnet(tiny_imagefolder, tmp_path)
    path = run / "export" / "config.json"
    card = json.loads(path.read_text())
    card["dataset"]["train_split"] = "18 of 24 training images (torchvision CIFAR10)"
    path.write_text(json.dumps(card))
    ev = ["eval-alexnet", str(run / "export"), "--data-dir", str(tiny_imagefolder), "--no-progress"]
    assert main(ev) == 2
    assert "the images are in another order there" in capsys.readouterr().err


def test_confusion_matrix_counts_true_rows_against_predicted_columns() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.0, 0.1, 0.9]])
    labels = torch.tensor([0, 1, 2, 2])
    expected = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    assert torch.equal(confusion_matrix(scores, labels), expected)
