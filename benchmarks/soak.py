"""Soak: mixed traffic on every endpoint at high concurrency for minutes, watching for decay.

Starts our service (benchmarks.servers.serve_ours: uvicorn subprocess, one process) on a directory
holding a classifier and a VAE (the shipped checkpoints, or the benchmark's random stand-ins),
then drives `--concurrency` closed-loop clients for `--duration` seconds. Each request is drawn
at random (seeded) from a weighted mix: the four model endpoints with the load generator's request
shapes, /models, /models/{name}, the probes, /metrics, and a share of deliberately bad requests
(each must get its 4xx). Every `--interval` seconds it records the server's RSS (from /proc).

Reports, per bucket of `--bucket` seconds: requests, statuses, p50/p99 latency, RSS; then the
three checks, counted after `--warmup`:
* no 5xx other than deliberate 503 shedding (and no transport errors, no unexpected status);
* RSS growth after warm-up under 10% (median of the last bucket vs the first after warm-up);
* p99 steady: no post-warm-up bucket's p99 above 2x the median bucket p99.
Prints a table, writes JSON, exits 1 if a check fails.

    python -m benchmarks.soak                              # 10 minutes at concurrency 64
    python -m benchmarks.soak --duration 45 --warmup 10 --bucket 10 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import loadgen
from benchmarks.inputs import DEFAULT_DATA_DIR, grey_corpus, latent_rows, rgb_corpus
from benchmarks.machine import machine
from benchmarks.make_checkpoints import _link_or_standin, small_alexnet_standin, vae_standin
from benchmarks.servers import serve_ours
from models.checkpoint import read_card

REPO = Path(__file__).resolve().parents[1]
RSS_GROWTH_LIMIT = 0.10
P99_STEADY_FACTOR = 2.0

# (kind, weight): the share of each request kind in the mix.
MIX: tuple[tuple[str, int], ...] = (
    ("classify", 30),
    ("encode", 15),
    ("decode", 15),
    ("sample", 10),
    ("models", 4),
    ("model_card", 4),
    ("healthz", 3),
    ("readyz", 3),
    ("metrics", 4),
    ("bad", 12),
)
# A deliberately bad request (method, path, httpx kwargs) and the status it must get.
BadRequest = tuple[str, str, dict[str, Any], int]


@dataclass
class Sample:
    """One finished request."""

    t: float  # seconds since the soak started, at completion
    kind: str
    status: str  # HTTP status, or the transport exception's name
    ms: float
    expected: bool  # the status is what this request should get


@dataclass
class Bucket:
    """One time slice of the soak."""

    start_s: float
    end_s: float
    requests: int
    requests_per_s: float
    ok_2xx: int
    expected_4xx: int
    shed_503: int
    server_errors: int  # 5xx other than 503
    unexpected: int  # transport errors, or a status the request should not get
    p50_ms: float | None
    p99_ms: float | None
    rss_mib: float | None
    by_kind_p99_ms: dict[str, float] = field(default_factory=dict)


def model_dir(root: Path) -> tuple[Path, str, str]:
    """One directory holding a classifier and a VAE: (dir, classifier name, VAE name)."""
    root.mkdir(parents=True, exist_ok=True)
    classifier = _link_or_standin(root, "alexnet-cifar10", small_alexnet_standin)
    vae = _link_or_standin(root, "vae-mnist-paper", vae_standin)
    return root, classifier, vae


def bad_requests(classifier: str, vae: str, latent_dim: int) -> list[BadRequest]:
    """Bad input the service must refuse with a 4xx, every kind of refusal path once."""
    png = {"image": ("x.png", b"\x89PNG\r\n\x1a\n truncated", "image/png")}
    return [
        ("POST", "/classify", {"params": {"model": classifier}, "files": png}, 400),
        ("POST", "/classify", {"files": {"image": ("x.txt", b"hello", "text/plain")}}, 415),
        ("POST", "/classify", {"params": {"model": classifier, "top_k": 0}, "files": png}, 422),
        ("POST", "/decode", {"params": {"model": vae}, "json": {"z": [[0.0] * (latent_dim + 1)]}}, 422),
        ("POST", "/decode", {"params": {"model": vae}, "json": {"z": []}}, 422),
        ("POST", "/encode", {"params": {"model": vae}, "json": {"pixels": [[2.0] * 784]}}, 422),
        ("GET", "/sample", {"params": {"model": vae, "n": 2}, "headers": {"accept": "text/html"}}, 406),
        ("GET", "/sample", {"params": {"model": "nope"}}, 404),
        ("GET", "/models/nope", {}, 404),
    ]  # fmt: skip


def make_mix(
    classifier: str, vae: str, latent_dim: int, data_dir: Path | None, seed: int
) -> Callable[[int], tuple[str, str, str, dict[str, Any], int | None]]:
    """The i-th request of the soak: (kind, method, path, kwargs, expected status or None = 2xx)."""
    rgb, grey = rgb_corpus(data_dir, 256), grey_corpus(data_dir, 256)
    latents = latent_rows(256, latent_dim)
    model_requests = {
        "classify": loadgen.make_requester("ours", "classify", classifier, rgb),
        "encode": loadgen.make_requester("ours", "encode", vae, grey),
        "decode": loadgen.make_requester("ours", "decode", vae, latents=latents),
        "sample": loadgen.make_requester("ours", "sample", vae),
    }
    simple = {
        "models": ("GET", "/models"),
        "model_card": ("GET", f"/models/{vae}"),
        "healthz": ("GET", "/healthz"),
        "readyz": ("GET", "/readyz"),
        "metrics": ("GET", "/metrics"),
    }
    bad = bad_requests(classifier, vae, latent_dim)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]

    def request(i: int) -> tuple[str, str, str, dict[str, Any], int | None]:
        rng = random.Random(seed * 1_000_003 + i)  # the i-th request is the same on every run
        kind = rng.choices(kinds, weights)[0]
        if kind in model_requests:
            method, path, kwargs = model_requests[kind](i)
            return kind, method, path, kwargs, None
        if kind == "bad":
            method, path, kwargs, status = bad[rng.randrange(len(bad))]
            return kind, method, path, kwargs, status
        method, path = simple[kind]
        return kind, method, path, {}, None

    return request


def rss_bytes(pid: int) -> int | None:
    """Resident set size of `pid` (Linux /proc); None where /proc is unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


