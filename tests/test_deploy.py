"""Checks of everything under deploy/: Kubernetes manifests, Prometheus configuration and rules, Grafana.

The Prometheus checks run the real ``promtool`` (Debian's prometheus package, installed by
scripts/setup.sh); without it these tests fail rather than skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"
RULES = PROM / "rules" / "turnout.rules.yml"
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))
PROM_CONFIG = PROM / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "turnout-dashboard.json"

# Every metric Turnout exports at /metrics (router/metrics.py; turnout_build_info aside), with its
# Prometheus type. The dashboard and the rules may only use these, and the dashboard shows each one. The
# live server's /metrics must serve exactly this list: keep the two in step when a metric is added,
# renamed or removed.
KNOWN_METRICS: dict[str, str] = {
    "turnout_place_requests_total": "counter",  # {model,outcome,accelerator}
    "turnout_place_decision_seconds": "histogram",
    "turnout_request_cost_usd_per_mtok": "histogram",  # {model,accelerator}
    "turnout_cost_usd_total": "counter",  # {tenant,model,accelerator}
    "turnout_tokens_total": "counter",  # {tenant,model,accelerator,kind}
    "turnout_slo_violations_total": "counter",  # {model,kind}
    "turnout_zone_power_watts": "gauge",  # {zone}
    "turnout_zone_power_cap_watts": "gauge",  # {zone}
    "turnout_zone_ineligible_power_watts": "gauge",  # {zone}
    "turnout_plan_zone_power_watts": "gauge",  # {zone}
    "turnout_plan_unserved_requests_per_second": "gauge",  # {model,priority}
    "turnout_plan_solve_seconds": "histogram",
    "turnout_plan_generation": "gauge",
    "turnout_plan_age_seconds": "gauge",
    "turnout_plan_cost_usd_per_hour": "gauge",
    "turnout_plan_objective_usd_per_hour": "gauge",
    "turnout_plan_lp_bound_usd_per_hour": "gauge",
    "turnout_plan_lp_gap_ratio": "gauge",
    "turnout_plan_status": "gauge",  # {status}
    "turnout_accelerator_utilization_ratio": "gauge",  # {kind,zone}
    "turnout_pool_desired_replicas": "gauge",  # {pool}
    "turnout_endpoints": "gauge",  # {status}: ready/stale/unhealthy/drained
    "turnout_telemetry_rejected_total": "counter",  # {field}
    "turnout_telemetry_accepted_total": "counter",
    "turnout_scrapes_total": "counter",  # {outcome}
    "turnout_snapshot_version": "gauge",
    "turnout_rpc_invalid_argument_total": "counter",  # {method}
}

_METRIC_NAME = re.compile(r"(?<![\w:])turnout_[a-z0-9_]+")
_RECORDED_NAME = re.compile(r"(?<![\w:])turnout:[a-z0-9_:]+")
NAMESPACED_KINDS = {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor"}
FLEET_INSTANCE_TYPES = {
    "p5.48xlarge",
    "p5en.48xlarge",
    "p6-b200.48xlarge",
    "trn1.32xlarge",
    "trn2.48xlarge",
    "inf2.48xlarge",
}


def _allowed_series_names() -> set[str]:
    allowed = set(KNOWN_METRICS)
    for name, kind in KNOWN_METRICS.items():
        if kind == "histogram":
            allowed |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return allowed


def _family(series_name: str) -> str:
    """The metric a series name belongs to: a histogram's ``_bucket``/``_sum``/``_count`` series map to it."""
    base = re.sub(r"_(bucket|sum|count)$", "", series_name)
    return base if KNOWN_METRICS.get(base) == "histogram" else series_name


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})


def _docs(path: Path) -> list[Any]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _docs(path):
            yield path, doc


def _one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in _k8s_objects() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} under deploy/k8s, found {len(found)}"
    return found[0]


def _fleet_config() -> dict[str, Any]:
    cm = _one("ConfigMap")
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert isinstance(config, dict)
    return config


def _container() -> dict[str, Any]:
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def _dashboard() -> dict[str, Any]:
    with DASHBOARD.open() as f:
        dashboard: dict[str, Any] = json.load(f)
    return dashboard


