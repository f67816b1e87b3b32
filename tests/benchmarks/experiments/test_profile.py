"""benchmarks.experiments.profile: py-spy samples summarised, split by thread, batches read from /metrics."""

from __future__ import annotations


def test_profile_summary_counts_self_and_inclusive_samples() -> None:
    from benchmarks.experiments.profile import summarise

    raw = (
        "main (x/site-packages/uvicorn/main.py:5);forward (/r/models/vae.py:10) 30\n"
        "main (x/site-packages/uvicorn/main.py:5);encode (/r/app/predictors.py:3) 10\n"
        "main (x/site-packages/uvicorn/main.py:7) 10\n"
    )
    total, self_top, inclusive = summarise(raw)
    assert total == 50
    assert self_top[0] == ("forward (/r/models/vae.py)", 30)
    # Lines of one function are merged; a function counts once per stack even if it recurs.
    assert dict(self_top)["main (uvicorn/main.py)"] == 10
    assert dict(inclusive)["main (uvicorn/main.py)"] == 50


def test_profile_splits_inference_threads_from_the_rest_and_reads_the_batches() -> None:
    from benchmarks.experiments.profile import (
        batch_counters,
        batch_summary,
        format_profile,
        split_threads,
    )

    raw = (
        "_bootstrap (threading.py:1);Batcher._work (/r/app/batching.py:9);forward (/r/m.py:2) 300\n"
        "Runner.run (asyncio/runners.py:118);classify (/r/app/routes/classify.py:5) 100\n"
    )
    assert split_threads(raw) == (300, 100)
    report = format_profile("t", raw, rate=100, seconds=2, requests_per_s=50, header=["cmd"])
    # 100 samples at 100 Hz over 2 s: half a thread busy outside the batches, 10 ms per request
    assert report.startswith("# t\ncmd\n")
    assert (
        "busy threads on average: inference 1.50; the rest (event loop, thread pool) 0.50, "
        "10.000 ms per request"
    ) in report
    assert "busy threads on average" not in format_profile("t", raw)  # no rate: no split

    def page(batches: int, items: int, seconds: float) -> str:
        return (
            "# TYPE modelserve_batch_size histogram\n"
            f'modelserve_batch_size_sum{{model="m",op="classify"}} {items}\n'
            f'modelserve_batch_size_count{{model="m",op="classify"}} {batches}\n'
            "# TYPE modelserve_inference_duration_seconds histogram\n"
            f'modelserve_inference_duration_seconds_sum{{model="m",op="classify"}} {seconds}\n'
            f'modelserve_inference_duration_seconds_count{{model="m",op="classify"}} {batches}\n'
        )

    before, after = batch_counters(page(2, 10, 1.0)), batch_counters(page(12, 90, 31.0))
    summary = batch_summary(before, after, wall_s=20.0)
    assert summary == (
        "10 batches in 20.0 s, mean size 8.00, mean time 3000.0 ms; "
        "inference threads busy 1.50 (batch seconds per second)"
    )
    assert batch_summary(before, before, 1.0) == "no batches ran"
