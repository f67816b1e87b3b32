"""deploy/: Prometheus loads the rules in alerts.yml, Grafana the data source and dashboard
under grafana/; every rule and panel query parses as PromQL, and every metric, label and label
value it selects is one the running service exports.

A rule that names a metric, label or value the service does not export never fires and nothing
says so, and such a panel stays empty: these checks are what stands between such a typo and an
alert that stays silent in an outage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser as promql
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.predictors import ClassifierPredictor
from app.vae_predictor import VAEPredictor
from tests.app.conftest import LATENT, make_alexnet, make_vae, png_bytes, test_settings, wait_ready

yaml = pytest.importorskip("yaml", reason="pyyaml is in the dev extra: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[2]
RULES = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
PROMETHEUS = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
ALL_RULES = [rule for group in RULES["groups"] for rule in group["rules"]]
ALERTS = [rule for rule in ALL_RULES if "alert" in rule]
RECORDED = {rule["record"] for rule in ALL_RULES if "record" in rule}
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboards" / "modelserve.json").read_text())
# Grafana fills in its interval variables before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s"}


def _dashboard_queries() -> list[tuple[str, str]]:
    out = []
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            out.append((f"panel:{panel['title']}/{target['refId']}", expr))
    return out


def _name(rule: dict[str, Any]) -> str:
    return str(rule.get("alert") or rule.get("record"))


# Every PromQL expression deploy/ holds, by where it is.
QUERIES = [
    (f"{'alert' if 'alert' in rule else 'record'}:{_name(rule)}", rule["expr"])
    for rule in ALL_RULES
] + _dashboard_queries()
# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = {"job", "instance"}
PROMETHEUS_DURATION = re.compile(r"^(\d+[smhdwy])+$")


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
    """Scrapes of the real app on tiny checkpoints, one of them broken: `fresh` once it is
    ready, before any request, `series` after one request to every model endpoint (each series
    name -> the label names and values it carries); the app's operations from its OpenAPI."""
    root = tmp_path_factory.mktemp("alert-models")
    make_alexnet(root)
    make_vae(root)
    make_vae(root, "vae-frey")
    (root / "vae-frey" / "model.safetensors").write_bytes(b"not the weights the card names")
    app = create_app(test_settings(root))
    with TestClient(app) as c:
        wait_ready(c)
        fresh = c.get("/metrics").text
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
    for name, labels in _samples(text):
        for key, value in labels.items():
            series.setdefault(name, {}).setdefault(key, set()).add(value)
        series.setdefault(name, {})
    paths = app.openapi()["paths"]
    operations = {(path, method.upper()) for path, ops in paths.items() for method in ops}
    return {"series": series, "fresh": fresh, "routes": set(paths), "operations": operations}


def _samples(text: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(name, labels) of every sample of a Prometheus text exposition."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, sample.labels


def test_prometheus_loads_the_rules_and_compose_mounts_them_beside_its_config() -> None:
    assert "alerts.yml" in PROMETHEUS["rule_files"]  # relative to prometheus.yml's directory
    volumes = COMPOSE["services"]["prometheus"]["volumes"]
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


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[q[0] for q in QUERIES])
def test_every_query_parses_as_promql(where: str, expr: str) -> None:
    promql.parse(expr)  # raises on a syntax error


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[q[0] for q in QUERIES])
def test_every_selector_matches_what_the_service_exports(
    where: str, expr: str, scraped: dict[str, Any]
) -> None:
    series: dict[str, dict[str, set[str]]] = scraped["series"]
    scrape_jobs = {job["job_name"] for job in PROMETHEUS["scrape_configs"]}
    for selector in _selectors(expr):
        name = selector.name
        assert name == "up" or name in series or name in RECORDED, f"{where}: {name} not exported"
        # `job` is the scrape job's name; the other labels are the service's own.
        labels: dict[str, set[str]] = {**series.get(name, {}), "job": scrape_jobs}
        for matcher in selector.matchers.matchers:
            if matcher.name == "instance":
                continue  # host:port of whatever the scrape config targets
            assert matcher.name in labels, f"{where}: {name} has no label {matcher.name!r}"
            wanted = (
                matcher.value.split("|") if matcher.op == promql.MatchOp.Re else [matcher.value]
            )
            if matcher.name == "status":  # any HTTP status may appear; these must be ones
                assert all(re.fullmatch(r"[1-5]\d\d|[1-5]\.\.", v) for v in wanted), matcher.value
                continue
            known = scraped["routes"] if matcher.name == "route" else labels[matcher.name]
            missing = [v for v in wanted if v not in known]
            assert not missing, f"{where}: {name}{{{matcher.name}}} never takes {missing}"


