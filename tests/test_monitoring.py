"""The monitoring artifacts in deploy/monitoring, checked offline and against a live relay.

PromQL is checked by ``promtool`` (Debian package ``prometheus``): the rules of
the PrometheusRule, its alert unit tests, and every dashboard query wrapped into
a recording rule. Metric names are checked against a real scrape, so a renamed
metric breaks a test instead of an alert that silently never fires.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from relay.config import ListenSettings
from relay.simulator.audio import silence_pcm16, speech_like_pcm16
from tests.helpers.clients import (
    append_event,
    connect_relay,
    events_until,
    receive_event,
    send_event,
)
from tests.helpers.servers import relay_stack
from tests.helpers.timing import SECOND
from tests.helpers.tls import SecretMount, TestCa


MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
ALERT_TESTS = MONITORING / "alerts.test.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RUNBOOK = MONITORING / "RUNBOOK.md"
KUSTOMIZATION = MONITORING / "kustomization.yaml"

RUNBOOK_URL = "deploy/monitoring/RUNBOOK.md"
SEVERITIES = frozenset({"warning", "critical"})
DATASOURCE_REFS = frozenset({"${datasource}", "$datasource"})

# Values of Grafana's built-in variables in the offline syntax check.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
# ``${name}``, ``${name:format}``, ``$name`` and the deprecated ``[[name]]``.
VARIABLE = re.compile(
    r"\$\{(?P<braced>\w+)(?::[^}]*)?\}|\$(?P<plain>\w+)|\[\[(?P<old>\w+)(?::[^\]]*)?\]\]"
)
# Metric names the relay's own registry exports; ``up`` and the like are Prometheus's.
METRIC_NAME = re.compile(r"(?<![\w:])((?:relay|process|python_gc)_\w+)(?![\w:])")
STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
RANGE_FUNCTION = re.compile(r"\b(?:rate|irate|increase)\s*\(")
RANGE_SELECTOR = re.compile(r"\[([^\]]*)\]")

# Sample names a family of each type puts in an exposition (OpenMetrics types).
EXPOSED_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
}

SPEECH = speech_like_pcm16(1.0, leading_silence=0.2) + silence_pcm16(0.8)
CHUNK = 4800  # 100 ms of PCM16 at 24 kHz


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary: missing, the tests fail (CI installs it), never skip."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed; on Debian/Ubuntu: `apt-get install "
            "prometheus` (it ships /usr/bin/promtool), or put promtool from a "
            "Prometheus release on PATH",
            pytrace=False,
        )
    return path


def run_promtool(promtool: str, *args: str | Path, cwd: Path) -> str:
    """Run promtool in ``cwd``; fail with its output unless it exits 0."""
    command = [promtool, *map(str, args)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60 * SECOND,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, (
        f"{' '.join(command[1:])} exited {result.returncode}:\n"
        f"{result.stdout}{result.stderr}"
    )
    return result.stdout


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping."""
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path.name} does not hold a YAML mapping"
    return document


def rule_groups() -> list[dict[str, Any]]:
    """The rule groups of the PrometheusRule's ``spec``."""
    groups = load_yaml(PROMETHEUS_RULE)["spec"]["groups"]
    assert isinstance(groups, list)
    assert groups
    return groups


