"""deploy/k8s: the manifests parse, pass the Kubernetes schemas (kubernetes-validate, bundled, no
cluster), run valid `noetl-server` commands with known settings, and probe real endpoints."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cli.main import build_parser
from core.settings import ENV_NAMES, Settings
from tests.deploy.manifests import (
    IMAGE,
    K8S_DIR,
    ROLES,
    ROOT,
    containers,
    k8s_objects,
    load_k8s,
    noetl_server_argvs,
    pod_spec,
)
from workers.daemon import DEFAULT_PORTS

KUBERNETES_VERSION = "1.30.0"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
HEALTH_PATHS = {"readinessProbe": "/health", "livenessProbe": "/livez", "startupProbe": "/livez"}

# envelope.md §8: every metric the roles export (histograms add _bucket, _sum, _count)
METRICS = {
    "noetl_build_info": "gauge",
    "noetl_publisher_published_total": "counter",
    "noetl_publisher_duplicates_total": "counter",
    "noetl_publisher_slimmed_total": "counter",
    "noetl_publisher_batch_size": "histogram",
    "noetl_publisher_publish_latency_seconds": "histogram",
    "noetl_publisher_outbox_pending": "gauge",
    "noetl_publisher_outbox_oldest_seconds": "gauge",
    "noetl_publisher_dead_total": "counter",
    "noetl_publisher_errors_total": "counter",
    "noetl_publisher_notify_wakeups_total": "counter",
    "noetl_publisher_poll_wakeups_total": "counter",
    "noetl_stream_config_mismatch": "gauge",
    "noetl_projector_events_total": "counter",
    "noetl_projector_batch_seconds": "histogram",
    "noetl_projector_batch_size": "histogram",
    "noetl_projector_lag_seconds": "gauge",
    "noetl_projector_consumer_pending": "gauge",
    "noetl_projector_consumer_ack_pending": "gauge",
    "noetl_projector_owned_shards": "gauge",
    "noetl_projector_errors_total": "counter",
    "noetl_server_request_duration_seconds": "histogram",
    "noetl_server_engine_evaluations_total": "counter",
    "noetl_server_engine_duration_seconds": "histogram",
    "noetl_server_commands_issued_total": "counter",
    "noetl_server_events_appended_total": "counter",
    "noetl_server_claims_total": "counter",
    "noetl_server_db_pool_connections": "gauge",
    "noetl_server_sse_streams": "gauge",
    "noetl_worker_commands_total": "counter",
    "noetl_worker_command_duration_seconds": "histogram",
    "noetl_worker_claim_duration_seconds": "histogram",
    "noetl_worker_events_reported_total": "counter",
    "noetl_worker_inflight": "gauge",
    "noetl_worker_consumer_pending": "gauge",
}
LABELS = {"role", "version", "stream", "kind", "reason", "field", "outcome", "method", "route"}
LABELS |= {"status", "state", "pool", "tool_kind", "le"}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return k8s_objects()


def _by(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def _role_workload(objects: list[dict], role: str) -> dict:
    kind = "StatefulSet" if role == "projector" else "Deployment"
    return _by(objects, kind, f"noetl-{role}")


def _pod(obj: dict) -> dict:
    spec = pod_spec(obj)
    assert spec is not None, obj["kind"]
    return spec


def _main_container(obj: dict) -> dict:
    return _pod(obj)["containers"][0]


def _env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def _configmap_env(objects: list[dict]) -> dict[str, str]:
    return _by(objects, "ConfigMap", "noetl-config")["data"]


def _literal_env(objects: list[dict], container: dict) -> dict[str, str]:
    """What the process sees for literal values: the ConfigMap (envFrom), then `env` values."""
    env = {}
    for source in container.get("envFrom", []):
        env.update(_by(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({k: v["value"] for k, v in _env(container).items() if "value" in v})
    return env


def test_manifests_parse_and_kustomization_lists_them() -> None:
    files = load_k8s()
    kustomization = files.pop("kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    # every manifest is applied by the base, except the rule file that needs an operator CRD
    assert listed == set(files) - {"prometheusrule.yaml"}
    assert [i["name"] for i in kustomization["images"]] == [IMAGE]
    for name, docs in files.items():
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), name
            assert doc["metadata"].get("name"), name


def test_manifests_pass_the_kubernetes_schemas(objects: list[dict]) -> None:
    checked = 0
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD kind: checked structurally below
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 13
    # the validator is not a no-op: a misspelt field fails it
    broken = copy.deepcopy(_role_workload(objects, "server"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_container_runs_a_valid_noetl_server_invocation(objects: list[dict]) -> None:
    parser = build_parser()
    ran = set()
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        for container in containers(spec):
            assert container["image"] == IMAGE, obj["metadata"]["name"]
            for argv in noetl_server_argvs(container):
                args = parser.parse_args(argv)
                ran.add(args.mode or args.command)
    assert ran == {*ROLES, "migrate", "check-schema"}
    job = _by(objects, "Job", "noetl-migrate")
    assert parser.parse_args(_main_container(job)["args"]).command == "migrate"
    for role in ROLES:
        args = parser.parse_args(_main_container(_role_workload(objects, role))["args"])
        assert args.mode == role


def test_every_variable_is_a_setting_and_every_value_parses(objects: list[dict]) -> None:
    assert set(_configmap_env(objects)) <= ENV_NAMES
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        for container in containers(spec):
            names = set(_env(container))
            assert names <= ENV_NAMES, f"{obj['metadata']['name']}: {names - ENV_NAMES}"
            Settings.from_env(_literal_env(objects, container))


def test_secret_references_exist_in_the_secret_template(objects: list[dict]) -> None:
    secret = _by(objects, "Secret", "noetl-secrets")
    keys = set(secret["stringData"])
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        for container in containers(spec):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "noetl-secrets"
                    assert ref["key"] in keys or ref.get("optional"), ref["key"]
    # the system pool talks HTTP only: it gets no database URL
    assert "NOETL_DATABASE_URL" not in _env(_main_container(_role_workload(objects, "system")))


def test_probes_point_at_real_endpoints(objects: list[dict]) -> None:
    for role in ROLES:
        container = _main_container(_role_workload(objects, role))
        settings = Settings.from_env(_literal_env(objects, container))
        served = settings.port if role == "server" else settings.metrics_port
        assert served == (8082 if role == "server" else DEFAULT_PORTS[role]), role
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert list(ports.values()) == [served], role
        assert "readinessProbe" in container and "livenessProbe" in container, role
        for probe_name, path in HEALTH_PATHS.items():
            probe = container.get(probe_name)
            if probe is None:
                continue
            get = probe["httpGet"]
            assert get["path"] == path, (role, probe_name)
            port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
            assert port == served, (role, probe_name)


def test_prometheus_scrape_annotations_name_the_metrics_port(objects: list[dict]) -> None:
    for role in ROLES:
        workload = _role_workload(objects, role)
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        port = _main_container(workload)["ports"][0]["containerPort"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_projector_statefulset_names_its_consumer_from_the_pod(objects: list[dict]) -> None:
    sts = _by(objects, "StatefulSet", "noetl-projector")
    env = _env(_main_container(sts))
    assert env["NOETL_PROJECTOR_CONSUMER"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert int(env["NOETL_PROJECTOR_REPLICAS"]["value"]) == sts["spec"]["replicas"]
    shards = int(_configmap_env(objects)["NOETL_EVENT_SHARD_COUNT"])
    assert 1 <= sts["spec"]["replicas"] <= shards  # envelope.md §7.1
    headless = _by(objects, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    # pod names are <statefulset>-<ordinal>: the trailing digits the projector reads
    assert re.fullmatch(r"[a-z0-9-]*[a-z]", sts["metadata"]["name"])


def test_workload_shapes(objects: list[dict]) -> None:
    assert _role_workload(objects, "publisher")["spec"]["replicas"] == 2  # SKIP LOCKED
    server_service = _by(objects, "Service", "noetl-server")
    server = _role_workload(objects, "server")
    assert server_service["spec"]["selector"] == server["spec"]["selector"]["matchLabels"]
    assert server_service["spec"]["ports"][0]["port"] == 8082
    job = _by(objects, "Job", "noetl-migrate")
    assert _pod(job)["restartPolicy"] == "Never"
    grace = float(_configmap_env(objects)["NOETL_SHUTDOWN_GRACE_SECONDS"])
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
        if obj["kind"] != "Job":
            assert spec["terminationGracePeriodSeconds"] > grace
        for container in containers(spec):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert {"cpu", "memory"} <= set(resources["limits"]), container["name"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_disruption_budgets_select_their_workloads(objects: list[dict]) -> None:
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    covered = set()
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        matches = [
            o
            for o in objects
            if o["kind"] in WORKLOAD_KINDS
            and o["spec"]["template"]["metadata"]["labels"].items() >= selector.items()
        ]
        assert len(matches) == 1, budget["metadata"]["name"]
        covered.add(matches[0]["metadata"]["name"])
    assert {"noetl-server", "noetl-publisher", "noetl-projector"} <= covered


def test_prometheus_rules_use_exported_metrics() -> None:
    rule = yaml.safe_load((K8S_DIR / "prometheusrule.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert len(alerts) >= 10
    names = [a["alert"] for a in alerts]
    assert len(set(names)) == len(names)
    promql_words = {"sum", "max", "by", "rate", "increase", "count", "unless", "offset"}
    promql_words |= {"histogram_quantile", "le", "humanizeDuration"}
    for alert in alerts:
        assert {"alert", "expr", "labels", "annotations"} <= set(alert), alert.get("alert")
        assert alert["labels"]["severity"] in ("critical", "warning", "info")
        expr = alert["expr"]
        metrics = set(re.findall(r"\bnoetl_[a-z_]+", expr))
        assert metrics, alert["alert"]
        for metric in metrics:
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert metric in METRICS or METRICS.get(base) == "histogram", metric
        for labels in re.findall(r"\{([^}]*)\}", expr):
            for name in re.findall(r"([a-z_]+)\s*(?:=~|!=|=)", labels):
                assert name in LABELS, (alert["alert"], name)
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            assert {g.strip() for g in grouping.split(",")} <= LABELS
        # ids are never labels (envelope.md §8)
        assert "execution_id" not in expr and "command_id" not in expr


def _kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    built = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stderr
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


def test_kustomize_builds_the_base() -> None:
    built = _kustomize(K8S_DIR)
    assert len(built) == len(k8s_objects()) - 1  # everything but the PrometheusRule
    image = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["images"][0]
    expected = f"{image['newName']}:{image['newTag']}"
    for obj in built:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "noetl", obj["metadata"]["name"]
        spec = pod_spec(obj)
        if spec is not None:
            assert {c["image"] for c in containers(spec)} == {expected}


def test_the_projector_overlay_of_the_operations_guide_builds(tmp_path: Path) -> None:
    """docs/operations.md shows how to scale the projector; that overlay must do what it says."""
    guide = (ROOT / "docs" / "operations.md").read_text()
    block = re.search(r"```yaml\n(# overlays/production/kustomization.yaml\n.*?)```", guide, re.S)
    assert block, "the overlay example is gone from docs/operations.md"
    shutil.copytree(K8S_DIR, tmp_path / "deploy" / "k8s")
    overlay = tmp_path / "overlays" / "production"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(block.group(1))
    sts = _by(_kustomize(overlay), "StatefulSet", "noetl-projector")
    env = _env(_main_container(sts))
    assert sts["spec"]["replicas"] == 4 == int(env["NOETL_PROJECTOR_REPLICAS"]["value"])
    # the patch merged by name: the downward-API consumer name is still there
    assert env["NOETL_PROJECTOR_CONSUMER"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