@pytest.mark.parametrize(("where", "expr"), QUERIES, ids=[q[0] for q in QUERIES])
def test_every_grouping_label_exists_on_what_is_grouped(
    where: str, expr: str, scraped: dict[str, Any]
) -> None:
    """`sum by (route)` over a metric without `route` sums everything into one series."""
    series: dict[str, dict[str, set[str]]] = scraped["series"]
    for node in _nodes(expr):
        if isinstance(node, promql.AggregateExpr) and node.modifier is not None:
            grouped = {s.name for s in _selectors(str(node.expr))}
            for label in node.modifier.labels:
                if label in TARGET_LABELS:
                    continue
                for name in grouped:
                    assert label in series.get(name, {}), (
                        f"{where}: by ({label}) but {name} has no such label"
                    )


def test_the_model_routes_the_rules_select_are_every_model_endpoint(
    scraped: dict[str, Any],
) -> None:
    """The shedding, deadline and latency alerts divide by the model endpoints' traffic: a
    model endpoint added later must be added to them too."""
    model_routes = {"/classify", "/encode", "/decode", "/sample", "/impute", "/denoise", "/score"}
    # as much work per request as the client asks (steps, k): out of the fixed latency target
    client_sized = {"/impute", "/score"}
    assert model_routes <= scraped["routes"]
    for where, expr in QUERIES:
        for selector in _selectors(expr):
            for matcher in selector.matchers.matchers:
                if matcher.name == "route" and matcher.op == promql.MatchOp.Re:
                    latency = where == "alert:ModelserveSlowRequests"
                    expected = model_routes - client_sized if latency else model_routes
                    assert set(matcher.value.split("|")) == expected, where


def test_the_counters_alerts_take_increase_of_exist_before_their_first_event(
    scraped: dict[str, Any],
) -> None:
    """increase() cannot see a counter's first increment if the series appears with it, so the
    service exports these at 0 before any request: the first 500 on any route, the first
    refused request, the first failed batch."""
    fresh = list(_samples(scraped["fresh"]))
    errors = {
        (labels["route"], labels["method"])
        for name, labels in fresh
        if name == "modelserve_http_requests_total" and labels["status"] == "500"
    }
    assert errors == scraped["operations"]  # every route and method the app serves
    reasons = {labels["reason"] for name, labels in fresh if name.startswith("modelserve_rej")}
    assert reasons == {"overloaded", "deadline", "disconnected"}
    failed_batches = {
        (labels["model"], labels["op"])
        for name, labels in fresh
        if name == "modelserve_inference_errors_total"
    }
    assert failed_batches == {("alexnet-cifar10", op) for op in ClassifierPredictor.ops} | {
        ("vae-mnist", op) for op in VAEPredictor.ops
    }
    assert ("modelserve_model_load_failed", {"model": "vae-frey"}) in fresh


def test_grafana_reads_prometheus_and_the_dashboard_from_what_compose_mounts() -> None:
    grafana, prometheus = COMPOSE["services"]["grafana"], COMPOSE["services"]["prometheus"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    provisioning = "./deploy/grafana/provisioning"
    for kind in ("datasources", "dashboards"):  # its own folders only, the others left as shipped
        assert mounts[f"{provisioning}/{kind}"] == f"/etc/grafana/provisioning/{kind}"
    dashboards_dir = mounts["./deploy/grafana/dashboards"]
    (source,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    # The data source is the compose service, on the port it listens on.
    (published,) = prometheus["ports"]
    port = str(published).rsplit(":", 1)[1]  # the container's port
    assert source["url"] == f"http://prometheus:{port}" and source["type"] == "prometheus"
    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "modelserve.yml").read_text()
    )["providers"]
    assert provider["options"]["path"] == dashboards_dir
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_dir}/modelserve.json"
    # Every panel queries that data source, by the uid it is provisioned with.
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = DASHBOARD["panels"]
    assert DASHBOARD["uid"] == "modelserve" and panels
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]  # Grafana's grid is 24 wide
        mine = {(g["x"] + i, g["y"] + j) for i in range(g["w"]) for j in range(g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine


def test_dashboard_shows_every_metric_the_service_exports(scraped: dict[str, Any]) -> None:
    """A metric added to the service gets a panel, or this test says which is missing."""
    shown = {s.name for _, expr in _dashboard_queries() for s in _selectors(expr)}
    exported = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for name in scraped["series"]
        if name.startswith("modelserve_") and not name.endswith("_created")
    }
    family = {re.sub(r"_(bucket|sum|count)$", "", name) for name in shown}
    missing = exported - family - {"modelserve_build_info"}  # versions: see GET /models
    assert not missing, f"no panel shows {sorted(missing)}"


def test_monitoring_uis_are_published_on_the_loopback_only() -> None:
    """Prometheus has no authentication, and Grafana's admin starts as admin/admin."""
    for name in ("prometheus", "grafana"):
        assert all(str(p).startswith("127.0.0.1:") for p in COMPOSE["services"][name]["ports"])
