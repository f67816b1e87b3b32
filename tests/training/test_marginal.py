"""eval-impute and eval-ood on tiny on-disk datasets and a tiny checkpoint: what they write."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.app.conftest import make_vae
from training.cli import main
from training.marginal import make_masks
from training.ood import auroc


def _checkpoint(root: Path) -> Path:
    make_vae(root, name="vae")  # a tiny random 28x28 Bernoulli VAE
    return root / "vae"


def test_masks_top_half_and_a_random_half_of_each_image() -> None:
    top = make_masks("top", 3, 0).view(3, 28, 28)
    assert top[:, :14].all() and not top[:, 14:].any()
    rnd = make_masks("random", 3, 0)
    assert (rnd.sum(1) == 392).all() and not torch.equal(rnd[0], rnd[1])
    assert torch.equal(rnd, make_masks("random", 3, 0))  # seeded


def test_auroc_counts_pairs_ranked_right_ties_half() -> None:
    inside = torch.tensor([3.0, 4.0])
    assert auroc(inside, torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), inside) == 0.0
    assert auroc(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 2.0])) == 0.625  # (0.5+0+1+1)/4


def test_eval_impute_writes_every_method_and_the_baseline(tiny_mnist: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs"
    argv = ["eval-impute", str(_checkpoint(tmp_path)), "--data-dir", str(tiny_mnist)]
    assert main([*argv, "--limit", "12", "--steps", "2", "4", "--out", str(out)]) == 0
    result = json.loads((out / "marginal-impute.json").read_text())
    rows = {(r["mask"], r["method"], r["steps"]): r for r in result["rows"]}
    assert set(rows) == {
        (m, method, s)
        for m in ("top", "random")
        for method, s in [("training mean", 0)]
        + [(x, s) for x in ("pseudo-gibbs", "mwg") for s in (2, 4)]
    }
    assert all(r["bce"] > 0 and 0 <= r["error_rate"] <= 1 for r in rows.values())
    assert 0 <= rows["top", "mwg", 4]["acceptance"] <= 1
    assert result["images"] == 12 and set(result["best"]) == {"top", "random"}
    assert "| top | training mean |" in (out / "marginal-impute.md").read_text()
    for kind in ("top", "random"):
        assert (out / "figures" / "marginal" / f"impute-{kind}.png").stat().st_size > 0


def test_eval_ood_scores_every_source(
    tiny_mnist: Path, tiny_frey: Path, tiny_imagefolder: Path, tmp_path: Path
) -> None:
    (tmp_path / "cifar10").mkdir()
    tiny_imagefolder.rename(tmp_path / "cifar10" / "train")
    out = tmp_path / "docs"
    argv = ["eval-ood", str(_checkpoint(tmp_path)), "--data-dir", str(tmp_path)]
    assert main([*argv, "--limit", "10", "--k", "3", "--out", str(out)]) == 0
    result = json.loads((out / "marginal-ood.json").read_text())
    assert result["k"] == 3 and result["mnist"]["images"] == 10
    assert [s["source"].split(" ")[0] for s in result["sources"]] == ["CIFAR-10", "Frey", "uniform"]
    for s in result["sources"]:
        assert 0 <= s["auroc_log_px"] <= 1 and s["images"] == 10
        slug = s["source"].split(" ")[0].lower()
        assert (out / "figures" / "marginal" / f"ood-{slug}.png").stat().st_size > 0
    assert "AUROC" in (out / "marginal-ood.md").read_text()
