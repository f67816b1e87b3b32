"""benchmarks.train_step: times each --amp mode on the batches a training command would use."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.train_step import main
from tests.training.conftest import tiny_imagefolder  # noqa: F401  (the fixture)


def test_each_mode_is_timed_and_written(tiny_imagefolder: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "steps.json"
    training = ["alexnet", "--data-dir", str(tiny_imagefolder), "--val-size", "6"]
    training += ["--batch-size", "6", "--run-dir", str(tmp_path / "run"), "--no-progress"]
    argv = ["--amp", "off", "bf16", "--steps", "2", "--rounds", "2", "--warmup", "1"]
    assert main([*argv, "--out", str(out), "--", *training]) == 0
    doc = json.loads(out.read_text())
    assert doc["steps_per_epoch"] == 3  # 18 training images in batches of 6
    rows = {r["amp"]: r for r in doc["rows"]}
    assert rows["off"]["precision"] == "fp32" and rows["bf16"]["precision"] == "bf16 autocast"
    for r in rows.values():
        assert r["steps"] == 4 and 0 < r["ms_per_step_min"] <= r["ms_per_step_median"]
        assert r["epoch_min"] > 0 and r["cpu_ms_per_step_median"] > 0
    assert doc["machine"]["cpu"] and "load_average_before" in doc
