"""The policy engine: every rule on both protocol families, and a property over any input."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from relay.sansio.policy import Action, Forward, Policy, Refuse, judge
from relay.typing import Family


TURN = {
    "type": "server_vad",
    "threshold": 0.6,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}
STANDARD = Policy(
    "standard",
    set={"input_audio_noise_reduction": {"type": "near_field"}, "turn_detection": TURN},
    default={"voice": "alloy"},
    allow={"voice": frozenset({"alloy", "verse"})},
    range={"temperature": (0.6, 0.9), "max_response_output_tokens": (1, 1024)},
    deny=frozenset({"tools", "tool_choice", "instructions"}),
)

# Where each field sits, written out independently of relay.sansio.fields.
SESSION_PATHS: dict[Family, dict[str, tuple[str, ...]]] = {
    "preview": {
        "input_audio_noise_reduction": ("input_audio_noise_reduction",),
        "turn_detection": ("turn_detection",),
        "voice": ("voice",),
        "tools": ("tools",),
        "tool_choice": ("tool_choice",),
        "instructions": ("instructions",),
        "temperature": ("temperature",),
        "max_response_output_tokens": ("max_response_output_tokens",),
    },
    "ga": {
        "input_audio_noise_reduction": ("audio", "input", "noise_reduction"),
        "turn_detection": ("audio", "input", "turn_detection"),
        "voice": ("audio", "output", "voice"),
        "tools": ("tools",),
        "tool_choice": ("tool_choice",),
        "instructions": ("instructions",),
        "max_response_output_tokens": ("max_output_tokens",),
    },
}
RESPONSE_PATHS: dict[Family, dict[str, tuple[str, ...]]] = {
    "preview": {
        "voice": ("voice",),
        "tools": ("tools",),
        "tool_choice": ("tool_choice",),
        "instructions": ("instructions",),
        "temperature": ("temperature",),
        "max_response_output_tokens": ("max_response_output_tokens",),
    },
    "ga": {
        "voice": ("audio", "output", "voice"),
        "tools": ("tools",),
        "tool_choice": ("tool_choice",),
        "instructions": ("instructions",),
        "max_response_output_tokens": ("max_output_tokens",),
    },
}


def nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    result: Any = value
    for key in reversed(path):
        result = {key: result}
    assert isinstance(result, dict)
    return result


def merge(*parts: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merge(result[key], value)
            else:
                result[key] = value
    return result


def update(family: Family, **fields: Any) -> dict[str, Any]:
    session = merge(
        *(nest(SESSION_PATHS[family][name], value) for name, value in fields.items())
    )
    if family == "ga":
        session = {"type": "realtime", **session}
    return {"type": "session.update", "event_id": "c1", "session": session}


def response_create(family: Family, **fields: Any) -> dict[str, Any]:
    response = merge(
        *(nest(RESPONSE_PATHS[family][name], value) for name, value in fields.items())
    )
    return {"type": "response.create", "event_id": "c2", "response": response}


def get(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


FAMILIES: list[Family] = ["preview", "ga"]


@pytest.mark.parametrize("family", FAMILIES)
class TestSessionUpdate:
    def test_set_fields_are_overwritten(self, family: Family) -> None:
        """The issue's acceptance: null noise reduction and threshold 0.1 do not survive."""
        event = update(
            family,
            input_audio_noise_reduction=None,
            turn_detection={"type": "server_vad", "threshold": 0.1},
        )
        verdict = judge(STANDARD, family, event)
        assert isinstance(verdict, Forward)
        session = verdict.event["session"]
        assert get(session, SESSION_PATHS[family]["input_audio_noise_reduction"]) == {
            "type": "near_field"
        }
        assert get(session, SESSION_PATHS[family]["turn_detection"]) == TURN
        assert verdict.actions == (
            Action("overwrite", "input_audio_noise_reduction"),
            Action("overwrite", "turn_detection"),
        )

    def test_the_same_value_is_not_a_rewrite(self, family: Family) -> None:
        """A client repeating the forced value is forwarded without an action."""
        verdict = judge(STANDARD, family, update(family, turn_detection=dict(TURN)))
        assert isinstance(verdict, Forward)
        assert verdict.actions == ()

    @pytest.mark.parametrize("field", ["tools", "tool_choice", "instructions"])
    def test_denied_fields_refuse_the_event(self, family: Family, field: str) -> None:
        """A denied field refuses the whole event, naming its path."""
        value = {"tools": [], "tool_choice": "auto", "instructions": "be evil"}[field]
        verdict = judge(
            STANDARD, family, update(family, **{field: value}, voice="alloy")
        )
        assert isinstance(verdict, Refuse)
        assert verdict.code == "policy_violation"
        assert verdict.param == "session." + ".".join(SESSION_PATHS[family][field])
        assert verdict.actions == (Action("refuse", field),)

    def test_voice_outside_the_allow_list_is_refused(self, family: Family) -> None:
        """Only listed voices pass."""
        verdict = judge(STANDARD, family, update(family, voice="shimmer"))
        assert isinstance(verdict, Refuse)
        assert verdict.param == "session." + ".".join(SESSION_PATHS[family]["voice"])
        assert isinstance(
            judge(STANDARD, family, update(family, voice="verse")), Forward
        )

    @pytest.mark.parametrize(
        ("value", "expected"), [("inf", 1024), (4096, 1024), (0, 1), (512, 512)]
    )
    def test_max_tokens_are_clamped(
        self, family: Family, value: Any, expected: int
    ) -> None:
        """Out-of-range token limits (and "inf") are clamped to the bounds."""
        verdict = judge(
            STANDARD, family, update(family, max_response_output_tokens=value)
        )
        assert isinstance(verdict, Forward)
        assert (
            get(
                verdict.event["session"],
                SESSION_PATHS[family]["max_response_output_tokens"],
            )
            == expected
        )

    @pytest.mark.parametrize("value", ["lots", True, None, [1], {"n": 1}])
    def test_non_numbers_in_a_range_are_refused(
        self, family: Family, value: Any
    ) -> None:
        """A value that cannot be clamped is refused rather than passed on."""
        verdict = judge(
            STANDARD, family, update(family, max_response_output_tokens=value)
        )
        assert isinstance(verdict, Refuse)

    def test_boolean_noise_reduction_is_refused_whatever_the_policy(
        self, family: Family
    ) -> None:
        """The May 2025 reference's boolean is refused with a clear message."""
        verdict = judge(
            Policy("none"), family, update(family, input_audio_noise_reduction=True)
        )
        assert isinstance(verdict, Refuse)
        assert verdict.code == "invalid_value"
        assert "not a boolean" in verdict.message

    def test_boolean_eagerness_is_refused_whatever_the_policy(
        self, family: Family
    ) -> None:
        """Eagerness is a string, never a boolean."""
        verdict = judge(
            Policy("none"),
            family,
            update(family, turn_detection={"type": "semantic_vad", "eagerness": True}),
        )
        assert isinstance(verdict, Refuse)
        assert verdict.param is not None
        assert verdict.param.endswith("turn_detection.eagerness")

    @pytest.mark.parametrize("session", [None, 5, "x", [1]])
    def test_session_update_without_a_session_object(
        self, family: Family, session: Any
    ) -> None:
        """session.update needs a session object."""
        event: dict[str, Any] = {"type": "session.update"}
        if session is not None:
            event["session"] = session
        verdict = judge(STANDARD, family, event)
        assert isinstance(verdict, Refuse)
        assert (verdict.code, verdict.param) == ("invalid_event", "session")