def _dashboard_panels() -> list[dict[str, Any]]:
    """Every panel that shows data (rows are layout, and may nest panels when collapsed)."""
    out: list[dict[str, Any]] = []
    for panel in _dashboard()["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def _rules() -> list[dict[str, Any]]:
    (doc,) = _docs(RULES)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH: run scripts/setup.sh (it installs Debian's prometheus package)")
    return path


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


# --- YAML and Kubernetes manifests -------------------------------------------------------------------


def test_every_yaml_file_under_deploy_parses() -> None:
    files = _yaml_files()
    assert len(files) >= 9, files
    for path in files:
        docs = _docs(path)
        assert docs, f"{path.relative_to(REPO)} holds no YAML document"
        assert all(isinstance(d, dict) for d in docs), f"{path.relative_to(REPO)}: a document is not a map"


def test_k8s_objects_are_complete_and_in_the_turnout_namespace() -> None:
    kinds = []
    for path, doc in _k8s_objects():
        where = path.relative_to(REPO)
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), where
        if doc["kind"] in NAMESPACED_KINDS:
            assert doc["metadata"].get("namespace") == "turnout", f"{where}: {doc['kind']} namespace"
        kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(
        ["Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor"]
    )


def test_kustomization_lists_every_manifest_but_the_optional_service_monitor() -> None:
    (kustomization,) = _docs(K8S / "kustomization.yaml")
    resources = kustomization["resources"]
    assert all((K8S / r).is_file() for r in resources), resources
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "servicemonitor.yaml"}
    assert set(resources) == manifests
    assert kustomization["namespace"] == "turnout"


def test_configmap_holds_the_mixed_two_zone_fleet() -> None:
    config = _fleet_config()
    zones = {z["name"]: z for z in config["zones"]}
    assert len(zones) == 2
    assert all(z["power_cap_w"] > 0 and z["region"] for z in zones.values())
    pools = config["pools"]
    names = [p["name"] for p in pools]
    assert len(names) == len(set(names)), f"duplicate pool names: {names}"
    assert {p["instance_type"] for p in pools} == FLEET_INSTANCE_TYPES
    assert {p["model"] for p in pools} == {"llama-3.1-8b", "llama-3.1-70b"}
    for i, pool in enumerate(pools):
        where = f"pools[{i}] ({pool['name']})"
        assert pool["zone"] in zones, where
        assert isinstance(pool["tp_degree"], int) and pool["tp_degree"] >= 1, where
        assert isinstance(pool["instances"], int) and pool["instances"] >= 1, where
        assert pool["precision"] in {"bf16", "fp8", "fp4", "int8"}, where
        assert "{index}" in pool["address_template"], where
        assert pool.get("telemetry", "required") in {"required", "none"}, where
    for zone in zones:
        assert any(p["zone"] == zone for p in pools), f"zone {zone} has no pool"
    assert config["jobs"]["store"] == "memory"


