"""The Helm chart in helm/realtime-relay, rendered and linted offline.

helm-python-sdk runs Helm's own Go SDK (v4) from a shared library: ``render``
is ``helm template`` (values checked against values.schema.json first) and
``lint`` is ``helm lint``. The matrix is the chart's defaults plus every
``ci/*-values.yaml`` file (the chart-testing convention): each render is
linted, validated strictly against the Kubernetes schemas of the oldest and
newest supported versions, linted by yamllint, and its pod checked against
docs/deploy.md. Then single features, the values schema's refusals, and the
template's own refusals.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.helpers.deploy import (
    CHART,
    CHART_VALUES,
    DEPLOY,
    KUBE_VERSIONS,
    PRESTOP_BOUND,
    Manifest,
    Rendered,
    chart_values,
    container,
    find,
    pod_problems,
    relay_settings,
    render_chart,
    schema_problems,
    yamllint_problems,
)


MATRIX: dict[str, dict[str, Any] | None] = {"defaults": None} | {
    path.name.removesuffix("-values.yaml"): chart_values(
        path.name.removesuffix("-values.yaml")
    )
    for path in sorted(CHART_VALUES.glob("*-values.yaml"))
}
"""Values sets: the defaults and every ci/<name>-values.yaml."""

WORKLOAD_IDENTITY = {
    "enabled": True,
    "clientId": "11111111-2222-3333-4444-555555555555",
}
API_KEY_AUTH = {"type": "api_key", "api_key_env": "AZURE_OPENAI_API_KEY"}


@pytest.fixture(scope="module", params=sorted(MATRIX))
def matrix_values(request: pytest.FixtureRequest) -> dict[str, Any] | None:
    """One values set of the matrix."""
    return MATRIX[request.param]


@pytest.fixture(scope="module")
def rendered(matrix_values: dict[str, Any] | None) -> Rendered:
    """The chart rendered with one values set of the matrix."""
    return render_chart(matrix_values)


def kinds(objects: list[Manifest]) -> set[str]:
    """The kinds among ``objects``."""
    return {obj["kind"] for obj in objects}


def test_matrix_covers_the_features_the_issue_names() -> None:
    """The matrix renders the defaults, HPA on, workload identity on, an existing Secret and NetworkPolicy on."""
    assert {
        "defaults",
        "autoscaling",
        "workload-identity",
        "existing-secret",
        "network-policy",
        "ingress",
        "httproute",
        "example",
        "tls",
        "mutual-tls",
    } <= set(MATRIX)


def test_chart_lints_strictly(matrix_values: dict[str, Any] | None) -> None:
    """helm lint --strict reports no warning or error for the values set, for every supported Kubernetes version."""
    for version in KUBE_VERSIONS:
        report = helm.lint(
            CHART, matrix_values, strict=True, kube_version=f"v{version}"
        )
        findings = [m for m in report["messages"] if m["severity"] >= 2]
        assert not findings, findings
        assert not report["errors"], report["errors"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_rendered_objects_validate_strictly(
    rendered: Rendered, kube_version: str
) -> None:
    """Every object the chart renders is valid for Kubernetes (unknown fields refused)."""
    assert not schema_problems(rendered.objects, kube_version)


def test_rendered_yaml_passes_yamllint(rendered: Rendered) -> None:
    """Each rendered template is clean to yamllint."""
    problems = [
        problem
        for name, text in rendered.texts.items()
        if name != "NOTES.txt"
        for problem in yamllint_problems(text, rendered=True, name=name)
    ]
    assert not problems, "\n".join(problems)


def test_chart_sources_pass_yamllint() -> None:
    """Chart.yaml, values.yaml and the ci values files are clean to yamllint."""
    problems = []
    for path in [CHART / "Chart.yaml", CHART / "values.yaml", *CHART_VALUES.iterdir()]:
        name = str(path.relative_to(CHART))
        problems += yamllint_problems(path.read_text(), rendered=False, name=name)
    assert not problems, "\n".join(problems)


def test_rendered_pod_is_hardened_and_drained(rendered: Rendered) -> None:
    """The pod is non-root with a read-only root, probed, drained by its preStop, and given more grace than the drain."""
    problems = pod_problems(rendered.objects)
    assert not problems, "\n".join(problems)


def test_rendered_configuration_loads_in_the_relay(rendered: Rendered) -> None:
    """The ConfigMap's relay.yaml is a configuration the relay accepts, with the key variables the pod provides."""
    data, settings = relay_settings(rendered.objects)
    assert {key: data["listen"][key] for key in ("host", "port")} == {
        "host": "0.0.0.0",
        "port": 8080,
    }
    assert data["metrics"] == {"host": "0.0.0.0", "port": 9464}
    assert settings.clients


