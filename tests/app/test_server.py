"""A real uvicorn process: graceful shutdown on SIGTERM, and a client that disconnects."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest
import torch
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from app.__main__ import prepare_multiprocess_dir
from models import AlexNet, AlexNetConfig, InputSpec, ModelCard, save_checkpoint
from models.checkpoint import DatasetInfo
from tests.app.conftest import make_alexnet, png_bytes

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def slow_classifier(directory: Path) -> None:
    """An AlexNet at 672x672 with a narrow head: ~6 GMAC per image, so a 16-image batch on one
    thread takes over a second even on the fastest CPU these tests have met (1.1 s on an AMD
    EPYC family 26 with AVX-512; at 224x224 it took 0.1 s there), and the tests below can act
    while it runs."""
    torch.manual_seed(0)
    config = AlexNetConfig(num_classes=3, hidden=64)
    card = ModelCard(
        name="alexnet-cifar10",
        architecture="alexnet",
        config=config.to_dict(),
        task="classification",
        input=InputSpec(channels=3, size=(672, 672), resize=768, mean=[0.5] * 3, std=[0.25] * 3),
        labels=["a", "b", "c"],
        dataset=DatasetInfo(name="random"),
        code_version="test",
    )
    save_checkpoint(directory / "alexnet-cifar10", AlexNet(config), card)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    env: dict[str, str], out: int | IO[bytes] = subprocess.PIPE
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m app` on a free port with `env` added; returns once /readyz answers 200."""
    port = free_port()
    # Nothing of this shell's serving set-up leaks in (`python -m app` would clear an inherited
    # PROMETHEUS_MULTIPROC_DIR's files).
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MODELSERVE_")
        and k not in ("WEB_CONCURRENCY", "PROMETHEUS_MULTIPROC_DIR")
    }
    env = inherited | env | {"MODELSERVE_HOST": "127.0.0.1", "MODELSERVE_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "exited"
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.2)


