"""`python -m training.gpu_run`: the GPU command's whole path as a CPU dry run on tiny data,
and the bundles that carry data there and checkpoints back."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from models.checkpoint import load_checkpoint
from models.vae import VAE
from training.gpu_bundle import PACK_NAME, BundleError, join_results
from training.gpu_run import main
from training.pack import read_pack


@pytest.fixture
def datasets(tiny_mnist: Path, tiny_imagefolder: Path) -> Path:
    """A datasets folder as ../shared/datasets lays it out: cifar10/train and MNIST/raw."""
    (tiny_mnist / "cifar10").mkdir()
    tiny_imagefolder.rename(tiny_mnist / "cifar10" / "train")
    return tiny_mnist


def test_prepare_limits_each_class_and_split(datasets: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    assert main(["prepare", "--data-dir", str(datasets), "--out", str(bundle), "--limit", "5"]) == 0
    header, _ = read_pack(bundle / PACK_NAME)
    assert header["labels"] == [0] * 5 + [1] * 5 + [2] * 5
    images = gzip.decompress((bundle / "MNIST/raw/train-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((bundle / "MNIST/raw/t10k-labels-idx1-ubyte.gz").read_bytes())
    assert int.from_bytes(images[4:8], "big") == 5 and len(images) == 16 + 5 * 28 * 28
    original = (datasets / "MNIST/raw/t10k-labels-idx1-ubyte").read_bytes()
    assert labels == original[:4] + (5).to_bytes(4, "big") + original[8:13]


@pytest.mark.slow  # two training processes start, train an epoch and evaluate: ~30 s on 2 cores
def test_the_dry_run_trains_both_models_and_returns_checksummed_parts(
    datasets: Path, tmp_path: Path
) -> None:
    bundle, out, work = tmp_path / "bundle", tmp_path / "out", tmp_path / "work"
    assert main(["prepare", "--data-dir", str(datasets), "--out", str(bundle)]) == 0
    argv = ["run", "--data", str(bundle), "--out", str(out), "--work", str(work), "--dry-run"]
    assert main([*argv, "--part-mib", "8", "--budget-s", "300", "--vae-args=--latent 4"]) == 0

    returned = sorted(p.name for p in out.iterdir())
    assert len(returned) <= 8  # what the device machine gives back
    assert all((out / name).stat().st_size <= 8 * 2**20 for name in returned)
    parts = [n for n in returned if n.startswith("gpu-run.tar.")]
    assert len(parts) >= 3  # AlexNet's 18 MB of weights alone need three parts of 8 MiB
    summary = json.loads((out / "summary.json").read_text())
    assert {r["exit"] for r in summary["models"].values()} == {0}

    back = tmp_path / "back"
    join_results(out, back)
    _, card = load_checkpoint(back / "alexnet" / "export")
    assert card.name == "alexnet-cifar10" and card.training["precision"] == "bf16 autocast"
    assert card.training["epochs"] == 1 and "val_top1_err_tencrop" in card.metrics
    assert "--amp bf16" in card.training["command"]
    vae, card = load_checkpoint(back / "vae" / "export")
    assert isinstance(vae, VAE) and (vae.config.depth, vae.config.hidden) == (2, 500)
    assert vae.config.latent == 4  # --vae-args after the recipe's --latent 50
    assert card.name == "vae-mnist" and card.training["precision"] == "fp32"
    assert card.metrics["test_log_px"] < 0 and card.training["log_px_evaluation"]["k"] == 10
    assert summary["models"]["vae"]["metrics"]["test_log_px"] == card.metrics["test_log_px"]
    assert (back / "alexnet" / "curves.png").is_file() and (back / "vae" / "train.log").is_file()

    damaged = out / parts[-1]
    damaged.chmod(0o644)
    damaged.write_bytes(damaged.read_bytes()[:-1])
    with pytest.raises(BundleError, match="does not match"):
        join_results(out, tmp_path / "again")