def test_no_secret_is_ever_rendered(rendered: Rendered) -> None:
    """The chart renders no Secret, whatever the values: keys come from existing Secrets."""
    assert "Secret" not in kinds(rendered.objects)


def test_defaults_render_the_core_objects_only() -> None:
    """By default: Deployment, Service, ServiceAccount, ConfigMap and PDB; the CRD-based and cluster-specific objects are opt-in."""
    objects = render_chart().objects
    assert kinds(objects) == {
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    }
    deployment = find(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pdb = find(objects, "PodDisruptionBudget")["spec"]
    assert pdb == {
        "maxUnavailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": deployment["spec"]["selector"],
    }


def test_default_grace_period_follows_the_drain_grace() -> None:
    """terminationGracePeriodSeconds is config.drain.grace_seconds + 30 unless set, and a value the drain would outlast is refused."""

    def grace(values: dict[str, Any]) -> int:
        pod = find(render_chart(values).objects, "Deployment")["spec"]["template"]
        value: int = pod["spec"]["terminationGracePeriodSeconds"]
        return value

    assert grace({}) == 630
    assert grace({"config": {"drain": {"grace_seconds": 1500}}}) == 1530
    assert grace({"config": {"drain": {"grace_seconds": 0}}}) == 30
    assert grace({"terminationGracePeriodSeconds": 900}) == 900
    too_short = {"terminationGracePeriodSeconds": 600 + PRESTOP_BOUND}
    with pytest.raises(helm.HelmRenderError, match="too short"):
        render_chart(too_short)


def test_workload_identity_labels_the_pod_and_annotates_the_account() -> None:
    """With workloadIdentity on, the pod template has the webhook's label and the ServiceAccount the client and tenant ids; off, neither."""
    objects = render_chart(chart_values("workload-identity")).objects
    template = find(objects, "Deployment")["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert template["spec"]["automountServiceAccountToken"] is False
    account = find(objects, "ServiceAccount")
    assert account["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": "11111111-2222-3333-4444-555555555555",
        "azure.workload.identity/tenant-id": "66666666-7777-8888-9999-000000000000",
    }
    assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]
    defaults = render_chart().objects
    labels = find(defaults, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert "azure.workload.identity/use" not in labels
    assert "annotations" not in find(defaults, "ServiceAccount")["metadata"]


def test_existing_secret_reaches_the_relay_by_reference() -> None:
    """With azure.existingSecret the key comes from that Secret through a secretKeyRef, and the relay's api_key auth loads."""
    objects = render_chart(chart_values("existing-secret")).objects
    assert container(objects)["env"] == [
        {
            "name": "AZURE_OPENAI_API_KEY",
            "valueFrom": {
                "secretKeyRef": {"name": "realtime-relay-azure", "key": "api-key"}
            },
        }
    ]
    _data, settings = relay_settings(objects)
    assert settings.upstream is not None
    assert settings.upstream.auth.type == "api_key"
    assert "env" not in container(render_chart().objects)


def test_api_key_auth_without_a_secret_is_refused() -> None:
    """An api_key_env that nothing provides fails the render, naming the variable, instead of a pod that cannot start."""
    values = {"config": {"upstream": {"auth": API_KEY_AUTH}}}
    with pytest.raises(helm.HelmRenderError, match="AZURE_OPENAI_API_KEY"):
        render_chart(values)
    failover = {
        "config": {
            "deployments": {
                "gpt-realtime-ha": {
                    "upstreams": [
                        {
                            "endpoint": "https://sweden-res.openai.azure.com",
                            "auth": {
                                "type": "api_key",
                                "api_key_env": "AZURE_SWEDEN_KEY",
                            },
                        }
                    ]
                }
            }
        }
    }
    with pytest.raises(helm.HelmRenderError, match="AZURE_SWEDEN_KEY"):
        render_chart(failover)
    from_secret = {
        "name": "AZURE_SWEDEN_KEY",
        "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
    }
    objects = render_chart(failover | {"extraEnv": [from_secret]}).objects
    _data, settings = relay_settings(objects)
    assert "gpt-realtime-ha" in settings.deployments


def test_autoscaling_scales_on_sessions_and_owns_the_replica_count() -> None:
    """With autoscaling on, the HPA aims at 70 % of max_sessions of relay_sessions_active per pod, scales down slowly, and the Deployment has no replicas."""
    objects = render_chart(chart_values("autoscaling")).objects
    hpa = find(objects, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 20)
    (metric,) = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] == "relay_sessions_active"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "140"}
    down = hpa["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == 900
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    assert "replicas" not in find(objects, "Deployment")["spec"]
    custom = render_chart(
        {"autoscaling": {"enabled": True}, "config": {"limits": {"max_sessions": 50}}}
    ).objects
    target = find(custom, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]
    assert target["target"]["averageValue"] == "35"


def test_network_policy_admits_callers_and_monitoring_and_egress_to_dns_and_https() -> (
    None
):
    """With networkPolicy on: ingress from the callers on http and monitoring on metrics; egress to DNS, 443 and the extra rules."""
    spec = find(render_chart(chart_values("network-policy")).objects, "NetworkPolicy")[
        "spec"
    ]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert [rule["ports"] for rule in spec["ingress"]] == [
        [{"port": "http", "protocol": "TCP"}],
        [{"port": "metrics", "protocol": "TCP"}],
    ]
    assert len(spec["ingress"][0]["from"]) == 2
    dns, https, redis = spec["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {
        (53, "UDP"),
        (53, "TCP"),
    }
    assert https == {
        "ports": [{"port": 443, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "10.20.0.0/24"}}],
    }
    assert redis["ports"] == [{"port": 6379, "protocol": "TCP"}]


