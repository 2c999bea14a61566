"""A session policy and how it judges client events.

A :class:`Policy` is written with preview field names (see
:mod:`relay.sansio.fields`) and applies to both protocol families:

* ``set`` — forced into every session; a client's different value is overwritten;
* ``default`` — applied at session start only; the client may change it;
* ``allow`` — enum allow-lists, and an allow-list of tools (function tools by
  name, GA MCP servers by label *and* address);
* ``range`` — numeric bounds; a value outside is clamped to the bound;
* ``deny`` — fields the client may not change;
* ``events`` — allow/deny lists of client event types;
* ``hide`` — ``instructions``/``tools`` the client did not set are blanked in
  the ``session.created``/``session.updated`` the client receives.

**A value that changes nothing is never a violation.** A denied field the
client sends with the value the session already has — the ``set`` value, the
``default`` one (the client could never change it), or the documented upstream
default (:data:`~relay.sansio.fields.UPSTREAM_DEFAULTS`: ``tools: []``,
``tool_choice: "auto"``, ...) — passes untouched, and so does a
``tool_choice`` of ``auto`` or ``none`` when no tool can be in the session.
Agent frameworks send such defaults in every update.

**A violation either refuses or strips.** Each ``allow``, ``range`` (a value
that is not a number) and ``deny`` rule has an ``on_violation`` (the policy's
own, unless the rule overrides it): ``refuse`` answers the whole event with an
``error`` and forwards nothing; ``strip`` takes the offending field out (for a
tool allow-list, the offending tools) and forwards the rest. Event type rules,
a ``system`` message item and the documented corrections (a boolean noise
reduction or eagerness) always refuse: nothing sensible would be left.

The rules apply to ``session.update`` (and OpenAI's
``transcription_session.update``), to the per-response overrides of
``response.create`` (including an out-of-band ``input``), and to
``conversation.item.create``: a ``system`` message is an instruction, so it is
a violation of an ``instructions`` deny, as is GA's stored ``prompt``.

Under ``deny: [tools]`` (with ``tool_choice`` neither denied nor set), a
named ``tool_choice`` must name one of the relay's own tools: it is a
violation of the ``tools`` rule otherwise.

Order of evaluation: event type lists, ``deny``, the documented corrections,
``set``, ``allow`` (then the tool allow-list, then the ``tool_choice`` under a
tools deny), ``range``.

The relay's own values reach each family only in the form it accepts
(:func:`~relay.sansio.fields.for_family`): GA-only parts are never sent to a
preview upstream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Literal

from relay.sansio.fields import (
    ABSENT,
    FIELDS,
    JSON,
    STRIP_SUB_KEY,
    UPSTREAM_DEFAULTS,
    for_family,
    is_number,
    read,
    remove,
    same,
    write,
)
from relay.typing import Family


__all__ = [
    "EMPTY_POLICY",
    "Action",
    "Forward",
    "McpServer",
    "OnViolation",
    "Policy",
    "Refuse",
    "ToolAllowList",
    "judge",
]

OnViolation = Literal["refuse", "strip"]
"""What a rule does with a client value it does not accept."""

DEFAULT_ON_VIOLATION: Final[OnViolation] = "strip"
"""Frameworks send whole configurations: refusing one loses all of it (docs/policy.md)."""

GOVERNED_EVENTS: Final = frozenset(
    {
        "session.update",
        "transcription_session.update",
        "response.create",
        "conversation.item.create",
    }
)
"""Client event types whose content the policy inspects (and the relay re-serializes)."""

_MCP_ADDRESS_KEYS: Final = ("server_url", "connector_id", "tunnel_id")


@dataclass(frozen=True, slots=True)
class McpServer:
    """An approved GA MCP server: its label and where it points.

    The label is a name the client chooses, so an approval names the address
    too (exactly one of ``server_url`` and ``connector_id``): an MCP tool
    matches when its label and all its address keys are the same.
    """

    server_label: str
    server_url: str | None = None
    connector_id: str | None = None

    def matches(self, tool: Mapping[str, JSON]) -> bool:
        """Whether the ``mcp`` tool object ``tool`` points at this server."""
        mine = {"server_url": self.server_url, "connector_id": self.connector_id}
        return tool.get("server_label") == self.server_label and all(
            tool.get(key) == mine.get(key) for key in _MCP_ADDRESS_KEYS
        )


@dataclass(frozen=True, slots=True)
class ToolAllowList:
    """The tools clients may configure: function tools by name, MCP servers."""

    functions: frozenset[str] = frozenset()
    mcp_servers: frozenset[McpServer] = frozenset()

    def admits(self, tool: JSON) -> bool:
        """Whether one entry of a ``tools`` list is approved."""
        if not isinstance(tool, dict):
            return False
        if tool.get("type") == "function":
            return _approved_name(tool.get("name"), self.functions)
        if tool.get("type") == "mcp":
            return any(server.matches(tool) for server in self.mcp_servers)
        return False

    def admits_choice(self, choice: JSON) -> bool:
        """Whether a ``tool_choice`` names only approved tools (modes always pass)."""
        if isinstance(choice, str):
            return True
        if not isinstance(choice, dict):
            return False
        if choice.get("type") == "function":
            # GA's flat {name}, or Azure's preview {function: {name}}. A choice
            # spelling both passes only if both names are approved: which one
            # an upstream acts on is not ours to guess (no parser differential).
            names = [choice["name"]] if "name" in choice else []
            if "function" in choice:
                nested = choice["function"]
                names.append(nested.get("name") if isinstance(nested, dict) else None)
            return bool(names) and all(
                _approved_name(name, self.functions) for name in names
            )
        if choice.get("type") == "mcp":
            label = choice.get("server_label")
            return any(server.server_label == label for server in self.mcp_servers)
        return False


def _approved_name(name: JSON, functions: frozenset[str]) -> bool:
    # A name is client input of any JSON type: a list or an object is not
    # hashable, and asking a frozenset about one raised TypeError, which ended
    # the session with 1011 instead of judging the tool.
    return isinstance(name, str) and name in functions


@dataclass(frozen=True, slots=True)
class Policy:
    """A named set of rules; see the module docstring. Values are in preview form."""

    name: str
    set: Mapping[str, JSON] = field(default_factory=dict)
    default: Mapping[str, JSON] = field(default_factory=dict)
    allow: Mapping[str, frozenset[str]] = field(default_factory=dict)
    range: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    deny: frozenset[str] = frozenset()
    events_allow: frozenset[str] | None = None
    events_deny: frozenset[str] = frozenset()
    hide: frozenset[str] = frozenset()
    allow_tools: ToolAllowList | None = None
    """``allow: {tools: [...]}``: only these tools; ``None``: no tool allow-list."""
    on_violation: OnViolation = DEFAULT_ON_VIOLATION
    """What the policy's rules do with a violation, unless a rule says otherwise."""
    rule_on_violation: Mapping[str, OnViolation] = field(default_factory=dict)
    """Per-rule overrides, by rule target (``voice``, ``turn_detection.type``, ``tools``)."""

    def on_violation_of(self, target: str) -> OnViolation:
        """What the rule on ``target`` does with a violation."""
        return self.rule_on_violation.get(target, self.on_violation)

    def initial_session(
        self, family: Family, keep: frozenset[str] = frozenset()
    ) -> dict[str, JSON] | None:
        """The ``session`` of the relay's own first ``session.update``, or ``None``.

        It carries the ``default`` values overlaid with the ``set`` ones, in the
        family's shape (GA requires ``type: realtime``) and without what the
        family does not accept. ``None`` when the policy has nothing to apply
        in this family. The defaults of the fields in ``keep`` are left out: a
        live session switching to this policy keeps what its client chose.
        """
        defaults = {k: v for k, v in self.default.items() if k not in keep}
        values = {**defaults, **self.set}
        session: dict[str, JSON] = {}
        for name, value in values.items():
            rendered = for_family(name, value, family)
            if rendered is not ABSENT:
                write(session, FIELDS[name], family, _copy(rendered), response=False)
        if not session:
            return None
        if family == "ga":
            session = {"type": "realtime", **session}
        return session

    def unchanged(self, name: str, family: Family) -> list[JSON]:
        """Values of field ``name`` that leave a session of this policy as it is.

        Meaningful for a field the client cannot change (a denied one): the
        session holds the ``set`` value, else the ``default`` one, else the
        documented upstream default. A ``tool_choice`` of ``auto`` or ``none``
        also changes nothing when no tool can be in the session.
        """
        values: list[JSON] = []
        for source in (self.set, self.default):
            if name in source:
                pinned = for_family(name, source[name], family)
                if pinned is not ABSENT:
                    values.append(pinned)
                break
        else:
            if name in UPSTREAM_DEFAULTS:
                values.append(UPSTREAM_DEFAULTS[name])
        if name == "tool_choice" and not self._tools_possible(family):
            values.extend(mode for mode in ("auto", "none") if mode not in values)
        return values

    def _tools_possible(self, family: Family) -> bool:
        if "tools" not in self.deny:
            return True  # the client may set some
        return any(
            value not in (ABSENT, []) for value in self.unchanged("tools", family)
        )

    def targets(self) -> list[str]:
        """Every field or sub-field a rule of this policy names (metric labels)."""
        names = {
            *self.set,
            *self.default,
            *self.allow,
            *self.range,
            *self.deny,
            *self.hide,
        }
        if self.allow_tools is not None:
            names.add("tools")
        return sorted(names)


