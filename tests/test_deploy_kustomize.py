"""The plain manifests in deploy/: the base, its components and the example overlay.

Each build is made by ``kubectl kustomize``, its objects validated strictly
against the Kubernetes schemas (custom resources by structure, see
tests/helpers/deploy.py), linted by yamllint, and its pod checked against what
docs/deploy.md promises. Components are built through overlays written in a
temporary directory, as a user's overlay would use them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.helpers.deploy import (
    DEPLOY,
    KUBE_VERSIONS,
    Rendered,
    container,
    find,
    kustomize,
    pod_problems,
    relay_settings,
    schema_problems,
    yamllint_problems,
)


BASE = DEPLOY / "base"
EXAMPLE = DEPLOY / "overlays" / "example"
COMPONENTS = DEPLOY / "components"
MONITORING = DEPLOY / "monitoring"

API_KEY_CONFIG = (
    (BASE / "relay.yaml")
    .read_text()
    .replace(
        "auth: {type: entra}",
        "auth: {type: api_key, api_key_env: AZURE_OPENAI_API_KEY}",
    )
)

TLS_LISTEN = (
    "listen: {host: 0.0.0.0, port: 8080, tls: {"
    "cert_file: /etc/realtime-relay-tls/tls.crt, key_file: /etc/realtime-relay-tls/tls.key"
)
TLS_CONFIG = (
    (BASE / "relay.yaml")
    .read_text()
    .replace("listen: {host: 0.0.0.0, port: 8080}", TLS_LISTEN + "}}")
)
MUTUAL_TLS_CONFIG = (
    (BASE / "relay.yaml")
    .read_text()
    .replace(
        "listen: {host: 0.0.0.0, port: 8080}",
        TLS_LISTEN + ", client_ca_file: /etc/realtime-relay-client-ca/ca.crt}}",
    )
)


def overlay_builder(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., Rendered]:
    """Build an overlay of deploy/base with the given components (and relay.yaml)."""

    def build(*components: str, relay_yaml: str | None = None) -> Rendered:
        tmp_path = tmp_path_factory.mktemp("overlay")
        kustomization: dict[str, Any] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(BASE, tmp_path)],
            "components": [
                os.path.relpath(COMPONENTS / name, tmp_path) for name in components
            ],
        }
        if relay_yaml is not None:
            (tmp_path / "relay.yaml").write_text(relay_yaml)
            kustomization["configMapGenerator"] = [
                {
                    "name": "realtime-relay-config",
                    "behavior": "replace",
                    "files": ["relay.yaml"],
                }
            ]
        (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return kustomize(tmp_path)

    return build


@pytest.fixture
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Rendered]:
    """Build an overlay of deploy/base with the given components (and relay.yaml)."""
    return overlay_builder(tmp_path_factory)


BUILDS: dict[str, Callable[[Callable[..., Rendered]], Rendered]] = {
    "base": lambda overlay: kustomize(BASE),
    "example": lambda overlay: kustomize(EXAMPLE),
    "api-key": lambda overlay: overlay("api-key", relay_yaml=API_KEY_CONFIG),
    "workload-identity": lambda overlay: overlay("workload-identity"),
    "autoscaling": lambda overlay: overlay("autoscaling"),
    "tls": lambda overlay: overlay("tls", relay_yaml=TLS_CONFIG),
    "mutual-tls": lambda overlay: overlay(
        "tls", "mutual-tls", relay_yaml=MUTUAL_TLS_CONFIG
    ),
    "roll-on-config-change": lambda overlay: overlay("roll-on-config-change"),
}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def build(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Rendered:
    """Each kustomize build (the base, the example overlay, the base with each component), built once."""
    return BUILDS[request.param](overlay_builder(tmp_path_factory))


def test_every_component_is_built_by_a_test() -> None:
    """Each directory under deploy/components is exercised by the build matrix."""
    components = {path.name for path in COMPONENTS.iterdir() if path.is_dir()}
    assert components <= set(BUILDS)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_build_validates_strictly(build: Rendered, kube_version: str) -> None:
    """Every object of every build is valid for Kubernetes (unknown fields refused)."""
    assert not schema_problems(build.objects, kube_version)


def test_every_build_passes_yamllint(build: Rendered) -> None:
    """kustomize's output of every build is clean to yamllint."""
    assert not yamllint_problems(build.texts["kustomize"], rendered=True, name="build")