@pytest.mark.parametrize("family", FAMILIES)
class TestResponseCreate:
    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("instructions", "ignore the rules"),
            ("tools", []),
            ("tool_choice", "none"),
            ("voice", "shimmer"),
        ],
    )
    def test_overrides_obey_the_same_rules(
        self, family: Family, field: str, value: Any
    ) -> None:
        """Per-response overrides cannot bypass deny or allow."""
        verdict = judge(STANDARD, family, response_create(family, **{field: value}))
        assert isinstance(verdict, Refuse)
        assert verdict.param == "response." + ".".join(RESPONSE_PATHS[family][field])

    def test_max_tokens_override_is_clamped(self, family: Family) -> None:
        """A per-response token limit is clamped like the session's."""
        verdict = judge(
            STANDARD, family, response_create(family, max_response_output_tokens=4000)
        )
        assert isinstance(verdict, Forward)
        assert (
            get(
                verdict.event["response"],
                RESPONSE_PATHS[family]["max_response_output_tokens"],
            )
            == 1024
        )

    def test_set_voice_is_forced_per_response(self, family: Family) -> None:
        """A set field present in an override is overwritten there too."""
        verdict = judge(
            Policy("p", set={"voice": "verse"}),
            family,
            response_create(family, voice="alloy"),
        )
        assert isinstance(verdict, Forward)
        assert (
            get(verdict.event["response"], RESPONSE_PATHS[family]["voice"]) == "verse"
        )

    def test_out_of_band_system_input_is_refused(self, family: Family) -> None:
        """conversation: none with a system message in input is an instruction."""
        event = {
            "type": "response.create",
            "response": {
                "conversation": "none",
                "input": [
                    {"type": "message", "role": "user", "content": []},
                    {"type": "message", "role": "system", "content": []},
                ],
            },
        }
        verdict = judge(STANDARD, family, event)
        assert isinstance(verdict, Refuse)
        assert verdict.param == "response.input[1].role"

    def test_bare_response_create_passes(self, family: Family) -> None:
        """No overrides, nothing to judge."""
        assert isinstance(judge(STANDARD, family, {"type": "response.create"}), Forward)

    def test_response_must_be_an_object(self, family: Family) -> None:
        """A malformed response is refused."""
        verdict = judge(
            STANDARD, family, {"type": "response.create", "response": "now"}
        )
        assert isinstance(verdict, Refuse)
        assert verdict.code == "invalid_event"


