"""Static checks of Dockerfile, docker-compose.yml, .dockerignore and deploy/prometheus.yml.

No Docker engine runs in CI, so these parse the files and check what `docker compose up` relies
on: the services and their ports, healthchecks, profiles, the GPU reservation, a read-only
non-root API, that every path the build copies or compose mounts exists in the repo, and that
nothing git ignores reaches the build context. The healthcheck's Python one-liner is also run
(with this interpreter) against a stub server, to show it follows MODELSERVE_PORT and the key.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is in the dev extra: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[2]
VAR_DEFAULT = re.compile(r"^\$\{(?P<var>[A-Z_][A-Z0-9_]*):-(?P<default>[^}]*)\}$")


# --- parsing helpers ------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return out


def copy_sources(args: str) -> list[str] | None:
    """Sources of a COPY from the build context; None for `COPY --from=<stage>`."""
    parts = shlex.split(args)
    if any(p.startswith("--from") for p in parts):
        return None
    parts = [p for p in parts if not p.startswith("--")]
    if parts and parts[0].startswith("["):  # JSON form
        parts = json.loads(args[args.index("[") :])
    return parts[:-1]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match plus Docker's `**`: `*` stays within one path segment."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i:]:
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative, '/'-separated) out of the build context.

    Docker's rules: the last matching pattern wins, `!` re-includes, a pattern matching a
    directory excludes everything under it, `**` matches any number of path segments.
    """
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        regex = glob_regex(pat.strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def split_volume(spec: str) -> tuple[str, str]:
    """(source, target) of a short-syntax volume; the source may be `${VAR:-default}`."""
    if spec.startswith("${"):
        end = spec.index("}") + 1
        return spec[:end], spec[end + 1 :].split(":")[0]
    source, target = spec.split(":")[:2]
    return source, target


def resolve_host_path(spec: str) -> tuple[Path, str | None]:
    """Host path of a bind mount (`${VAR:-default}` resolved to its default) and the variable."""
    m = VAR_DEFAULT.match(spec)
    if m:
        return (ROOT / m["default"]).resolve(), m["var"]
    assert "$" not in spec, f"mount {spec!r}: a variable needs a default (${{VAR:-default}})"
    return (ROOT / spec).resolve(), None


def gitignore_samples(patterns: list[str], packages: list[str]) -> list[str]:
    """A path each .gitignore pattern ignores, wherever git would apply it in the build context.

    An unanchored pattern (no `/` but a trailing one) matches at any depth, so it is tried at
    the root and inside each package the image copies; `*` becomes a sample name. A directory
    pattern also yields a file inside it, so that no later `!` can bring its contents back.
    """
    out: list[str] = []
    for pattern in patterns:
        assert not pattern.startswith("!"), f".gitignore {pattern!r}: negation not handled here"
        assert not set(pattern) & set("?[\\"), f".gitignore {pattern!r}: not handled here"
        directory = pattern.endswith("/")
        core = pattern.strip("/")
        sample = core.replace("**", "x").replace("*", "x")
        anchored = pattern.startswith("/") or "/" in core
        paths = [sample] if anchored else [sample, *(f"{pkg}/{sample}" for pkg in packages)]
        out += paths + ([f"{p}/model.safetensors" for p in paths] if directory else [])
    return out


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def stages(instructions: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, keyed by the stage name (`FROM image AS name`)."""
    out: dict[str, list[tuple[str, str]]] = {}
    name = ""
    for keyword, args in instructions:
        if keyword == "FROM":
            tokens = args.split()
            name = tokens[2] if len(tokens) >= 3 and tokens[1].lower() == "as" else tokens[0]
            out[name] = []
        elif name:
            out[name].append((keyword, args))
    return out


# --- docker-compose.yml -------------------------------------------------------------------------


def test_compose_has_api_prometheus_and_train_services(services: dict[str, Any]) -> None:
    assert {"api", "prometheus", "train"} <= set(services)


def test_api_service_serves_port_8000_with_readyz_healthcheck(services: dict[str, Any]) -> None:
    api = services["api"]
    assert api["build"]["context"] == "."
    assert "8000:8000" in [str(p) for p in api["ports"]]
    test = " ".join(api["healthcheck"]["test"])
    assert "/readyz" in test and "8000" in test
    assert api["restart"] == "unless-stopped"


def test_api_service_is_read_only_non_root_with_tmp(services: dict[str, Any]) -> None:
    api = services["api"]
    assert api["read_only"] is True
    assert "/tmp" in api["tmpfs"]
    uid = str(api["user"]).split(":")[0]
    assert uid not in ("0", "root")


def test_prometheus_service_mounts_repo_config(services: dict[str, Any]) -> None:
    prom = services["prometheus"]
    assert prom["image"].startswith("prom/prometheus:")
    assert "127.0.0.1:9090:9090" in [str(p) for p in prom["ports"]]
    assert any(
        v.startswith("./deploy/prometheus.yml:/etc/prometheus/prometheus.yml")
        for v in prom["volumes"]
    )


def test_train_service_is_profiled_with_gpu_and_mounts(services: dict[str, Any]) -> None:
    train = services["train"]
    assert train["profiles"] == ["train"]
    devices = train["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    targets = {split_volume(v)[1] for v in train["volumes"]}
    assert {"/data", "/workspace/models"} <= targets
    # The default command trains and exports into the mounted models directory.
    assert train["command"][0] in ("vae", "alexnet")
    assert "/data" in train["command"]
    assert any(str(a).startswith("/workspace/models/") for a in train["command"])


def test_api_and_train_build_targets_exist_in_dockerfile(
    services: dict[str, Any], dockerfile: list[tuple[str, str]]
) -> None:
    names = set(stages(dockerfile))
    assert services["api"]["build"]["target"] in names
    assert services["train"]["build"]["target"] in names


def test_every_mounted_host_path_exists(services: dict[str, Any]) -> None:
    """Literal bind mounts must be in the repo; `${VAR:-default}` ones are documented knobs."""
    header = (ROOT / "docker-compose.yml").read_text()
    readme = (ROOT / "README.md").read_text()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            host = split_volume(volume)[0]
            if not host.startswith((".", "/", "$")):
                continue  # a named volume
            path, var = resolve_host_path(host)
            if var is None:
                assert path.exists(), f"{name}: mounts {host}, which is not in the repo"
            else:
                assert f"#   {var}" in header, f"{name}: {var} not documented in the compose file"
                assert var in readme, f"{name}: {var} not documented in README.md"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for service in services.values():
        for volume in service.get("volumes", []):
            source = split_volume(volume)[0]
            if not source.startswith((".", "/", "$")):
                assert source in declared


# --- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_on_python_311_slim(dockerfile: list[tuple[str, str]]) -> None:
    froms = [args for keyword, args in dockerfile if keyword == "FROM"]
    assert len(froms) >= 2
    args = {a.split("=")[0]: a.split("=", 1)[1] for k, a in dockerfile if k == "ARG" and "=" in a}
    assert args.get("PYTHON_IMAGE") == "python:3.11-slim"
    # The runtime copies the venv built in an earlier stage instead of building it again.
    assert any(k == "COPY" and "--from=builder" in a for k, a in stages(dockerfile)["runtime"])


def test_dockerfile_default_target_is_runtime(dockerfile: list[tuple[str, str]]) -> None:
    assert list(stages(dockerfile))[-1] == "runtime"


def test_dockerfile_installs_cpu_torch_pinned_by_constraints(
    dockerfile: list[tuple[str, str]],
) -> None:
    runs = [a for k, a in dockerfile if k == "RUN"]
    torch_line = next(a for a in runs if "torch" in a and "--index-url" in a)
    assert "-c constraints.txt" in torch_line
    args = {a.split("=")[0]: a.split("=", 1)[1] for k, a in dockerfile if k == "ARG" and "=" in a}
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    # The project itself: non-editable, with the same constraints.
    assert any(re.search(r"pip install -c constraints\.txt \.$", a) for a in runs)
    assert not any("pip install -e" in a for a in runs)


def test_dockerfile_installs_the_client_package_before_the_project(
    dockerfile: list[tuple[str, str]],
) -> None:
    """The project requires modelserve-client, which no index has: the builder copies
    clients/python into the image and installs it (non-editable) before the project."""
    builder = stages(dockerfile)["builder"]

    def first(keyword: str, pattern: str) -> int:
        return next(i for i, (k, a) in enumerate(builder) if k == keyword and re.search(pattern, a))

    copied = first("COPY", r"^clients/python/ clients/python/$")
    client = first("RUN", r"pip install -c constraints\.txt \./clients/python$")
    project = first("RUN", r"pip install -c constraints\.txt \.$")
    assert copied < client < project


def test_dockerfile_copy_sources_exist_and_are_in_context(
    dockerfile: list[tuple[str, str]], ignore_patterns: list[str]
) -> None:
    seen = 0
    for keyword, args in dockerfile:
        if keyword not in ("COPY", "ADD"):
            continue
        sources = copy_sources(args)
        for src in sources or []:
            seen += 1
            assert (ROOT / src).exists(), f"COPY {src}: not in the repo"
            assert not dockerignore_excludes(ignore_patterns, src.rstrip("/")), (
                f"COPY {src}: excluded by .dockerignore"
            )
    assert seen >= 4


def test_dockerfile_runtime_is_non_root_with_readyz_healthcheck(
    dockerfile: list[tuple[str, str]],
) -> None:
    runtime = stages(dockerfile)["runtime"]
    users = [a for k, a in runtime if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    healthchecks = [a for k, a in runtime if k == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/readyz" in healthchecks[0]
    assert "curl" not in healthchecks[0]  # not in the slim image
    assert ("EXPOSE", "8000") in runtime
    cmd = json.loads(next(a for k, a in runtime if k == "CMD"))
    assert cmd == ["python", "-m", "app"]  # graceful SIGTERM, exit 0
    env = " ".join(a for k, a in runtime if k == "ENV")
    assert "MODELSERVE_HOST=0.0.0.0" in env and "MODELSERVE_PORT=8000" in env


def test_shipped_models_are_package_data() -> None:
    """The image installs non-editable, so the weights must be package data of `models`."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^models = \[.*"\*/\*\.safetensors".*\]', pyproject, re.MULTILINE)


# --- healthcheck ------------------------------------------------------------------------------


def dockerfile_healthcheck(instructions: list[tuple[str, str]]) -> list[str]:
    """The runtime stage's HEALTHCHECK command, exec form (JSON)."""
    (args,) = [a for k, a in stages(instructions)["runtime"] if k == "HEALTHCHECK"]
    options, cmd, command = args.partition("CMD ")
    assert cmd and all(o.startswith("--") for o in options.split()), args
    # Docker falls back to the shell form, silently, when the JSON does not parse.
    parsed = json.loads(command)
    assert isinstance(parsed, list)
    return [str(a) for a in parsed]


def test_compose_healthcheck_is_the_dockerfiles(
    services: dict[str, Any], dockerfile: list[tuple[str, str]]
) -> None:
    """One check in two places: they must not drift apart."""
    test = services["api"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1:] == dockerfile_healthcheck(dockerfile)
    # compose would fill `$VAR` in from the host's environment, not the container's.
    assert not any("$" in str(a) for a in test)


def test_healthcheck_reads_port_and_key_from_the_containers_settings(
    dockerfile: list[tuple[str, str]],
) -> None:
    from app.deps import api_key_header
    from app.settings import Settings

    command = " ".join(dockerfile_healthcheck(dockerfile))
    assert command.startswith("python -c ") and "curl" not in command  # not in the slim image
    assert "/readyz" in command
    assert "MODELSERVE_PORT" in command and "MODELSERVE_API_KEY" in command
    assert {"port", "api_key"} <= set(Settings.model_fields)
    assert f"'{api_key_header.model.name}'" in command  # the header the app checks
    assert ":8000/" not in command  # the port is never fixed; 8000 only as the default


class StubServer(ThreadingHTTPServer):
    """Answers GET /readyz with `status`, or 401 when `key` is set and not sent (as the app does
    with MODELSERVE_OPEN_PROBES=false); records each request's path and headers."""

    status = 200
    key: str | None = None
    seen: list[dict[str, str]]


class StubHandler(BaseHTTPRequestHandler):
    server: StubServer

    def do_GET(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}  # urllib sends X-api-key
        self.server.seen.append({"path": self.path, **headers})
        status = self.server.status if self.path == "/readyz" else 404
        if self.server.key is not None and self.headers.get("X-API-Key") != self.server.key:
            status = 401
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer(("127.0.0.1", 0), StubHandler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def run_healthcheck(command: list[str], **env: str) -> int:
    """Exit status of the healthcheck run here with `env` as the container's MODELSERVE_*."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MODELSERVE_")}
    argv = [sys.executable, *command[1:]] if command[0] == "python" else command
    return subprocess.run(argv, env={**base, **env}, timeout=30).returncode


@pytest.mark.parametrize(
    ("status", "server_key", "env_key", "healthy"),
    [
        (200, None, None, True),  # open probes, no key configured
        (503, None, None, False),  # still loading, or no model could be loaded
        (200, None, "k" * 12, True),  # key set, probes open: the header is sent and ignored
        (200, "k" * 12, "k" * 12, True),  # MODELSERVE_OPEN_PROBES=false: the key gets it in
        (200, "k" * 12, None, False),  # closed probes and no key: 401
        (200, None, "", True),  # MODELSERVE_API_KEY="" means no key (Settings drops it)
    ],
)
def test_healthcheck_probes_configured_port_with_key(
    dockerfile: list[tuple[str, str]],
    stub: StubServer,
    status: int,
    server_key: str | None,
    env_key: str | None,
    healthy: bool,
) -> None:
    stub.status, stub.key = status, server_key
    env = {"MODELSERVE_PORT": str(stub.server_address[1])}
    if env_key is not None:
        env["MODELSERVE_API_KEY"] = env_key
    rc = run_healthcheck(dockerfile_healthcheck(dockerfile), **env)
    assert (rc == 0) is healthy
    assert rc in (0, 1)  # Docker reserves 2
    (request,) = stub.seen
    assert request["path"] == "/readyz"
    assert request.get("x-api-key") == (env_key or None)


# --- .dockerignore ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [".venv", "runs", "data", ".git", "app/__pycache__", "tests"])
def test_dockerignore_keeps_out(ignore_patterns: list[str], path: str) -> None:
    assert dockerignore_excludes(ignore_patterns, path)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "app/main.py",
        "models/x/model.safetensors",
        "clients/python/pyproject.toml",
        "clients/python/src/modelserve_client/schemas.py",
    ],
)
def test_dockerignore_keeps_in(ignore_patterns: list[str], path: str) -> None:
    assert not dockerignore_excludes(ignore_patterns, path)


def test_dockerignore_keeps_out_everything_git_ignores(
    ignore_patterns: list[str], dockerfile: list[tuple[str, str]]
) -> None:
    """Git-ignored outputs (the 233 MB torchvision AlexNet in models/alexnet-imagenet/, stray
    runs/ or data/ folders) must not be baked in by `COPY models/` and the like."""
    packages = [
        src.rstrip("/")
        for k, a in dockerfile
        if k == "COPY"
        for src in copy_sources(a) or []
        if (ROOT / src).is_dir()
    ]
    assert {"app", "models", "training"} <= set(packages)
    lines = (ROOT / ".gitignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    samples = gitignore_samples(patterns, packages)
    assert "models/alexnet-imagenet/model.safetensors" in samples
    leaked = [p for p in samples if not dockerignore_excludes(ignore_patterns, p)]
    assert leaked == [], f"git-ignored but in the build context: {leaked}"


@pytest.mark.parametrize("name", ["alexnet-cifar10", "vae-frey", "vae-mnist", "vae-mnist-paper"])
def test_dockerignore_keeps_shipped_checkpoints_in(ignore_patterns: list[str], name: str) -> None:
    for file in ("config.json", "model.safetensors"):
        assert (ROOT / "models" / name / file).is_file()
        assert not dockerignore_excludes(ignore_patterns, f"models/{name}/{file}")


def test_dockerignore_matcher_follows_docker_rules() -> None:
    """The matcher above is what the two tests rely on; check it on Docker's documented cases."""
    assert dockerignore_excludes(["*", "!app/"], "runs/x")
    assert not dockerignore_excludes(["*", "!app/"], "app/main.py")
    assert dockerignore_excludes(["**/__pycache__"], "app/routes/__pycache__/a.pyc")
    assert not dockerignore_excludes(["*.md", "!README.md"], "README.md")
    assert not dockerignore_excludes(["data"], "app/data")  # anchored at the context root
    assert dockerignore_excludes(["**/data"], "data")  # `**/` matches no folder too
    assert dockerignore_excludes(["**/data"], "models/data")
    assert dockerignore_excludes(["*", "!models/", "models/big/"], "models/big/w.safetensors")


# --- deploy/prometheus.yml --------------------------------------------------------------------


def test_prometheus_scrapes_api_metrics() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = config["scrape_configs"]
    api_jobs = [
        job
        for job in jobs
        if any("api:8000" in t for sc in job.get("static_configs", []) for t in sc["targets"])
    ]
    assert api_jobs, "no scrape job targets api:8000"
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in api_jobs)