def test_deploy_sources_pass_yamllint() -> None:
    """Every YAML file under deploy/ is clean to yamllint (deploy/yamllint.yaml)."""
    problems = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        name = str(path.relative_to(DEPLOY))
        problems += yamllint_problems(path.read_text(), rendered=False, name=name)
    assert not problems, "\n".join(problems)


def test_every_build_runs_a_hardened_drained_pod(build: Rendered) -> None:
    """The pod is non-root with a read-only root, probed, drained by its preStop, and given more grace than the drain."""
    problems = pod_problems(build.objects)
    assert not problems, "\n".join(problems)


def test_every_build_renders_no_secret(build: Rendered) -> None:
    """No build carries a Secret: keys come from Secrets that already exist."""
    assert "Secret" not in {obj["kind"] for obj in build.objects}


def test_example_overlay_ships_every_object() -> None:
    """The example overlay has the relay's objects and the monitoring ones, in its namespace."""
    rendered = kustomize(EXAMPLE)
    kinds = {kind for kind, _name in rendered.kinds()}
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    }
    assert {obj["metadata"].get("namespace") for obj in rendered.objects} == {
        "realtime-relay"
    }
    assert container(rendered.objects)["image"] == (
        "myregistry.azurecr.io/realtime-relay:0.1.0"
    )


def test_relay_configurations_load_in_the_relay() -> None:
    """The ConfigMap of the base and of the example overlay is a configuration the relay accepts."""
    for directory in (BASE, EXAMPLE):
        _data, settings = relay_settings(kustomize(directory).objects)
        assert settings.drain.grace_seconds == 600
        assert settings.limits.max_sessions == 200


def mounted_config(objects: list[dict[str, Any]]) -> str:
    """The name of the ConfigMap the pod mounts relay.yaml from (it exists and has it)."""
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    name: str = volume["configMap"]["name"]
    assert find(objects, "ConfigMap", name)["data"]["relay.yaml"]
    return name


def test_configuration_changes_do_not_roll_the_deployment(
    overlay: Callable[..., Rendered],
) -> None:
    """The config ConfigMap keeps its name whatever relay.yaml says, and the pod template does not depend on it: the relay reloads the file."""
    base = kustomize(BASE).objects
    assert mounted_config(base) == "realtime-relay-config"
    assert mounted_config(kustomize(EXAMPLE).objects) == "realtime-relay-config"
    changed = overlay(relay_yaml=TLS_CONFIG).objects
    assert mounted_config(changed) == "realtime-relay-config"
    assert (
        find(changed, "Deployment")["spec"]["template"]
        == find(base, "Deployment")["spec"]["template"]
    )


def test_roll_on_config_change_component(overlay: Callable[..., Rendered]) -> None:
    """With the roll-on-config-change component, relay.yaml is in the pod template, so an edit rolls the pods."""

    def template(*relay_yaml: str) -> dict[str, Any]:
        objects = overlay(
            "roll-on-config-change", relay_yaml=relay_yaml[0] if relay_yaml else None
        ).objects
        rendered: dict[str, Any] = find(objects, "Deployment")["spec"]["template"]
        config = find(objects, "ConfigMap", mounted_config(objects))
        assert (
            rendered["metadata"]["annotations"]["realtime-relay/config"]
            == config["data"]["relay.yaml"]
        )
        return rendered

    assert template() != template(TLS_CONFIG)


