"""benchmarks.run --dtype: every contender runs the same model in the same number format.

Tiny models (tests/app/conftest.py); nothing here asserts a speed. The service's own classifier
predictor is the reference the in-process ceiling must answer like (and LitServe's hooks like
the ceiling's: tests/benchmarks/test_harness.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from app.images import decode_opened, open_image
from app.predictors import ClassifierPredictor, model_dtype
from benchmarks import ops
from benchmarks.inprocess import make_step, measure
from benchmarks.inputs import generated
from benchmarks.report import check_targets, render_markdown
from benchmarks.rounds import median_of_rounds
from benchmarks.run import parse_args, served_dtype
from benchmarks.selection import dtype_ratios
from benchmarks.servers import serve_ours
from tests.app.conftest import make_alexnet, make_vae

SMALL = "alexnet-cifar10"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench-formats")
    make_alexnet(root)
    make_vae(root)
    return root


def served_probs(model_dir: Path, files: list[bytes], dtype: str) -> torch.Tensor:
    """(B, N) probabilities from the service's classifier predictor, as it serves `files`."""
    model, card = ops.load(model_dir / SMALL, dtype=dtype)  # type: ignore[arg-type]
    predictor = ClassifierPredictor(model, card, torch.device("cpu"))
    items = [decode_opened(open_image(f, ops.MAX_PIXELS), card.input) for f in files]
    return torch.stack(predictor.predict_classify(items))


def test_ops_load_runs_classifiers_in_the_format_asked_and_vaes_in_float32(
    model_dir: Path,
) -> None:
    for dtype, expected in [("float32", torch.float32), ("bfloat16", torch.bfloat16)]:
        model, _ = ops.load(model_dir / SMALL, dtype=dtype)  # type: ignore[arg-type]
        assert model_dtype(model) == expected
    vae, _ = ops.load(model_dir / "vae-mnist", dtype="bfloat16")
    assert model_dtype(vae) == torch.float32
    assert model_dtype(ops.load(model_dir / SMALL)[0]) == torch.float32  # the default


def test_inprocess_ceiling_answers_as_the_service_does_in_bf16(model_dir: Path) -> None:
    files = generated(3, (32, 32), "RGB", "JPEG").files
    model, card = ops.load(model_dir / SMALL, dtype="bfloat16")
    x = ops.images_to_batch(files, card, True, "cpu", model_dtype(model))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    probs, idx = ops.classify(model, x, top_k=3)
    reference = served_probs(model_dir, files, "bfloat16")
    # the same bytes through the same model and casts: the same answer, bit for bit
    torch.testing.assert_close(probs, reference.topk(3, dim=1).values, rtol=0, atol=0)
    assert idx.tolist() == reference.topk(3, dim=1).indices.tolist()
    fp32 = served_probs(model_dir, files, "float32")
    assert not torch.equal(reference, fp32)  # bf16 arithmetic really ran ...
    torch.testing.assert_close(reference, fp32, atol=0.05, rtol=0)  # ... and agrees closely
    assert make_step("classify", model, card, generated(4, (32, 32), "RGB", "JPEG"), [])(0, 2) == 2


def test_inprocess_ceiling_records_the_format_it_ran(model_dir: Path) -> None:
    corpus = generated(4, (32, 32), "RGB", "JPEG")
    before = torch.get_num_threads()
    try:
        bf16 = measure(model_dir / SMALL, "classify", corpus, 2, 0.05, 1, dtype="bfloat16")
        vae = measure(model_dir / "vae-mnist", "decode", None, 2, 0.05, 1, dtype="bfloat16")
    finally:
        torch.set_num_threads(before)
    assert bf16["dtype"] == "bfloat16" and bf16["items_per_s"] > 0
    assert vae["dtype"] == "float32"  # VAEs are served in float32 under every setting


