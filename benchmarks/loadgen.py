"""Async httpx load generator: a concurrency sweep against one running server.

Each point runs `concurrency` closed-loop clients (send, wait for the answer, send again) for a
warm-up and then a fixed measured window; only requests that complete inside the window count.
It reports requests/s, images/s (items/s: images, latent rows or samples), p50/p95/p99 latency of
the successful requests, the errors by status and, where the server sends `Server-Timing: app;dur=`
(ours does), the p50 of the server's own share (and, in the JSON, of each phase it reports:
ours sends decode, queue, infer), as a table on stdout and as JSON.

The client is kept cheap, since at concurrency 1 its own time is part of every latency: requests
are built once (a pool of `POOL` bodies, encoded before the clock starts, sent round-robin), the
loop is uvloop where installed (uvicorn[standard] brings it), each client is an httpx.AsyncClient
that skips cookie handling (`benchmarks.transport.CookielessClient`) and sends through
`benchmarks.transport.LeanTransport` (`--transport httpx` keeps httpx's own). The project
depends on sniffio because httpcore, without it, retries a failing import on every request
(encode/httpcore#1103). What the client costs per request, against httpx's own transport and
against wrk: docs/performance.md (`python -m benchmarks.experiments.loadgen_vs_wrk`).

    python -m benchmarks.loadgen http://127.0.0.1:8000 --flavour ours --endpoint classify \\
        --model alexnet-cifar10 --concurrency 1 4 16 64 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np

from benchmarks.inputs import DEFAULT_DATA_DIR, Corpus, grey_corpus, latent_rows, rgb_corpus
from benchmarks.transport import CookielessClient, client_transport

FLAVOURS = ("ours", "litserve")
TRANSPORTS = ("lean", "httpx")  # the client's wire: benchmarks.transport, or httpx's default
ENDPOINTS = ("classify", "encode", "decode", "sample")
PROBE = "probe"  # endpoint name of the no-model-work floor (GET /healthz or LitServe's /health)
# (method, path, httpx keyword arguments) of the i-th request of a point.
RequestSpec = tuple[str, str, dict[str, Any]]
POOL = 512  # distinct requests built per point; the i-th request sent is pool[i % POOL]
T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop where it is installed (a cheaper client), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


@dataclass
class PointResult:
    """One concurrency point of one contender on one endpoint."""

    contender: str
    endpoint: str
    model: str
    concurrency: int
    seconds: float
    requests: int
    items: int
    requests_per_s: float
    items_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    errors: dict[str, int] = field(default_factory=dict)
    load_avg_1m: float | None = None
    server_p50_ms: float | None = None  # from Server-Timing; None when the server sends none
    # p50 of each further Server-Timing entry (ours: decode, queue, infer, png)
    server_phases_p50_ms: dict[str, float] = field(default_factory=dict)


SERVER_TIMING = re.compile(r"(?:^|,)\s*([A-Za-z0-9_.-]+);(?:[^,]*;)?dur=([0-9.]+)")


def server_timing(headers: httpx.Headers) -> dict[str, float]:
    """`Server-Timing: app;dur=31.9, infer;dur=29.6` -> {"app": 31.9, "infer": 29.6} (ms); entries
    without a duration are left out."""
    return {m[1]: float(m[2]) for m in SERVER_TIMING.finditer(headers.get("server-timing", ""))}


def _mime(data: bytes) -> str:
    return "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"


def make_requester(
    flavour: str,
    endpoint: str,
    model: str,
    corpus: Corpus | None = None,
    latents: list[list[float]] | None = None,
) -> Callable[[int], RequestSpec]:
    """The i-th request (one item each) for `endpoint`, in our API's or the LitServe contender's form."""
    if flavour not in FLAVOURS or endpoint not in ENDPOINTS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, endpoint one of {ENDPOINTS}")
    ours = flavour == "ours"
    query = {"model": model} if ours else {}
    as_json = {"accept": "application/json"}

    def request(i: int) -> RequestSpec:
        if endpoint in ("classify", "encode"):
            assert corpus is not None, f"{endpoint} needs an image corpus"
            data = corpus[i]
            name = "image.png" if _mime(data) == "image/png" else "image.jpg"
            return (
                "POST",
                f"/{endpoint}",
                {"params": query, "files": {"image": (name, data, _mime(data))}},
            )
        if endpoint == "decode":
            assert latents, "decode needs latent rows"
            body = {"z": [latents[i % len(latents)]]}
            return "POST", "/decode", {"params": query, "json": body, "headers": as_json}
        if ours:  # sample: a GET with the seed in the query on our API
            return "GET", "/sample", {"params": {**query, "n": 1, "seed": i}, "headers": as_json}
        return "POST", "/sample", {"json": {"n": 1, "seed": i}, "headers": as_json}

    return request


def summarise(
    contender: str,
    endpoint: str,
    model: str,
    concurrency: int,
    seconds: float,
    latencies_s: list[float],
    errors: Counter[str],
    items_per_request: int = 1,
    server_timings: list[dict[str, float]] | None = None,
) -> PointResult:
    """Throughput and latency percentiles of one measured window; the p50 of each
    Server-Timing entry the successful answers carried."""
    ok = len(latencies_s)
    lat = np.asarray(latencies_s) * 1000.0
    pct = [round(float(v), 3) for v in np.percentile(lat, [50, 95, 99])] if ok else [None] * 3
    by_name: dict[str, list[float]] = {}
    for entries in server_timings or []:
        for name, ms in entries.items():
            by_name.setdefault(name, []).append(ms)
    p50 = {name: round(float(np.median(v)), 3) for name, v in by_name.items()}
    server_p50 = p50.pop("app", None)
    return PointResult(
        contender=contender,
        endpoint=endpoint,
        model=model,
        concurrency=concurrency,
        seconds=round(seconds, 3),
        requests=ok,
        items=ok * items_per_request,
        requests_per_s=round(ok / seconds, 2),
        items_per_s=round(ok * items_per_request / seconds, 2),
        p50_ms=pct[0],
        p95_ms=pct[1],
        p99_ms=pct[2],
        errors=dict(errors),
        server_p50_ms=server_p50,
        server_phases_p50_ms=p50,
    )


def prebuild(
    client: httpx.AsyncClient, request: Callable[[int], RequestSpec], n: int = POOL
) -> list[httpx.Request]:
    """The first `n` requests, URL merged and body encoded once (multipart, JSON), as plain
    byte bodies: re-sendable, by any client, at no per-request encoding cost."""
    pool = []
    for i in range(n):
        method, path, kwargs = request(i)
        built = client.build_request(method, path, **kwargs)
        pool.append(
            httpx.Request(
                built.method,
                built.url,
                headers=built.headers,
                content=built.read(),
                extensions=built.extensions,
            )
        )
    return pool


async def run_point(
    make_client: Callable[[], httpx.AsyncClient],
    request: Callable[[int], RequestSpec],
    concurrency: int,
    duration: float,
    warmup: float,
    trace: list[dict[str, Any]] | None = None,
) -> tuple[float, list[float], Counter[str], list[dict[str, float]]]:
    """Drive `concurrency` closed-loop clients; latencies, errors and server-side times (where
    the server reports them) of the measured window. With `trace`, one record per request of
    the window is appended to it: when it was sent (seconds into the window), its latency, its
    error (None when it succeeded) and its Server-Timing entries.

    Each client has its own httpx.AsyncClient (one connection): one shared pool of 64
    connections costs httpx so much that the client, not the server, caps the throughput
    (measured here: 477 -> 47 req/s from c=1 to c=64 against a do-nothing ASGI app; one client
    per connection holds ~500 req/s at every concurrency).
    """
    # Clients and requests first: building 64 clients takes seconds on a busy box, outside the
    # window.
    clients = [make_client() for _ in range(concurrency)]
    pool = prebuild(clients[0], request)
    loop = asyncio.get_running_loop()
    start = loop.time()
    window = (start + warmup, start + warmup + duration)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    server: list[dict[str, float]] = []
    counter = iter(range(10**12))

    async def worker(index: int, client: httpx.AsyncClient) -> None:
        while loop.time() < window[1]:  # bounded: stops issuing once the window closes
            prepared = pool[next(counter) % len(pool)]
            own: dict[str, float] = {}
            sent = loop.time()
            t0 = time.perf_counter()
            try:
                response = await client.send(prepared)
                # the clock stops here: reading the answer's headers is not the server's time
                # (LitServe's answers carry no Server-Timing, so parsing ours would tilt it)
                latency = time.perf_counter() - t0
                status: str | None = None if response.is_success else str(response.status_code)
                own = server_timing(response.headers)
            except httpx.HTTPError as e:
                status = type(e).__name__
            done = loop.time()
            if window[0] <= done <= window[1]:
                if trace is not None:
                    trace.append({
                        "concurrency": concurrency,
                        "client": index,
                        "sent_s": round(sent - window[0], 4),
                        "latency_ms": round(latency * 1000, 3) if status is None else None,
                        "error": status,
                        "server_ms": own,
                    })  # fmt: skip
                if status is None:
                    latencies.append(latency)
                    if own:
                        server.append(own)
                else:
                    errors[status] += 1

    try:
        await asyncio.gather(*(worker(i, c) for i, c in enumerate(clients)))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    return duration, latencies, errors, server


async def sweep(
    base_url: str,
    contender: str,
    endpoint: str,
    model: str,
    request: Callable[[int], RequestSpec],
    concurrencies: list[int],
    duration: float,
    warmup: float,
    timeout: float = 60.0,
    transport: str = "lean",
    trace: list[dict[str, Any]] | None = None,
) -> list[PointResult]:
    """One point per concurrency, in order, each with its own warm-up (`trace`: see run_point)."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
    results = []
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    tls = ssl.create_default_context()  # shared: each client would otherwise load the CA store

    def make_client() -> httpx.AsyncClient:
        wire = client_transport(base_url) if transport == "lean" else None
        return CookielessClient(
            base_url=base_url, limits=limits, timeout=timeout, verify=tls, transport=wire
        )

    for c in concurrencies:
        seconds, latencies, errors, server = await run_point(
            make_client, request, c, duration, warmup, trace
        )
        point = summarise(
            contender, endpoint, model, c, seconds, latencies, errors, server_timings=server
        )
        point.load_avg_1m = round(os.getloadavg()[0], 2)
        results.append(point)
    return results


