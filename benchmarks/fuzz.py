"""Long fuzzing run: schemathesis against a real server's own OpenAPI schema, thousands of cases.

The in-suite run (tests/app/test_fuzz.py) stays at a few hundred cases in-process; this one
starts the service as a real uvicorn process (benchmarks.servers.serve_ours, on the soak's model
directory: shipped checkpoints or random stand-ins) and runs the schemathesis CLI over every
operation with `--max-examples` per operation, positive and negative cases, the same checks:
no 5xx, status/content type/headers/body as documented, schema-violating requests refused.
Prints schemathesis's summary and a per-operation table, writes JSON, exits as schemathesis did.

    python -m benchmarks.fuzz                         # 400 per operation (~3-4k requests)
    python -m benchmarks.fuzz --max-examples 100 --json /tmp/fuzz.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.machine import machine
from benchmarks.servers import serve_ours
from benchmarks.soak import model_dir

REPO = Path(__file__).resolve().parents[1]
# As in tests/app/test_fuzz.py (which explains why positive_data_acceptance is left out).
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)


def schemathesis_cmd(url: str, args: argparse.Namespace, ndjson: Path) -> list[str]:
    """The CLI call: deterministic seed, every phase, one event per line for the summary."""
    return [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
            "--checks", ",".join(CHECKS), "--max-examples", str(args.max_examples),
            "--seed", str(args.seed), "--workers", str(args.workers),
            "--phases", "examples,coverage,fuzzing", "--continue-on-failure",
            "--request-timeout", str(args.request_timeout), "--generation-database", "none",
            "--report", "ndjson", "--report-ndjson-path", str(ndjson)]  # fmt: skip


def summarise(ndjson: Path) -> dict[str, Any]:
    """Requests and statuses per operation, and the failures, from schemathesis's event log."""
    statuses: dict[str, Counter[str]] = {}
    failures: Counter[str] = Counter()  # "operation: check" -> failed checks
    for line in ndjson.read_text().splitlines():
        event = json.loads(line)
        scenario = event.get("ScenarioFinished")
        if not scenario:
            continue
        recorder = scenario.get("recorder") or {}
        label = recorder.get("label", "?")
        for interaction in (recorder.get("interactions") or {}).values():
            response = interaction.get("response") or {}
            code = str(response.get("status_code", "no response"))
            statuses.setdefault(label, Counter())[code] += 1
        for check_list in (recorder.get("checks") or {}).values():
            for check in check_list:
                if str(check.get("status", "")).lower() == "failure":
                    failures[f"{label}: {check.get('name')}"] += 1
    per_op = {op: dict(sorted(c.items())) for op, c in sorted(statuses.items())}
    total = sum(sum(c.values()) for c in statuses.values())
    server_errors = sum(
        n for c in statuses.values() for code, n in c.items() if code.startswith("5")
    )
    return {
        "requests": total,
        "server_errors": server_errors,
        "failures": dict(failures),
        "per_operation": per_op,
    }


def format_table(summary: dict[str, Any]) -> str:
    """Markdown: one row per operation with its request count and statuses."""
    lines = ["| operation | requests | statuses |", "|---|---|---|"]
    for op, codes in summary["per_operation"].items():
        cells = ", ".join(f"{code}: {n}" for code, n in codes.items())
        lines.append(f"| {op} | {sum(codes.values())} | {cells} |")
    lines.append(f"| **all** | {summary['requests']} | 5xx: {summary['server_errors']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--max-examples", type=int, default=400, help="per operation and phase")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="concurrent schemathesis workers")
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=1, help="MODELSERVE_TORCH_THREADS")
    p.add_argument("--models-root", type=Path, default=REPO / "runs" / "soak" / "models")
    p.add_argument("--json", type=Path, default=None, help="default: runs/fuzz/<time>.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root, classifier, _ = model_dir(args.models_root)
    with tempfile.TemporaryDirectory() as tmp:
        ndjson, log = Path(tmp) / "events.ndjson", Path(tmp) / "server.log"
        with serve_ours(root, classifier, 32, 2.0, log, args.threads) as (url, pid):
            print(
                f"fuzz: {url} (pid {pid}), {args.max_examples} examples per operation", flush=True
            )
            # cwd: schemathesis keeps a crash cache (.schemathesis/) in its working directory.
            done = subprocess.run(schemathesis_cmd(url, args, ndjson), cwd=tmp, check=False)
        summary = summarise(ndjson)
        server_log = log.read_text(errors="replace")[-5000:]
    print(format_table(summary))
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "checks": list(CHECKS),
        "schemathesis_exit": done.returncode,
        **summary,
        "server_log_tail": server_log,
    }
    out = args.json or REPO / "runs" / "fuzz" / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