def start_slow_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A server whose 16-image batch takes a while (one thread, 672x672)."""
    slow_classifier(root)
    return start_server(
        {
            "MODELSERVE_MODEL_DIR": str(root),
            "MODELSERVE_TORCH_THREADS": "1",
            "MODELSERVE_MAX_BATCH_SIZE": "16",
            "MODELSERVE_LOG_LEVEL": "WARNING",
            "MODELSERVE_GRACEFUL_TIMEOUT_S": "30",
            # the batch time these tests count on is float32's (auto would also time bf16 at
            # load, 16 slow forwards)
            "MODELSERVE_DTYPE": "float32",
        }
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc, url = start_slow_server(tmp_path)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


IMAGES = [
    ("image", (f"{i}.png", png_bytes(size=(256, 256), color=(i * 15, 80, 200)), "image/png"))
    for i in range(16)
]


def _rejected(url: str, reason: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f'modelserve_rejected_requests_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def _wait_metric(url: str, series: str, at_least: float) -> None:
    """Until the scrape shows `series` (name and labels, as printed) at `at_least` or more."""
    deadline = time.monotonic() + 30
    while True:
        for line in httpx.get(f"{url}/metrics").text.splitlines():
            if line.startswith(series + " ") and float(line.split()[-1]) >= at_least:
                return
        assert time.monotonic() < deadline, f"{series} never reached {at_least}"
        time.sleep(0.02)


def _wait_in_flight(url: str) -> None:
    """Until the server holds a request besides the scrape asking (which counts itself)."""
    _wait_metric(url, "modelserve_http_requests_in_flight", 2)


def _post_in_thread(url: str) -> tuple[threading.Thread, dict[str, object]]:
    """POST the 16 images from a thread; its response (or error) lands in the dict."""
    result: dict[str, object] = {}

    def post() -> None:
        try:
            result["response"] = httpx.post(f"{url}/classify", files=IMAGES, timeout=60)
        except Exception as e:  # handed to the test, which fails with it
            result["error"] = e

    thread = threading.Thread(target=post)
    thread.start()
    return thread, result


def _answered(thread: threading.Thread, result: dict[str, object]) -> httpx.Response:
    thread.join(60)
    assert "error" not in result, result["error"]
    response = result["response"]
    assert isinstance(response, httpx.Response)
    return response


def test_disconnected_client_frees_its_slot(server: tuple[subprocess.Popen[bytes], str]) -> None:
    _, url = server
    busy = _post_in_thread(url)  # keeps the model busy so the next request waits in the queue
    _wait_in_flight(url)
    time.sleep(0.3)  # arrived (above), and now past decoding 16 small PNGs, into the forward
    request = httpx.Request("POST", f"{url}/classify", files=IMAGES[:1])
    raw = b"".join(
        [
            f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: {request.headers['content-type']}\r\n"
            f"Content-Length: {len(request.read())}\r\n\r\n".encode(),
            request.read(),
        ]
    )
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
        s.sendall(raw)
        # queued behind the busy batch (which holds all 16 items of a batch), then gone
        _wait_metric(url, 'modelserve_queue_items{model="alexnet-cifar10",op="classify"}', 1)
    assert _answered(*busy).status_code == 200
    deadline = time.monotonic() + 10
    while _rejected(url, "disconnected") < 1:
        assert time.monotonic() < deadline, "disconnect was never noticed"
        time.sleep(0.1)


def test_sigterm_finishes_in_flight_requests_and_exits_0(
    server: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, url = server
    in_flight = _post_in_thread(url)
    _wait_in_flight(url)  # the 16-image request is being read, decoded or computed
    proc.send_signal(signal.SIGTERM)
    response = _answered(*in_flight)
    assert response.status_code == 200 and len(response.json()["results"]) == 16
    assert proc.wait(60) == 0


def _classify_requests_by_worker(prom: Path, scratch: Path) -> dict[str, float]:
    """POST /classify requests each worker has counted, read from its own counter file alone
    (a copy, collected by itself the way /metrics collects them all)."""
    counts: dict[str, float] = {}
    for f in prom.glob("counter_*.db"):
        pid = f.stem.rsplit("_", 1)[-1]
        one = scratch / f"worker-{pid}"
        one.mkdir(exist_ok=True)
        shutil.copy(f, one / f.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(one))
        counts[pid] = sum(
            sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "modelserve_http_requests_total"
            and sample.labels.get("route") == "/classify"
        )
    return counts


def test_several_workers_share_one_metrics_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WEB_CONCURRENCY=2 with PROMETHEUS_MULTIPROC_DIR: whichever worker answers the scrape,
    /metrics counts every worker's requests, and a stale file from an earlier run is dropped."""
    root = tmp_path / "models"
    root.mkdir()
    make_alexnet(root)
    prom = tmp_path / "prom"  # does not exist yet: `python -m app` creates it
    env = {
        "MODELSERVE_MODEL_DIR": str(root),
        "MODELSERVE_LOG_LEVEL": "WARNING",
        "WEB_CONCURRENCY": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(prom),
    }
    proc, url = start_server(env, subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        # Both workers ready: a worker publishes its queue gauges (one series per worker) when
        # its models are loaded and warm, and the scrape, from either worker, reads all files.
        # (A worker still loading accepts connections too and answers 503 until then.)
        while True:
            assert proc.poll() is None, "server exited"
            try:
                text = httpx.get(f"{url}/metrics").text
            except httpx.TransportError:
                text = ""
            if len(set(re.findall(r'modelserve_queue_items\{[^}]*pid="(\d+)"', text))) == 2:
                break
            assert time.monotonic() < deadline, "workers never became ready"
            time.sleep(0.2)
        files = [("image", ("x.png", png_bytes(), "image/png"))]
        posted = 0
        # A new connection each time, so the kernel spreads them over both workers; on until
        # each worker has answered some (its own counter file says so).
        while posted < 20 or min(_classify_requests_by_worker(prom, tmp_path).values()) == 0:
            assert httpx.post(f"{url}/classify", files=files).status_code == 200
            posted += 1
            assert posted < 500, _classify_requests_by_worker(prom, tmp_path)
        assert len(_classify_requests_by_worker(prom, tmp_path)) == 2
        for _ in range(4):  # every scrape, from either worker, counts every worker's requests
            text = httpx.get(f"{url}/metrics").text
            counted = sum(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("modelserve_http_requests_total{")
                and 'route="/classify"' in line
            )
            assert counted == posted, text
        # Each worker's queue has its own limit: one queue series per worker, not a sum.
        queues = [
            line
            for line in text.splitlines()
            if line.startswith("modelserve_queue_items{") and 'op="classify"' in line
        ]
        assert len({re.search(r'pid="(\d+)"', q).group(1) for q in queues}) == 2, queues  # type: ignore[union-attr]
        assert "modelserve_queue_limit_items 512.0" in text
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    # workers that exit drop their per-worker gauges (queue, in flight); counters stay
    assert not list(prom.glob("gauge_live*.db"))
    # a restart starts from zero: the previous run's files are removed before workers start
    assert list(prom.glob("*.db"))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(prom))
    prepare_multiprocess_dir()
    assert not list(prom.glob("*.db"))


def test_json_logs_are_one_object_per_line_with_one_access_line_per_request(
    tmp_path: Path,
) -> None:
    """`python -m app` with MODELSERVE_LOG_FORMAT=json: uvicorn's own lines come out as JSON
    too (a log shipper parses every line), and each request is logged once, by app.access."""
    root = tmp_path / "models"
    root.mkdir()
    make_alexnet(root)
    env = {
        "MODELSERVE_MODEL_DIR": str(root),
        "MODELSERVE_LOG_LEVEL": "INFO",
        "MODELSERVE_LOG_FORMAT": "json",
    }
    log = tmp_path / "stderr.log"
    with log.open("wb") as out:
        proc, url = start_server(env, out)
        try:
            files = [("image", ("x.png", png_bytes(), "image/png"))]
            answer = httpx.post(f"{url}/classify", files=files, headers={"X-Request-ID": "r-42"})
            assert answer.status_code == 200
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    records = [json.loads(line) for line in log.read_text().splitlines()]  # every line JSON
    access = [r for r in records if r.get("path") == "/classify"]
    assert [(r["logger"], r["status"]) for r in access] == [("app.access", 200)]
    (line,) = access  # the fields docs/api.md lists, the client's request id among them
    assert line["request_id"] == "r-42" and line["method"] == "POST"
    assert line["duration_ms"] > 0 and line["level"] == "INFO" and line["time"]
    server = {r["message"] for r in records if r["logger"] == "uvicorn.error"}
    assert {"Application startup complete.", "Application shutdown complete."} <= server