def all_rules() -> list[dict[str, Any]]:
    """Every recording rule and alert of the PrometheusRule."""
    return [rule for group in rule_groups() for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    """The alerting rules of the PrometheusRule."""
    return [rule for rule in all_rules() if "alert" in rule]


def write_rule_file(path: Path) -> Path:
    """Write the PrometheusRule's ``spec`` as a plain Prometheus rule file."""
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def load_dashboard() -> dict[str, Any]:
    """The Grafana dashboard, parsed."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard, dict)
    return dashboard


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)


class Query(NamedTuple):
    """One PromQL query of a dashboard panel."""

    panel_id: int
    title: str
    ref_id: str
    expr: str

    @property
    def where(self) -> str:
        """The panel and query, for messages."""
        return f"panel {self.panel_id} {self.title!r} query {self.ref_id}"


def panel_queries(dashboard: dict[str, Any]) -> list[Query]:
    """Every PromQL query of the dashboard's panels."""
    return [
        Query(panel["id"], panel["title"], target["refId"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def variable_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """A syntactically valid value for each variable a query may use."""
    values = dict(GRAFANA_BUILTINS)
    for variable in dashboard["templating"]["list"]:
        kind, name = variable["type"], variable["name"]
        if kind == "datasource":
            values[name] = ""  # a panel setting, never part of PromQL
        elif kind == "interval":
            values[name] = "5m"
        elif kind == "custom" and variable.get("query"):
            values[name] = str(variable["query"]).split(",")[0].strip()
        else:
            values[name] = variable.get("allValue") or "realtime-relay"
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with Grafana's variables replaced; unknown ones fail the test."""

    def value(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain") or match.group("old")
        assert name in values, f"unknown dashboard variable ${name} in {expr!r}"
        return values[name]

    return VARIABLE.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """The relay-registry metric names ``expr`` selects (label values ignored)."""
    return set(METRIC_NAME.findall(STRING_LITERAL.sub('""', expr)))


def referenced_metric_names() -> dict[str, set[str]]:
    """Each relay-registry metric name used by the rules or the dashboard, and where."""
    places: dict[str, set[str]] = {}
    dashboard = load_dashboard()
    sources = [
        (f"rule {rule.get('alert') or rule['record']}", rule["expr"])
        for rule in all_rules()
    ]
    sources += [(f"dashboard {q.where}", q.expr) for q in panel_queries(dashboard)]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable["type"] == "query" and isinstance(query, str):
            sources.append((f"dashboard variable ${variable['name']}", query))
    for where, expr in sources:
        for name in metric_names(expr):
            places.setdefault(name, set()).add(where)
    return places


def exposed_names(exposition: str) -> set[str]:
    """Every series name Prometheus would store from ``exposition``.

    Families are declared even before they have a sample (a labelled metric no
    event has touched yet), so their names count by type: a counter
    ``relay_x`` is stored as ``relay_x_total``, a histogram as ``_bucket``,
    ``_count`` and ``_sum``; never under its bare family name.
    """
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        suffixes = EXPOSED_SUFFIXES.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
        names.update(sample.name for sample in family.samples)
    return names


def runbook_anchors() -> set[str]:
    """GitHub's anchors for the headings of RUNBOOK.md."""
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        if heading := re.match(r"#{1,6}\s+(.*)", line):
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            anchors.add(slug.replace(" ", "-"))
    return anchors


def test_prometheus_rule_object_and_alert_conventions() -> None:
    """The PrometheusRule is named and labelled, and every alert is severity-labelled, annotated and has a runbook anchor."""
    rule = load_yaml(PROMETHEUS_RULE)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["name"] == "realtime-relay"
    assert rule["metadata"]["labels"]["app.kubernetes.io/name"] == "realtime-relay"
    anchors = runbook_anchors()
    problems = []
    names = [alert["alert"] for alert in alerts()]
    assert len(names) == len(set(names)), "duplicate alert names"
    for alert in alerts():
        name = alert["alert"]
        if alert.get("labels", {}).get("severity") not in SEVERITIES:
            problems.append(f"{name}: severity not in {sorted(SEVERITIES)}")
        annotations = alert.get("annotations", {})
        for key in ("summary", "description"):
            if not annotations.get(key):
                problems.append(f"{name}: no {key}")
        url = annotations.get("runbook_url", "")
        if url != f"{RUNBOOK_URL}#{name.lower()}":
            problems.append(f"{name}: runbook_url {url!r}")
        if name.lower() not in anchors:
            problems.append(f"{name}: no '## {name}' section in RUNBOOK.md")
    for rule in all_rules():
        # $__rate_interval and friends exist only in Grafana.
        if "$" in rule["expr"]:
            problems.append(f"{rule.get('alert') or rule['record']}: $ in expr")
    assert not problems, "\n".join(problems)


def test_rules_pass_promtool_check(promtool: str, tmp_path: Path) -> None:
    """promtool check rules accepts the PrometheusRule's spec as a rule file."""
    rule_file = write_rule_file(tmp_path / "relay.rules.yaml")
    output = run_promtool(promtool, "check", "rules", rule_file, cwd=tmp_path)
    assert f"SUCCESS: {len(all_rules())} rules found" in output


def test_alert_unit_tests_pass(promtool: str, tmp_path: Path) -> None:
    """promtool test rules passes alerts.test.yaml against the extracted rules, and it tests every alert."""
    tests = load_yaml(ALERT_TESTS)
    tests["rule_files"] = [str(write_rule_file(tmp_path / "relay.rules.yaml"))]
    tested = {
        case["alertname"]
        for group in tests["tests"]
        for case in group.get("alert_rule_test", [])
    }
    untested = sorted({alert["alert"] for alert in alerts()} - tested)
    assert not untested, f"alerts without a unit test in alerts.test.yaml: {untested}"
    # Unquoted, YAML reads "0x20" (zero for 20 steps) as the hex number 32.
    unquoted = [
        series["series"]
        for group in tests["tests"]
        for series in group.get("input_series", [])
        if not isinstance(series["values"], str)
    ]
    assert not unquoted, f"quote the values of these input series: {unquoted}"
    test_file = tmp_path / "alerts.test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    output = run_promtool(promtool, "test", "rules", test_file, cwd=tmp_path)
    assert "SUCCESS" in output


def test_dashboard_queries_pass_promtool_check(promtool: str, tmp_path: Path) -> None:
    """Every dashboard query, variables substituted, is valid PromQL to promtool check rules."""
    dashboard = load_dashboard()
    values = variable_values(dashboard)
    queries = panel_queries(dashboard)
    assert queries
    rules = []
    for query in queries:
        promql = substitute(query.expr, values)
        assert "$" not in promql, f"{query.where}: variable left in {promql!r}"
        record = f"dashboard:panel_{query.panel_id}_{query.ref_id}"
        rules.append({"record": record, "expr": promql})
    names = [rule["record"] for rule in rules]
    assert len(names) == len(set(names)), "panel ids or refIds repeat"
    rule_file = tmp_path / "dashboard.rules.yaml"
    rule_file.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "grafana-dashboard", "rules": rules}]},
            sort_keys=False,
        )
    )
    output = run_promtool(promtool, "check", "rules", rule_file, cwd=tmp_path)
    assert f"SUCCESS: {len(rules)} rules found" in output


