"""deploy/ (kustomize) and the Helm chart render the same objects for the same settings.

Two pairs: deploy/base against the chart's defaults with the objects the base
always has turned on (NetworkPolicy, ServiceMonitor, PrometheusRule, dashboard),
and deploy/overlays/example against ci/example-values.yaml. Whole objects are
compared after removing only what legitimately differs:

* Helm's bookkeeping labels (helm.sh/chart, app.kubernetes.io/managed-by,
  app.kubernetes.io/version) and kustomize's namespace (Helm sets it at install);
* a hash suffix on the ConfigMap's name and Helm's checksum/config annotation,
  should either be turned on (neither is by default: the relay reloads its
  configuration file in place);
* text formatting: relay.yaml and the dashboard are compared as data;
* the order of the pod's volumes and volume mounts (kustomize's patches
  prepend theirs).
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from tests.helpers.deploy import (
    DEPLOY,
    Manifest,
    chart_values,
    kustomize,
    render_chart,
)
from tests.test_deploy_kustomize import (
    MUTUAL_TLS_CONFIG,
    TLS_CONFIG,
    overlay_builder,
)


HELM_ONLY_LABELS: Final = frozenset(
    {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version"}
)
GENERATED_NAME: Final = re.compile(r"^(realtime-relay-config)-[a-z0-9]{10}$")

BASE_EQUIVALENT_VALUES: Final = {
    "networkPolicy": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
}

TLS_SECRET: Final = {"secretName": "realtime-relay-tls"}
MUTUAL_TLS: Final = {**TLS_SECRET, "clientCASecretName": "realtime-relay-client-ca"}

PAIRS: Final[dict[str, tuple[Path | tuple[str, ...], dict[str, Any]]]] = {
    "base": (DEPLOY / "base", BASE_EQUIVALENT_VALUES),
    "example": (DEPLOY / "overlays" / "example", chart_values("example")),
    # Overlays of the base with the TLS components, built in a temporary directory.
    "tls": (("tls",), {**BASE_EQUIVALENT_VALUES, "tls": TLS_SECRET}),
    "mutual-tls": (
        ("tls", "mutual-tls"),
        {**BASE_EQUIVALENT_VALUES, "tls": MUTUAL_TLS},
    ),
}
OVERLAY_CONFIGS: Final = {
    ("tls",): TLS_CONFIG,
    ("tls", "mutual-tls"): MUTUAL_TLS_CONFIG,
}


def strip_generated(name: str) -> str:
    """``name`` without kustomize's content hash suffix."""
    return GENERATED_NAME.sub(r"\1", name)


def normalise(obj: Manifest) -> Manifest:
    """A copy of ``obj`` with what legitimately differs between the two tools removed."""
    obj = copy.deepcopy(obj)
    metadata = obj["metadata"]
    metadata.pop("namespace", None)
    metadata["name"] = strip_generated(metadata["name"])
    labels = {
        key: value
        for key, value in metadata.get("labels", {}).items()
        if key not in HELM_ONLY_LABELS
    }
    metadata["labels"] = labels
    if obj["kind"] == "ConfigMap":
        data = obj["data"]
        if "relay.yaml" in data:
            data["relay.yaml"] = yaml.safe_load(data["relay.yaml"])
        if "realtime-relay.json" in data:
            data["realtime-relay.json"] = json.loads(data["realtime-relay.json"])
    if obj["kind"] == "Deployment":
        template = obj["spec"]["template"]
        annotations = template["metadata"].pop("annotations", {})
        annotations.pop("checksum/config", None)
        if annotations:
            template["metadata"]["annotations"] = annotations
        for volume in template["spec"].get("volumes", []):
            if "configMap" in volume:
                volume["configMap"]["name"] = strip_generated(
                    volume["configMap"]["name"]
                )
        # A strategic merge patch puts its list items first; their order means nothing.
        spec = template["spec"]
        spec["volumes"] = sorted(spec.get("volumes", []), key=lambda v: v["name"])
        for container in spec["containers"]:
            mounts = container.get("volumeMounts", [])
            container["volumeMounts"] = sorted(mounts, key=lambda m: m["mountPath"])
    return obj


def by_kind_and_name(objects: Iterable[Manifest]) -> dict[tuple[str, str], Manifest]:
    """Normalised objects by ``(kind, name)``."""
    result: dict[tuple[str, str], Manifest] = {}
    for obj in objects:
        normalised = normalise(obj)
        key = (normalised["kind"], normalised["metadata"]["name"])
        assert key not in result, f"two objects {key}"
        result[key] = normalised
    return result


def diff(left: Any, right: Any) -> str:
    """A unified diff of two objects as YAML."""
    return "\n".join(
        difflib.unified_diff(
            yaml.safe_dump(left, sort_keys=True).splitlines(),
            yaml.safe_dump(right, sort_keys=True).splitlines(),
            "kustomize",
            "helm",
            lineterm="",
        )
    )


@pytest.fixture(scope="module", params=sorted(PAIRS))
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[tuple[str, str], Manifest], dict[tuple[str, str], Manifest]]:
    """One pair: the kustomize build's objects and the chart's, normalised."""
    source, values = PAIRS[request.param]
    if isinstance(source, tuple):
        build = overlay_builder(tmp_path_factory)
        plain = build(*source, relay_yaml=OVERLAY_CONFIGS[source])
    else:
        plain = kustomize(source)
    return (
        by_kind_and_name(plain.objects),
        by_kind_and_name(render_chart(values).objects),
    )


def test_same_kinds_and_names(
    pair: tuple[dict[tuple[str, str], Manifest], dict[tuple[str, str], Manifest]],
) -> None:
    """Both tools render the same set of objects, by kind and name."""
    plain, chart = pair
    assert sorted(plain) == sorted(chart)


def test_same_objects(
    pair: tuple[dict[tuple[str, str], Manifest], dict[tuple[str, str], Manifest]],
) -> None:
    """Each object is the same in both, field by field (pod spec, Service ports, PDB, HPA, NetworkPolicy, ServiceAccount, monitors, relay.yaml)."""
    plain, chart = pair
    differing = [
        f"{kind}/{name}:\n{diff(plain[kind, name], chart[kind, name])}"
        for kind, name in sorted(set(plain) & set(chart))
        if plain[kind, name] != chart[kind, name]
    ]
    assert not differing, "\n\n".join(differing)


def test_normalisation_keeps_what_matters() -> None:
    """The comparison still sees a change of the pod spec, of a label, or of the relay's configuration."""
    objects = render_chart(chart_values("example")).objects
    baseline = by_kind_and_name(objects)
    deployment = ("Deployment", "realtime-relay")
    config = ("ConfigMap", "realtime-relay-config")

    def changed(kind: str, change: Callable[[Manifest], object]) -> dict[Any, Manifest]:
        copied = copy.deepcopy(objects)
        for obj in copied:
            if obj["kind"] == kind:
                change(obj)
        return by_kind_and_name(copied)

    grace = changed(
        "Deployment",
        lambda d: d["spec"]["template"]["spec"].update(
            terminationGracePeriodSeconds=30
        ),
    )
    assert grace[deployment] != baseline[deployment]
    label = changed(
        "Deployment",
        lambda d: d["metadata"]["labels"].update({"app.kubernetes.io/component": "x"}),
    )
    assert label[deployment] != baseline[deployment]
    relay_yaml = changed(
        "ConfigMap",
        lambda c: (
            c["data"].update({"relay.yaml": c["data"]["relay.yaml"] + "extra: 1\n"})
            if "relay.yaml" in c["data"]
            else None
        ),
    )
    assert relay_yaml[config] != baseline[config]
