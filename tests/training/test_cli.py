"""`python -m training vae|alexnet` end to end on tiny data in the real on-disk formats."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.checkpoint import load_checkpoint
from models.vae import VAE
from training.cli import build_parser, main

FAST_VAE = ["--hidden", "16", "--latent", "2", "--batch-size", "50", "--no-progress"]
FAST_ALEX = ["--val-size", "6", "--batch-size", "6", "--no-progress"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_help_explains_every_option() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("vae", "alexnet", "eval-vae", "eval-alexnet", "pack-imagefolder", "figure2"):
        for action in sub.choices[name]._actions:
            assert action.help, f"{name} {action.option_strings} has no help"


def test_vae_mnist_one_epoch_writes_metrics_and_a_loadable_checkpoint(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    argv = ["vae", "--data-dir", str(tiny_mnist), "--run-dir", str(run), "--epochs", "1"]
    assert main(argv + FAST_VAE) == 0
    (line,) = _metrics(run)
    assert line["epoch"] == 1 and line["test_elbo"] < 0 and line["train_elbo"] < 0
    model, card = load_checkpoint(run / "export")
    assert isinstance(model, VAE) and model.config.latent == 2
    assert card.name == "vae-mnist" and card.config["likelihood"] == "bernoulli"
    assert card.metrics["test_elbo"] == pytest.approx(line["test_elbo"])
    assert card.input.channels == 1 and tuple(card.input.size) == (28, 28)
    assert card.input.mean == [0.0] and card.input.std == [1.0]
    assert card.input.background == 0  # white ink on black: transparency becomes black
    assert card.training["epochs"] == 1 and card.training["optimizer"] == "adam"
    assert card.training["machine"]["torch"] == torch.__version__
    assert "binarised once with seed" in card.dataset.eval_split
    assert (run / "state.pt").is_file() and not (run / "export" / "state.pt").exists()
    for png in ("curves", "samples", "reconstructions", "manifold"):  # manifold: latent is 2
        assert (run / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_the_papers_vae_recipe_flags_reach_the_card_and_the_export_dir(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """docs/training.md's deviations list names these flags as the way back to the paper's recipe."""
    run, export = tmp_path / "run", tmp_path / "models" / "mine"
    argv = ["vae", "--data-dir", str(tiny_mnist), "--run-dir", str(run), "--export", str(export)]
    flags = ["--optimizer", "adagrad", "--lr", "0.02", "--weight-decay", "1e-4", "--init", "paper"]
    assert main([*argv, "--epochs", "1", *flags, "--name", "vae-mnist-paper", *FAST_VAE]) == 0
    assert not (run / "export").exists()
    model, card = load_checkpoint(export)
    assert card.name == "vae-mnist-paper"  # --name: served under it beside the default vae-mnist
    assert card.training["optimizer"] == "adagrad" and card.training["lr"] == 0.02
    assert card.training["weight_decay"] == 1e-4 and card.config["init"] == "paper"
    # N(0, 0.01^2) at the start; one epoch of 4 small Adagrad steps keeps them near that
    stds = [float(p.detach().std()) for p in model.parameters() if p.numel() > 1]
    assert max(stds) < 0.1


def test_an_epoch_logs_progress_lines_when_stderr_is_not_a_terminal(
    tiny_mnist: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long epoch in a log file is not silent: lines with step, loss and rate (here every
    step, the interval set to 0); --no-progress turns them off."""
    monkeypatch.setattr("training.loop.LOG_EVERY_S", 0.0)
    argv = ["vae", "--data-dir", str(tiny_mnist), "--epochs", "1", "--batch-size", "50"]
    assert main([*argv, "--hidden", "16", "--run-dir", str(tmp_path / "a")]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if " step " in ln]
    assert [ln.split(" loss=")[0] for ln in lines] == [
        f"epoch 1/1 step {i}/4" for i in (1, 2, 3, 4)
    ]
    assert re.fullmatch(r"epoch 1/1 step 4/4 loss=\S+ \d+ examples/s", lines[-1])
    assert main([*argv, "--hidden", "16", "--run-dir", str(tmp_path / "b"), "--no-progress"]) == 0
    assert " step " not in capsys.readouterr().err


