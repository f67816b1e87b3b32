"""deploy/alerts.yml: Prometheus loads it, every rule parses as PromQL, and every metric, label
and label value a rule selects is one the running service exports.

A rule that names a metric, label or value the service does not export never fires and
nothing says so: these checks are what stands between such a typo and an alert that stays
silent in an outage.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser as promql
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.conftest import LATENT, make_alexnet, make_vae, png_bytes, test_settings, wait_ready

yaml = pytest.importorskip("yaml", reason="pyyaml is in the dev extra: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[2]
RULES = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
PROMETHEUS = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
ALL_RULES = [rule for group in RULES["groups"] for rule in group["rules"]]
ALERTS = [rule for rule in ALL_RULES if "alert" in rule]
RECORDED = {rule["record"] for rule in ALL_RULES if "record" in rule}
# Labels Prometheus itself attaches to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"job", "instance"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMETHEUS_DURATION = re.compile(r"^(\d+[smhdwy])+$")


def _name(rule: dict[str, Any]) -> str:
    return str(rule.get("alert") or rule.get("record"))


def _nodes(expr: str) -> Iterator[Any]:
    """Every node of a parsed expression, depth first."""
    found: list[Any] = []

    def visit(node: Any) -> bool:
        found.append(node)
        return True

    promql.walk(promql.parse(expr), visit)
    yield from found


def _selectors(expr: str) -> list[Any]:
    return [n for n in _nodes(expr) if isinstance(n, promql.VectorSelector)]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A scrape of the real app on tiny checkpoints, one of them broken, after one request to
    every model endpoint: each series name -> the label names and values it carries, and the
    app's route templates."""
    root = tmp_path_factory.mktemp("alert-models")
    make_alexnet(root)
    make_vae(root)
    make_vae(root, "vae-frey")
    (root / "vae-frey" / "model.safetensors").write_bytes(b"not the weights the card names")
    app = create_app(test_settings(root))
    with TestClient(app) as c:
        wait_ready(c)
        image = png_bytes((32, 32))
        assert (
            c.post("/classify", files={"image": ("a.png", image, "image/png")}).status_code == 200
        )
        digit = png_bytes((28, 28), mode="L")
        assert c.post("/encode", files={"image": ("d.png", digit, "image/png")}).status_code == 200
        assert c.post("/decode", json={"z": [[0.0] * LATENT]}).status_code == 200
        assert c.get("/sample?n=1").status_code == 200
        text = c.get("/metrics").text
    series: dict[str, dict[str, set[str]]] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", line)
        if not m or line.startswith("#"):
            continue
        labels = series.setdefault(m.group(1), {})
        for key, value in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""):
            labels.setdefault(key, set()).add(value)
    return {"series": series, "routes": set(app.openapi()["paths"])}


def test_prometheus_loads_the_rules_and_compose_mounts_them_beside_its_config() -> None:
    assert "alerts.yml" in PROMETHEUS["rule_files"]  # relative to prometheus.yml's directory
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes


def test_rules_are_well_formed() -> None:
    names = [_name(rule) for rule in ALL_RULES]
    assert len(names) == len(set(names)), "rule names must be unique"
    assert ALERTS and RECORDED
    for rule in ALL_RULES:
        assert ("alert" in rule) != ("record" in rule), _name(rule)
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
    for name in RECORDED:  # the level:metric:operations convention
        assert re.fullmatch(r"modelserve:[a-z_]+:[a-z0-9_]+", name), name
    for alert in ALERTS:
        assert re.fullmatch(r"Modelserve[A-Z][A-Za-z]+", alert["alert"])
        assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        assert PROMETHEUS_DURATION.match(alert.get("for", "0s")), alert["alert"]


@pytest.mark.parametrize("rule", ALL_RULES, ids=_name)
def test_every_expression_parses_as_promql(rule: dict[str, Any]) -> None:
    promql.parse(rule["expr"])  # raises on a syntax error


@pytest.mark.parametrize("rule", ALL_RULES, ids=_name)
def test_every_selector_matches_what_the_service_exports(
    rule: dict[str, Any], scraped: dict[str, Any]
) -> None:
    series: dict[str, dict[str, set[str]]] = scraped["series"]
    scrape_jobs = {job["job_name"] for job in PROMETHEUS["scrape_configs"]}
    for selector in _selectors(rule["expr"]):
        name = selector.name
        if name == "up":  # Prometheus's own: one per target, labelled with the scrape job
            labels: dict[str, set[str]] = {"job": scrape_jobs}
        else:
            assert name in series or name in RECORDED, f"{_name(rule)}: {name} is not exported"
            labels = series.get(name, {})
        for matcher in selector.matchers.matchers:
            if matcher.name in ("instance",) or (matcher.name == "job" and name != "up"):
                continue  # target labels: whatever the scrape config says
            assert matcher.name in labels, f"{_name(rule)}: {name} has no label {matcher.name!r}"
            wanted = (
                matcher.value.split("|") if matcher.op == promql.MatchOp.Re else [matcher.value]
            )
            if matcher.name == "status":  # any HTTP status may appear; these must be ones
                assert all(re.fullmatch(r"[1-5]\d\d|[1-5]\.\.", v) for v in wanted), matcher.value
                continue
            known = scraped["routes"] if matcher.name == "route" else labels[matcher.name]
            missing = [v for v in wanted if v not in known]
            assert not missing, f"{_name(rule)}: {name}{{{matcher.name}}} never takes {missing}"


@pytest.mark.parametrize("rule", ALL_RULES, ids=_name)
def test_every_grouping_label_exists_on_what_is_grouped(
    rule: dict[str, Any], scraped: dict[str, Any]
) -> None:
    """`sum by (route)` over a metric without `route` sums everything into one series."""
    series: dict[str, dict[str, set[str]]] = scraped["series"]
    for node in _nodes(rule["expr"]):
        if isinstance(node, promql.AggregateExpr) and node.modifier is not None:
            grouped = {s.name for s in _selectors(str(node.expr))}
            for label in node.modifier.labels:
                if label in TARGET_LABELS:
                    continue
                for name in grouped:
                    assert label in series.get(name, {}), (
                        f"{_name(rule)}: by ({label}) but {name} has no such label"
                    )


def test_the_model_routes_the_rules_select_are_every_model_endpoint(
    scraped: dict[str, Any],
) -> None:
    """The shedding, deadline and latency alerts divide by the model endpoints' traffic: a
    model endpoint added later must be added to them too."""
    model_routes = {"/classify", "/encode", "/decode", "/sample"}
    assert model_routes <= scraped["routes"]
    for rule in ALL_RULES:
        for selector in _selectors(rule["expr"]):
            for matcher in selector.matchers.matchers:
                if matcher.name == "route" and matcher.op == promql.MatchOp.Re:
                    assert set(matcher.value.split("|")) == model_routes, _name(rule)


def test_the_counters_alerts_take_increase_of_exist_before_their_first_event(
    scraped: dict[str, Any],
) -> None:
    """increase() cannot see a counter's first increment if the series appears with it, so the
    service exports these at 0 from the start."""
    series: dict[str, dict[str, set[str]]] = scraped["series"]
    assert series["modelserve_rejected_requests_total"]["reason"] == {
        "overloaded", "deadline", "disconnected",
    }  # fmt: skip
    assert "500" in series["modelserve_http_requests_total"]["status"]
    assert {"/classify", "/sample"} <= series["modelserve_http_requests_total"]["route"]
    assert series["modelserve_inference_errors_total"]["op"] == {"classify", "encode", "decode"}
    assert series["modelserve_model_load_failed"]["model"] == {"vae-frey"}
