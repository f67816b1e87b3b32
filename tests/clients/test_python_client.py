"""The light client (clients/python): installed alone into a fresh venv, it talks to the server.

Also checks the one-definition rule: the server's wire schemas are the client package's classes.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

import app.client
import app.schemas
import modelserve_client
from modelserve_client import schemas
from tests.app.conftest import make_alexnet, make_vae, png_bytes, serve_in_thread, test_settings

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"

# Run by the fresh venv's interpreter: three calls, and what they came back as.
SCRIPT = """
import importlib.util, json, sys
import modelserve_client
from modelserve_client import Client
url, image = sys.argv[1:]
with Client(url, retries=0) as c:
    answers = {
        "classify": c.classify(image, top_k=2),
        "encode": c.encode([image]),
        "score": c.score([image], k=4, seed=0),
    }
print(json.dumps({
    "importable": {m: importlib.util.find_spec(m) is not None for m in ("torch", "fastapi", "app")},
    "package": modelserve_client.__file__,
    "types": {k: f"{type(v).__module__}.{type(v).__name__}" for k, v in answers.items()},
    "answers": {k: v.model_dump(mode="json") for k, v in answers.items()},
}))
"""


def clean_env() -> dict[str, str]:
    """This environment without PYTHONPATH/PYTHONHOME, so the venv sees only what it installed."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


@pytest.fixture(scope="module")
def light_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) with `pip install ./clients/python` and nothing else.

    The package is built from a copy, so pip's build/ and egg-info stay out of the checkout.
    """
    root = tmp_path_factory.mktemp("light-client")
    source = shutil.copytree(
        CLIENT, root / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, env=clean_env())
    python = venv / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", source],
        check=True,
        env=clean_env(),
        timeout=600,
    )
    return python


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    models = tmp_path_factory.mktemp("models")
    make_alexnet(models)
    make_vae(models)
    with serve_in_thread(test_settings(models)) as url:
        yield url


@pytest.mark.slow
def test_light_client_in_a_venv_without_torch_calls_the_server(
    light_python: Path, server: str, tmp_path: Path
) -> None:
    image = tmp_path / "digit.png"
    image.write_bytes(png_bytes((28, 28), (40, 40, 40), mode="L"))
    out = subprocess.run(
        [light_python, "-I", "-c", SCRIPT, server, str(image)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["importable"] == {"torch": False, "fastapi": False, "app": False}
    assert Path(seen["package"]).is_relative_to(light_python.parents[1])  # the venv's copy
    assert seen["types"] == {
        "classify": "modelserve_client.schemas.ClassifyResponse",
        "encode": "modelserve_client.schemas.EncodeResponse",
        "score": "modelserve_client.schemas.ScoreResponse",
    }
    # The same answers as the server gives the client installed beside it.
    with app.client.Client(server, retries=0) as here:
        assert seen["answers"] == {
            "classify": here.classify(image, top_k=2).model_dump(mode="json"),
            "encode": here.encode([image]).model_dump(mode="json"),
            "score": here.score([image], k=4, seed=0).model_dump(mode="json"),
        }
    assert len(seen["answers"]["classify"]["predictions"]) == 2


@pytest.mark.slow
def test_light_client_requires_httpx_and_pydantic_only(light_python: Path) -> None:
    code = "import importlib.metadata as m; print('\\n'.join(m.requires('modelserve-client')))"
    out = subprocess.run(
        [light_python, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    names = {re.split(r"[<>=!~;\[ ]", r)[0] for r in out.stdout.split()}
    assert names == {"httpx", "pydantic"}


def test_server_schemas_are_the_client_packages_classes() -> None:
    """One definition: every body model the server uses is defined in modelserve_client."""
    served = [
        obj
        for name, obj in vars(app.schemas).items()
        if not name.startswith("_") and inspect.isclass(obj) and issubclass(obj, BaseModel)
    ]
    assert {"ClassifyResponse", "ScoreResponse", "ErrorResponse"} <= {c.__name__ for c in served}
    for cls in served:
        if cls is not BaseModel:
            assert cls.__module__ == schemas.__name__, f"{cls.__name__} is defined outside"
    assert app.client.Client is modelserve_client.Client
    assert app.client.AsyncClient is modelserve_client.AsyncClient


def test_server_pins_the_client_version_of_this_tree() -> None:
    """The root pyproject's requirement names the client package that sits beside it."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("modelserve-client")]
    assert pin == f"modelserve-client=={modelserve_client.__version__}"
    meta = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert meta["name"] == "modelserve-client" and "version" in meta["dynamic"]


def test_make_venv_installs_the_client_package_before_the_project() -> None:
    """`make venv` (and CI through it): the client from clients/python, editable, then the project,
    whose requirement on modelserve-client it then satisfies; a client change rebuilds the venv."""
    makefile = (ROOT / "Makefile").read_text()
    stamp = re.search(r"^\$\(STAMP\):(.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert stamp, "no $(STAMP) rule in the Makefile"
    target, recipe = stamp.groups()
    assert "clients/python/pyproject.toml" in target.split()
    lines = recipe.splitlines()
    client = next(i for i, ln in enumerate(lines) if ln.endswith("-e ./clients/python"))
    project = next(i for i, ln in enumerate(lines) if ln.endswith("-e '.[dev]'"))
    assert client < project
