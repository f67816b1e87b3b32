"""The benchmark harness: request shapes against the real app, counting, percentiles, targets.

Nothing here asserts a speed: the load generator runs for a fraction of a second against the app
in-process (httpx's ASGI transport) and the checks are on what it counted and how it reports it.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from app.main import create_app
from app.settings import Settings
from benchmarks import loadgen, ops
from benchmarks.inprocess import measure
from benchmarks.inputs import generated, latent_rows
from benchmarks.machine import cpu_id, machine
from benchmarks.report import check_targets, compute_bound_config, render_markdown
from benchmarks.report import main as report_main
from tests.app.conftest import LATENT, make_alexnet, make_vae


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench-models")
    make_alexnet(root)
    make_vae(root)
    return root


def test_requests_for_our_api_and_litserve_differ_only_in_routing() -> None:
    corpus = generated(2, (32, 32), "RGB", "JPEG")
    ours = loadgen.make_requester("ours", "classify", "m", corpus)(1)
    theirs = loadgen.make_requester("litserve", "classify", "m", corpus)(1)
    assert ours[:2] == theirs[:2] == ("POST", "/classify")
    assert ours[2]["params"] == {"model": "m"} and theirs[2]["params"] == {}
    assert ours[2]["files"] == theirs[2]["files"]  # the same bytes to both
    assert ours[2]["files"]["image"][2] == "image/jpeg"
    sample = loadgen.make_requester("ours", "sample", "v")(7)
    assert sample[:2] == ("GET", "/sample") and sample[2]["params"]["seed"] == 7
    assert loadgen.make_requester("litserve", "sample", "v")(7)[2]["json"] == {"n": 1, "seed": 7}


def test_summarise_percentiles_and_rates() -> None:
    latencies = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    p = loadgen.summarise("ours", "classify", "m", 4, 2.0, latencies, Counter({"503": 3}))
    assert (p.requests, p.requests_per_s, p.items_per_s) == (100, 50.0, 50.0)
    assert p.p50_ms == pytest.approx(50.5) and p.p99_ms == pytest.approx(99.01)
    assert p.errors == {"503": 3}
    assert p.server_p50_ms is None  # no Server-Timing seen
    empty = loadgen.summarise("ours", "classify", "m", 1, 1.0, [], Counter())
    assert empty.p50_ms is None and empty.requests_per_s == 0
    timings = [{"app": 1.0, "infer": 0.5}, {"app": 2.0, "infer": 1.5}, {"app": 9.0, "infer": 8.0}]
    timed = loadgen.summarise(
        "ours", "decode", "m", 1, 1.0, [0.004] * 3, Counter(), server_timings=timings
    )
    assert timed.server_p50_ms == 2 and timed.server_phases_p50_ms == {"infer": 1.5}


def test_server_timing_header_is_parsed() -> None:
    def app_ms(value: str | None) -> float | None:
        headers = httpx.Headers({"server-timing": value} if value is not None else {})
        return loadgen.server_timing(headers).get("app")

    assert app_ms("app;dur=12.5") == 12.5
    assert app_ms("db;dur=3, app;dur=0.25") == 0.25
    assert app_ms("db;dur=3") is None
    assert app_ms(None) is None
    ours = httpx.Headers({"server-timing": "app;dur=31.90, decode;dur=1.10, infer;dur=29.62"})
    assert loadgen.server_timing(ours) == {"app": 31.9, "decode": 1.1, "infer": 29.62}
    described = httpx.Headers({"server-timing": 'cache;desc="Cache Read";dur=23.2, miss'})
    assert loadgen.server_timing(described) == {"cache": 23.2}


def test_run_point_counts_successes_and_errors_separately() -> None:
    app = FastAPI()
    seen = {"n": 0}

    @app.post("/classify")
    async def flaky() -> JSONResponse:
        seen["n"] += 1
        return JSONResponse({}, status_code=503 if seen["n"] % 3 == 0 else 200)

    made: list[httpx.AsyncClient] = []

    def make_client() -> httpx.AsyncClient:
        made.append(httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t"))
        return made[-1]

    trace: list[dict[str, Any]] = []

    async def go() -> tuple[float, list[float], Counter[str], list[dict[str, float]]]:
        request = loadgen.make_requester(
            "litserve", "classify", "m", generated(1, (8, 8), "RGB", "PNG")
        )
        return await loadgen.run_point(
            make_client, request, concurrency=3, duration=0.4, warmup=0.05, trace=trace
        )

    _, latencies, errors, server = asyncio.run(go())
    # The trace has one record per request of the window, the failed ones too.
    assert len(trace) == len(latencies) + errors["503"]
    traced = sorted(r["latency_ms"] for r in trace if r["error"] is None)
    assert traced == pytest.approx(sorted(1000 * t for t in latencies), abs=1e-3)
    assert {r["error"] for r in trace} == {None, "503"}
    assert {r["client"] for r in trace} <= {0, 1, 2}
    assert all(-0.5 < r["sent_s"] < 0.4 and r["concurrency"] == 3 for r in trace)
    assert latencies and set(errors) == {"503"}
    assert server == []  # this app sends no Server-Timing
    assert len(made) == 3 and all(c.is_closed for c in made)  # one client per worker, closed
    # Every third answer failed; the window cuts the sequence anywhere, so allow one either way.
    assert abs(len(latencies) - 2 * errors["503"]) <= 3
    assert len(latencies) + errors["503"] <= seen["n"]  # warm-up answers are not counted


@pytest.mark.parametrize("endpoint", loadgen.ENDPOINTS)
def test_load_generator_requests_work_verbatim_against_our_app(
    model_dir: Path, endpoint: str
) -> None:
    """The shapes the benchmark sends are ones our API answers 200 to (no errors in the table)."""
    settings = Settings(model_dir=model_dir, device="cpu", torch_threads=1, log_level="WARNING")
    app = create_app(settings)
    model = "alexnet-cifar10" if endpoint == "classify" else "vae-mnist"
    corpus = (
        generated(4, (32, 32), "RGB", "JPEG")
        if endpoint == "classify"
        else generated(4, (28, 28), "L", "PNG")
    )
    request = loadgen.make_requester("ours", endpoint, model, corpus, latent_rows(4, LATENT))

    async def go() -> tuple[list[float], Counter[str], list[dict[str, float]]]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                for _ in range(500):  # models load in the background; bounded wait
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
                _, latencies, errors, server = await loadgen.run_point(
                    lambda: httpx.AsyncClient(transport=transport, base_url="http://t"),
                    request,
                    2,
                    0.5,
                    0.0,
                )
                return latencies, errors, server

    latencies, errors, server = asyncio.run(go())
    assert latencies and not errors
    # Our app reports its own time on every answer, never more than the client waited, and
    # the model's share of it.
    assert len(server) == len(latencies)
    apps = sorted(t["app"] for t in server)
    assert all(0 < s <= 1000 * t for s, t in zip(apps, sorted(latencies), strict=True))
    assert all(0 < t["infer"] <= t["app"] for t in server)


def test_inprocess_ceiling_reports_throughput_and_single_latency(model_dir: Path) -> None:
    corpus = generated(4, (32, 32), "RGB", "JPEG")
    result = measure(
        model_dir / "alexnet-cifar10", "classify", corpus, batch_size=4, duration=0.05, threads=1
    )
    assert result["items"] >= 4 and result["items"] % 4 == 0
    assert result["items_per_s"] > 0 and result["single_p50_ms"] > 0 and result["single_n"] >= 1
    assert result["model"] == "alexnet-cifar10"
    assert result["single_after_idle_p50_ms"] > 0 and result["idle_ms"] == 5


def test_inprocess_ceiling_side_by_side_counts_every_lane_and_is_kept_when_best(
    model_dir: Path,
) -> None:
    from benchmarks.inprocess import best_of

    corpus = generated(4, (32, 32), "RGB", "JPEG")
    before = torch.get_num_threads()
    try:
        lanes = measure(
            model_dir / "alexnet-cifar10", "classify", corpus, batch_size=4, duration=0.05,
            threads=1, lanes=2,
        )  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert lanes["lanes"] == 2 and lanes["single_p50_ms"] is None
    assert lanes["items"] >= 8 and lanes["items"] % 4 == 0  # both lanes' batches counted
    one = {**lanes, "lanes": 1, "items_per_s": 10.0, "single_p50_ms": 3.0, "single_p99_ms": 4.0}
    best = best_of([one, {**lanes, "items_per_s": 20.0}])
    assert best["lanes"] == 2 and best["items_per_s"] == 20.0  # throughput from side by side
    assert best["single_p50_ms"] == 3.0  # latency from the configuration that measures it
    assert best["tried"] == {"1": [10.0, 3.0], "2x1": [20.0, None]}


def test_in_flight_bound_runs_batches_no_larger_than_what_is_in_flight(model_dir: Path) -> None:
    from benchmarks.inprocess import in_flight_bound

    corpus = generated(8, (32, 32), "RGB", "JPEG")
    before = torch.get_num_threads()
    try:
        # 6 in flight on 2 loops: one loop at batch 6 on both threads, or two at batch 3
        six = in_flight_bound(
            model_dir / "alexnet-cifar10", "classify", corpus, in_flight=6, batch_size=4,
            duration=0.05, threads=2, loops=2,
        )  # fmt: skip
        # fewer in flight than loops: one loop, on every thread or on one
        one = in_flight_bound(
            model_dir / "alexnet-cifar10", "classify", corpus, in_flight=1, batch_size=4,
            duration=0.05, threads=2, loops=2,
        )  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert set(six["tried"]) == {"2 at batch 4", "2x1 at batch 3"}  # capped by the batch size
    assert six["items_per_s"] == max(six["tried"].values()) > 0
    assert six["config"] in six["tried"] and six["in_flight"] == 6
    assert set(one["tried"]) == {"2 at batch 1", "1 at batch 1"}


def test_timed_loop_idles_outside_the_timed_calls() -> None:
    from benchmarks.inprocess import timed_loop

    items, elapsed, times = timed_loop(lambda i, b: b, 2, duration=0.05, idle=0.01)
    assert items == 2 * len(times) and elapsed >= 0.01 * len(times)  # it slept before each call
    assert max(times) < 0.01  # ... and no call's time holds a whole sleep


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_inprocess_ceiling_on_cuda_answers_on_the_host(model_dir: Path) -> None:
    corpus = generated(4, (32, 32), "RGB", "JPEG")
    result = measure(
        model_dir / "alexnet-cifar10", "classify", corpus, batch_size=4, duration=0.05,
        device="cuda",
    )  # fmt: skip
    assert result["device"] == "cuda" and result["items_per_s"] > 0
    model, card = ops.load(model_dir / "alexnet-cifar10", device="cuda")
    x = ops.images_to_batch(corpus.files, card, channels_last=True, device="cuda")
    probs, idx = ops.classify(model, x)
    assert x.is_cuda and probs.device.type == "cpu" and idx.shape == (4, 5)
    cpu_model, _ = ops.load(model_dir / "alexnet-cifar10")
    cpu_probs, _ = ops.classify(cpu_model, ops.images_to_batch(corpus.files, card, True))
    torch.testing.assert_close(probs, cpu_probs, atol=1e-2, rtol=0)  # cuDNN may use TF32


def test_ops_sample_same_seed_same_image(model_dir: Path) -> None:
    model, _ = ops.load(model_dir / "vae-mnist")
    z1, x1 = ops.sample(model, [3, 4])
    z2, x2 = ops.sample(model, [4])
    torch.testing.assert_close(z1[1], z2[0])
    torch.testing.assert_close(x1[1], x2[0])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_litserve_contender_answers_like_the_model(model_dir: Path, dtype: str) -> None:
    """The LitServe hooks give the same answer as a plain forward of the same bytes, the model
    and the batch in the format asked for (litserve is in the dev extra: this runs wherever the
    tests do; tests/benchmarks/test_formats.py ties the plain forward to the service's)."""
    from app.predictors import model_dtype
    from benchmarks.litserve_server import ClassifyAPI

    api = ClassifyAPI(
        model_dir / "alexnet-cifar10", "/classify", max_batch_size=4, batch_timeout=0.0,
        threads=1, dtype=dtype,  # type: ignore[arg-type]
    )  # fmt: skip
    api.setup("cpu")
    files = generated(3, (32, 32), "RGB", "JPEG").files

    class Upload:
        def __init__(self, data: bytes) -> None:
            self.file = io.BytesIO(data)

    batch = api.batch([api.decode_request({"image": Upload(f)}) for f in files])  # type: ignore[arg-type]
    answers = [api.encode_response(o) for o in api.unbatch(api.predict(batch))]
    model, card = ops.load(model_dir / "alexnet-cifar10", dtype=dtype)  # type: ignore[arg-type]
    assert batch.dtype == model_dtype(api.model) == model_dtype(model) == getattr(torch, dtype)
    x = ops.images_to_batch(files, card, channels_last=True, dtype=model_dtype(model))
    probs, idx = ops.classify(model, x)
    assert [[p["index"] for p in a["predictions"]] for a in answers] == idx.tolist()
    got = [[p["probability"] for p in a["predictions"]] for a in answers]
    torch.testing.assert_close(torch.tensor(got), probs, rtol=0, atol=0)
    assert answers[0]["predictions"][0]["label"] == card.labels[idx[0, 0]]
    assert len(answers[0]["predictions"]) == min(5, len(card.labels))


def _point(
    contender: str, endpoint: str, model: str, c: int, rps: float, p50: float, p99: float
) -> dict[str, Any]:
    return {"contender": contender, "endpoint": endpoint, "model": model, "concurrency": c,
            "requests_per_s": rps, "items_per_s": rps, "p50_ms": p50, "p95_ms": p99, "p99_ms": p99,
            "errors": {}, "load_avg_1m": 1.0}  # fmt: skip


def test_targets_are_checked_with_the_issue_thresholds() -> None:
    full, small = "alexnet-imagenet-random", "alexnet-cifar10"
    report: dict[str, Any] = {
        "models": {"full": f"/x/full/{full}", "small": f"/x/small/{small}"},
        "points": [
            _point("ours", "classify", full, 1, 10, 101.0, 120),
            _point("ours", "classify", full, 16, 86, 180, 250),  # 86% of ceiling: met
            _point("litserve-w1", "classify", full, 16, 80, 200, 260),
            _point("litserve-w2", "classify", full, 16, 84, 190, 240),  # best rival, lower p99
            _point("ours", "classify", small, 16, 129, 5, 9),
            _point("litserve-w1", "classify", small, 16, 100, 8, 12),  # 1.29x: missed
        ],
        "ceiling": [
            {"endpoint": "classify", "model": full, "items_per_s": 100.0, "single_p50_ms": 98.5},
        ],
    }
    targets = {t["target"]: t["met"] for t in check_targets(report)}
    assert targets[f"classify {full} c=16: >= 85% of the in-process ceiling"] is True
    assert targets[f"classify {full} c=16: ahead of LitServe at an equal or lower p99"] is False
    assert targets[f"classify {small}: peak req/s >= 1.3x LitServe's"] is False
    assert targets[f"classify {full} c=1: p50 within 2 ms of in-process"] is False  # +2.5 ms


def test_targets_hold_each_server_at_its_best_configuration() -> None:
    # ours-w2 (two worker processes) beats the default on throughput, ours-t1 on c=1 latency;
    # LitServe likewise gets its best worker count: the same rule for both servers
    small = "alexnet-cifar10"
    report: dict[str, Any] = {
        "models": {"small": f"/x/small/{small}"},
        "points": [
            _point("ours", "classify", small, 1, 60, 16.0, 20),
            _point("ours-t1", "classify", small, 1, 70, 9.5, 12),
            _point("ours", "classify", small, 16, 120, 100, 150),
            _point("ours-w2", "classify", small, 16, 210, 70, 110),
            _point("litserve-w1", "classify", small, 16, 60, 200, 300),
            _point("litserve-w2", "classify", small, 16, 150, 100, 170),
        ],
        "ceiling": [
            {"endpoint": "classify", "model": small, "items_per_s": 300.0, "single_p50_ms": 8.0},
        ],
    }
    found = {t["target"]: t for t in check_targets(report)}
    ratio = found[f"classify {small}: peak req/s >= 1.3x LitServe's"]
    assert ratio["met"] is True and ratio["value"].startswith("1.40x (210 req/s ours-w2")
    single = found[f"classify {small} c=1: p50 within 2 ms of in-process"]
    assert single["met"] is True and "ours-t1" in single["value"]  # +1.5 ms


def test_full_alexnet_targets_hold_ours_at_the_recommended_configuration() -> None:
    # On two cores the README recommends two lanes for a compute-bound model. ours-w2 has 1%
    # more throughput at c=64 but a p99 above LitServe's: the target is judged on ours-l2 (the
    # one configuration a user deploys), and the best-throughput one is named beside it.
    full = "alexnet-imagenet-random"
    report: dict[str, Any] = {
        "models": {"full": f"/x/full/{full}"},
        "machine": {"cores": 2},
        "config": {"device": "cpu"},
        "points": [
            _point("ours-l2", "classify", full, 64, 67.1, 900, 1425),
            _point("ours-w2", "classify", full, 64, 67.7, 850, 1935),
            _point("litserve-w1", "classify", full, 64, 52.1, 1200, 1534),
            _point("ours-w2", "classify", full, 16, 63.0, 240, 346),  # no ours-l2 here
            _point("litserve-w1", "classify", full, 16, 50.0, 300, 538),
        ],
        "ceiling": [
            {"endpoint": "classify", "model": full, "items_per_s": 70.8, "single_p50_ms": 27.7},
        ],
    }
    found = {t["target"]: t for t in check_targets(report)}
    rival = found[f"classify {full} c=64: ahead of LitServe at an equal or lower p99"]
    assert rival["met"] is True
    assert rival["value"].startswith("67.1 (ours-l2) vs 52.1 img/s (litserve-w1), p99 1425 vs 1534")
    assert rival["value"].endswith("best throughput: ours-w2 67.7 img/s, p99 1935 ms")
    share = found[f"classify {full} c=64: >= 85% of the in-process ceiling"]
    assert share["met"] is True and "ours-l2" in share["value"]
    # where the recommended configuration did not run, the best one is judged
    at16 = found[f"classify {full} c=16: ahead of LitServe at an equal or lower p99"]
    assert (
        at16["met"] is True
        and "ours-w2" in at16["value"]
        and "best throughput" not in at16["value"]
    )
    assert compute_bound_config({"machine": {"cores": 4}, "config": {"device": "cuda"}}) == "ours"


def test_a_saved_report_is_checked_again_from_its_json(tmp_path: Path) -> None:
    full = "alexnet-imagenet-random"
    report: dict[str, Any] = {
        "date": "2026-01-01T00:00:00+00:00",
        "command": "python -m benchmarks.run",
        "machine": {"cpu": "cpu", "cores": 2, "cores_usable": 2, "memory_gb": 8,
                    "platform": "linux", "python": "3.11", "torch": "2", "torch_threads_default": 2,
                    "litserve": None, "commit": "abc", "load_avg_at_start": [0, 0, 0]},
        "config": {"warmup_s": 1, "duration_s": 4, "max_batch_size": 32, "batch_timeout_ms": 2,
                   "ours": "o", "litserve": "l", "litserve_workers": [1], "ceiling": "c"},
        "inputs": {},
        "models": {"full": f"/x/full/{full}"},
        "points": [_point("ours-l2", "classify", full, 16, 70, 200, 300),
                   _point("litserve-w1", "classify", full, 16, 50, 300, 500)],
        "ceiling": [{"endpoint": "classify", "model": full, "items_per_s": 75.0,
                     "single_p50_ms": 27.7, "batch_size": 32, "threads": 1, "lanes": 2}],
        "targets": [],  # as a run that predates a target would have it
    }  # fmt: skip
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(report))
    page = tmp_path / "page.md"
    report_main([str(saved), "--markdown", str(page)])
    text = page.read_text()
    assert "| 16 | **ours-l2** |" in text
    assert (
        f"classify {full} c=16: ahead of LitServe at an equal or lower p99 | 70 (ours-l2)" in text
    )


