"""deploy/k8s: the manifests are valid Kubernetes objects and agree with the image and the app.

No cluster runs in CI. The core objects (Deployment, Service, HPA, PDB, and the pod inside the
KServe InferenceService) are validated strictly (unknown fields are errors) against the
Kubernetes OpenAPI schema with kubernetes-validate, for Kubernetes 1.30 and for the newest
release it knows; the kustomize overlay is rendered (its JSON patches applied) and validated the same way.
Custom resources (ServiceMonitor, InferenceService) have no schema there: their required fields
and the values the service depends on are checked here. Then what a cluster cannot see: probes
on routes the app serves, the port the image exposes, the user the image creates, threads
that follow the CPU limit, a grace period that covers the drain, selectors that select.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings

yaml = pytest.importorskip("yaml", reason="pyyaml is in the dev extra: pip install -e '.[dev]'")
kv = pytest.importorskip("kubernetes_validate", reason="in the dev extra: pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes release still maintained upstream when these were written, and the
# newest the installed kubernetes-validate knows.
VERSIONS = ["1.30.0", kv.latest_version()]
CORE_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}


def load(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 1, f"{path}: one object per file"
    return dict(docs[0])


def json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 `replace` and `add` on object keys: what the overlay's patches use."""
    out = copy.deepcopy(doc)
    for op in ops:
        assert op["op"] in ("replace", "add"), f"patch op {op['op']} not handled here"
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"][1:].split("/")
        ]
        node = out
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        assert op["op"] == "add" or last in node, f"replace of a missing {op['path']}"
        node[last] = op["value"]
    return out


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k folder` would send (resources, patches and images only)."""
    k = load(folder / "kustomization.yaml")
    assert set(k) <= {"apiVersion", "kind", "resources", "patches", "images"}, set(k)
    objects: list[dict[str, Any]] = []
    for resource in k.get("resources", []):
        path = (folder / resource).resolve()
        objects += kustomize(path) if path.is_dir() else [load(path)]
    for patch in k.get("patches", []):
        target = patch["target"]
        matched = [o for o in objects if o["kind"] == target["kind"]
                   and o["metadata"]["name"] == target["name"]]  # fmt: skip
        assert len(matched) == 1, f"patch target {target} matches {len(matched)} objects"
        i = objects.index(matched[0])
        objects[i] = json_patch(objects[i], yaml.safe_load(patch["patch"]))
    for image in k.get("images", []):
        for o in objects:
            for c in pod_spec(o).get("containers", []) if o["kind"] == "Deployment" else []:
                if c["image"].split(":")[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return objects


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj["spec"]["template"]["spec"])


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = {o["kind"]: o for o in objects}
    assert len(kinds) == len(objects), "one object of each kind"
    return kinds


CORE = by_kind(kustomize(K8S))
DEPLOYMENT = CORE["Deployment"]
POD = pod_spec(DEPLOYMENT)
(API,) = POD["containers"]
SERVICE, HPA, PDB = CORE["Service"], CORE["HorizontalPodAutoscaler"], CORE["PodDisruptionBudget"]
SERVICE_MONITOR = by_kind(kustomize(K8S / "monitoring"))["ServiceMonitor"]
QUEUE_HPA = by_kind(kustomize(K8S / "autoscale-queue"))["HorizontalPodAutoscaler"]
ISVC = load(K8S / "kserve" / "inferenceservice.yaml")
ADAPTER = yaml.safe_load((K8S / "autoscale-queue" / "prometheus-adapter-values.yaml").read_text())


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def probe_seconds(probe: dict[str, Any]) -> int:
    """How long a probe may keep failing before the kubelet acts on it."""
    return int(probe.get("periodSeconds", 10)) * int(probe.get("failureThreshold", 3))


def app_routes() -> set[str]:
    from app.main import create_app

    return set(create_app(Settings(model_dir=ROOT / "models")).openapi()["paths"])


def dockerfile_text() -> str:
    return (ROOT / "Dockerfile").read_text()


# --- schema ---------------------------------------------------------------------------------------


def test_the_core_kustomization_holds_the_core_objects() -> None:
    assert set(CORE) == CORE_KINDS


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", sorted(CORE_KINDS))
def test_core_objects_are_valid_kubernetes(kind: str, version: str) -> None:
    kv.validate(CORE[kind], version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_queue_depth_overlay_renders_a_valid_hpa(version: str) -> None:
    kv.validate(QUEUE_HPA, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_the_kserve_predictor_is_a_valid_pod_spec(version: str) -> None:
    """InferenceService's predictor embeds a pod spec (plus KServe's own fields): that part is
    validated as a Pod, strictly."""
    kserve_only = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "timeout"}
    predictor = ISVC["spec"]["predictor"]
    pod = {k: v for k, v in predictor.items() if k not in kserve_only}
    kv.validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod},
        version,
        strict=True,
    )


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The check above would catch a misspelt field (it is what `strict` is for)."""
    bad = json_patch(DEPLOYMENT, [{"op": "add", "path": "/spec/replica", "value": 2}])
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, VERSIONS[-1], strict=True)


def test_every_manifest_is_reachable_from_a_kustomization_or_documented() -> None:
    listed = {"kserve/inferenceservice.yaml", "autoscale-queue/prometheus-adapter-values.yaml"}
    for k in K8S.rglob("kustomization.yaml"):
        listed |= {
            (k.parent / r).resolve().relative_to(K8S.resolve()).as_posix()
            for r in load(k).get("resources", [])
        }
    files = {p.relative_to(K8S).as_posix() for p in K8S.rglob("*.yaml")}
    assert files - {p for p in files if p.endswith("kustomization.yaml")} <= listed
    for f in listed:
        assert (K8S / f).exists(), f


# --- the Deployment and the image -------------------------------------------------------------


def test_container_port_is_the_one_the_image_listens_on() -> None:
    (port,) = API["ports"]
    assert f"EXPOSE {port['containerPort']}" in dockerfile_text()
    assert port["containerPort"] == Settings.model_fields["port"].default
    assert SERVICE["spec"]["ports"][0]["targetPort"] == port["name"]


def test_probes_use_the_apps_health_routes() -> None:
    routes = app_routes()
    assert API["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert API["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert API["startupProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert API[probe]["httpGet"]["path"] in routes
        assert API[probe]["httpGet"]["port"] == API["ports"][0]["name"]


def test_startup_probe_waits_for_loading_and_warm_up() -> None:
    """Loading and warming the shipped models takes seconds; a large model or a cold node
    minutes. Until the startup probe passes, liveness is not run."""
    assert probe_seconds(API["startupProbe"]) >= 180
    # readiness reacts faster than liveness: a replica leaves the Service before a restart
    assert probe_seconds(API["readinessProbe"]) < probe_seconds(API["livenessProbe"])


def test_runs_as_the_images_non_root_user_read_only() -> None:
    uid = re.search(r"--uid (\d+)", dockerfile_text())
    assert uid and POD["securityContext"]["runAsUser"] == int(uid[1])
    assert POD["securityContext"]["runAsNonRoot"] is True
    sc = API["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # compose's tmpfs on /tmp, here a memory-backed emptyDir: the image's XDG_CACHE_HOME
    mounts = {m["mountPath"]: m["name"] for m in API["volumeMounts"]}
    volumes = {v["name"]: v for v in POD["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "XDG_CACHE_HOME=/tmp/" in dockerfile_text()


def test_torch_threads_follow_the_cpu_limit() -> None:
    """os.cpu_count() in a container is the node's core count: without this, a 2-CPU pod on a
    64-core node runs 64 intra-op threads against a 2-CPU quota."""
    ref = env_of(API)["MODELSERVE_TORCH_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert ref["resource"] == "limits.cpu" and ref["containerName"] == API["name"]
    resources = API["resources"]
    assert resources["requests"] == resources["limits"]  # Guaranteed QoS
    assert float(resources["limits"]["cpu"]) >= 1  # at least one whole thread


def test_every_modelserve_variable_is_a_setting() -> None:
    for container in (API, *ISVC["spec"]["predictor"]["containers"]):
        for name in env_of(container):
            if name.startswith("MODELSERVE_"):
                assert name.removeprefix("MODELSERVE_").lower() in Settings.model_fields, name


def test_grace_period_covers_pre_stop_and_drain() -> None:
    pre_stop = API["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(env_of(API)["MODELSERVE_GRACEFUL_TIMEOUT_S"]["value"])
    assert POD["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + drain + 5
    # python -m app is what drains and exits 0 (bare uvicorn would exit 143)
    assert 'CMD ["python", "-m", "app"]' in dockerfile_text() and "command" not in API


def test_rollouts_and_disruptions_keep_replicas_serving() -> None:
    strategy = DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    assert PDB["spec"]["maxUnavailable"] == 1
    assert HPA["spec"]["minReplicas"] >= 2


def test_selectors_select_the_pods() -> None:
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    for selector in (
        DEPLOYMENT["spec"]["selector"]["matchLabels"],
        SERVICE["spec"]["selector"],
        PDB["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    ref = HPA["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", DEPLOYMENT["metadata"]["name"])


# --- autoscaling on queue depth ---------------------------------------------------------------


def test_queue_depth_hpa_reads_the_metric_the_adapter_publishes() -> None:
    from app.metrics import Metrics

    pods = [m["pods"] for m in QUEUE_HPA["spec"]["metrics"] if m["type"] == "Pods"]
    (metric,) = pods
    name = metric["metric"]["name"]
    (rule,) = ADAPTER["rules"]["custom"]
    assert rule["name"]["as"] == name
    assert rule["seriesQuery"].startswith(name + "{")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    exported = {m.name for m in Metrics().registry.collect()}
    assert name in exported
    # the target is one full batch waiting (the comment in the overlay says why)
    assert int(metric["target"]["averageValue"]) == Settings.model_fields["max_batch_size"].default
    # CPU stays as a second signal
    assert any(m["type"] == "Resource" for m in QUEUE_HPA["spec"]["metrics"])


# --- ServiceMonitor -------------------------------------------------------------------------------


def test_service_monitor_scrapes_the_service_as_job_modelserve() -> None:
    assert SERVICE_MONITOR["apiVersion"] == "monitoring.coreos.com/v1"
    spec = SERVICE_MONITOR["spec"]
    assert spec["selector"]["matchLabels"].items() <= SERVICE["metadata"]["labels"].items()
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in {p["name"] for p in SERVICE["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and "/metrics" in app_routes()
    # The operator names the job after the Service (no jobLabel set): the alerts select it.
    assert "jobLabel" not in spec
    alerts = (ROOT / "deploy" / "alerts.yml").read_text()
    jobs = set(re.findall(r'job="([^"]+)"', alerts))
    assert jobs == {SERVICE["metadata"]["name"]}


# --- KServe ---------------------------------------------------------------------------------------


def test_inference_service_is_a_v2_custom_predictor() -> None:
    assert ISVC["apiVersion"] == "serving.kserve.io/v1beta1"
    assert ISVC["kind"] == "InferenceService"
    predictor = ISVC["spec"]["predictor"]  # the one required field of spec
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert env_of(container)["PROTOCOL"]["value"] == "v2"
    assert container["ports"][0]["containerPort"] == API["ports"][0]["containerPort"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] in {"cpu", "memory", "concurrency", "rps"}
    deployment_mode = ISVC["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    assert deployment_mode in {"Standard", "RawDeployment"}


def test_inference_service_probes_routes_the_app_serves() -> None:
    routes = app_routes()
    if not any(r.startswith("/v2/") for r in routes):
        pytest.skip("the app in this tree has no Open Inference Protocol (/v2) routes")
    (container,) = ISVC["spec"]["predictor"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes


def test_inference_service_runs_the_image_as_the_deployment_does() -> None:
    """Two ways to run one image: resources, threads, hardening and grace must not drift."""
    predictor = ISVC["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["resources"] == API["resources"]
    assert container["securityContext"] == API["securityContext"]
    assert predictor["securityContext"] == POD["securityContext"]
    assert predictor["terminationGracePeriodSeconds"] == POD["terminationGracePeriodSeconds"]
    assert container["lifecycle"] == API["lifecycle"]
    ours = {k: v for k, v in env_of(API).items() if k != "MODELSERVE_API_KEY"}
    theirs = {k: v for k, v in env_of(container).items() if k != "PROTOCOL"}
    threads = copy.deepcopy(ours["MODELSERVE_TORCH_THREADS"])
    threads["valueFrom"]["resourceFieldRef"]["containerName"] = container["name"]
    assert theirs == {**ours, "MODELSERVE_TORCH_THREADS": threads}