COLUMNS = (
    "contender",
    "endpoint",
    "model",
    "concurrency",
    "requests_per_s",
    "items_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "server_p50_ms",
    "errors",
)


def format_table(points: list[PointResult]) -> str:
    """A GitHub-markdown table of sweep points."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for p in points:
        row = asdict(p)
        cells = [
            ", ".join(f"{k}: {v}" for k, v in row["errors"].items()) or "0"
            if col == "errors"
            else ("-" if row[col] is None else str(row[col]))
            for col in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="base URL of a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--flavour",
        choices=FLAVOURS,
        default="ours",
        help="request shapes: our API or the LitServe contender's",
    )
    parser.add_argument("--endpoint", choices=ENDPOINTS, default="classify")
    parser.add_argument(
        "--model", default="alexnet-cifar10", help="model name (?model= on our API)"
    )
    parser.add_argument("--latent-dim", type=int, default=20, help="latent size for /decode")
    parser.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=None,
        help="image corpus: 3 = CIFAR-10 JPEGs, 1 = MNIST PNGs (default: by endpoint)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds before each point"
    )
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="lean",
        help="the client's wire: benchmarks.transport (default) or httpx's own",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--json", type=Path, help="also write the points here")
    parser.add_argument(
        "--trace",
        type=Path,
        help="also write one JSON line per measured request here (concurrency, client, when "
        "sent, latency, error, Server-Timing entries): what a tail is made of",
    )
    args = parser.parse_args(argv)
    channels = args.channels or (3 if args.endpoint == "classify" else 1)
    corpus = rgb_corpus(args.data_dir) if channels == 3 else grey_corpus(args.data_dir)
    request = make_requester(
        args.flavour, args.endpoint, args.model, corpus, latent_rows(256, args.latent_dim)
    )
    trace: list[dict[str, Any]] | None = [] if args.trace else None
    points = run(
        sweep(
            args.url,
            args.flavour,
            args.endpoint,
            args.model,
            request,
            args.concurrency,
            args.duration,
            args.warmup,
            transport=args.transport,
            trace=trace,
        )
    )
    print(format_table(points))
    if args.json:
        args.json.write_text(json.dumps([asdict(p) for p in points], indent=2) + "\n")
    if args.trace and trace is not None:
        args.trace.write_text("".join(json.dumps(r) + "\n" for r in trace))


if __name__ == "__main__":
    main()