EMPTY_POLICY: Final = Policy("default")
"""The policy of clients that name none when no ``default`` policy is configured."""


@dataclass(frozen=True, slots=True)
class Action:
    """One thing the policy did: ``overwrite``, ``clamp``, ``strip`` or ``refuse`` of ``field``."""

    action: str
    field: str


@dataclass(frozen=True, slots=True)
class Forward:
    """Send the event upstream; ``event`` reflects any rewrite."""

    event: dict[str, JSON]
    actions: tuple[Action, ...] = ()
    client_set: frozenset[str] = frozenset()
    """Hidden fields the client itself set in this event (they stop being hidden)."""


@dataclass(frozen=True, slots=True)
class Refuse:
    """Do not forward; answer the client with an ``error`` event."""

    code: str
    message: str
    param: str | None
    actions: tuple[Action, ...] = ()


def _copy(value: JSON) -> JSON:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


class _Refused(Exception):
    def __init__(self, code: str, message: str, param: str | None, target: str) -> None:
        super().__init__(message)
        self.refusal = Refuse(code, message, param, (Action("refuse", target),))


def judge(policy: Policy, family: Family, event: dict[str, JSON]) -> Forward | Refuse:
    """Decide on one client event (a parsed JSON object with a string ``type``).

    The returned :class:`Forward` may carry a rewritten copy of ``event``
    (``event`` itself is modified in place).
    """
    kind = event["type"]
    if (
        policy.events_allow is not None and kind not in policy.events_allow
    ) or kind in policy.events_deny:
        return Refuse(
            "policy_violation",
            f"event type {kind!r} is not allowed by the relay's policy",
            "type",
            (Action("refuse", "event_type"),),
        )
    try:
        if kind in ("session.update", "transcription_session.update"):
            return _Judgement(policy, family, event, "session", response=False).run()
        if kind == "response.create":
            if event.get("response") is None:
                return Forward(event)
            return _Judgement(policy, family, event, "response", response=True).run()
        if kind == "conversation.item.create" and "instructions" in policy.deny:
            item = event.get("item")
            items = item if isinstance(item, list) else [item]
            for index, candidate in enumerate(items):
                if _is_system(candidate):
                    # The event is the item: stripping it would leave nothing.
                    where = (
                        f"item[{index}].role" if isinstance(item, list) else "item.role"
                    )
                    raise _Refused(
                        "policy_violation", _SYSTEM_MESSAGE, where, "instructions"
                    )
    except _Refused as refused:
        return refused.refusal
    return Forward(event)