def test_deployment_runs_serve_with_the_configmap_and_probes() -> None:
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _container()
    config = _fleet_config()

    argv = container.get("command", []) + container["args"]
    assert argv[:2] == ["turnout", "serve"]
    assert argv[argv.index("--config") + 1] == "/etc/turnout/config.yaml"
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/turnout"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == _one("ConfigMap")["metadata"]["name"]

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {
        "grpc": _port_of(config["server"]["grpc_addr"]),
        "http": _port_of(config["server"]["http_addr"]),
    }
    assert ports == {"grpc": 50051, "http": 8080}

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", ports["http"]), probe

    assert pod["terminationGracePeriodSeconds"] > config["server"]["shutdown_grace_s"]

    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_service_and_pdb_select_the_deployment_pods() -> None:
    pod_labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = _one("Service")
    pdb = _one("PodDisruptionBudget")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert _one("Deployment")["spec"]["replicas"] > pdb["spec"]["minAvailable"]
    container_ports = {p["name"] for p in _container()["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == container_ports
    monitor = _one("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"]


# --- Prometheus: promtool ------------------------------------------------------------------------------


@pytest.mark.tools
def test_promtool_check_rules() -> None:
    result = _run([_promtool(), "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.tools
def test_promtool_check_config() -> None:
    result = _run([_promtool(), "check", "config", str(PROM_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout  # the config loads the rules file


@pytest.mark.tools
def test_promtool_rule_unit_tests() -> None:
    assert RULE_TESTS, "no rule unit tests under deploy/prometheus/tests"
    tested_alerts = {
        case["alertname"]
        for path in RULE_TESTS
        for doc in _docs(path)
        for test in doc["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert len(tested_alerts) >= 2, tested_alerts
    result = _run([_promtool(), "test", "rules", *map(str, RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.tools
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query, with Grafana's variables filled in, parses as a Prometheus expression."""
    values = {"$__rate_interval": "1m", "$__range": "6h", "$__interval": "30s"}
    rules = []
    for i, panel in enumerate(_dashboard_panels()):
        for target in panel["targets"]:
            expr = target["expr"]
            for var, value in values.items():
                expr = expr.replace(var, value)
            expr = re.sub(r"\$\{?\w+\}?", ".*", expr)  # multi-value variables are regex matchers
            rules.append({"record": f"dashboard:panel{i}:{target['refId']}", "expr": expr})
    rules_file = tmp_path / "dashboard.rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _run([_promtool(), "check", "rules", str(rules_file)])
    assert result.returncode == 0, result.stdout + result.stderr


# --- Metric names --------------------------------------------------------------------------------------


def test_rules_use_only_known_metrics_and_defined_recordings() -> None:
    text = RULES.read_text()
    unknown = set(_METRIC_NAME.findall(text)) - _allowed_series_names()
    assert not unknown, f"rules use metrics Turnout does not export: {sorted(unknown)}"
    rules = _rules()
    recorded = {r["record"] for r in rules if "record" in r}
    used = {name for r in rules for name in _RECORDED_NAME.findall(r["expr"])}
    assert used <= recorded, f"undefined recording rules: {sorted(used - recorded)}"
    assert all(name.startswith("turnout:") for name in recorded)
    alerts = [r for r in rules if "alert" in r]
    assert len(alerts) >= 6
    for rule in alerts:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_rule_unit_tests_use_only_known_metrics() -> None:
    for path in RULE_TESTS:
        unknown = set(_METRIC_NAME.findall(path.read_text())) - _allowed_series_names()
        assert not unknown, f"{path.name} uses unknown metrics: {sorted(unknown)}"


def test_dashboard_uses_only_known_metrics_and_shows_every_one() -> None:
    text = DASHBOARD.read_text()
    used = set(_METRIC_NAME.findall(text))
    unknown = used - _allowed_series_names()
    assert not unknown, f"dashboard uses metrics Turnout does not export: {sorted(unknown)}"
    missing = set(KNOWN_METRICS) - {_family(name) for name in used}
    assert not missing, f"metrics without a dashboard panel: {sorted(missing)}"
    assert not _RECORDED_NAME.findall(text), "the dashboard must work without the recording rules"


# --- Grafana dashboard -----------------------------------------------------------------------------------


def test_dashboard_panels_have_a_datasource_and_targets() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    panels = _dashboard_panels()
    assert len(panels) >= 12
    ids = [p["id"] for p in dashboard["panels"]] + [
        p["id"] for row in dashboard["panels"] for p in row.get("panels", [])
    ]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        title = panel.get("title")
        assert title, panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], title
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            assert target["datasource"] == panel["datasource"], title
        pos = panel["gridPos"]
        assert pos["w"] >= 1 and pos["h"] >= 1 and pos["x"] + pos["w"] <= 24, title


def test_dashboard_has_the_panels_an_operator_needs() -> None:
    titles = {p["title"] for p in _dashboard_panels()}
    for needed in (
        "Place rate by outcome",
        "Decision latency p50 / p99",
        "Cost per million tokens by accelerator",
        "Spend by tenant (USD/h)",
        "Tokens by kind",
        "Zone power vs cap",
        "Accelerator utilisation",
        "Plan age",
        "Plan status",
        "Plan cost, objective and LP bound (USD/h)",
        "Plan gap to the LP bound",
        "SLO violations by model and kind",
        "Endpoints by status",
        "Telemetry rejections by field",
    ):
        assert needed in titles, needed
