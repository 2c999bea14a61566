"""Parsing the ``policies:`` section into validated :class:`~relay.sansio.policy.Policy` objects.

Every rule is checked against the documented schema when the file is loaded
(:mod:`relay.sansio.fields`): a boolean noise reduction, an eagerness outside
low/medium/high/auto or on server_vad, a threshold outside 0..1, a temperature
outside 0.6..1.2, token limits outside 1..4096 or "inf", an unknown voice, a
rule on an unknown field, an ``on_violation`` other than refuse or strip, a
malformed tool approval — each is an error naming the file, the policy and the
field. A ``set`` or ``default`` value must also satisfy the policy's own
``allow`` and ``range`` rules, or clients would be refused what the relay
itself configured; and a field cannot be both denied and allow-listed or
ranged (the second rule could never apply).

Rules take a short form or a long one carrying the rule's own
``on_violation``::

    deny: [tools, {field: instructions, on_violation: refuse}]
    allow: {voice: [alloy], tool_choice: {values: [auto], on_violation: refuse}}
    range: {temperature: {bounds: [0.6, 0.9], on_violation: refuse}}

The relay's own values that a preview upstream would refuse (GA-only fields
and parts, :func:`~relay.sansio.fields.for_family`) are left out of preview
sessions; :func:`preview_warnings` names them so the start-up log says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Final, NoReturn

from relay.config.reader import Node, Section
from relay.exceptions import ConfigError
from relay.sansio.fields import (
    ABSENT,
    ALLOW_TARGETS,
    CLIENT_EVENT_TYPES,
    FIELDS,
    JSON,
    RANGE_TARGETS,
    for_family,
    is_number,
    schema_error,
)
from relay.sansio.policy import (
    EMPTY_POLICY,
    Forward,
    McpServer,
    OnViolation,
    Policy,
    ToolAllowList,
    judge,
)


__all__ = ["parse_policies", "preview_warnings", "resolve_policy"]

HIDEABLE = ("instructions", "tools")
ON_VIOLATION: Final[tuple[OnViolation, ...]] = ("refuse", "strip")
# OpenAI's function-name rule (the openai SDK's FunctionDefinition docstring).
_FUNCTION_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def parse_policies(section: Section) -> dict[str, Policy]:
    """Every configured policy, by name (not yet checked for reachability)."""
    policies: dict[str, Policy] = {}
    for name, node in section.items():
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            Node(name, node.path, node.source).fail(
                "a policy name (letters, digits, '-', '_')"
            )
        policies[name] = _policy(name, node.as_section())
    return policies


def resolve_policy(
    policies: Mapping[str, Policy], name_node: Node | None, used: set[str]
) -> Policy:
    """The policy a client names (``default`` when it names none); records it as used."""
    if name_node is None:
        used.add("default")
        return policies.get("default", EMPTY_POLICY)
    name = name_node.as_str()
    if name not in policies:
        known = ", ".join(sorted(policies)) or "none configured"
        name_node.fail(f"the name of a configured policy ({known})")
    used.add(name)
    return policies[name]


def check_reachable(
    policies: Mapping[str, Policy], used: set[str], section: Section
) -> None:
    """A policy no client can reach is a mistake (a typo in a client's ``policy``)."""
    for name in sorted(set(policies) - used):
        raise ConfigError(
            f"{section.source}: policies.{name}: no client uses this policy"
        )


def _policy(name: str, section: Section) -> Policy:
    kwargs: dict[str, Any] = {"name": name}
    # Per-rule on_violation overrides, by rule target.
    overrides: dict[str, OnViolation] = {}
    if (node := section.get("on_violation")) is not None:
        kwargs["on_violation"] = _on_violation(node)
    if (node := section.get("set")) is not None:
        kwargs["set"] = _values(node.as_section())
    if (node := section.get("default")) is not None:
        kwargs["default"] = _values(node.as_section())
    if (node := section.get("allow")) is not None:
        kwargs["allow"], kwargs["allow_tools"] = _allow(node.as_section(), overrides)
    if (node := section.get("range")) is not None:
        kwargs["range"] = _ranges(node.as_section(), overrides)
    if (node := section.get("deny")) is not None:
        kwargs["deny"] = _deny(node, overrides)
    if (node := section.get("events")) is not None:
        events = node.as_section()
        if (allow := events.get("allow")) is not None:
            kwargs["events_allow"] = frozenset(
                _names(allow, tuple(sorted(CLIENT_EVENT_TYPES)), "a client event type")
            )
        if (deny := events.get("deny")) is not None:
            kwargs["events_deny"] = frozenset(
                _names(deny, tuple(sorted(CLIENT_EVENT_TYPES)), "a client event type")
            )
        events.finish()
    if (node := section.get("hide")) is not None:
        kwargs["hide"] = frozenset(_names(node, HIDEABLE, "instructions or tools"))
    section.finish()
    policy = Policy(**kwargs, rule_on_violation=MappingProxyType(overrides))
    _reachable_rules(policy, section)
    _consistent(policy, section)
    return policy


def _on_violation(node: Node) -> OnViolation:
    value = node.as_choice(ON_VIOLATION)
    return "refuse" if value == "refuse" else "strip"


def _rule(node: Node, key: str, overrides: dict[str, OnViolation], target: str) -> Node:
    """The rule's own value: ``node`` itself (short form) or its ``key`` (long form).

    A long form is a mapping of ``key`` and an optional ``on_violation``, which
    is recorded in ``overrides`` under ``target``.
    """
    if not isinstance(node.value, Mapping):
        return node
    long_form = node.as_section()
    value = long_form.require(key, f"the rule's {key}")
    if (mode := long_form.get("on_violation")) is not None:
        overrides[target] = _on_violation(mode)
    long_form.finish()
    return value


def _deny(node: Node, overrides: dict[str, OnViolation]) -> frozenset[str]:
    names: set[str] = set()
    for item in node.as_list():
        target = item
        if isinstance(item.value, Mapping):
            long_form = item.as_section()
            target = long_form.require("field", "a governed field")
            if (mode := long_form.get("on_violation")) is not None:
                if not isinstance(target.value, str):
                    target.fail("a governed field")
                overrides[target.value] = _on_violation(mode)
            long_form.finish()
        if not isinstance(target.value, str) or target.value not in FIELDS:
            target.fail(f"a governed field ({', '.join(FIELDS)})")
        names.add(target.value)
    return frozenset(names)


def _reachable_rules(policy: Policy, section: Section) -> None:
    # A denied field never reaches allow or range: a rule on it is a mistake.
    ruled = [*policy.allow, *policy.range]
    if policy.allow_tools is not None:
        ruled.append("tools")
    for target in ruled:
        name = target.partition(".")[0]
        if name in policy.deny:
            kind = "range" if target in policy.range else "allow"
            raise ConfigError(
                f"{section.source}: {section.path}.{kind}.{target}: {name} is denied, "
                "so this rule could never apply (remove one of them)"
            )


def _unknown_field(node: Node, known: tuple[str, ...]) -> NoReturn:
    raise ConfigError(
        f"{node.source}: {node.path}: unknown field (known: {', '.join(known)})"
    )


def _values(section: Section) -> Mapping[str, JSON]:
    values: dict[str, JSON] = {}
    for name, node in section.items():
        if name not in FIELDS:
            _unknown_field(node, tuple(FIELDS))
        problem = schema_error(name, node.value)
        if problem is not None:
            node.fail(problem)
        values[name] = node.value
    return MappingProxyType(values)


def _allow(
    section: Section, overrides: dict[str, OnViolation]
) -> tuple[Mapping[str, frozenset[str]], ToolAllowList | None]:
    rules: dict[str, frozenset[str]] = {}
    tools: ToolAllowList | None = None
    for target, node in section.items():
        if target == "tools":
            tools = _tool_allow_list(_rule(node, "values", overrides, target))
            continue
        if target not in ALLOW_TARGETS:
            _unknown_field(node, (*ALLOW_TARGETS, "tools"))
        values = _rule(node, "values", overrides, target)
        items = values.as_list()
        if not items:
            values.fail("a non-empty list of allowed values")
        for item in items:
            problem = ALLOW_TARGETS[target](item.value)
            if problem is not None:
                item.fail(problem)
        rules[target] = frozenset(str(item.value) for item in items)
    return MappingProxyType(rules), tools


def _tool_allow_list(node: Node) -> ToolAllowList:
    functions: set[str] = set()
    servers: set[McpServer] = set()
    expected = (
        "a function tool's name, or {server_label, server_url or connector_id} "
        "of a GA MCP server"
    )
    for item in node.as_list():
        if isinstance(item.value, str):
            if not _FUNCTION_NAME.fullmatch(item.value):
                item.fail(expected)
            functions.add(item.value)
            continue
        if not isinstance(item.value, Mapping):
            item.fail(expected)
        server = item.as_section()
        label = server.require("server_label", "the MCP server's label").as_str()
        url_node, connector_node = server.get("server_url"), server.get("connector_id")
        if (url_node is None) == (connector_node is None):
            item.fail(
                "exactly one of server_url and connector_id beside server_label "
                "(a label alone is the client's own name, not an approval)"
            )
        url = url_node.as_str() if url_node is not None else None
        if url is not None and not url.startswith("https://"):
            assert url_node is not None
            url_node.fail("an https:// URL")
        connector = connector_node.as_str() if connector_node is not None else None
        server.finish()
        servers.add(McpServer(label, server_url=url, connector_id=connector))
    return ToolAllowList(frozenset(functions), frozenset(servers))


def _ranges(
    section: Section, overrides: dict[str, OnViolation]
) -> Mapping[str, tuple[float, float]]:
    rules: dict[str, tuple[float, float]] = {}
    for target, rule in section.items():
        if target not in RANGE_TARGETS:
            _unknown_field(rule, tuple(RANGE_TARGETS))
        node = _rule(rule, "bounds", overrides, target)
        low, high, integral = RANGE_TARGETS[target]
        kind = "integers" if integral else "numbers"
        expected = f"[min, max] {kind} within {low}..{high}, min <= max"
        bounds = node.as_list()
        if len(bounds) != 2:
            node.fail(expected)
        values: list[float] = []
        for bound in bounds:
            value = bound.value
            if not is_number(value) or (integral and not isinstance(value, int)):
                node.fail(expected)
            assert isinstance(value, int | float)
            values.append(value)
        lo, hi = values
        if not (low <= lo <= hi <= high):
            node.fail(expected)
        rules[target] = (lo, hi)
    return MappingProxyType(rules)


def _names(node: Node, known: tuple[str, ...], what: str) -> list[str]:
    names: list[str] = []
    for item in node.as_list():
        if not isinstance(item.value, str) or item.value not in known:
            item.fail(f"{what} ({', '.join(known)})")
        names.append(item.value)
    return names


def _consistent(policy: Policy, section: Section) -> None:
    # The relay's own values must pass its own allow/range rules: judge them as
    # a client update would be (deny excluded: the relay may set denied fields),
    # in each family's form, refusing instead of stripping.
    values = {**policy.default, **policy.set}
    if not values:
        return
    checker = replace(
        policy,
        deny=frozenset(),
        set={},
        events_allow=None,
        events_deny=frozenset(),
        on_violation="refuse",
        rule_on_violation={},
    )
    for family in ("preview", "ga"):
        session = policy.initial_session(family)
        if session is None:
            continue
        verdict = judge(checker, family, {"type": "session.update", "session": session})
        if not isinstance(verdict, Forward):
            raise ConfigError(
                f"{section.source}: {section.path}: its set/default values break its own rules: {verdict.message}"
            )
        if verdict.actions:
            target = verdict.actions[0].field
            raise ConfigError(
                f"{section.source}: {section.path}: a set/default value of {target} is outside its range"
            )


def preview_warnings(source: str, policies: Iterable[Policy]) -> list[str]:
    """What the relay leaves out of preview sessions, one line per ``set``/``default`` path.

    A preview upstream refuses GA-only fields and parts, so they are never
    sent there (a refusal would fail every preview session of the policy's
    clients with ``policy_not_applied``). Such sessions exist on
    deployments with ``upstream_protocol: preview``, where the family is
    chosen by each client's URL, so no configuration can rule them out: this
    is a warning for the start-up log, not an error.
    """
    lines: list[str] = []
    # Policy names are unique; several clients may share one.
    by_name = {policy.name: policy for policy in policies}
    for _, policy in sorted(by_name.items()):
        for rule, values in (("set", policy.set), ("default", policy.default)):
            for name, value in values.items():
                for part in _left_out(value, for_family(name, value, "preview")):
                    lines.append(
                        f"{source}: policies.{policy.name}.{rule}.{name}{part}: "
                        "GA only, left out of sessions on preview-protocol deployments"
                    )
    return lines


def _left_out(value: JSON, rendered: JSON) -> list[str]:
    """The parts of ``value`` missing from ``rendered``, as path suffixes."""
    if rendered is ABSENT:
        return [""]
    if isinstance(value, dict) and isinstance(rendered, dict):
        return [f".{key}" for key in value if key not in rendered]
    if isinstance(value, list) and isinstance(rendered, list):
        kept = list(rendered)
        missing: list[str] = []
        for index, item in enumerate(value):
            if item in kept:
                kept.remove(item)
            else:
                missing.append(f"[{index}]")
        return missing
    return []