def test_markdown_report_has_every_point_and_target() -> None:
    report: dict[str, Any] = {
        "date": "2026-01-01T00:00:00+00:00",
        "command": "python -m benchmarks.run --quick",
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "cores_usable": 2,
            "memory_gb": 1,
            "platform": "p",
            "python": "3.11",
            "torch": "2",
            "torch_threads_default": 2,
            "litserve": "0",
            "commit": "abc",
            "load_avg_at_start": [0, 0, 0],
        },
        "config": {
            "warmup_s": 1,
            "duration_s": 2,
            "max_batch_size": 32,
            "batch_timeout_ms": 2,
            "ours": "o",
            "litserve": "l",
            "litserve_workers": [1],
            "ceiling": "c",
        },
        "inputs": {"classify": "x"},
        "models": {},
        "points": [
            _point("ours", "decode", "v", 1, 200, 5, 9),
            _point("litserve-w1", "decode", "v", 1, 50, 20, 40),
        ],
        "ceiling": [
            {
                "endpoint": "decode",
                "model": "v",
                "items_per_s": 2000.0,
                "single_p50_ms": 0.2,
                "batch_size": 32,
                "threads": 2,
            }
        ],
    }
    report["targets"] = check_targets(report)
    md = render_markdown(report)
    assert "## /decode · v" in md and "| 1 | **ours** | 200 |" in md and "litserve-w1" in md
    assert "peak req/s >= 1.3x LitServe's | 4.00x" in md
    assert "c=1: p50 within 2 ms of in-process | +4.80 ms" in md and "**no**" in md
    assert "Machine: cpu, 2 cores" in md  # a report from before the CPU's id was recorded
    report["machine"] |= {"cpu_id": "family 26 model 2 stepping 1", "cpu_isa": "AVX512"}
    assert "Machine: cpu (family 26 model 2 stepping 1, AVX512), 2 cores" in render_markdown(report)


