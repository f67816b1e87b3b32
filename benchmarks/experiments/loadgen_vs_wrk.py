"""Our load generator against wrk, on one running server: what each client costs per request.

Starts our service (one process) on the shipped VAE and drives two cheap requests, `GET
/healthz` (no model work) and `POST /decode` of one latent row (a small forward), at each
concurrency with three clients in turn: `benchmarks.loadgen` through its lean transport
(`benchmarks.transport`), the same load generator on httpx's own transport, and wrk (C, one
thread, a Lua script for the POST body). The server's work per request is small, so the
client's own cost is what the figures show: requests/s, p50 latency, and the client's CPU
milliseconds per request (this process's CPU time around our sweep; wrk's from the children's
rusage). Each round runs the clients in turn, reversed every other round; the table gives
each figure's median round. Prints a table and writes JSON. Needs `wrk` on the PATH (Debian:
`apt-get install wrk`).

    python -m benchmarks.experiments.loadgen_vs_wrk --duration 8 --rounds 3 \\
        --out benchmarks/results/loadgen-vs-wrk.json
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import loadgen
from benchmarks.inputs import latent_rows
from benchmarks.machine import machine
from benchmarks.servers import serve_ours

REPO = Path(__file__).resolve().parents[2]
CLIENTS = ("loadgen-lean", "loadgen-httpx", "wrk")
UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}


def run_loadgen(
    url: str, transport: str, endpoint: str, body: bytes, concurrency: int, duration: float
) -> dict[str, Any]:
    """One point of our load generator in this process; CPU is this process's over the point
    (no warm-up, so every request sent is inside the window but the last one per client)."""
    headers = {"content-type": "application/json", "accept": "application/json"}
    spec: loadgen.RequestSpec = (
        ("GET", "/healthz", {})
        if endpoint == "healthz"
        else ("POST", "/decode", {"content": body, "headers": headers})
    )
    request: Callable[[int], loadgen.RequestSpec] = lambda i: spec  # noqa: E731
    cpu0 = time.process_time()
    (point,) = loadgen.run(
        loadgen.sweep(
            url, transport, endpoint, "vae", request, [concurrency], duration, 0.0,
            transport=transport.removeprefix("loadgen-"),
        )
    )  # fmt: skip
    cpu = time.process_time() - cpu0
    return {
        "requests_per_s": point.requests_per_s,
        "p50_ms": point.p50_ms,
        "p99_ms": point.p99_ms,
        "errors": sum(point.errors.values()),
        "client_cpu_ms_per_request": round(1000 * cpu / max(point.requests, 1), 4),
    }


def _ms(text: str | None) -> float | None:
    """wrk's "1.23ms" / "456.00us" / "2.01s" in milliseconds."""
    found = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text or "")
    return float(found[1]) * UNITS_MS[found[2]] if found else None


def run_wrk(
    url: str, endpoint: str, body: bytes, concurrency: int, duration: float, tmp: Path
) -> dict[str, Any]:
    """One point of wrk (one thread, `concurrency` connections); CPU from the child's rusage."""
    script = tmp / f"{endpoint}.lua"
    if endpoint == "healthz":
        script.write_text("")
        target = url + "/healthz"
    else:
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body.decode())}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
            'wrk.headers["Accept"] = "application/json"\n'
        )
        target = url + "/decode"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{round(duration)}s", "--latency", "-s", str(script),
         target],
        capture_output=True, text=True, check=True, timeout=duration + 30,
    ).stdout  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    percentiles = dict(re.findall(r"^\s*(50|99)(?:\.0+)?%\s+(\S+)\s*$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(percentiles.get("50")),
        "p99_ms": _ms(percentiles.get("99")),
        "errors": int(errors.group(1)) if errors else 0,
        "client_cpu_ms_per_request": round(1000 * cpu / max(requests, 1), 4),
    }


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median requests/s, whole, and every round's requests/s beside it."""
    ranked = sorted(rounds, key=lambda r: r["requests_per_s"])
    return {**ranked[(len(ranked) - 1) // 2], "rounds_requests_per_s": [r["requests_per_s"] for r in rounds]}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--endpoints", nargs="+", choices=("healthz", "decode"), default=["healthz", "decode"])  # fmt: skip
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per point")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=REPO / "models")
    parser.add_argument("--out", type=Path, help="write the table's figures here as JSON")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on the PATH (Debian: apt-get install wrk)")
    body = json.dumps({"z": [latent_rows(1, 20)[0]]}).encode()
    results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp_name:
        tmp = Path(tmp_name)
        with serve_ours(args.model_dir, "vae-mnist", 32, 2.0, tmp / "server.log") as (url, _):
            for r in range(args.rounds):
                for endpoint in args.endpoints:
                    for c in args.concurrency:
                        for client in CLIENTS if r % 2 == 0 else CLIENTS[::-1]:
                            if client == "wrk":
                                point = run_wrk(url, endpoint, body, c, args.duration, tmp)
                            else:
                                point = run_loadgen(url, client, endpoint, body, c, args.duration)
                            results.setdefault((endpoint, c, client), []).append(point)
                            print(endpoint, c, client, point, flush=True)
    rows = [
        {"endpoint": e, "concurrency": c, "client": client, **median_round(rounds)}
        for (e, c, client), rounds in results.items()
    ]
    rows.sort(key=lambda row: (row["endpoint"], row["concurrency"], CLIENTS.index(row["client"])))
    print("\n| endpoint | c | client | req/s | p50 ms | p99 ms | client CPU ms/request |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['endpoint']} | {row['concurrency']} | {row['client']} | "
              f"{row['requests_per_s']} | {row['p50_ms']} | {row['p99_ms']} | "
              f"{row['client_cpu_ms_per_request']} |")  # fmt: skip
    if args.out:
        report = {
            "command": "python -m benchmarks.experiments.loadgen_vs_wrk "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine(),
            "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[
                0
            ],
            "rows": rows,
        }
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