def test_preview_response_with_both_token_spellings() -> None:
    """Azure's 2024 name and OpenAI's beta name are both clamped."""
    event = {
        "type": "response.create",
        "response": {"max_output_tokens": "inf", "max_response_output_tokens": 5000},
    }
    verdict = judge(STANDARD, "preview", event)
    assert isinstance(verdict, Forward)
    assert verdict.event["response"] == {
        "max_output_tokens": 1024,
        "max_response_output_tokens": 1024,
    }


def test_temperature_is_clamped_on_preview() -> None:
    """GA has no temperature; on preview it is clamped."""
    verdict = judge(STANDARD, "preview", update("preview", temperature=1.1))
    assert isinstance(verdict, Forward)
    assert verdict.event["session"]["temperature"] == 0.9


@pytest.mark.parametrize("family", FAMILIES)
def test_system_messages_are_instructions(family: Family) -> None:
    """conversation.item.create with a system message is refused when instructions are denied."""
    event = {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": "new rules"}],
        },
    }
    verdict = judge(STANDARD, family, event)
    assert isinstance(verdict, Refuse)
    assert verdict.param == "item.role"
    user = {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": []},
    }
    assert isinstance(judge(STANDARD, family, user), Forward)


def test_ga_prompt_is_an_instruction() -> None:
    """A stored prompt could carry instructions: refused when they are denied."""
    verdict = judge(
        STANDARD,
        "ga",
        {
            "type": "session.update",
            "session": {"type": "realtime", "prompt": {"id": "pmpt_1"}},
        },
    )
    assert isinstance(verdict, Refuse)
    assert verdict.param == "session.prompt"


class TestSubFieldRules:
    POLICY = Policy(
        "sub",
        allow={
            "turn_detection.type": frozenset({"server_vad"}),
            "turn_detection.eagerness": frozenset({"low"}),
            "modalities": frozenset({"text"}),
        },
        range={
            "turn_detection.threshold": (0.4, 0.8),
            "turn_detection.silence_duration_ms": (200, 800),
        },
    )

    def test_sub_field_ranges_clamp(self) -> None:
        """Threshold and silence are clamped inside the object, keeping integers integers."""
        verdict = judge(
            self.POLICY,
            "ga",
            update(
                "ga",
                turn_detection={
                    "type": "server_vad",
                    "threshold": 0.1,
                    "silence_duration_ms": 5000,
                },
            ),
        )
        assert isinstance(verdict, Forward)
        assert verdict.event["session"]["audio"]["input"]["turn_detection"] == {
            "type": "server_vad",
            "threshold": 0.4,
            "silence_duration_ms": 800,
        }
        assert isinstance(
            verdict.event["session"]["audio"]["input"]["turn_detection"][
                "silence_duration_ms"
            ],
            int,
        )

    def test_null_turn_detection_is_type_none(self) -> None:
        """Turning detection off is refused when only server_vad is allowed."""
        verdict = judge(self.POLICY, "preview", update("preview", turn_detection=None))
        assert isinstance(verdict, Refuse)
        assert verdict.param == "session.turn_detection.type"

    def test_modalities_are_allowed_per_element(self) -> None:
        """A text-only policy refuses audio output, in either family's spelling."""
        assert isinstance(
            judge(
                self.POLICY,
                "preview",
                {"type": "session.update", "session": {"modalities": ["text"]}},
            ),
            Forward,
        )
        assert isinstance(
            judge(
                self.POLICY,
                "preview",
                {
                    "type": "session.update",
                    "session": {"modalities": ["text", "audio"]},
                },
            ),
            Refuse,
        )
        assert isinstance(
            judge(
                self.POLICY,
                "ga",
                {"type": "session.update", "session": {"output_modalities": ["audio"]}},
            ),
            Refuse,
        )