def test_vae_frey_records_its_validation_split(tiny_frey: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    argv = ["vae", "--dataset", "frey", "--data-dir", str(tiny_frey), "--run-dir", str(run)]
    assert main([*argv, "--epochs", "1", *FAST_VAE]) == 0
    _, card = load_checkpoint(run / "export")
    assert card.config["likelihood"] == "gaussian" and tuple(card.input.size) == (28, 20)
    assert card.input.background == 255
    assert card.dataset.train_split.startswith("54 of 60") and "6 images" in card.dataset.eval_split
    assert "val_elbo" in card.metrics


def test_resume_continues_exactly_where_the_run_stopped(tiny_mnist: Path, tmp_path: Path) -> None:
    base = ["vae", "--data-dir", str(tiny_mnist), *FAST_VAE]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*base, "--run-dir", str(straight), "--epochs", "2"]) == 0
    assert main([*base, "--run-dir", str(split), "--epochs", "1"]) == 0
    assert main([*base, "--run-dir", str(split), "--epochs", "2", "--resume"]) == 0
    assert [m["epoch"] for m in _metrics(split)] == [1, 2]
    a = load_file(str(straight / "export" / "model.safetensors"))
    b = load_file(str(split / "export" / "model.safetensors"))
    for key in a:  # same data order, same noise, same optimiser state: the same weights
        torch.testing.assert_close(a[key], b[key])
    state = torch.load(split / "state.pt", weights_only=True)
    assert state["epoch"] == 2