def test_ingress_keeps_websockets_open_past_a_session() -> None:
    """The Ingress routes to the http port with read and send timeouts of an hour (the nginx default of 60 s cuts quiet sessions)."""
    ingress = find(render_chart(chart_values("ingress")).objects, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {
        "name": "realtime-relay",
        "port": {"name": "http"},
    }
    assert ingress["spec"]["tls"][0]["secretName"] == "realtime-example-com-tls"


def test_httproute_routes_to_the_relay_without_a_request_timeout() -> None:
    """The HTTPRoute attaches to the given Gateway and routes to the http port with the request timeout disabled."""
    route = find(render_chart(chart_values("httproute")).objects, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"][0]["name"] == "public-gateway"
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": "realtime-relay", "port": 8080}]
    assert rule["timeouts"] == {"request": "0s"}


def test_service_monitor_scrapes_the_metrics_port_with_extra_labels() -> None:
    """serviceMonitor.enabled renders a ServiceMonitor on the named metrics port, job named after the app, with the extra labels."""
    objects = render_chart(
        {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}
    ).objects
    monitor = find(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert (
        monitor["spec"]["selector"]["matchLabels"]
        == find(objects, "Service")["spec"]["selector"]
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")


def test_job_label_is_the_app_name_whatever_the_release_name() -> None:
    """Under another release name, objects are renamed but the Prometheus job (the name label) stays realtime-relay."""
    objects = render_chart({"serviceMonitor": {"enabled": True}}, name="voice").objects
    service = find(objects, "Service")
    assert service["metadata"]["name"] == "voice-realtime-relay"
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "realtime-relay"


def test_monitoring_files_are_the_ones_in_deploy_monitoring() -> None:
    """The chart's copies of the PrometheusRule and the dashboard are identical to deploy/monitoring's."""
    for name in ("prometheusrule.yaml", "grafana-dashboard.json"):
        copy = (CHART / "files" / name).read_text()
        assert copy == (DEPLOY / "monitoring" / name).read_text(), (
            f"helm/realtime-relay/files/{name} differs from deploy/monitoring/{name}: "
            "copy it over"
        )


def test_prometheus_rule_and_dashboard_come_through_unrendered() -> None:
    """The chart's PrometheusRule keeps the alert templates for Prometheus, and its dashboard ConfigMap is the JSON as is."""
    objects = render_chart(
        {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}
    ).objects
    source = yaml.safe_load((DEPLOY / "monitoring" / "prometheusrule.yaml").read_text())
    assert find(objects, "PrometheusRule")["spec"] == source["spec"]
    dashboard = find(objects, "ConfigMap", "realtime-relay-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["realtime-relay.json"]) == json.loads(
        (DEPLOY / "monitoring" / "grafana-dashboard.json").read_text()
    )


def test_configuration_changes_do_not_roll_the_deployment_by_default() -> None:
    """The pod template does not depend on relay.yaml: the relay reloads the mounted file in place."""

    def template(values: dict[str, Any]) -> dict[str, Any]:
        rendered: dict[str, Any] = find(render_chart(values).objects, "Deployment")[
            "spec"
        ]["template"]
        return rendered

    assert "annotations" not in template({})["metadata"]
    assert template({}) == template({"config": {"limits": {"max_sessions": 100}}})
    # Pod annotations of one's own are still rendered, without a checksum.
    assert template({"podAnnotations": {"team": "voice"}})["metadata"][
        "annotations"
    ] == {"team": "voice"}


def test_roll_on_config_change_restores_the_checksum() -> None:
    """rollOnConfigChange: true puts a checksum of relay.yaml on the pod template, so a change rolls the pods."""

    def checksum(values: dict[str, Any]) -> str:
        template = find(
            render_chart({"rollOnConfigChange": True, **values}).objects, "Deployment"
        )["spec"]["template"]
        value: str = template["metadata"]["annotations"]["checksum/config"]
        return value

    assert checksum({}) == checksum({"replicaCount": 3})
    assert checksum({}) != checksum({"config": {"limits": {"max_sessions": 100}}})
    annotations = find(
        render_chart(
            {"rollOnConfigChange": True, "podAnnotations": {"team": "voice"}}
        ).objects,
        "Deployment",
    )["spec"]["template"]["metadata"]["annotations"]
    assert set(annotations) == {"checksum/config", "team"}


def test_notes_say_where_the_relay_is_and_how_it_authenticates() -> None:
    """NOTES.txt names the in-cluster endpoint, the credential in use and the drain grace."""
    notes = render_chart(chart_values("workload-identity")).texts["NOTES.txt"]
    assert "ws://realtime-relay.realtime-relay.svc:8080/openai/v1/realtime" in notes
    assert "system:serviceaccount:realtime-relay:realtime-relay" in notes
    assert "terminationGracePeriodSeconds" in notes
    secret_notes = render_chart(chart_values("existing-secret")).texts["NOTES.txt"]
    assert "Secret realtime-relay-azure" in secret_notes


BAD_VALUES: Mapping[str, dict[str, Any]] = {
    "replicas not a number": {"replicaCount": "two"},
    "no replica": {"replicaCount": 0},
    "a plaintext key instead of its digest": {
        "clients": [{"id": "app", "key_sha256": "my-secret-key"}]
    },
    "no client": {"clients": []},
    "a chart-owned configuration key": {"config": {"listen": {"port": 80}}},
    "a misspelt top-level key": {"autoscalling": {"enabled": True}},
    "workload identity without a client id": {"workloadIdentity": {"enabled": True}},
    "a client id that is not a UUID": {
        "workloadIdentity": {"enabled": True, "clientId": "relay"}
    },
    "the latest tag": {"image": {"tag": "latest"}},
    "a malformed digest": {"image": {"digest": "sha256:abc"}},
    "a drain longer than the relay allows": {
        "config": {"drain": {"grace_seconds": 7200}}
    },
    "a root user": {"podSecurityContext": {"runAsUser": 0}},
    "a privileged container": {"securityContext": {"privileged": True}},
    "a PDB allowing no disruption": {"podDisruptionBudget": {"maxUnavailable": 0}},
    "an upstream protocol other than ga or preview": {
        "config": {"deployments": {"gpt-realtime": {"upstream_protocol": "beta"}}}
    },
    "an endpoint without a scheme": {
        "config": {"upstream": {"endpoint": "my-resource.openai.azure.com"}}
    },
    "api_key auth without its variable": {
        "config": {"upstream": {"auth": {"type": "api_key"}}}
    },
    "an unknown service type": {"service": {"type": "ExternalName"}},
    "a port out of range": {"ports": {"http": 70000}},
    "a bad scrape interval": {"serviceMonitor": {"interval": "30 seconds"}},
    "a TLS reload faster than a second": {
        "tls": {"secretName": "tls", "reloadInterval": 0.1}
    },
    "a misspelt TLS key": {"tls": {"secret": "tls"}},
}


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_values_schema_rejects_bad_values(name: str) -> None:
    """values.schema.json rejects the bad value, both on its own and when rendering."""
    values = BAD_VALUES[name]
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        render_chart(values)


def test_values_schema_accepts_every_matrix_values_set() -> None:
    """values.schema.json accepts the defaults and every ci values file."""
    with helm.Chart.load(CHART) as chart:
        for values in MATRIX.values():
            chart.validate_schema(values)


def test_template_refuses_equal_ports() -> None:
    """The same port for http and metrics fails the render (the relay would refuse it)."""
    with pytest.raises(helm.HelmRenderError, match="must differ"):
        render_chart({"ports": {"http": 9000, "metrics": 9000}})


# The checks themselves: a check that passes everything would make the matrix
# above pass in silence.


def test_pod_check_catches_each_weakening() -> None:
    """pod_problems reports a root user, a writable root, kept capabilities, no preStop and a short grace period."""
    objects = render_chart().objects
    assert not pod_problems(objects)
    weakened = copy.deepcopy(objects)
    pod = find(weakened, "Deployment")["spec"]["template"]["spec"]
    pod["securityContext"]["runAsUser"] = 0
    pod["terminationGracePeriodSeconds"] = 600
    relay = pod["containers"][0]
    relay["securityContext"]["readOnlyRootFilesystem"] = False
    relay["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}
    del relay["lifecycle"]
    problems = "\n".join(pod_problems(weakened))
    for expected in (
        "runAsUser 0",
        "root filesystem writable",
        "capabilities not all dropped",
        "preStop",
        "terminationGracePeriodSeconds 600",
    ):
        assert expected in problems


def test_schema_check_catches_unknown_and_misplaced_fields() -> None:
    """schema_problems reports a misspelt Deployment field, a ServiceMonitor field the operator does not know, and an unknown kind."""
    objects = render_chart({"serviceMonitor": {"enabled": True}}).objects
    assert not schema_problems(objects, KUBE_VERSIONS[0])
    broken = copy.deepcopy(objects)
    find(broken, "Deployment")["spec"]["template"]["spec"]["containers"][0][
        "securityContxt"
    ] = {}
    find(broken, "ServiceMonitor")["spec"]["endpoint"] = []
    broken.append({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {}})
    problems = "\n".join(schema_problems(broken, KUBE_VERSIONS[0]))
    assert "securityContxt" in problems
    assert "unknown spec fields ['endpoint']" in problems
    assert "Widget/None: no schema" in problems


def test_yamllint_check_reports_findings() -> None:
    """yamllint_problems reports what yamllint finds (here trailing spaces and a duplicate key)."""
    problems = yamllint_problems("a: 1 \na: 2\n", rendered=True, name="x.yaml")
    assert any("trailing-spaces" in p for p in problems)
    assert any("key-duplicates" in p for p in problems)


def test_tls_mounts_the_secret_and_probes_over_https() -> None:
    """tls.secretName: listen.tls names the files of the Secret mounted whole (read-only, key readable by the group only), the probes use HTTPS, NOTES say wss://."""
    rendered = render_chart(chart_values("tls"))
    _data, settings = relay_settings(rendered.objects)
    tls = settings.listen.tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == (
        "/etc/realtime-relay-tls/tls.crt",
        "/etc/realtime-relay-tls/tls.key",
        None,
    )
    pod = find(rendered.objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert volume["secret"] == {
        "secretName": "realtime-relay-tls",
        "defaultMode": 0o440,
    }
    relay = container(rendered.objects)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert relay[probe]["httpGet"]["scheme"] == "HTTPS"
        assert relay[probe]["httpGet"]["port"] == "http"
    assert relay["lifecycle"]["preStop"]["httpGet"]["port"] == "metrics"
    assert (
        "wss://realtime-relay.realtime-relay.svc:8080/" in rendered.texts["NOTES.txt"]
    )
    plain = render_chart(None)
    assert "tls" not in {
        v["name"]
        for v in find(plain.objects, "Deployment")["spec"]["template"]["spec"][
            "volumes"
        ]
    }
    assert "scheme" not in container(plain.objects)["readinessProbe"]["httpGet"]


def test_mutual_tls_moves_the_probes_to_the_metrics_port() -> None:
    """tls.clientCASecretName: the CA file of that Secret is listen.tls.client_ca_file, and the probes (no client certificate) go to the metrics port."""
    rendered = render_chart(chart_values("mutual-tls"))
    _data, settings = relay_settings(rendered.objects)
    assert settings.listen.tls is not None
    assert settings.listen.tls.client_ca_file == "/etc/realtime-relay-client-ca/ca.crt"
    relay = container(rendered.objects)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert relay[probe]["httpGet"]["port"] == "metrics"
        assert "scheme" not in relay[probe]["httpGet"]
    with pytest.raises(
        helm.HelmRenderError, match=r"clientCASecretName needs tls\.secretName"
    ):
        render_chart({"tls": {"clientCASecretName": "ca"}})