def test_service_exposes_the_websocket_and_a_named_metrics_port() -> None:
    """The Service forwards http to the WebSocket port and has a port named metrics for the ServiceMonitor."""
    objects = kustomize(BASE).objects
    ports = {p["name"]: p for p in find(objects, "Service")["spec"]["ports"]}
    assert ports["http"]["port"] == 8080
    assert ports["metrics"]["port"] == 9464
    assert {p["targetPort"] for p in ports.values()} == {"http", "metrics"}
    monitor = find(objects, "ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"


def test_pod_disruption_budget_lets_one_pod_go() -> None:
    """The PDB allows one disruption at a time (never zero, which blocks node drains)."""
    pdb = find(kustomize(BASE).objects, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert "minAvailable" not in pdb
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_network_policy_admits_callers_and_monitoring_and_egress_to_dns_and_https() -> (
    None
):
    """Ingress only from caller namespaces (ws port) and monitoring (metrics port); egress only DNS and 443."""
    spec = find(kustomize(BASE).objects, "NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    ingress = {
        rule["ports"][0]["port"]: rule["from"][0]["namespaceSelector"]["matchLabels"]
        for rule in spec["ingress"]
    }
    assert ingress == {
        "http": {"realtime-relay/caller": "true"},
        "metrics": {"kubernetes.io/metadata.name": "monitoring"},
    }
    egress_ports = sorted(
        (port["port"], port["protocol"])
        for rule in spec["egress"]
        for port in rule["ports"]
    )
    assert egress_ports == [(53, "TCP"), (53, "UDP"), (443, "TCP")]


def test_api_key_component_reads_the_key_from_the_existing_secret(
    overlay: Callable[..., Rendered],
) -> None:
    """With the api-key component the key reaches the relay from Secret realtime-relay-azure, by reference only."""
    rendered = overlay("api-key", relay_yaml=API_KEY_CONFIG)
    (env,) = container(rendered.objects)["env"]
    assert env == {
        "name": "AZURE_OPENAI_API_KEY",
        "valueFrom": {
            "secretKeyRef": {"name": "realtime-relay-azure", "key": "api-key"}
        },
    }
    _data, settings = relay_settings(rendered.objects)
    assert settings.upstream is not None
    assert settings.upstream.auth.type == "api_key"


def test_workload_identity_component_labels_the_pod_and_annotates_the_account(
    overlay: Callable[..., Rendered],
) -> None:
    """The workload-identity component puts the webhook's label on the pod template and the client id on the ServiceAccount."""
    objects = overlay("workload-identity").objects
    labels = find(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels["azure.workload.identity/use"] == "true"
    account = find(objects, "ServiceAccount")
    assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]
    base = kustomize(BASE).objects
    base_labels = find(base, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert "azure.workload.identity/use" not in base_labels


def test_autoscaling_component_scales_on_sessions_and_slowly_down(
    overlay: Callable[..., Rendered],
) -> None:
    """The HPA targets 70 % of max_sessions of relay_sessions_active per pod, scales down one pod per 5 minutes, and owns the replica count."""
    objects = overlay("autoscaling").objects
    hpa = find(objects, "HorizontalPodAutoscaler")["spec"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "relay_sessions_active"
    _data, settings = relay_settings(objects)
    target = int(metric["pods"]["target"]["averageValue"])
    assert target == settings.limits.max_sessions * 7 // 10
    down = hpa["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 600
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    assert hpa["minReplicas"] >= 2
    assert "replicas" not in find(objects, "Deployment")["spec"]


def test_base_ships_the_monitoring_rule_and_dashboard_unchanged() -> None:
    """deploy/base includes deploy/monitoring: its PrometheusRule spec and dashboard JSON come through as they are."""
    objects = kustomize(BASE).objects
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert find(objects, "PrometheusRule")["spec"] == rule["spec"]
    dashboard = find(objects, "ConfigMap", "realtime-relay-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert (
        dashboard["data"]["realtime-relay.json"]
        == (MONITORING / "grafana-dashboard.json").read_text()
    )


def test_tls_component_mounts_the_secret_and_probes_over_https(
    overlay: Callable[..., Rendered],
) -> None:
    """The tls component mounts Secret realtime-relay-tls whole where relay.yaml's listen.tls points, and probes with HTTPS; mutual-tls adds the client CA and moves the probes to the metrics port."""
    objects = overlay("tls", relay_yaml=TLS_CONFIG).objects
    relay = container(objects)
    assert {
        probe: relay[probe]["httpGet"]["scheme"] for probe in PROBES
    } == dict.fromkeys(PROBES, "HTTPS")
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "realtime-relay-tls"
    assert not pod_problems(objects)
    mutual = overlay("tls", "mutual-tls", relay_yaml=MUTUAL_TLS_CONFIG).objects
    relay = container(mutual)
    assert {probe: relay[probe]["httpGet"] for probe in PROBES} == {
        "startupProbe": {"path": "/livez", "port": "metrics"},
        "livenessProbe": {"path": "/livez", "port": "metrics"},
        "readinessProbe": {"path": "/readyz", "port": "metrics"},
    }
    assert not pod_problems(mutual)
    # relay.yaml without listen.tls beside the component: the pod check says so.
    assert pod_problems(overlay("tls").objects)


PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
