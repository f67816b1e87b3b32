"""Prometheus metrics: one `Metrics` (with its own CollectorRegistry) per app instance.

A registry per app keeps tests independent (several apps in one process never collide).

Several uvicorn workers (multiprocess mode): each worker is its own process with its own
counters, and a scrape reaches one of them at random. Set PROMETHEUS_MULTIPROC_DIR to an empty,
writable directory before the workers start (cleared at each deployment): prometheus-client
then writes every value to memory-mapped files there, and /metrics aggregates all workers'
files through a MultiProcessCollector. Gauges declare how to combine workers
(`multiprocess_mode`); info-style gauges report one series per live worker.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from typing import Literal, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

# Seconds: from 0.5 ms (a warm tiny model) to 10 s (a saturated big one).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Why a request was refused or abandoned: 503 queue full, 504 past its deadline, client gone.
RejectReason = Literal["overloaded", "deadline", "disconnected"]


class Metrics:
    """Every metric the service exports; names follow Prometheus conventions."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "modelserve_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "modelserve_http_request_duration_seconds",
            "HTTP request duration, by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "modelserve_http_requests_in_flight",
            "HTTP requests being served.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.inference_duration = Histogram(
            "modelserve_inference_duration_seconds",
            "Duration of one batched forward pass, by model and operation.",
            ["model", "op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "modelserve_batch_size",
            "Items per batched forward pass, by model and operation.",
            ["model", "op"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.items = Counter(
            "modelserve_inference_items_total",
            "Items (images or latent codes) inferred, by model and operation.",
            ["model", "op"],
            registry=r,
        )
        self.errors = Counter(
            "modelserve_inference_errors_total",
            "Batches whose forward pass raised, by model and operation.",
            ["model", "op"],
            registry=r,
        )
        # One series per worker process in multiprocess mode (label `pid`): each worker's queue
        # has its own limit, so a sum over workers would hide which one is full.
        self.queue_depth = Gauge(
            "modelserve_queue_items",
            "Items waiting for a batch, by model and operation.",
            ["model", "op"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.queue_limit = Gauge(
            "modelserve_queue_limit_items",
            "Items a model operation's queue holds before requests get 503 (MODELSERVE_MAX_QUEUE).",
            registry=r,
            multiprocess_mode="max",
        )
        self.rejected = Counter(
            "modelserve_rejected_requests_total",
            "Requests refused or abandoned: overloaded (503), deadline (504), disconnected.",
            ["reason"],
            registry=r,
        )
        # Every series an alert divides by or takes increase() of exists from the start, at 0:
        # Prometheus cannot see a counter's first increment when the series appears with it.
        for reason in get_args(RejectReason):
            self.rejected.labels(reason)
        self.model_info = Gauge(
            "modelserve_model_info",
            "Loaded models (value 1), with their card's identity and the number format they run in.",
            ["model", "architecture", "dataset", "device", "weights_sha256", "dtype"],
            registry=r,
            multiprocess_mode="max",
        )
        self.model_load_failed = Gauge(
            "modelserve_model_load_failed",
            "Model directories that failed to load (value 1), by directory name; the service "
            "serves the others (GET /readyz lists why).",
            ["model"],
            registry=r,
            multiprocess_mode="max",
        )
        self.build_info = Gauge(
            "modelserve_build_info",
            "Build of the service (value 1).",
            ["version", "python", "torch"],
            registry=r,
            multiprocess_mode="max",
        )

    def reject(self, reason: RejectReason) -> None:
        """Count one refused or abandoned request."""
        self.rejected.labels(reason).inc()

    def known_routes(self, routes: Iterable[tuple[str, str]]) -> None:
        """Start each (route template, method)'s 500 count at 0, for alerts on increase()."""
        for path, method in routes:
            self.http_requests.labels(path, method, "500")

    def set_build_info(self, version: str, torch_version: str) -> None:
        """Record the service's and its runtime's versions."""
        self.build_info.labels(version, platform.python_version(), torch_version).set(1)

    def worker_exiting(self) -> None:
        """In multiprocess mode, drop this worker's per-worker gauge series ("live" modes: the
        queue series, in-flight requests), so scrapes stop showing a worker that has gone.
        (A worker killed outright leaves its series until the next start clears the directory.)
        """
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            mark_process_dead(os.getpid())

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of this app's registry, or of every worker in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
