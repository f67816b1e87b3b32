"""Pictures: valid PNGs of the expected size, grids with the right cells, manifold layout."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.vae import VAE, VAEConfig
from training.plots import (
    DPI,
    PANEL_SIZE,
    image_grid,
    metric_family,
    plot_confusion,
    plot_curves,
    plot_manifold,
    plot_reconstructions,
    read_metrics,
    save_image_grid,
)

PANEL_PX = (int(PANEL_SIZE[0] * DPI), int(PANEL_SIZE[1] * DPI))


def _png(path: Path) -> Image.Image:
    """Open a file that must be a valid PNG."""
    with Image.open(path) as im:
        im.verify()
    im = Image.open(path)
    assert im.format == "PNG"
    return im


def _write_metrics(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _alexnet_rows(epochs: int = 5) -> list[dict[str, object]]:
    return [
        {
            "epoch": e,
            "train_loss": 2.0 / (e + 1),
            "val_loss": 2.2 / (e + 1),
            "val_top1_error": 0.6 - 0.05 * e,
            "val_top5_error": 0.2 - 0.02 * e,
            "lr": 0.01 * 0.5**e,
            "split": "val",  # non-numeric: ignored
        }
        for e in range(epochs)
    ]


def test_metric_families() -> None:
    assert metric_family("train_loss") == metric_family("val_loss") == "loss"
    assert metric_family("val_top1_error") == metric_family("val_top5_error") == "error"
    assert metric_family("train_elbo") == metric_family("test_elbo") == "elbo"
    assert metric_family("lr") == "lr"


def test_plot_curves_one_panel_per_family(tmp_path: Path) -> None:
    metrics = _write_metrics(tmp_path / "metrics.jsonl", _alexnet_rows())
    plot_curves(metrics, tmp_path / "curves.png")  # loss, error, lr: one row of three
    assert _png(tmp_path / "curves.png").size == (3 * PANEL_PX[0], PANEL_PX[1])
    plot_curves(metrics, tmp_path / "sub" / "loss.png", keys=["train_loss", "val_loss"])
    assert _png(tmp_path / "sub" / "loss.png").size == PANEL_PX
    vae_rows = [
        {"epoch": e, "train_loss": 1.0, "train_elbo": -1.0, "test_elbo": -1.1, "lr": 1e-3}
        for e in range(3)
    ]
    vae_rows[1]["time_s"] = 4.0  # metric on one line only, a fourth family: second row
    plot_curves(_write_metrics(tmp_path / "vae.jsonl", vae_rows), tmp_path / "vae.png")
    assert _png(tmp_path / "vae.png").size == (3 * PANEL_PX[0], 2 * PANEL_PX[1])


def test_read_metrics_keeps_the_last_value_of_a_repeated_epoch(tmp_path: Path) -> None:
    rows = [{"epoch": 0, "loss": 3.0}, {"epoch": 1, "loss": 2.0}, {"epoch": 1, "loss": 1.5}]
    series = read_metrics(_write_metrics(tmp_path / "m.jsonl", rows))
    assert series == {"loss": {0: 3.0, 1: 1.5}}


def test_plot_curves_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"epoch": 0, "loss": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        plot_curves(bad, tmp_path / "x.png")
    no_epoch = _write_metrics(tmp_path / "ne.jsonl", [{"loss": 1.0}])
    with pytest.raises(ValueError, match="epoch"):
        plot_curves(no_epoch, tmp_path / "x.png")
    good = _write_metrics(tmp_path / "m.jsonl", _alexnet_rows())
    with pytest.raises(ValueError, match="nope"):
        plot_curves(good, tmp_path / "x.png", keys=["nope"])
    assert not (tmp_path / "x.png").exists()


# red, green, blue, white as (4, 3, 1, 1), blown up to 6x5 images
COLOURS = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]])


def test_image_grid_places_known_colours_in_the_right_cells(tmp_path: Path) -> None:
    h, w, pad = 6, 5, 2
    images = COLOURS[:, :, None, None].expand(-1, -1, h, w)
    save_image_grid(images[:3], tmp_path / "grid.png", nrow=2)  # 3 images, 2 a row: 2 rows
    im = _png(tmp_path / "grid.png")
    assert im.mode == "RGB"
    assert im.size == (2 * (w + pad) + pad, 2 * (h + pad) + pad)
    pixels = np.asarray(im)

    def cell(r: int, c: int) -> np.ndarray:
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        return pixels[top : top + h, left : left + w]

    for i, (r, c) in enumerate([(0, 0), (0, 1), (1, 0)]):
        assert (cell(r, c) == (COLOURS[i] * 255).numpy()).all(), f"image {i} not in cell {r, c}"
    assert (pixels[0] == 255).all(), "padding is white"


def test_image_grid_grey_images_and_clamping() -> None:
    images = torch.tensor([-0.5, 0.25, 2.0]).view(3, 1, 1, 1).expand(-1, -1, 4, 4)
    im = image_grid(images, nrow=3, padding=0)
    assert im.mode == "L" and im.size == (12, 4)
    assert np.asarray(im)[0, ::4].tolist() == [0, 64, 255]
    with pytest.raises(ValueError, match="expected"):
        image_grid(torch.rand(2, 28, 28), nrow=2)


def test_reconstructions_are_below_their_inputs(tmp_path: Path) -> None:
    n, h, w, pad = 13, 4, 4, 2
    inputs = torch.arange(n).float().div(n)[:, None, None, None].expand(-1, 1, h, w)
    recons = 1 - inputs.flatten(1)  # flat (N, D), as a decoder may return
    plot_reconstructions(inputs, recons, tmp_path / "recon.png")
    pixels = np.asarray(_png(tmp_path / "recon.png"))
    # 10 pairs a row: rows 0 and 1 hold images 0-9, rows 2 and 3 images 10-12 then blanks
    assert pixels.shape == (4 * (h + pad) + pad, 10 * (w + pad) + pad)

    def at(r: int, c: int) -> int:  # grey level inside cell (r, c)
        return int(pixels[pad + r * (h + pad) + 1, pad + c * (w + pad) + 1])

    for i in range(n):
        row, col = 2 * (i // 10), i % 10
        assert at(row, col) == round(255 * i / n)
        assert at(row + 1, col) == round(255 * (1 - i / n))
    assert at(2, 5) == at(3, 5) == 255, "empty slots are white"
    with pytest.raises(ValueError, match="differ"):
        plot_reconstructions(inputs, recons[:3], tmp_path / "x.png")


def test_manifold_decodes_gaussian_quantiles_in_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = VAE(VAEConfig(image_shape=(7, 5), hidden=8, latent=2)).train()
    n = 6
    plot_manifold(vae, tmp_path / "manifold.png", n=n)
    assert vae.training, "mode restored"
    pixels = np.asarray(_png(tmp_path / "manifold.png")).astype(int)
    assert pixels.shape == (n * 7, n * 5)  # no padding: n x n cells of 7x5
    lo, hi = torch.special.ndtri(torch.tensor([0.5 / n, 1 - 0.5 / n])).tolist()
    with torch.no_grad():
        expected = vae.decode(torch.tensor([[lo, hi], [hi, lo]]))  # top-left, bottom-right
    want = expected.mul(255).add(0.5).clamp(0, 255).floor().squeeze(1).numpy().astype(int)
    assert np.abs(pixels[:7, :5] - want[0]).max() <= 1
    assert np.abs(pixels[-7:, -5:] - want[1]).max() <= 1


def test_manifold_rejects_latent_other_than_2(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2-D latent"):
        plot_manifold(VAE(VAEConfig(hidden=8, latent=3)), tmp_path / "m.png")
    assert not (tmp_path / "m.png").exists()


def test_confusion_matrix_png(tmp_path: Path) -> None:
    matrix = torch.tensor([[5, 1, 0], [2, 7, 1], [0, 0, 0]])  # last class never seen: no NaN
    plot_confusion(matrix, ["cat", "dog", "frog"], tmp_path / "confusion.png")
    im = _png(tmp_path / "confusion.png")
    assert im.size == (6 * DPI, 5 * DPI)  # 5 x 5 inch matrix + 1 inch colour bar
    with pytest.raises(ValueError, match="3 labels"):
        plot_confusion(torch.zeros(2, 2), ["a", "b", "c"], tmp_path / "x.png")


@pytest.mark.parametrize(
    ("module", "kept_out"),
    [
        ("app.main", "matplotlib"),  # the service never draws
        ("training.plots", "matplotlib"),  # imported lazily, when a figure is drawn
        ("app.client", "torch"),  # README: the client is httpx alone, no torch import
    ],
)
def test_heavy_imports_stay_out_of_modules_that_do_not_need_them(
    module: str, kept_out: str
) -> None:
    code = f"import sys, {module}; print({kept_out!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"importing {module} imports {kept_out}"
