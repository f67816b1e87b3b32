"""The README stays true to the code: its settings, metrics, endpoints and example files exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.main import create_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# MODELSERVE_* names that are docker-compose variables, not service settings.
COMPOSE_VARIABLES = {"MODELSERVE_DATA_DIR", "MODELSERVE_RUNS_DIR"}


def test_every_setting_is_documented_and_every_documented_setting_exists() -> None:
    fields = {f"MODELSERVE_{name.upper()}" for name in Settings.model_fields}
    documented = set(re.findall(r"MODELSERVE_[A-Z_]+[A-Z]", README))
    assert fields - documented == set(), "settings missing from README"
    assert documented - fields - COMPOSE_VARIABLES == set(), (
        "README names settings that do not exist"
    )


def test_documented_metrics_exist() -> None:
    source = (ROOT / "app" / "metrics.py").read_text()
    documented = set(re.findall(r"`(modelserve_[a-z_]+)`", README))
    assert documented, "README lists no metrics"
    assert {m for m in documented if f'"{m}"' not in source} == set()


def test_curl_examples_hit_real_routes(tmp_path: Path) -> None:
    app = create_app(Settings(model_dir=tmp_path))
    # Every documented route (path templates included) and the docs pages themselves.
    routes = set(app.openapi()["paths"]) | {app.docs_url or "", app.openapi_url or ""}
    patterns = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$") for p in routes]
    used = set(re.findall(r"http://localhost:8000(/[A-Za-z0-9/_.-]*)", README))
    assert {"/classify", "/encode", "/decode", "/sample", "/models", "/readyz", "/metrics"} <= used
    assert {p for p in used if p != "/" and not any(rx.match(p) for rx in patterns)} == set()


@pytest.mark.parametrize("path", sorted(set(re.findall(r"@(examples/[\w.]+)", README))))
def test_example_files_exist(path: str) -> None:
    assert (ROOT / path).is_file()
