"""Benchmark servers as subprocesses: ours (uvicorn) and the LitServe contender, each on a free
loopback port in its own process group, stopped (SIGTERM, then SIGKILL) when the block ends."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(
    cmd: list[str], env: dict[str, str], url: str, probe: str, log: Path, startup_s: float = 180.0
) -> Iterator[int]:
    """Run `cmd` in its own process group until the block ends; wait for `probe` to answer 200.

    Yields the server's process id (the group leader).
    """
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{cmd[2]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + probe, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{cmd[2]} not ready after {startup_s}s:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the group: LitServe's worker processes too
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def serve_ours(
    model_dir: Path,
    model: str,
    max_batch_size: int,
    batch_timeout_ms: float,
    log: Path,
    threads: int | None = None,
    workers: int = 1,
    device: str = "cpu",
    lanes: int = 1,
    dtype: str = "float32",
) -> Iterator[tuple[str, int]]:
    """Our service (uvicorn, `workers` processes) on `model_dir`; yields (base URL, pid).

    `dtype` sets MODELSERVE_DTYPE, always explicitly (never auto, which could pick another
    format than the in-process ceiling and LitServe load through `ops.load`).
    `threads` sets MODELSERVE_TORCH_THREADS; None keeps the service's default (cores / workers).
    `lanes` sets MODELSERVE_INFERENCE_LANES.
    Several workers run as in production: WEB_CONCURRENCY and a PROMETHEUS_MULTIPROC_DIR.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ,
           "MODELSERVE_MODEL_DIR": str(model_dir),
           "MODELSERVE_DEFAULT_CLASSIFIER": model, "MODELSERVE_DEFAULT_VAE": model,
           "MODELSERVE_MAX_BATCH_SIZE": str(max_batch_size),
           "MODELSERVE_BATCH_TIMEOUT_MS": str(batch_timeout_ms),
           "MODELSERVE_DEVICE": torch_device_type(device),
           "MODELSERVE_DTYPE": dtype,
           "MODELSERVE_LOG_LEVEL": "WARNING"}  # fmt: skip
    if threads is not None:
        env["MODELSERVE_TORCH_THREADS"] = str(threads)
    if lanes != 1:
        env["MODELSERVE_INFERENCE_LANES"] = str(lanes)
    cmd = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--no-access-log",
           "--workers", str(workers)]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-prom-") as prom:
        if workers > 1:
            env |= {"WEB_CONCURRENCY": str(workers), "PROMETHEUS_MULTIPROC_DIR": prom}
        with server(cmd, env, url, "/readyz", log) as pid:
            yield url, pid


@contextlib.contextmanager
def serve_litserve(
    checkpoint: Path,
    workers: int,
    max_batch_size: int,
    batch_timeout_ms: float,
    log: Path,
    device: str = "cpu",
    dtype: str = "float32",
) -> Iterator[tuple[str, int]]:
    """The LitServe contender on one checkpoint, its classifier in `dtype`; yields (base URL,
    pid)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "benchmarks.litserve_server", str(checkpoint),
           "--port", str(port), "--workers", str(workers),
           "--max-batch-size", str(max_batch_size),
           "--batch-timeout-ms", str(batch_timeout_ms),
           "--accelerator", torch_device_type(device), "--dtype", dtype]  # fmt: skip
    with server(cmd, dict(os.environ), url, "/health", log) as pid:
        yield url, pid


def torch_device_type(device: str) -> str:
    """ "cuda:0" -> "cuda": the servers take a device type and pick the GPU themselves."""
    return device.split(":", 1)[0]
