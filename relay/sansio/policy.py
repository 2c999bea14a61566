"""A session policy and how it judges client events.

A :class:`Policy` is written with preview field names (see
:mod:`relay.sansio.fields`) and applies to both protocol families:

* ``set`` — forced into every session; a client's different value is overwritten;
* ``default`` — applied at session start only; the client may change it;
* ``allow`` — enum allow-lists; a value outside refuses the whole event;
* ``range`` — numeric bounds; a value outside is clamped to the bound;
* ``deny`` — fields the client may not set at all; refuses the whole event;
* ``events`` — allow/deny lists of client event types;
* ``hide`` — ``instructions``/``tools`` the client did not set are blanked in
  the ``session.created``/``session.updated`` the client receives.

The rules apply to ``session.update`` (and OpenAI's
``transcription_session.update``), to the per-response overrides of
``response.create`` (including an out-of-band ``input``), and to
``conversation.item.create``: a ``system`` message is an instruction, so it is
refused when ``instructions`` is denied, as is GA's stored ``prompt``.

Order of evaluation: event type lists, ``deny``, the documented corrections
(no boolean noise reduction or eagerness), ``set``, ``allow``, ``range``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from relay.sansio.fields import FIELDS, JSON, is_number, read, same, write
from relay.typing import Family


__all__ = ["EMPTY_POLICY", "Action", "Forward", "Policy", "Refuse", "judge"]

GOVERNED_EVENTS: Final = frozenset(
    {
        "session.update",
        "transcription_session.update",
        "response.create",
        "conversation.item.create",
    }
)
"""Client event types whose content the policy inspects (and the relay re-serializes)."""


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

    def initial_session(self, family: Family) -> dict[str, JSON] | None:
        """The ``session`` of the relay's own first ``session.update``, or ``None``.

        It carries the ``default`` values overlaid with the ``set`` ones, in the
        family's shape (GA requires ``type: realtime``). ``None`` when the
        policy has nothing to apply in this family.
        """
        values = {**self.default, **self.set}
        session: dict[str, JSON] = {}
        for name, value in values.items():
            write(session, FIELDS[name], family, _copy(value), response=False)
        if not session:
            return None
        if family == "ga":
            session = {"type": "realtime", **session}
        return session

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
        return sorted(names)


EMPTY_POLICY: Final = Policy("default")
"""The policy of clients that name none when no ``default`` policy is configured."""


@dataclass(frozen=True, slots=True)
class Action:
    """One thing the policy did: ``overwrite``, ``clamp`` or ``refuse`` of ``field``."""

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
            return _container(policy, family, event, "session", response=False)
        if kind == "response.create":
            if event.get("response") is None:
                return Forward(event)
            return _container(policy, family, event, "response", response=True)
        if kind == "conversation.item.create":
            _no_system_message(policy, event.get("item"), "item")
    except _Refused as refused:
        return refused.refusal
    return Forward(event)


def _container(
    policy: Policy, family: Family, event: dict[str, JSON], key: str, *, response: bool
) -> Forward | Refuse:
    container = event.get(key)
    if not isinstance(container, dict):
        return Refuse("invalid_event", f"{event['type']} needs a {key!r} object", key)
    actions: list[Action] = []
    _deny(policy, family, container, key, response=response)
    _corrections(family, container, key, response=response)
    _set(policy, family, container, actions, response=response)
    _allow(policy, family, container, key, response=response)
    _range(policy, family, container, key, actions, response=response)
    if response:
        _no_system_message(policy, container.get("input"), f"{key}.input")
    client_set = frozenset(
        name
        for name in policy.hide
        if name not in policy.set
        and read(container, FIELDS[name], family, response=response)
    )
    return Forward(event, tuple(actions), client_set)


def _deny(
    policy: Policy,
    family: Family,
    container: dict[str, JSON],
    key: str,
    *,
    response: bool,
) -> None:
    for name in sorted(policy.deny):
        for path, _ in read(container, FIELDS[name], family, response=response):
            raise _Refused(
                "policy_violation",
                f"{name} may not be set by clients of this relay",
                f"{key}.{path}",
                name,
            )
    # GA's stored prompt can carry instructions (and tools): it is one.
    if family == "ga" and "instructions" in policy.deny and "prompt" in container:
        raise _Refused(
            "policy_violation",
            "prompt may not be set by clients of this relay",
            f"{key}.prompt",
            "instructions",
        )


def _corrections(
    family: Family, container: dict[str, JSON], key: str, *, response: bool
) -> None:
    # The May 2025 reference typed these as booleans by mistake (protocol.md §6);
    # clients that copied it are told, whatever the policy.
    for path, value in read(
        container, FIELDS["input_audio_noise_reduction"], family, response=response
    ):
        if isinstance(value, bool):
            raise _Refused(
                "invalid_value",
                "input_audio_noise_reduction is null or {type: near_field|far_field}, not a boolean",
                f"{key}.{path}",
                "input_audio_noise_reduction",
            )
    for path, value in read(
        container, FIELDS["turn_detection"], family, response=response
    ):
        if isinstance(value, dict) and isinstance(value.get("eagerness"), bool):
            raise _Refused(
                "invalid_value",
                "eagerness is one of low, medium, high, auto, not a boolean",
                f"{key}.{path}.eagerness",
                "turn_detection.eagerness",
            )


def _set(
    policy: Policy,
    family: Family,
    container: dict[str, JSON],
    actions: list[Action],
    *,
    response: bool,
) -> None:
    for name, forced in policy.set.items():
        target = FIELDS[name]
        if any(
            not same(value, forced)
            for _, value in read(container, target, family, response=response)
        ):
            write(container, target, family, _copy(forced), response=response)
            actions.append(Action("overwrite", name))


def _allow(
    policy: Policy,
    family: Family,
    container: dict[str, JSON],
    key: str,
    *,
    response: bool,
) -> None:
    for target, allowed in policy.allow.items():
        name, _, sub = target.partition(".")
        for path, value in read(container, FIELDS[name], family, response=response):
            for candidate in _candidates(name, sub, value):
                if not isinstance(candidate, str) or candidate not in allowed:
                    param = f"{key}.{path}" + (f".{sub}" if sub else "")
                    listed = ", ".join(sorted(allowed))
                    raise _Refused(
                        "policy_violation",
                        f"{target} must be one of: {listed}",
                        param,
                        target,
                    )


def _candidates(name: str, sub: str, value: JSON) -> list[JSON]:
    if not sub:
        return (
            list(value) if name == "modalities" and isinstance(value, list) else [value]
        )
    if value is None:
        # A null object turns the feature off: checked as type "none".
        return ["none"] if sub == "type" else []
    if not isinstance(value, dict):
        return [value]  # not an object at all: never an allowed value
    return [value[sub]] if sub in value else []


def _range(
    policy: Policy,
    family: Family,
    container: dict[str, JSON],
    key: str,
    actions: list[Action],
    *,
    response: bool,
) -> None:
    for target, (low, high) in policy.range.items():
        name, _, sub = target.partition(".")
        field_spec = FIELDS[name]
        for path, value in read(container, field_spec, family, response=response):
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
                param = f"{key}.{path}" + (f".{sub}" if sub else "")
                raise _Refused(
                    "policy_violation",
                    f"{target} must be a number from {low} to {high}",
                    param,
                    target,
                )
            if sub:
                value[sub] = clamped
            else:
                write(container, field_spec, family, clamped, response=response)
            actions.append(Action("clamp", target))


def _no_system_message(policy: Policy, items: JSON, param: str) -> None:
    if "instructions" not in policy.deny:
        return
    candidates = items if isinstance(items, list) else [items]
    for index, item in enumerate(candidates):
        if isinstance(item, dict) and item.get("role") == "system":
            where = (
                f"{param}[{index}].role" if isinstance(items, list) else f"{param}.role"
            )
            raise _Refused(
                "policy_violation",
                "system messages are instructions, which clients of this relay may not set",
                where,
                "instructions",
            )