_SYSTEM_MESSAGE: Final = (
    "system messages are instructions, which clients of this relay may not set"
)


class _Judgement:
    """One container (``session`` or ``response``) judged against a policy."""

    def __init__(
        self,
        policy: Policy,
        family: Family,
        event: dict[str, JSON],
        key: str,
        *,
        response: bool,
    ) -> None:
        self.policy = policy
        self.family: Family = family
        # The client's event, rewritten in place.
        self.event = event
        # The judged object's key in the event, and whether it is a response.
        self.key = key
        self.response = response
        # What was done, in order, each (action, target) once.
        self.actions: list[Action] = []

    def run(self) -> Forward | Refuse:
        """Apply every rule in order; the verdict on the whole event."""
        container = self.event.get(self.key)
        if not isinstance(container, dict):
            return Refuse(
                "invalid_event",
                f"{self.event['type']} needs a {self.key!r} object",
                self.key,
            )
        self._deny(container)
        self._corrections(container)
        self._set(container)
        self._allow(container)
        self._tools(container)
        self._pinned_choice(container)
        self._range(container)
        if self.response:
            self._system_input(container)
        client_set = frozenset(
            name
            for name in self.policy.hide
            if name not in self.policy.set and self._read(container, name)
        )
        return Forward(self.event, tuple(self.actions), client_set)

    # Helpers

    def _read(self, container: dict[str, JSON], name: str) -> list[tuple[str, JSON]]:
        return read(container, FIELDS[name], self.family, response=self.response)

    def _remove(self, container: dict[str, JSON], name: str) -> Callable[[], object]:
        return partial(
            remove, container, FIELDS[name], self.family, response=self.response
        )

    def _act(self, action: str, target: str) -> None:
        if Action(action, target) not in self.actions:
            self.actions.append(Action(action, target))

    def _violation(
        self, target: str, message: str, param: str, strip: Callable[[], object]
    ) -> None:
        """Refuse the event, or strip the offending value, as the rule on ``target`` says."""
        if self.policy.on_violation_of(target) == "refuse":
            raise _Refused("policy_violation", message, param, target)
        strip()
        self._act("strip", target)

    # Rules, in order

    def _deny(self, container: dict[str, JSON]) -> None:
        for name in sorted(self.policy.deny):
            unchanged = self.policy.unchanged(name, self.family)
            for path, value in self._read(container, name):
                if any(same(value, pinned) for pinned in unchanged):
                    continue
                self._violation(
                    name,
                    f"{name} may not be set by clients of this relay",
                    f"{self.key}.{path}",
                    self._remove(container, name),
                )
                break
        # GA's stored prompt can carry instructions (and tools): it is one.
        if (
            self.family == "ga"
            and "instructions" in self.policy.deny
            and "prompt" in container
        ):
            self._violation(
                "instructions",
                "prompt may not be set by clients of this relay",
                f"{self.key}.prompt",
                partial(container.pop, "prompt"),
            )

    def _corrections(self, container: dict[str, JSON]) -> None:
        # The May 2025 reference typed these as booleans by mistake (protocol.md
        # §6); clients that copied it are told, whatever the policy.
        for path, value in self._read(container, "input_audio_noise_reduction"):
            if isinstance(value, bool):
                raise _Refused(
                    "invalid_value",
                    "input_audio_noise_reduction is null or {type: near_field|far_field}, not a boolean",
                    f"{self.key}.{path}",
                    "input_audio_noise_reduction",
                )
        for path, value in self._read(container, "turn_detection"):
            if isinstance(value, dict) and isinstance(value.get("eagerness"), bool):
                raise _Refused(
                    "invalid_value",
                    "eagerness is one of low, medium, high, auto, not a boolean",
                    f"{self.key}.{path}.eagerness",
                    "turn_detection.eagerness",
                )

    def _set(self, container: dict[str, JSON]) -> None:
        for name, forced in self.policy.set.items():
            rendered = for_family(name, forced, self.family)
            if rendered is ABSENT:
                continue  # not this family's: the client's value stands
            if any(
                not same(value, rendered) for _, value in self._read(container, name)
            ):
                write(
                    container,
                    FIELDS[name],
                    self.family,
                    _copy(rendered),
                    response=self.response,
                )
                self._act("overwrite", name)

    def _allow(self, container: dict[str, JSON]) -> None:
        for target, allowed in self.policy.allow.items():
            name, _, sub = target.partition(".")
            for path, value in self._read(container, name):
                if all(
                    isinstance(candidate, str) and candidate in allowed
                    for candidate in _candidates(name, sub, value)
                ):
                    continue
                strip = self._remove(container, name)
                if target in STRIP_SUB_KEY and isinstance(value, dict):
                    # ``value`` is the client's own object (read's contract).
                    strip = partial(value.pop, sub)
                self._violation(
                    target,
                    f"{target} must be one of: {', '.join(sorted(allowed))}",
                    f"{self.key}.{path}" + (f".{sub}" if sub else ""),
                    strip,
                )
                break

    def _tools(self, container: dict[str, JSON]) -> None:
        approved = self.policy.allow_tools
        if approved is None:
            return
        for path, value in self._read(container, "tools"):
            if not isinstance(value, list):
                self._violation(
                    "tools",
                    "tools must be a list of approved tools",
                    f"{self.key}.{path}",
                    self._remove(container, "tools"),
                )
                break
            refused = [i for i, tool in enumerate(value) if not approved.admits(tool)]
            if refused:
                first = value[refused[0]]
                label = _tool_label(first)
                self._violation(
                    "tools",
                    f"tool {label} is not approved for clients of this relay",
                    f"{self.key}.{path}[{refused[0]}]",
                    # ``value`` is the client's own list (read's contract).
                    partial(_keep, value, approved.admits),
                )
        for path, value in self._read(container, "tool_choice"):
            if not approved.admits_choice(value):
                self._violation(
                    "tools",
                    "tool_choice names a tool that is not approved for clients of this relay",
                    f"{self.key}.{path}",
                    self._remove(container, "tool_choice"),
                )
                break

    def _pinned_choice(self, container: dict[str, JSON]) -> None:
        # Under a tools deny the session holds only the relay's tools, but a
        # named tool_choice still steers the model to call the tool it names,
        # defined or not (the simulator calls an undefined function, with {}).
        # So it must name one of the relay's tools, as under an allow-list.
        # A denied or set tool_choice is the deny's or the set's business.
        if "tools" not in self.policy.deny or {"tool_choice"} & {
            *self.policy.deny,
            *self.policy.set,
        }:
            return
        pinned = [
            tool
            for tools in self.policy.unchanged("tools", self.family)
            if isinstance(tools, list)
            for tool in tools
            if isinstance(tool, dict)
        ]
        relays = ToolAllowList(
            frozenset(
                tool["name"]
                for tool in pinned
                if tool.get("type") == "function" and isinstance(tool.get("name"), str)
            ),
            frozenset(
                McpServer(tool["server_label"])
                for tool in pinned
                if tool.get("type") == "mcp"
                and isinstance(tool.get("server_label"), str)
            ),
        )
        for path, value in self._read(container, "tool_choice"):
            if not relays.admits_choice(value):
                self._violation(
                    "tools",
                    "tool_choice names a tool clients of this relay may not set",
                    f"{self.key}.{path}",
                    self._remove(container, "tool_choice"),
                )
                break

    def _range(self, container: dict[str, JSON]) -> None:
        for target, (low, high) in self.policy.range.items():
            name, _, sub = target.partition(".")
            field_spec = FIELDS[name]
            for path, value in self._read(container, name):
                if sub:
                    if not isinstance(value, dict) or sub not in value:
                        continue
                    number = value[sub]
                else:
                    number = value
                if number == "inf" and name == "max_response_output_tokens":
                    clamped: JSON = int(high)
                elif is_number(number):
                    clamped = min(max(number, low), high)
                    if clamped == number:
                        continue
                    if isinstance(number, int) and float(clamped).is_integer():
                        clamped = int(clamped)
                else:
                    strip = self._remove(container, name)
                    if sub:
                        strip = partial(value.pop, sub)
                    self._violation(
                        target,
                        f"{target} must be a number from {low} to {high}",
                        f"{self.key}.{path}" + (f".{sub}" if sub else ""),
                        strip,
                    )
                    break
                if sub:
                    value[sub] = clamped
                else:
                    write(
                        container,
                        field_spec,
                        self.family,
                        clamped,
                        response=self.response,
                    )
                self._act("clamp", target)

    def _system_input(self, container: dict[str, JSON]) -> None:
        if "instructions" not in self.policy.deny:
            return
        items = container.get("input")
        if isinstance(items, dict) and items.get("role") == "system":
            self._violation(
                "instructions",
                _SYSTEM_MESSAGE,
                f"{self.key}.input.role",
                lambda: container.pop("input"),
            )
        elif isinstance(items, list):
            for index, item in enumerate(items):
                if isinstance(item, dict) and item.get("role") == "system":
                    self._violation(
                        "instructions",
                        _SYSTEM_MESSAGE,
                        f"{self.key}.input[{index}].role",
                        partial(_keep, items, lambda item: not _is_system(item)),
                    )
                    break


def _keep(items: list[JSON], admitted: Callable[[JSON], bool]) -> None:
    """Keep, in place, only the ``admitted`` entries of ``items``."""
    items[:] = [item for item in items if admitted(item)]


def _is_system(item: JSON) -> bool:
    return isinstance(item, dict) and item.get("role") == "system"


def _tool_label(tool: JSON) -> str:
    if isinstance(tool, dict):
        for key in ("name", "server_label"):
            if isinstance(tool.get(key), str):
                return repr(tool[key])[:66]
    return "(unnamed)"


def _candidates(name: str, sub: str, value: JSON) -> list[JSON]:
    if not sub:
        return (
            list(value) if name == "modalities" and isinstance(value, list) else [value]
        )
    if value is None:
        # A null object turns the feature off: checked as type "none".
        return ["none"] if sub == "type" else []
    if not isinstance(value, dict):
        # Not an object at all: no type, so none allowed. Not the value
        # itself: a bare "server_vad" would pass a rule allowing that type.
        return [None]
    return [value[sub]] if sub in value else []
