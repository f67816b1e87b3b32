"""The images the container smoke test (deploy/docker_smoke.py) runs, and the Docker
plumbing its steps share: the base image, pulled or built as a Debian stand-in with debootstrap
where no registry can be reached; the service image from the Dockerfile's `runtime` target; and
Prometheus, pulled or a stand-in of Debian's packaged binaries."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
STANDIN_BASE = "modelserve-smoke/python:3.11-bookworm"
STANDIN_PROMETHEUS = "modelserve-smoke/prometheus:debian"
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SmokeError(Exception):
    """A step that did not do what it should."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def docker(
    *args: str, check: bool = True, timeout: float = 600, merge_stderr: bool = False, **kw: Any
) -> str:
    """Run `docker ...`, return its stdout (with stderr if `merge_stderr`); raise SmokeError
    with stderr when it fails."""
    proc = subprocess.run(
        ["docker", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        timeout=timeout,
        **kw,
    )
    if check and proc.returncode != 0:
        error = proc.stdout if merge_stderr else proc.stderr
        raise SmokeError(f"docker {' '.join(args[:3])}...: {error.strip()[-2000:]}")
    return proc.stdout.strip()


def image_exists(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0


def compose_file() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


# --- 1. base image ------------------------------------------------------------------------------


def build_standin_base(tag: str) -> None:
    """Debian bookworm minbase with python3.11, venv and pip, imported as `tag` (needs root)."""
    if os.geteuid() != 0 or not shutil.which("debootstrap"):
        raise SmokeError("cannot pull the base image, and the stand-in needs root and debootstrap")
    with tempfile.TemporaryDirectory(prefix="modelserve-rootfs-") as rootfs:
        log(f"building the stand-in {tag} with debootstrap (a few minutes)")
        subprocess.run(
            ["debootstrap", "--variant=minbase",
             "--include=python3,python3-venv,python3-pip,ca-certificates",
             "bookworm", rootfs, "http://deb.debian.org/debian"],
            check=True, stdout=subprocess.DEVNULL, timeout=1800,
        )  # fmt: skip
        root = Path(rootfs)
        (root / "usr/local/bin/python").symlink_to("/usr/bin/python3")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (root / cache).glob("*"):
                if f.is_file():
                    f.unlink()
        # This machine's trust: a host behind a TLS-inspecting proxy has its CA in the system
        # bundle, and Debian's pip (the venv's too) reads that bundle. Only the stand-in gets it.
        bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        if bundle.is_file():
            shutil.copy(bundle, root / "etc/ssl/certs/ca-certificates.crt")
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        docker(
            "import",
            "--change", f"ENV PATH={DEBIAN_PATH}",
            "--change", "ENV LANG=C.UTF-8",
            "--change", 'CMD ["python3"]',
            "-", tag,
            stdin=tar.stdout, timeout=900,
        )  # fmt: skip
        if tar.wait() != 0:
            raise SmokeError("tar of the stand-in root filesystem failed")


def base_image(requested: str, made: list[str]) -> str:
    """`requested` if present or pullable, else the debootstrap stand-in (built once, kept)."""
    if image_exists(requested):
        return requested
    log(f"pulling {requested}")
    if subprocess.run(["docker", "pull", requested], capture_output=True).returncode == 0:
        return requested
    log(f"{requested} cannot be pulled; using the stand-in {STANDIN_BASE}")
    if not image_exists(STANDIN_BASE):
        build_standin_base(STANDIN_BASE)
        made.append(STANDIN_BASE)
    return STANDIN_BASE


# --- 2. build -----------------------------------------------------------------------------------


def build_image(tag: str, python_image: str, torch_index: str | None, log_file: Path) -> None:
    args = ["build", "--target", "runtime", "--network", "host", "-t", tag]
    args += ["--build-arg", f"PYTHON_IMAGE={python_image}"]
    if torch_index:
        args += ["--build-arg", f"TORCH_INDEX_URL={torch_index}"]
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # BuildKit would pull its frontend image
    start = time.monotonic()
    with log_file.open("w") as out:
        rc = subprocess.run(
            ["docker", *args, str(ROOT)], stdout=out, stderr=out, env=env
        ).returncode
    if rc != 0:
        tail = log_file.read_text().splitlines()[-30:]
        raise SmokeError("docker build failed:\n" + "\n".join(tail))
    size = int(docker("image", "inspect", "-f", "{{.Size}}", tag))
    torch_version = docker(
        "run", "--rm", "--entrypoint", "python", tag, "-c",
        "import torch; print(torch.__version__, torch.version.cuda or 'cpu-only')",
    )  # fmt: skip
    log(
        f"built {tag} in {time.monotonic() - start:.0f} s: {size / 1e9:.2f} GB, "
        f"torch {torch_version} (build log: {log_file})"
    )


def remove_stage_images(build_log: Path) -> None:
    """The legacy builder keeps each stage's last image (the `train` stages' too) untagged:
    remove those of this build that nothing else uses (dangling), never a tagged base image."""
    if not build_log.is_file():
        return
    ids = re.findall(r"^ ---> ([0-9a-f]{12})$", build_log.read_text(errors="replace"), re.M)
    dangling = set(docker("images", "--filter", "dangling=true", "--quiet", check=False).split())
    for image in reversed(ids):
        if image in dangling:
            docker("image", "rm", image, check=False)


# --- 6. the Prometheus image -------------------------------------------------------------------


def prometheus_image(base: str, made: list[str]) -> str | None:
    """The compose file's Prometheus image if it can be had, else Debian's packaged binaries."""
    wanted = str(compose_file()["services"]["prometheus"]["image"])
    if (
        image_exists(wanted)
        or subprocess.run(["docker", "pull", wanted], capture_output=True).returncode == 0
    ):
        return wanted
    if image_exists(STANDIN_PROMETHEUS):
        return STANDIN_PROMETHEUS
    binaries = [shutil.which("prometheus"), shutil.which("promtool")]
    if not all(binaries):
        return None
    log(f"{wanted} cannot be pulled; building {STANDIN_PROMETHEUS} from Debian's prometheus")
    with tempfile.TemporaryDirectory() as context:
        for b in binaries:
            shutil.copy(str(b), context)
        # As prom/prometheus: binaries in /bin, runs as nobody, data in /prometheus.
        (Path(context) / "Dockerfile").write_text(
            f"FROM {base}\nCOPY prometheus promtool /bin/\n"
            "RUN mkdir -p /prometheus /etc/prometheus && chown nobody:nogroup /prometheus\n"
            "USER nobody\nWORKDIR /prometheus\nEXPOSE 9090\n"
            'ENTRYPOINT ["/bin/prometheus"]\n'
            'CMD ["--config.file=/etc/prometheus/prometheus.yml", '
            '"--storage.tsdb.path=/prometheus"]\n'
        )
        docker(
            "build", "-t", STANDIN_PROMETHEUS, context, env={**os.environ, "DOCKER_BUILDKIT": "0"}
        )
    made.append(STANDIN_PROMETHEUS)
    return STANDIN_PROMETHEUS