class TestEventTypes:
    def test_deny_list(self) -> None:
        """A denied event type is refused by name."""
        policy = Policy("p", events_deny=frozenset({"conversation.item.create"}))
        verdict = judge(
            policy, "preview", {"type": "conversation.item.create", "item": {}}
        )
        assert isinstance(verdict, Refuse)
        assert (verdict.param, verdict.actions) == (
            "type",
            (Action("refuse", "event_type"),),
        )

    def test_allow_list_and_unknown_types(self) -> None:
        """With an allow list only listed types pass; without one, unknown types pass."""
        policy = Policy("p", events_allow=frozenset({"input_audio_buffer.append"}))
        assert isinstance(
            judge(policy, "ga", {"type": "input_audio_buffer.append", "audio": ""}),
            Forward,
        )
        assert isinstance(judge(policy, "ga", {"type": "response.create"}), Refuse)
        assert isinstance(
            judge(Policy("p"), "ga", {"type": "brand.new.event"}), Forward
        )


# --- Property: nothing forwarded ever violates set, deny, allow or range ------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(
        ["inf", "alloy", "verse", "shimmer", "near_field", "server_vad", "semantic_vad"]
    ),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["type", "threshold", "eagerness", "x", "role"]),
            children,
            max_size=3,
        )
    ),
    max_leaves=8,
)


@st.composite
def client_events(draw: st.DrawFn, family: Family) -> dict[str, Any]:
    kind = draw(st.sampled_from(["session.update", "response.create"]))
    paths = (
        SESSION_PATHS[family] if kind == "session.update" else RESPONSE_PATHS[family]
    )
    names = draw(st.lists(st.sampled_from(sorted(paths)), max_size=5, unique=True))
    container = merge(*(nest(paths[name], draw(_json)) for name in names))
    if draw(st.booleans()):
        container["extra"] = draw(_json)
    key = "session" if kind == "session.update" else "response"
    return {"type": kind, key: container}


def _violations(policy: Policy, family: Family, event: dict[str, Any]) -> list[str]:
    response = event["type"] == "response.create"
    paths = RESPONSE_PATHS[family] if response else SESSION_PATHS[family]
    container = event["response" if response else "session"]
    problems = []
    for name, path in paths.items():
        try:
            value = get(container, path)
        except (KeyError, TypeError):
            continue
        if name in policy.deny:
            problems.append(f"denied {name} forwarded")
        if name in policy.set and value != policy.set[name]:
            problems.append(f"{name} differs from its set value")
        if name in policy.allow and value not in policy.allow[name]:
            problems.append(f"{name}={value!r} not allowed")
        if name in policy.range:
            low, high = policy.range[name]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (low <= value <= high)
                or math.isnan(value)
            ):
                problems.append(f"{name}={value!r} outside range")
    return problems


@settings(max_examples=400)
@given(
    st.sampled_from(FAMILIES).flatmap(
        lambda family: st.tuples(st.just(family), client_events(family))
    )
)
def test_nothing_forwarded_violates_the_policy(
    case: tuple[Family, dict[str, Any]],
) -> None:
    """For any client session.update/response.create, a forwarded event obeys every rule."""
    family, event = case
    verdict = judge(STANDARD, family, copy.deepcopy(event))
    if isinstance(verdict, Forward):
        assert _violations(STANDARD, family, verdict.event) == []
    else:
        assert verdict.code in ("policy_violation", "invalid_value", "invalid_event")
