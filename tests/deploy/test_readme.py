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


def _exported_metrics() -> dict[str, str]:
    """Name -> type of every metric the service exports (counters with their `_total`)."""
    from app.metrics import Metrics

    return {
        fam.name + ("_total" if fam.type == "counter" else ""): fam.type
        for fam in Metrics().registry.collect()
    }


@pytest.mark.parametrize("page", ["docs/api.md"])
def test_the_metrics_tables_list_every_exported_metric_with_its_type(page: str) -> None:
    documented: dict[str, str] = {}
    for row in re.findall(r"^\| (`modelserve_.*?) \| (\w+)", (ROOT / page).read_text(), re.M):
        for name in re.findall(r"`(modelserve_[a-z_]+)`", row[0]):
            documented[name] = row[1]
    assert documented == _exported_metrics()


API_DOC = (ROOT / "docs" / "api.md").read_text()


def test_the_api_docs_settings_table_matches_the_settings() -> None:
    """docs/api.md's table: every setting once, none that does not exist, and each plain
    default (one literal in backquotes) the one the code has."""
    rows = re.findall(r"^\| (`MODELSERVE_.*?) \| (.*?) \|", API_DOC, re.M)
    names = [n for cell, _ in rows for n in re.findall(r"`MODELSERVE_([A-Z_]+)`", cell)]
    assert sorted(names) == sorted(f.upper() for f in Settings.model_fields)
    for cell, default in rows:
        fields = [n.lower() for n in re.findall(r"`MODELSERVE_([A-Z_]+)`", cell)]
        literals = re.findall(r"`([^`]*)`", default)
        if default.startswith("`") and len(literals) == len(fields):
            for field, literal in zip(fields, literals, strict=True):
                value = Settings.model_fields[field].default
                shown = str(value).lower() if isinstance(value, bool) else str(value)
                assert literal == shown, (field, literal, value)


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


PAGES = [
    ROOT / "README.md",
    ROOT / "clients/python/README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_point_at_files_that_exist(page: Path) -> None:
    """Every relative link of the README and the docs pages (images included) resolves."""
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    missing = [link for link in relative if not (page.parent / link).exists()]
    assert missing == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_m_commands_name_modules_that_exist(page: Path) -> None:
    """`python -m X` in the README and the docs names a module of this repository (or a tool
    installed with it), so every command a page gives can run."""
    modules = set(re.findall(r"python3? -m ([\w.]+)", page.read_text()))
    tools = {"pip", "pytest", "uvicorn", "venv"}
    for module in modules - tools:
        path = ROOT / module.replace(".", "/")
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), module


def test_reliability_page_names_tests_that_exist() -> None:
    """docs/reliability.md proves each behaviour by naming a test: every name must be one."""
    page = (ROOT / "docs" / "reliability.md").read_text()
    short = {
        "r": "app/test_reliability.py",
        "main": "app/test_main.py",
        "srv": "app/test_server.py",
        "b": "app/test_batching.py",
    }
    refs = re.findall(r"`([a-z/_.]+)::(\w[^`\[]*)", page)
    assert refs, "no test named"
    for file, name in refs:
        path = ROOT / "tests" / short.get(file, file)
        assert path.is_file(), f"{file}::{name}: no {path}"
        prefix = name.split("…")[0]  # `test_bad_upload_…` abbreviates a long name
        defined = re.findall(r"^(?:async )?def (\w+)", path.read_text(), re.M)
        assert any(d.startswith(prefix) if "…" in name else d == name for d in defined), (
            f"docs/reliability.md names {file}::{name}, which {path.name} does not define"
        )
