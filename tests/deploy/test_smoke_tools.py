"""The pieces of `make docker-smoke` that run without Docker: the README lines it runs and their
checks (deploy/smoke_checks.py), and the package index it builds from (deploy/wheel_index.py),
the latter driven by pip itself."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.conftest import serve_in_thread, test_settings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))

from smoke_checks import (  # noqa: E402
    README_CHECKS,
    check_answer,
    check_page,
    check_probes,
    readme_curl_commands,
    shipped_cards,
)
from wheel_index import WheelIndex  # noqa: E402

COMMANDS = readme_curl_commands((ROOT / "README.md").read_text())


def test_the_readme_quick_start_has_its_curl_lines() -> None:
    assert len(COMMANDS) >= 10
    assert all(c.startswith("curl ") for c in COMMANDS)
    multi_line = [c for c in COMMANDS if "\\\n" in c]
    assert multi_line and all("http://localhost:8000/" in c for c in multi_line)


@pytest.mark.parametrize(
    "command", COMMANDS, ids=lambda c: c.split("http://localhost:8000")[1][:40]
)
def test_every_readme_curl_line_has_a_check(command: str, tmp_path: Path) -> None:
    """A check that knows the line's path answers (here: rejects a 500); no check at all would
    raise `no check for ...`, which is what the smoke run would hit."""
    with pytest.raises(AssertionError, match="status 500"):
        check_answer(command, 500, "application/json", b"{}", tmp_path)
    path = command.split("http://localhost:8000")[1].split('"')[0].split("?")[0].split()[0]
    assert any(re.fullmatch(p, path) for p, _ in README_CHECKS), path


def classify_line() -> str:
    (line,) = [
        c for c in COMMANDS if c == "curl -F image=@examples/cat.jpg http://localhost:8000/classify"
    ]
    return line


def classify_answer(probabilities: list[float]) -> bytes:
    labels = shipped_cards()["alexnet-cifar10"]["labels"]
    predictions = [
        {"label": labels[i], "index": i, "probability": p} for i, p in enumerate(probabilities)
    ]
    return json.dumps({"model": "alexnet-cifar10", "predictions": predictions}).encode()


def test_classify_check_passes_a_good_answer_and_fails_bad_ones(tmp_path: Path) -> None:
    line = classify_line()
    good = classify_answer([0.5, 0.2, 0.1, 0.05, 0.05])
    assert check_answer(line, 200, "application/json", good, tmp_path) == "top: airplane"
    for bad in (
        classify_answer([0.1, 0.5, 0.1, 0.05, 0.05]),  # not in order
        classify_answer([0.5, 0.2, 0.1]),  # top_k defaults to 5
        classify_answer([0.9, 0.5, 0.1, 0.05, 0.05]),  # not a distribution
    ):
        with pytest.raises(AssertionError):
            check_answer(line, 200, "application/json", bad, tmp_path)


def test_probe_and_page_checks_pass_the_shipped_models_and_fail_without_the_page() -> None:
    """What step 4 asks of the image beyond the README, against the real app serving the
    shipped models; with the page switched off, its check fails on GET /."""
    with serve_in_thread(test_settings(ROOT / "models")) as url:
        assert "/v2/health/ready" in check_probes(url)
        assert check_page(url).startswith("page / and its")
    with serve_in_thread(test_settings(ROOT / "models", ui=False)) as url:
        check_probes(url)
        with pytest.raises(AssertionError, match="GET /: HTTP Error 404"):
            check_page(url)


# --- wheel_index ------------------------------------------------------------------------------


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel pip accepts."""
    module = name.replace("-", "_")  # a wheel's file name escapes `-` in the name
    dist = f"{module}-{version}"
    wheel = folder / f"{dist}-py3-none-any.whl"
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{dist}.dist-info/RECORD", record)
    return wheel


def make_tree(root: Path, name: str, version: str) -> str:
    """root/simple/<name>/index.html linking ../../files/<wheel>#sha256=...; the digest."""
    (root / "files").mkdir(parents=True)
    wheel = make_wheel(root / "files", name, version)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    page = root / "simple" / name / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(f'<a href="../../files/{wheel.name}#sha256={digest}">{wheel.name}</a>\n')
    return digest


@pytest.fixture
def index(tmp_path: Path) -> Iterator[WheelIndex]:
    make_tree(tmp_path / "a", "alpha_pkg", "1.0")
    make_tree(tmp_path / "b", "beta-pkg", "2.0")
    server = WheelIndex([tmp_path / "a", tmp_path / "b"], "http://127.0.0.1:9/simple")
    server.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def pip_download(
    index: WheelIndex, requirement: str, dest: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
         "--isolated", "--index-url", index.url, "--dest", str(dest), requirement],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_pip_installs_from_every_tree_of_the_index(index: WheelIndex, tmp_path: Path) -> None:
    for requirement in ("alpha-pkg==1.0", "Beta_Pkg==2.0"):  # names normalised as PEP 503 says
        proc = pip_download(index, requirement, tmp_path / "out")
        assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "alpha_pkg-1.0-py3-none-any.whl",
        "beta_pkg-2.0-py3-none-any.whl",
    ]


def test_unknown_projects_go_to_the_fallback_and_files_stay_inside(index: WheelIndex) -> None:
    import http.client

    host, port = index.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=10)
    conn.request("GET", "/simple/torch/")
    response = conn.getresponse()
    response.read()
    assert response.status == 302
    assert response.getheader("Location") == "http://127.0.0.1:9/simple/torch/"
    for path in ("/files/0/../../etc/passwd", "/files/0/%2e%2e/%2e%2e/etc/passwd", "/files/7/x"):
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        assert response.status == 404, path
