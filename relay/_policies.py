"""Parsing the ``policies:`` section into validated :class:`~relay.sansio.policy.Policy` objects.

Every rule is checked against the documented schema when the file is loaded
(:mod:`relay.sansio.fields`): a boolean noise reduction, an eagerness outside
low/medium/high/auto or on server_vad, a threshold outside 0..1, a temperature
outside 0.6..1.2, token limits outside 1..4096 or "inf", an unknown voice, a
rule on an unknown field — each is an error naming the file, the policy and
the field. A ``set`` or ``default`` value must also satisfy the policy's own
``allow`` and ``range`` rules, or clients would be refused what the relay
itself configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any, NoReturn

from relay._reader import Node, Section
from relay.exceptions import ConfigError
from relay.sansio.fields import (
    ALLOW_TARGETS,
    CLIENT_EVENT_TYPES,
    FIELDS,
    JSON,
    RANGE_TARGETS,
    is_number,
    schema_error,
)
from relay.sansio.policy import EMPTY_POLICY, Forward, Policy, judge


__all__ = ["parse_policies", "resolve_policy"]

HIDEABLE = ("instructions", "tools")


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
    if (node := section.get("set")) is not None:
        kwargs["set"] = _values(node.as_section())
    if (node := section.get("default")) is not None:
        kwargs["default"] = _values(node.as_section())
    if (node := section.get("allow")) is not None:
        kwargs["allow"] = _allow(node.as_section())
    if (node := section.get("range")) is not None:
        kwargs["range"] = _ranges(node.as_section())
    if (node := section.get("deny")) is not None:
        kwargs["deny"] = frozenset(_names(node, tuple(FIELDS), "a governed field"))
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
    policy = Policy(**kwargs)
    _consistent(policy, section)
    return policy


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


def _allow(section: Section) -> Mapping[str, frozenset[str]]:
    rules: dict[str, frozenset[str]] = {}
    for target, node in section.items():
        if target not in ALLOW_TARGETS:
            _unknown_field(node, tuple(ALLOW_TARGETS))
        items = node.as_list()
        if not items:
            node.fail("a non-empty list of allowed values")
        for item in items:
            problem = ALLOW_TARGETS[target](item.value)
            if problem is not None:
                item.fail(problem)
        rules[target] = frozenset(str(item.value) for item in items)
    return MappingProxyType(rules)


def _ranges(section: Section) -> Mapping[str, tuple[float, float]]:
    rules: dict[str, tuple[float, float]] = {}
    for target, node in section.items():
        if target not in RANGE_TARGETS:
            _unknown_field(node, tuple(RANGE_TARGETS))
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
    # a client update would be (deny excluded: the relay may set denied fields).
    values = {**policy.default, **policy.set}
    if not values:
        return
    checker = replace(
        policy, deny=frozenset(), set={}, events_allow=None, events_deny=frozenset()
    )
    session: dict[str, JSON] = {name: _copy(value) for name, value in values.items()}
    verdict = judge(checker, "preview", {"type": "session.update", "session": session})
    if not isinstance(verdict, Forward):
        raise ConfigError(
            f"{section.source}: {section.path}: its set/default values break its own rules: {verdict.message}"
        )
    if verdict.actions:
        target = verdict.actions[0].field
        raise ConfigError(
            f"{section.source}: {section.path}: a set/default value of {target} is outside its range"
        )


def _copy(value: JSON) -> JSON:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