async def drive(
    url: str,
    request: Callable[[int], tuple[str, str, str, dict[str, Any], int | None]],
    concurrency: int,
    duration: float,
    pid: int | None,
    interval: float,
    timeout: float,
) -> tuple[list[Sample], list[tuple[float, int]]]:
    """Closed-loop clients for `duration` seconds, plus an RSS sampler; (samples, rss series)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + duration
    samples: list[Sample] = []
    rss: list[tuple[float, int]] = []
    counter = iter(range(10**12))

    async def worker(client: httpx.AsyncClient) -> None:
        while loop.time() < end:  # bounded: no new request once the duration is up
            kind, method, path, kwargs, want = request(next(counter))
            t0 = time.perf_counter()
            try:
                r = await client.request(method, path, **kwargs)
                status = str(r.status_code)
                expected = r.is_success if want is None else r.status_code == want
                expected = expected or r.status_code == 503  # shedding is allowed, counted apart
            except httpx.HTTPError as e:
                status, expected = type(e).__name__, False
            ms = (time.perf_counter() - t0) * 1000
            samples.append(Sample(loop.time() - start, kind, status, ms, expected))

    async def sampler() -> None:
        while pid is not None and loop.time() < end:
            value = rss_bytes(pid)
            if value is not None:
                rss.append((loop.time() - start, value))
            await asyncio.sleep(interval)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        await asyncio.gather(sampler(), *(worker(client) for _ in range(concurrency)))
    return samples, rss


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def buckets(
    samples: list[Sample], rss: list[tuple[float, int]], duration: float, width: float
) -> list[Bucket]:
    """Cut the run into `width`-second slices; latency percentiles of the 2xx answers."""
    out = []
    edges = [*(float(e) for e in np.arange(0.0, duration, width)), duration]
    for lo, hi in itertools.pairwise(edges):
        inside = [s for s in samples if lo <= s.t < hi or (hi == duration and s.t >= hi)]
        ok = [s for s in inside if s.status.startswith("2")]
        by_kind: dict[str, list[float]] = {}
        for s in ok:
            by_kind.setdefault(s.kind, []).append(s.ms)
        mem = [v for t, v in rss if lo <= t < hi]
        out.append(
            Bucket(
                start_s=round(float(lo), 1),
                end_s=round(float(hi), 1),
                requests=len(inside),
                requests_per_s=round(len(inside) / (hi - lo), 1),
                ok_2xx=len(ok),
                expected_4xx=sum(s.expected and s.status.startswith("4") for s in inside),
                shed_503=sum(s.status == "503" for s in inside),
                server_errors=sum(s.status.startswith("5") and s.status != "503" for s in inside),
                unexpected=sum(not s.expected for s in inside),
                p50_ms=_pct([s.ms for s in ok], 50),
                p99_ms=_pct([s.ms for s in ok], 99),
                rss_mib=round(statistics.median(mem) / 2**20, 1) if mem else None,
                by_kind_p99_ms={k: v for k, vs in sorted(by_kind.items()) if (v := _pct(vs, 99))},
            )
        )
    return out


def checks(table: list[Bucket], warmup: float) -> dict[str, Any]:
    """Issue 5's three soak criteria over the buckets that start after the warm-up."""
    after = [b for b in table if b.start_s >= warmup] or table[-1:]
    errors = sum(b.server_errors for b in after)
    unexpected = sum(b.unexpected for b in after)
    rss = [b.rss_mib for b in after if b.rss_mib is not None]
    growth = (rss[-1] - rss[0]) / rss[0] if len(rss) >= 2 else None
    p99s = [b.p99_ms for b in after if b.p99_ms is not None]
    p99_median = statistics.median(p99s) if p99s else None
    p99_worst = max(p99s) if p99s else None
    return {
        "buckets_after_warmup": len(after),
        "server_errors_not_503": errors,
        "unexpected_responses": unexpected,
        "shed_503": sum(b.shed_503 for b in after),
        "rss_first_mib": rss[0] if rss else None,
        "rss_last_mib": rss[-1] if rss else None,
        "rss_growth": None if growth is None else round(growth, 4),
        "p99_median_ms": p99_median,
        "p99_worst_ms": p99_worst,
        "pass_no_5xx": errors == 0 and unexpected == 0,
        "pass_rss_flat": growth is not None and growth < RSS_GROWTH_LIMIT,
        "pass_p99_steady": bool(p99s) and max(p99s) <= P99_STEADY_FACTOR * statistics.median(p99s),
    }