def test_machine_names_the_cpu_generation(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    block = "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
    info.write_text(block.format(n=0) + "model name\t: AMD EPYC\nstepping\t: 1\n\n"
                    + block.format(n=1) + "stepping\t: 9\n\n")  # fmt: skip
    assert cpu_id(info) == "family 26 model 2 stepping 1"  # the first processor's
    assert cpu_id(tmp_path / "absent") is None
    m = machine()
    assert m["cpu_isa"] == torch.backends.cpu.get_cpu_capability()
    json.dumps(m)


def test_rounds_keep_each_points_median_round_whole() -> None:
    from benchmarks.rounds import median_of_rounds

    rounds = [
        [_point("ours", "classify", "m", 16, 150, 100, 150), _point("lit", "classify", "m", 16, 90, 9, 9)],
        [_point("ours", "classify", "m", 16, 210, 70, 110), _point("lit", "classify", "m", 16, 140, 8, 8)],
        [_point("ours", "classify", "m", 16, 180, 80, 120), _point("lit", "classify", "m", 16, 120, 7, 7)],
    ]  # fmt: skip
    merged = {p["contender"]: p for p in median_of_rounds(rounds)}
    # The median round's throughput with that same round's latencies, never a mix.
    assert (merged["ours"]["requests_per_s"], merged["ours"]["p99_ms"]) == (180, 120)
    assert merged["ours"]["rounds_requests_per_s"] == [150, 210, 180]
    assert (merged["lit"]["requests_per_s"], merged["lit"]["p50_ms"]) == (120, 7)
    # Two rounds: the lower one (a tie goes against the contender, not for it).
    two = {p["contender"]: p for p in median_of_rounds(rounds[:2])}
    assert two["ours"]["requests_per_s"] == 150
    assert median_of_rounds(rounds[:1]) == rounds[0]  # one round: as measured


def test_ceiling_takes_each_figures_median_over_rounds() -> None:
    from benchmarks.rounds import median_ceilings

    def c(endpoint: str, rate: float, single: float, threads: int) -> dict[str, Any]:
        return {"endpoint": endpoint, "items_per_s": rate, "single_p50_ms": single,
                "single_after_idle_p50_ms": None, "threads": threads}  # fmt: skip

    rounds = [
        [c("encode", 300, 0.5, 1), c("decode", 900, 0.2, 1)],
        [c("encode", 250, 0.4, 2), c("decode", 800, 0.1, 2)],
        [c("encode", 280, 0.7, 1), c("decode", 990, 0.3, 2)],
    ]
    encode, decode = median_ceilings(rounds)
    assert (encode["items_per_s"], encode["single_p50_ms"], encode["threads"]) == (280, 0.5, 1)
    assert encode["rounds_items_per_s"] == [300, 250, 280]
    assert encode["rounds_single_p50_ms"] == [0.5, 0.4, 0.7]
    assert decode["endpoint"] == "decode" and decode["items_per_s"] == 900
    assert "rounds_single_after_idle_p50_ms" not in decode  # not measured: left out
    # Two rounds: the tie goes against the servers (higher ceiling rate, lower ceiling latency).
    encode, _ = median_ceilings(rounds[:2])
    assert (encode["items_per_s"], encode["single_p50_ms"]) == (300, 0.4)
    assert median_ceilings([rounds[0]])[0]["items_per_s"] == 300
    assert median_ceilings([]) == []


def test_in_flight_bounds_take_their_median_round_per_concurrency() -> None:
    from benchmarks.rounds import median_ceilings

    def c(rate: float, bounds: list[tuple[int, float, str]]) -> dict[str, Any]:
        return {"endpoint": "classify", "items_per_s": rate, "single_p50_ms": 1.0,
                "in_flight": [{"in_flight": n, "items_per_s": r, "config": cfg}
                              for n, r, cfg in bounds]}  # fmt: skip

    rounds = [
        [c(80, [(16, 60.0, "2x1 at batch 8"), (64, 80, "the ceiling")])],
        [c(70, [(16, 55.0, "2 at batch 16"), (64, 70, "the ceiling")])],
        [c(75, [(16, 65.0, "2x1 at batch 8"), (64, 75, "the ceiling")])],
    ]
    (merged,) = median_ceilings(rounds)
    c16, c64 = merged["in_flight"]
    assert (c16["in_flight"], c16["items_per_s"], c16["config"]) == (16, 60.0, "2x1 at batch 8")
    assert c16["rounds_items_per_s"] == [60.0, 55.0, 65.0]
    assert c64["items_per_s"] == 75  # the same rule as the ceiling's own figure


def test_contenders_alternate_and_cover_every_configuration() -> None:
    from benchmarks.run import contenders, parse_args

    args = parse_args(["--ours-workers", "1", "2", "--litserve-workers", "1", "2"])
    assert args.ours_lanes == ([os.cpu_count()] if (os.cpu_count() or 1) > 1 else [])
    args = parse_args(
        ["--ours-workers", "1", "2", "--ours-lanes", "2", "--litserve-workers", "1", "2"]
    )
    servers = contenders(args)
    assert [c.name for c in servers] == ["ours", "ours-w2", "ours-l2", "litserve-w1", "litserve-w2"]
    assert (servers[1].workers, servers[1].lanes) == (2, 1)
    assert (servers[2].workers, servers[2].lanes) == (1, 2)
    assert parse_args([]).rounds == 1


def test_markdown_shows_the_range_of_rounds() -> None:
    point = {
        **_point("ours", "decode", "v", 1, 200, 5, 9),
        "rounds_requests_per_s": [150, 200, 260],
    }
    report: dict[str, Any] = {
        "date": "d", "command": "c", "inputs": {}, "models": {}, "ceiling": [], "points": [point],
        "machine": {"cpu": "cpu", "cores": 2, "cores_usable": 2, "memory_gb": 1, "platform": "p",
                    "python": "3", "torch": "2", "torch_threads_default": 2, "litserve": "0",
                    "commit": "abc", "load_avg_at_start": [0, 0, 0]},
        "config": {"warmup_s": 1, "duration_s": 2, "max_batch_size": 32, "batch_timeout_ms": 2,
                   "ours": "o", "litserve": "l", "litserve_workers": [1], "ceiling": "c", "rounds": 3},
    }  # fmt: skip
    md = render_markdown(report)
    assert "| 1 | **ours** | 200 (150-260) |" in md and "swept 3 times" in md
    assert "% at c" not in md  # no bound per concurrency measured: no column for it


def test_a_bound_never_falls_as_concurrency_grows_nor_passes_the_ceiling() -> None:
    from benchmarks.selection import bound_at as _bound

    ceiling = {
        "items_per_s": 400.0,
        "in_flight": [{"in_flight": 4, "items_per_s": 300.0, "config": "a"},
                      {"in_flight": 16, "items_per_s": 280.0, "config": "b"},  # noise: below c=4
                      {"in_flight": 32, "items_per_s": 430.0, "config": "c"}],  # above the ceiling
    }  # fmt: skip
    c4, c16, c32 = (_bound(ceiling, c) for c in (4, 16, 32))
    assert c4 is not None and c16 is not None and c32 is not None
    assert (c4["items_per_s"], c16["items_per_s"], c32["items_per_s"]) == (300.0, 300.0, 400.0)
    assert (c16["measured_items_per_s"], c16["config"]) == (280.0, "b")  # kept beside it
    assert _bound(ceiling, 64) is None  # not measured


def test_report_sets_each_point_beside_the_bound_at_its_concurrency() -> None:
    full = "alexnet-imagenet-random"
    ceiling = {
        "endpoint": "classify", "model": full, "items_per_s": 80.0, "batch_size": 32,
        "threads": 1, "lanes": 2, "single_p50_ms": 25.0,
        "in_flight": [{"in_flight": 16, "items_per_s": 64.0, "config": "2x1 at batch 8",
                       "rounds_items_per_s": [60.0, 64.0, 66.0]},
                      {"in_flight": 64, "items_per_s": 80.0, "config": "the ceiling"}],
    }  # fmt: skip
    report: dict[str, Any] = {
        "date": "d", "command": "c", "inputs": {}, "models": {"full": f"/x/full/{full}"},
        "ceiling": [ceiling],
        "points": [_point("ours-l2", "classify", full, 16, 64, 200, 300),
                   _point("ours-l2", "classify", full, 64, 72, 800, 1000)],
        "machine": {"cpu": "cpu", "cores": 2, "cores_usable": 2, "memory_gb": 1, "platform": "p",
                    "python": "3", "torch": "2", "torch_threads_default": 2, "litserve": "0",
                    "commit": "abc", "load_avg_at_start": [0, 0, 0]},
        "config": {"warmup_s": 1, "duration_s": 2, "max_batch_size": 32, "batch_timeout_ms": 2,
                   "ours": "o", "litserve": "l", "litserve_workers": [1], "ceiling": "c"},
    }  # fmt: skip
    md = render_markdown(report)
    assert "c=16 **64.0 items/s** (2x1 at batch 8, rounds 60.0-66.0)" in md
    assert "| 16 | **ours-l2** | 64 | 64 | 80% | 100% |" in md
    assert "| 64 | **ours-l2** | 72 | 72 | 90% | 90% |" in md
    found = {t["target"]: t for t in check_targets(report)}
    c16 = found[f"classify {full} c=16: >= 85% of the in-process ceiling"]
    # The target keeps the issue's denominator; the bound at c=16 is context beside it.
    assert c16["met"] is False
    assert "100% of the in-process 64.0 img/s with 16 in flight (2x1 at batch 8)" in c16["value"]
    c64 = found[f"classify {full} c=64: >= 85% of the in-process ceiling"]
    assert c64["met"] is True and "in flight" not in c64["value"]


def test_prebuilt_requests_carry_the_encoded_body_and_can_be_sent_again() -> None:
    corpus = generated(2, (8, 8), "RGB", "PNG")
    client = httpx.AsyncClient(base_url="http://t")
    pool = loadgen.prebuild(client, loadgen.make_requester("ours", "classify", "m", corpus), n=3)
    assert [str(r.url) for r in pool] == ["http://t/classify?model=m"] * 3
    assert corpus[1] in pool[1].content and pool[1].headers["content-type"].startswith(
        "multipart/form-data; boundary="
    )
    samples = loadgen.prebuild(client, loadgen.make_requester("ours", "sample", "v"), n=2)
    assert [r.url.params["seed"] for r in samples] == ["0", "1"]

    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.read())
        return httpx.Response(200)

    async def twice() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as sender:
            for _ in range(2):
                assert (await sender.send(pool[1])).status_code == 200

    loadgen.run(twice())
    assert seen == [pool[1].content] * 2
