"""Build the image, run it as docker-compose.yml runs it, and check it does what the README says.

    make docker-smoke                                    # python:3.11-slim, PyTorch's CPU index
    make docker-smoke SMOKE_ARGS="--wheel-index /opt/pypi --wheel-index /opt/pypi-more --keep"

Steps, each printed as it passes (any failure stops the run, prints the container's log, and
still removes what the run made):

1. base: PYTHON_IMAGE (default python:3.11-slim), pulled if absent. Where it cannot be pulled
   (no registry access), a stand-in is built from Debian bookworm's packages with debootstrap
   (bookworm's python3 is 3.11): python3, venv, pip, a `python` link, as in the official image.
2. build: the Dockerfile's `runtime` target with the legacy builder and `--network host`.
   torch comes from TORCH_INDEX_URL (the Dockerfile's default: the CPU wheels), or from
   `--wheel-index` folders on disk, served by deploy/wheel_index.py with PyPI behind them.
3. run: the compose file's `api` service settings (user, read-only root, tmpfs, dropped
   capabilities, no-new-privileges, environment) on a free port of 127.0.0.1; wait until
   Docker's health check (the image's HEALTHCHECK, which compose repeats) says healthy.
4. examples: every `curl` line of the README's quick-start block, run as written, each answer
   checked (a README curl line with no check fails the run); then the probe paths of deploy/k8s,
   every model ready under /v2, and the page at / with its assets, byte for byte.
5. drain: a request is half sent, the container gets SIGTERM (as `docker stop` and Kubernetes
   send it), the rest is sent: the answer is a 200 and the container exits 0.
6. compose: docker-compose brings up `api` and `prometheus` from docker-compose.yml (host ports
   made free ones; Grafana and `train` left out: no image of them can be had offline);
   `promtool check config` and `check rules` pass; Prometheus reports the `modelserve` target
   up and the rule groups loaded. Prometheus is prom/prometheus when it can be had, else a
   stand-in image of Debian's `prometheus` package. Skipped (said so) without docker-compose.

The images (steps 1, 2 and 6's Prometheus) are made in deploy/smoke_images.py; step 4's
answers are checked by deploy/smoke_checks.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smoke_checks import check_answer, check_page, check_probes, readme_curl_commands, shipped_cards
from smoke_images import (
    ROOT,
    SmokeError,
    base_image,
    build_image,
    compose_file,
    docker,
    log,
    prometheus_image,
    remove_stage_images,
)
from wheel_index import WheelIndex

# --- 3. run as compose does ---------------------------------------------------------------------


def run_args_of(service: dict[str, Any]) -> list[str]:
    """`docker run` flags for a compose service's user, hardening and environment."""
    args: list[str] = []
    if "user" in service:
        args += ["--user", str(service["user"])]
    if service.get("read_only"):
        args.append("--read-only")
    for path in service.get("tmpfs", []):
        args += ["--tmpfs", path]
    for opt in service.get("security_opt", []):
        args += ["--security-opt", opt]
    for cap in service.get("cap_drop", []):
        args += ["--cap-drop", cap]
    for key, value in (service.get("environment") or {}).items():
        args += ["--env", f"{key}={value}"]
    return args