COLUMNS = ("start_s", "end_s", "requests", "requests_per_s", "ok_2xx", "expected_4xx",
           "shed_503", "server_errors", "unexpected", "p50_ms", "p99_ms", "rss_mib")  # fmt: skip


def format_table(table: list[Bucket]) -> str:
    """A GitHub-markdown table, one row per bucket."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for b in table:
        row = asdict(b)
        lines.append(
            "| " + " | ".join("-" if row[c] is None else str(row[c]) for c in COLUMNS) + " |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (10 min)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the checks")
    p.add_argument("--bucket", type=float, default=60.0, help="seconds per table row")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between RSS samples")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request client timeout")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout-ms", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=None, help="MODELSERVE_TORCH_THREADS")
    p.add_argument("--models-root", type=Path, default=REPO / "runs" / "soak" / "models")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="default: runs/soak/<time>.json")
    args = p.parse_args(argv)
    if args.duration <= args.warmup:
        p.error("--duration must be longer than --warmup")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root, classifier, vae = model_dir(args.models_root)
    latent_dim = int(read_card(root / vae).config["latent"])
    data_dir = args.data_dir if args.data_dir.is_dir() else None
    request = make_mix(classifier, vae, latent_dim, data_dir, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with serve_ours(
            root, classifier, args.max_batch_size, args.batch_timeout_ms, log, args.threads
        ) as (url, pid):
            print(f"soak: {url} (pid {pid}), {args.concurrency} clients, {args.duration:g} s",
                  flush=True)  # fmt: skip
            samples, rss = asyncio.run(
                drive(
                    url, request, args.concurrency, args.duration, pid, args.interval, args.timeout
                )
            )
        server_log = log.read_text(errors="replace")[-5000:]
    table = buckets(samples, rss, args.duration, args.bucket)
    result = checks(table, args.warmup)
    statuses = Counter(f"{s.kind} {s.status}" for s in samples)
    print(format_table(table))
    print(json.dumps(result, indent=2))
    report = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "models": {"classifier": classifier, "vae": vae, "dir": str(root)},
        "mix": dict(MIX),
        "checks": result,
        "buckets": [asdict(b) for b in table],
        "statuses": dict(sorted(statuses.items())),
        "rss_series": [(round(t, 2), v) for t, v in rss],
        "server_log_tail": server_log,
    }
    out = args.json or REPO / "runs" / "soak" / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    passed = result["pass_no_5xx"] and result["pass_rss_flat"] and result["pass_p99_steady"]
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