def test_our_server_runs_the_format_asked_even_where_the_environment_says_auto(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSERVE_DTYPE", "auto")  # a stray setting must not leak in
    with serve_ours(
        model_dir, SMALL, 4, 2.0, tmp_path / "ours.log", threads=1, dtype="bfloat16"
    ) as (url, _):
        assert served_dtype(url, SMALL, "bfloat16") == "bfloat16"
        assert served_dtype(url, "vae-mnist", "bfloat16") == "float32"  # and it says so


def test_dtype_option_defaults_to_float32_and_never_takes_auto() -> None:
    assert parse_args([]).dtype == ["float32"]
    assert parse_args(["--dtype", "float32", "bfloat16"]).dtype == ["float32", "bfloat16"]
    with pytest.raises(SystemExit):
        parse_args(["--dtype", "auto"])


def _point(contender: str, dtype: str, c: int, rate: float, p99: float) -> dict[str, Any]:
    return {"contender": contender, "endpoint": "classify", "model": SMALL, "concurrency": c,
            "dtype": dtype, "requests_per_s": rate, "items_per_s": rate, "p50_ms": p99 / 2,
            "p95_ms": p99, "p99_ms": p99, "errors": {}, "load_avg_1m": 1.0}  # fmt: skip


def _ceiling(dtype: str, rate: float, at64: float) -> dict[str, Any]:
    return {"endpoint": "classify", "model": SMALL, "dtype": dtype, "items_per_s": rate,
            "single_p50_ms": 2.0, "batch_size": 32, "threads": 2,
            "in_flight": [{"in_flight": 64, "items_per_s": at64, "config": "2 at batch 32"}]}  # fmt: skip


def two_format_report() -> dict[str, Any]:
    return {
        "date": "d", "command": "python -m benchmarks.run",
        "inputs": {}, "models": {"small": f"/x/small/{SMALL}"},
        "machine": {"cpu": "cpu", "cores": 2, "cores_usable": 2, "memory_gb": 1, "platform": "p",
                    "python": "3", "torch": "2", "torch_threads_default": 2, "litserve": "0",
                    "commit": "abc", "load_avg_at_start": [0, 0, 0]},
        "config": {"warmup_s": 1, "duration_s": 4, "max_batch_size": 32, "batch_timeout_ms": 2,
                   "ours": "o", "litserve": "l", "litserve_workers": [1], "ceiling": "c",
                   "dtypes": ["float32", "bfloat16"]},
        "points": [_point("ours", "float32", 64, 400, 200), _point("litserve-w1", "float32", 64, 200, 400),
                   _point("ours", "bfloat16", 64, 600, 150), _point("litserve-w1", "bfloat16", 64, 260, 350),
                   _point("ours", "bfloat16", 1, 90, 12)],  # no float32 twin: no ratio
        "ceiling": [_ceiling("float32", 500, 450), _ceiling("bfloat16", 800, 720)],
    }  # fmt: skip


def test_report_keeps_each_format_apart_and_sets_bf16_beside_float32() -> None:
    report = two_format_report()
    ratios = {(r["contender"], r["concurrency"]): r for r in dtype_ratios(report)}
    assert set(ratios) == {("ours", 64), ("litserve-w1", 64), ("ceiling", 64)}
    ours = ratios[("ours", 64)]
    assert (ours["dtype"], ours["float32_items_per_s"], ours["items_per_s"]) == (
        "bfloat16", 400, 600)  # fmt: skip
    assert ours["ratio"] == pytest.approx(1.5)
    assert ratios[("ceiling", 64)]["ratio"] == pytest.approx(720 / 450)  # the bound at c=64
    targets = {t["target"]: t for t in check_targets(report)}
    # each format's peak against LitServe in the same format, never across formats
    assert targets[f"classify {SMALL} bfloat16: peak req/s >= 1.3x LitServe's"]["value"].startswith(
        "2.31x (600 req/s ours c=64 vs 260")  # fmt: skip
    assert targets[f"classify {SMALL} float32: peak req/s >= 1.3x LitServe's"]["met"] is True
    report["dtype_ratios"] = dtype_ratios(report)
    md = render_markdown(report)
    assert f"## /classify · {SMALL} · float32" in md and f"## /classify · {SMALL} · bfloat16" in md
    bf16_table = md.split(f"## /classify · {SMALL} · bfloat16")[1].split("##")[0]
    assert "| 64 | **ours** | 600 | 600 | 75% |" in bf16_table  # of the bf16 ceiling
    assert f"| /classify · {SMALL} | 64 | **ours** | 400 | bfloat16 | 600 | 1.50x |" in md
    assert "- number formats: float32, bfloat16 for the classifiers" in md


def test_a_float32_only_report_reads_as_before() -> None:
    report = two_format_report()
    report["points"] = [p for p in report["points"] if p["dtype"] == "float32"]
    report["ceiling"] = [{k: v for k, v in c.items() if k != "dtype"}  # from before dtypes
                         for c in report["ceiling"] if c["dtype"] == "float32"]  # fmt: skip
    report["config"]["dtypes"] = ["float32"]
    md = render_markdown(report)
    assert f"## /classify · {SMALL}\n" in md and "bfloat16" not in md.split("Command")[1]
    assert dtype_ratios(report) == [] and "Number formats side by side" not in md
    assert f"classify {SMALL}: peak req/s >= 1.3x LitServe's" in {
        t["target"] for t in check_targets(report)
    }


def test_rounds_never_mix_formats() -> None:
    rounds = [[_point("ours", "float32", 64, 400, 200), _point("ours", "bfloat16", 64, 600, 150)],
              [_point("ours", "float32", 64, 420, 190), _point("ours", "bfloat16", 64, 640, 140)]]  # fmt: skip
    merged = {p["dtype"]: p for p in median_of_rounds(rounds)}
    assert merged["float32"]["rounds_requests_per_s"] == [400, 420]
    assert merged["bfloat16"]["rounds_requests_per_s"] == [600, 640]