def wait_healthy(container: str, timeout: float) -> float:
    """Seconds until Docker's health check says healthy; SmokeError if it fails or exits."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        state = json.loads(docker("inspect", "-f", "{{json .State}}", container))
        health = (state.get("Health") or {}).get("Status")
        if not state["Running"]:
            raise SmokeError(f"{container} exited with {state['ExitCode']} before healthy")
        if health == "healthy":
            return time.monotonic() - start
        if health == "unhealthy":
            raise SmokeError(f"{container} is unhealthy: {state['Health']['Log'][-1:]}")
        time.sleep(1)
    raise SmokeError(f"{container} not healthy after {timeout:.0f} s")


def resident_memory(container: str) -> str:
    """Memory in use as Docker reports it (what deploy/k8s's memory limit must cover)."""
    return "memory: " + docker("stats", "--no-stream", "--format", "{{.MemUsage}}", container)


def published_port(container: str, port: int) -> int:
    out = docker("port", container, f"{port}/tcp").splitlines()[0]
    return int(out.rsplit(":", 1)[1])


@contextmanager
def container(image: str, name: str, service: dict[str, Any]) -> Iterator[str]:
    docker(
        "run", "--detach", "--name", name, "--publish", "127.0.0.1::8000",
        *run_args_of(service), image,
    )  # fmt: skip
    try:
        yield name
    except BaseException:
        print(docker("logs", "--tail", "40", name, check=False, merge_stderr=True))
        raise
    finally:
        docker("rm", "--force", name, check=False)


# --- 4. the README's curl examples --------------------------------------------------------------


def run_readme_examples(base_url: str) -> int:
    """Run each README curl line against `base_url` in a scratch folder; check each answer."""
    commands = readme_curl_commands((ROOT / "README.md").read_text())
    # curl as written, plus -sS and the status and content type after the body
    wrapper = "curl() { command curl -sS -w '\\n%{http_code} %{content_type}' \"$@\"; }\n"
    with tempfile.TemporaryDirectory(prefix="modelserve-smoke-") as scratch:
        (Path(scratch) / "examples").symlink_to(ROOT / "examples")
        for command in commands:
            script = wrapper + command.replace("http://localhost:8000", base_url)
            proc = subprocess.run(
                ["bash", "-c", script], cwd=scratch, capture_output=True, timeout=120
            )
            if proc.returncode != 0:
                raise SmokeError(f"{command!r}: curl failed: {proc.stderr.decode()[-500:]}")
            body, _, trailer = proc.stdout.rpartition(b"\n")
            status, _, content_type = trailer.decode().partition(" ")
            try:
                what = check_answer(command, int(status), content_type, body, Path(scratch))
            except AssertionError as e:
                raise SmokeError(f"{command!r}: {e}") from None
            log(f"  ok {status} {what}: {command.splitlines()[0][:90]}")
    return len(commands)


# --- 5. drain on SIGTERM --------------------------------------------------------------------------


def multipart(field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = "modelserve-smoke-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def check_drain(name: str, port: int) -> None:
    """Half a /classify request, SIGTERM, the other half: 200 with predictions, then exit 0."""
    body, content_type = multipart("image", "cat.jpg", (ROOT / "examples/cat.jpg").read_bytes())
    head = (
        f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    half = len(body) // 2
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head + body[:half])
        time.sleep(1.0)  # the server has read the headers: the request is in flight
        docker("kill", "--signal", "SIGTERM", name)
        signalled = time.monotonic()
        time.sleep(1.0)  # the server is shutting down while the request is still arriving
        sock.sendall(body[half:])
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    answer = json.loads(rest.partition(b"\r\n\r\n")[2] or b"null")
    if b" 200 " not in status_line + b" " or not answer or not answer.get("predictions"):
        raise SmokeError(f"in-flight request during SIGTERM: {status_line!r} {answer!r}")
    exit_code = int(docker("wait", name, timeout=120))
    if exit_code != 0:
        raise SmokeError(f"after SIGTERM the container exited with {exit_code}, not 0")
    logs = docker("logs", name, merge_stderr=True)
    log(
        f"  in-flight request answered 200 ({answer['predictions'][0]['label']}); exit 0 "
        f"{time.monotonic() - signalled:.1f} s after SIGTERM; "
        f"log says: {shutdown_lines(logs)}"
    )


def shutdown_lines(logs: str) -> str:
    """The server's shutdown messages, from its JSON log lines."""
    found = []
    for line in logs.splitlines():
        try:
            message = json.loads(line).get("message", "")
        except (ValueError, AttributeError):
            message = line
        if re.search(r"shutdown|shutting down|finished server process", message, re.I):
            found.append(message)
    return "; ".join(found) or "(no shutdown message)"


# --- 6. compose with Prometheus -----------------------------------------------------------------


def smoke_compose(api_image: str, prom_image: str, compose_cmd: list[str], made_dir: Path) -> None:
    """`api` and `prometheus` from docker-compose.yml: promtool, healthy api, target up."""
    deploy = str(ROOT / "deploy")
    for what in (["check", "config", "/etc/prometheus/prometheus.yml"],
                 ["check", "rules", "/etc/prometheus/alerts.yml"]):  # fmt: skip
        out = docker(
            "run", "--rm", "--volume", f"{deploy}:/etc/prometheus:ro",
            "--entrypoint", "promtool", prom_image, *what, merge_stderr=True,
        )  # fmt: skip
        summary = "; ".join(ln.strip() for ln in out.splitlines() if "SUCCESS" in ln)
        log(f"  promtool {' '.join(what[:2])}: {summary}")

    data = compose_file()
    services = {k: data["services"][k] for k in ("api", "prometheus")}
    services["api"] = {**services["api"], "image": api_image, "ports": ["127.0.0.1::8000"]}
    services["api"].pop("build", None)
    services["prometheus"] = {
        **services["prometheus"], "image": prom_image, "ports": ["127.0.0.1::9090"],
        "volumes": [absolute_volume(v) for v in services["prometheus"]["volumes"]],
    }  # fmt: skip
    derived = {
        **{k: v for k, v in data.items() if k.startswith("x-")},
        "services": services,
        "volumes": {"prometheus-data": {}},
    }
    file = made_dir / "docker-compose.smoke.yml"
    file.write_text(yaml.safe_dump(derived, sort_keys=False))
    project = f"modelserve-smoke-{os.getpid()}"
    base = [*compose_cmd, "--project-name", project, "--file", str(file)]
    try:
        up = subprocess.run([*base, "up", "--detach"], capture_output=True, text=True, timeout=300)
        if up.returncode != 0:
            raise SmokeError(f"compose up failed: {up.stderr.strip()[-2000:]}")
        api = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                     "--filter", "label=com.docker.compose.service=api")  # fmt: skip
        log(f"  compose: api healthy after {wait_healthy(api, 240):.0f} s")
        prom = docker("ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
                      "--filter", "label=com.docker.compose.service=prometheus")  # fmt: skip
        prom_url = f"http://127.0.0.1:{published_port(prom, 9090)}"
        target = poll(lambda: modelserve_target_up(prom_url), 90, "modelserve target up")
        rules = get_json(f"{prom_url}/api/v1/rules")["data"]["groups"]
        n_rules = sum(len(g["rules"]) for g in rules)
        models = poll(lambda: scraped_models(prom_url), 60, "every shipped model scraped")
        log(
            f"  prometheus: target {target['scrapeUrl']} up, {len(rules)} rule groups "
            f"({n_rules} rules) loaded, models scraped: {', '.join(sorted(models))}"
        )
    finally:
        subprocess.run([*base, "down", "--volumes"], capture_output=True, timeout=300)


def absolute_volume(spec: str) -> str:
    source, _, rest = spec.partition(":")
    return f"{(ROOT / source).resolve()}:{rest}" if source.startswith(".") else spec


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def scraped_models(prom_url: str) -> set[str] | None:
    """Models in Prometheus's latest modelserve_model_info, once every shipped one is there."""
    query = f"{prom_url}/api/v1/query?query=modelserve_model_info"
    models = {r["metric"]["model"] for r in get_json(query)["data"]["result"]}
    return models if set(shipped_cards()) <= models else None


def modelserve_target_up(prom_url: str) -> dict[str, Any] | None:
    targets = get_json(f"{prom_url}/api/v1/targets")["data"]["activeTargets"]
    for t in targets:
        if t["labels"].get("job") == "modelserve" and t["health"] == "up":
            return dict(t)
    return None


def poll(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := probe():
                return result
        except OSError:
            pass
        time.sleep(2)
    raise SmokeError(f"no {what} after {timeout:.0f} s")


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return ["docker", "compose"] if probe.returncode == 0 else None


# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default="modelserve:smoke", help="tag of the image built")
    parser.add_argument(
        "--python-image", default=os.environ.get("PYTHON_IMAGE", "python:3.11-slim")
    )
    parser.add_argument("--torch-index-url", default=os.environ.get("TORCH_INDEX_URL"))
    parser.add_argument(
        "--wheel-index", type=Path, action="append", default=[],
        help="a local PEP 503 tree (folder with simple/) to take torch from; repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--wheel-index-port", type=int, default=18765,
        help="port of the --wheel-index server; fixed, so Docker's layer cache holds",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the images for a rerun")
    parser.add_argument("--no-compose", action="store_true", help="skip step 6")
    args = parser.parse_args()

    made: list[str] = []  # images this run created
    started = time.monotonic()
    with ExitStack() as stack:
        try:
            docker("info", "--format", "{{.ServerVersion}}")
            base = base_image(args.python_image, made)
            log(f"1. base image: {base}")
            torch_index = args.torch_index_url
            if args.wheel_index:
                index = WheelIndex(
                    args.wheel_index, "https://pypi.org/simple", args.wheel_index_port
                )
                index.start()
                stack.callback(index.shutdown)
                torch_index = index.url
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="smoke-")))
            log(f"2. building {args.tag} (torch from {torch_index or 'the Dockerfile default'})")
            build_log = Path(tempfile.gettempdir()) / "modelserve-smoke-build.log"
            stack.callback(lambda: None if args.keep else remove_stage_images(build_log))
            build_image(args.tag, base, torch_index, build_log)
            made.append(args.tag)

            api = compose_file()["services"]["api"]
            name = f"modelserve-smoke-{os.getpid()}"
            with container(args.tag, name, api):
                healthy = wait_healthy(name, 240)
                docker("exec", name, "sleep", "0")  # deploy/k8s's preStop command is there
                log(f"3. {name}, run as compose's api: healthy after {healthy:.0f} s")
                log(f"  {resident_memory(name)}")
                port = published_port(name, 8000)
                url = f"http://127.0.0.1:{port}"
                n = run_readme_examples(url)
                log(f"4. the README's {n} curl examples answered as documented")
                log(f"  {check_probes(url)}")
                log(f"  {check_page(url)}")
                log(f"  {resident_memory(name)} after them")
                check_drain(name, port)
                log("5. SIGTERM during a request: drained, exit 0")

            compose_cmd = compose_command()
            if args.no_compose:
                log("6. compose: skipped (--no-compose)")
            elif compose_cmd is None:
                log("6. compose: skipped (neither docker-compose nor docker compose here)")
            elif (prom := prometheus_image(base, made)) is None:
                log("6. compose: skipped (no Prometheus image and no prometheus binary)")
            else:
                log(f"6. compose ({' '.join(compose_cmd)}) with {prom}")
                smoke_compose(args.tag, prom, compose_cmd, scratch)
        except (SmokeError, subprocess.SubprocessError, AssertionError) as e:
            log(f"FAILED: {e}")
            return 1
        finally:
            if not args.keep:
                for image in reversed(made):
                    docker("image", "rm", "--force", image, check=False)
    log(f"docker smoke passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
