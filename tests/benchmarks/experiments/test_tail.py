"""benchmarks.experiments.tail: the slowest requests of a trace, split by phase."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.experiments import tail


def record(latency: float, queue: float, infer: float, error: str | None = None) -> dict[str, Any]:
    app = 1.0 + queue + infer + 0.5  # decode 1, serving 0.5
    return {
        "concurrency": 16,
        "client": 0,
        "sent_s": 0.0,
        "latency_ms": None if error else latency,
        "error": error,
        "server_ms": {} if error else {"app": app, "decode": 1.0, "queue": queue, "infer": infer},
    }


def test_the_tail_is_told_apart_from_the_median_by_phase(tmp_path: Path) -> None:
    # 99 requests that ran in short batches, one that queued behind a long one; one error.
    records = [record(100.0 + i * 0.01, 2.0, 95.0) for i in range(99)]
    records += [record(400.0, 250.0, 140.0), record(0, 0, 0, error="503")]
    b = tail.breakdown(records, share=0.01)
    assert b["requests"] == 100 and b["errors"] == 1
    assert b["tail"]["n"] == 1 and b["tail"]["latency_ms"] == 400.0
    assert b["tail"]["queue"] == 250.0 and b["tail"]["infer"] == 140.0
    assert b["tail"]["serving"] == pytest.approx(0.5) and b["tail"]["outside"] == pytest.approx(8.5)
    assert b["median"]["queue"] == 2.0 and b["median"]["infer"] == 95.0

    path = tmp_path / "trace.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "tail.json"
    tail.main([str(path), "--json", str(out)])
    assert json.loads(out.read_text())["16"]["tail"]["queue"] == 250.0


def test_a_server_without_timing_is_all_outside() -> None:
    r = {"latency_ms": 12.0, "error": None, "server_ms": {}}
    assert tail.phases(r) == {"decode": 0, "queue": 0, "infer": 0, "serving": 0, "outside": 12.0}