def test_a_resumed_run_made_longer_follows_the_longer_schedule(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    """Extending a finished cosine run restarts from the rate the longer schedule has there,
    not from the old run's last rate (0)."""
    base = ["vae", "--data-dir", str(tiny_mnist), *FAST_VAE, "--schedule", "cosine"]
    longer, extended = tmp_path / "longer", tmp_path / "extended"
    assert main([*base, "--run-dir", str(longer), "--epochs", "4"]) == 0
    assert main([*base, "--run-dir", str(extended), "--epochs", "2"]) == 0
    assert _metrics(extended)[-1]["lr"] == 0
    assert main([*base, "--run-dir", str(extended), "--epochs", "4", "--resume"]) == 0
    assert [m["epoch"] for m in _metrics(extended)] == [1, 2, 3, 4]
    rates = [m["lr"] for m in _metrics(extended)[2:]]
    assert rates == pytest.approx([m["lr"] for m in _metrics(longer)[2:]], abs=1e-12)
    assert rates[0] > 0
    _, card = load_checkpoint(extended / "export")
    assert card.training["schedule_history"] == [{"epochs": 2, "until_epoch": 2}]
    _, card = load_checkpoint(longer / "export")
    assert "schedule_history" not in card.training


def test_a_fresh_run_in_a_used_run_dir_starts_its_curves_afresh(
    tiny_mnist: Path, tmp_path: Path
) -> None:
    base = ["vae", "--data-dir", str(tiny_mnist), *FAST_VAE, "--run-dir", str(tmp_path / "run")]
    assert main([*base, "--epochs", "2"]) == 0
    assert main([*base, "--epochs", "1", "--seed", "1"]) == 0  # not --resume: a new run
    assert [m["epoch"] for m in _metrics(tmp_path / "run")] == [1]


def test_alexnet_small_trains_on_an_imagefolder_tree(
    tiny_imagefolder: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    argv = ["alexnet", "--data-dir", str(tiny_imagefolder), "--run-dir", str(run), "--epochs", "1"]
    assert main(argv + FAST_ALEX) == 0
    (line,) = _metrics(run)
    assert 0 <= line["val_top1_err"] <= 1 and line["val_top5_err"] == 0  # 3 classes < 5
    model, card = load_checkpoint(run / "export")
    assert card.labels == ["bird", "cat", "ship"] and card.config["num_classes"] == 3
    assert tuple(card.input.size) == (28, 28) and card.input.resize == 32
    # each channel is 200 in one class and 40 in the others: mean between, std well above noise
    assert all(40 / 255 < m < 200 / 255 for m in card.input.mean)
    assert all(s > 0.2 for s in card.input.std)
    assert len(card.training["pca_eigvecs"]) == 3 and card.training["momentum"] == 0.9
    assert card.dataset.train_split.startswith("18 of 24")
    assert list((run / "cache").glob("*.safetensors"))  # decoded once, cached
    assert (run / "confusion.png").is_file() and (run / "curves.png").is_file()
    out = model(torch.zeros(2, 3, 28, 28))
    assert out.shape == (2, 3)


def test_alexnet_momentum_and_paper_init_flags_reach_the_card(
    tiny_imagefolder: Path, tmp_path: Path
) -> None:
    run, export = tmp_path / "run", tmp_path / "export-here"
    argv = ["alexnet", "--data-dir", str(tiny_imagefolder), "--run-dir", str(run)]
    flags = ["--momentum", "0.5", "--init", "paper", "--export", str(export), "--no-amp"]
    assert main([*argv, "--epochs", "1", *flags, *FAST_ALEX]) == 0
    _, card = load_checkpoint(export)
    assert card.training["momentum"] == 0.5 and card.config["init"] == "paper"
    assert card.training["amp"] == "off" and card.training["precision"] == "fp32"


@pytest.mark.parametrize(("flags", "precision"), [(["avx512_bf16"], "bf16 autocast"), ([], "fp32")])
def test_the_card_records_the_precision_amp_auto_chose(
    tiny_mnist: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    precision: str,
) -> None:
    """--amp auto (the default) trains in bf16 on a CPU with native bf16, else in fp32 (the
    CPU's capability faked), and the card says which."""
    monkeypatch.setattr("models.hardware.cpu_bf16_flags", lambda *a: flags)
    run = tmp_path / "run"
    argv = ["vae", "--data-dir", str(tiny_mnist), "--run-dir", str(run), "--epochs", "1"]
    assert main([*argv, *FAST_VAE]) == 0
    _, card = load_checkpoint(run / "export")
    assert card.training["amp"] == "auto" and card.training["precision"] == precision


def test_the_full_preset_refuses_a_pack_with_a_message(
    tiny_imagefolder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = tmp_path / "tiny.pack"
    assert main(["pack-imagefolder", str(tiny_imagefolder), str(pack), "--no-progress"]) == 0
    argv = ["alexnet", "--preset", "alexnet", "--packed", str(pack), "--run-dir", str(tmp_path)]
    assert main([*argv, "--epochs", "1", *FAST_ALEX]) != 0
    assert "is a pack file: the full preset reads an ImageFolder tree" in capsys.readouterr().err


def test_figure2_tables_run_points_and_marks_the_rest(tiny_mnist: Path, tmp_path: Path) -> None:
    out, runs = tmp_path / "docs", tmp_path / "runs"
    argv = ["figure2", "--data-dir", str(tiny_mnist), "--latents", "3", "--epochs", "1"]
    assert main([*argv, "--runs-dir", str(runs), "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "vae-figure2.json").read_text())
    points = {p["latent"]: p for p in doc["points"]}
    assert sorted(points) == [3, 5, 10, 20, 200]
    assert points[3]["status"] == "run" and points[3]["epochs"] == 1 and points[3]["ours"] < 0
    assert points[3]["samples_seen"] == 200  # 1 epoch of the 200 tiny training images
    assert all(points[k]["status"] == "not run" for k in (5, 10, 20, 200))
    assert doc["paper_values"] == "approximate, read off the plot"
    md = (out / "vae-figure2.md").read_text()
    assert f"| 3 | -125 | {points[3]['ours']:.2f} |" in md and md.count("not run") == 4
