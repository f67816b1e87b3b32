"""benchmarks.dtype: one row per model and batch size, each format timed; no speed asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import dtype
from tests.app.conftest import make_alexnet


def test_rows_per_batch_with_every_variant_and_the_auto_pick(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_alexnet(tmp_path)
    out = tmp_path / "dtype.json"
    argv = [
        str(tmp_path / "alexnet-cifar10"),
        "--threads",
        "1",
        "--batches",
        "1",
        "3",
        "--clock",
        "cpu",
    ]
    dtype.main([*argv, "--repeat", "2", "--out", str(out)])
    report = json.loads(out.read_text())
    assert [(r["model"], r["batch"]) for r in report["rows"]] == [
        ("alexnet-cifar10", 1),
        ("alexnet-cifar10", 3),
    ]
    for r in report["rows"]:
        assert set(r["min_ms"]) == set(r["median_ms"]) == set(dtype.VARIANTS)
        assert all(0 < r["min_ms"][k] <= r["median_ms"][k] for k in dtype.VARIANTS)
        assert r["auto_picks"] in ("float32", "bfloat16") and r["max_prob_diff"] < 0.05
    assert report["threads"] == 1 and report["clock"] == "cpu" and "machine" in report
    assert capsys.readouterr().out.count("| alexnet-cifar10 |") == 2