def test_dashboard_conventions() -> None:
    """The dashboard has a stable uid, a Prometheus datasource variable used everywhere, and ranges of $__rate_interval only."""
    dashboard = load_dashboard()
    assert dashboard["uid"] == "realtime-relay"
    assert dashboard["schemaVersion"] >= 36
    assert dashboard.get("id") is None, "an exported id ties the JSON to one Grafana"
    assert "__inputs" not in dashboard, "exported for sharing: datasource uid replaced"
    variables = {
        variable["name"]: variable for variable in dashboard["templating"]["list"]
    }
    datasource = variables.get("datasource")
    assert datasource is not None, "no template variable named 'datasource'"
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")

    problems = []
    ids = [panel["id"] for panel in panels(dashboard)]
    if len(ids) != len(set(ids)):
        problems.append(f"panel ids repeat: {ids}")

    def check_datasources(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource":
                    uid = value.get("uid") if isinstance(value, dict) else value
                    if uid not in DATASOURCE_REFS:
                        problems.append(f"{where}: datasource {value!r}")
                else:
                    check_datasources(value, where)
        elif isinstance(node, list):
            for item in node:
                check_datasources(item, where)

    for panel in panels(dashboard):
        where = f"panel {panel['id']} {panel.get('title')!r}"
        check_datasources({k: v for k, v in panel.items() if k != "panels"}, where)
        if panel["type"] != "row" and not panel.get("targets"):
            problems.append(f"{where}: no queries")
        if panel["type"] != "row" and panel.get("datasource") is None:
            problems.append(f"{where}: no panel datasource")
    for name, variable in variables.items():
        if variable["type"] == "query":
            check_datasources(variable, f"variable ${name}")

    for query in panel_queries(dashboard):
        ranges = RANGE_SELECTOR.findall(query.expr)
        if any(selector != "$__rate_interval" for selector in ranges):
            problems.append(f"{query.where}: a range other than $__rate_interval")
        if len(RANGE_FUNCTION.findall(query.expr)) > len(ranges):
            problems.append(f"{query.where}: rate/increase without a range")
    assert not problems, "\n".join(problems)


def test_kustomization_ships_the_rule_and_the_dashboard_configmap() -> None:
    """kustomization.yaml applies the PrometheusRule and makes the dashboard a ConfigMap for Grafana's sidecar."""
    kustomization = load_yaml(KUSTOMIZATION)
    assert kustomization["resources"] == [PROMETHEUS_RULE.name]
    (generator,) = kustomization["configMapGenerator"]
    assert [entry.split("=")[-1] for entry in generator["files"]] == [DASHBOARD.name]
    assert generator["options"]["labels"]["grafana_dashboard"] == "1"
    assert generator["options"]["disableNameSuffixHash"] is True


async def test_metric_names_exist_in_a_live_scrape(tmp_path: Path) -> None:
    """Every relay_*, process_* and python_gc_* name the rules or the dashboard use is exported by a relay that relayed a turn (or, for relay_tls_*, by one with listen.tls)."""
    referenced = referenced_metric_names()
    assert "relay_sessions_active" in referenced
    async with relay_stack() as stack:
        async with connect_relay(stack.preview_url()) as ws:
            assert (await receive_event(ws))["type"] == "session.created"
            for offset in range(0, len(SPEECH), CHUNK):
                await send_event(ws, append_event(SPEECH[offset : offset + CHUNK]))
            await events_until(ws, "response.done")
        await stack.settle()
        async with httpx.AsyncClient(timeout=10 * SECOND) as http:
            response = await http.get(
                f"http://127.0.0.1:{stack.relay.metrics_port}/metrics"
            )
    assert response.status_code == 200
    ca = TestCa(tmp_path)
    mount = SecretMount(tmp_path / "secret", ca.pair())
    listen = ListenSettings(host="127.0.0.1", port=0, tls=mount.settings())
    async with (
        relay_stack(listen=listen) as stack,
        httpx.AsyncClient(timeout=10 * SECOND) as http,
    ):
        with_tls = await http.get(
            f"http://127.0.0.1:{stack.relay.metrics_port}/metrics"
        )
    exposed = exposed_names(response.text) | exposed_names(with_tls.text)
    missing = sorted(set(referenced) - exposed)
    assert not missing, "metric names missing from a live scrape:\n" + "\n".join(
        f"  {name}  (used by {', '.join(sorted(referenced[name]))})" for name in missing
    )
