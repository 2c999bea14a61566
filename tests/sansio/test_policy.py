"""The policy engine: every rule on both protocol families, and properties over any input."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from relay.sansio.policy import (
    Action,
    Forward,
    McpServer,
    Policy,
    Refuse,
    ToolAllowList,
    judge,
)
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
    on_violation="refuse",
)
STRIPPING = replace(STANDARD, on_violation="strip")

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
        "input_audio_transcription": ("input_audio_transcription",),
    },
    "ga": {
        "input_audio_noise_reduction": ("audio", "input", "noise_reduction"),
        "turn_detection": ("audio", "input", "turn_detection"),
        "voice": ("audio", "output", "voice"),
        "tools": ("tools",),
        "tool_choice": ("tool_choice",),
        "instructions": ("instructions",),
        "max_response_output_tokens": ("max_output_tokens",),
        "input_audio_transcription": ("audio", "input", "transcription"),
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
        """A denied field that would change the session refuses the whole event, naming its path."""
        value = {
            "tools": [{"type": "function", "name": "transfer_money"}],
            "tool_choice": "required",
            "instructions": "be evil",
        }[field]
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
            ("tools", [{"type": "function", "name": "f"}]),
            ("tool_choice", "required"),
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

    def test_a_single_system_input_object_is_refused_or_stripped(
        self, family: Family
    ) -> None:
        """An input given as one system message, not a list, is an instruction too."""
        event = {
            "type": "response.create",
            "response": {
                "conversation": "none",
                "input": {"type": "message", "role": "system", "content": []},
            },
        }
        verdict = judge(STANDARD, family, copy.deepcopy(event))
        assert isinstance(verdict, Refuse)
        assert verdict.param == "response.input.role"
        stripped = judge(STRIPPING, family, event)
        assert isinstance(stripped, Forward)
        assert stripped.event["response"] == {"conversation": "none"}
        assert stripped.actions == (Action("strip", "instructions"),)

    def test_input_without_system_items_passes_untouched(self, family: Family) -> None:
        """User items in the out-of-band input are no instruction."""
        items = [{"type": "message", "role": "user", "content": []}, "odd"]
        event = {"type": "response.create", "response": {"input": list(items)}}
        verdict = judge(STANDARD, family, event)
        assert isinstance(verdict, Forward)
        assert verdict.event["response"]["input"] == items
        assert verdict.actions == ()

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
    listed = {**event, "item": [{"role": "user"}, event["item"]]}
    verdict = judge(STRIPPING, family, listed)
    assert isinstance(verdict, Refuse)
    assert verdict.param == "item[1].role"
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
        on_violation="refuse",
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

    def test_a_sub_field_range_ignores_objects_without_the_sub_field(self) -> None:
        """Nothing to clamp in a null turn_detection or one that leaves threshold out."""
        policy = Policy("sub", range={"turn_detection.threshold": (0.4, 0.8)})
        for turn in (None, {"type": "server_vad", "silence_duration_ms": 900}):
            event = update("ga", turn_detection=copy.deepcopy(turn))
            verdict = judge(policy, "ga", event)
            assert isinstance(verdict, Forward)
            assert verdict.actions == ()
            assert verdict.event == update("ga", turn_detection=turn)

    @pytest.mark.parametrize("bare", [5, "server_vad", ["server_vad"], True])
    def test_a_sub_field_rule_refuses_a_value_that_is_no_object(
        self, bare: Any
    ) -> None:
        """turn_detection: 5 has no type at all, so no allowed one; nor has the bare string of an allowed type."""
        verdict = judge(self.POLICY, "preview", update("preview", turn_detection=bare))
        assert isinstance(verdict, Refuse)
        assert verdict.param == "session.turn_detection.type"

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


# --- Values that change nothing -----------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("policy", [STANDARD, STRIPPING], ids=["refuse", "strip"])
class TestValuesThatChangeNothing:
    @pytest.mark.parametrize(
        ("field", "value"),
        [("tools", []), ("tool_choice", "auto"), ("tool_choice", "none")],
    )
    def test_framework_defaults_pass_untouched(
        self, family: Family, policy: Policy, field: str, value: Any
    ) -> None:
        """tools: [] and tool_choice auto/none under denied tools are forwarded as sent, no action."""
        event = update(family, **{field: value}, voice="verse")
        verdict = judge(policy, family, copy.deepcopy(event))
        assert isinstance(verdict, Forward)
        assert verdict.event == event
        assert verdict.actions == ()

    def test_in_a_response_too(self, family: Family, policy: Policy) -> None:
        """A response.create repeating the session's (empty) tools is no violation."""
        event = response_create(family, tools=[], tool_choice="auto")
        verdict = judge(policy, family, copy.deepcopy(event))
        assert isinstance(verdict, Forward)
        assert verdict.event == event

    def test_required_changes_something(self, family: Family, policy: Policy) -> None:
        """tool_choice required is a violation however empty the tools."""
        verdict = judge(policy, family, update(family, tool_choice="required"))
        assert isinstance(verdict, Refuse if policy is STANDARD else Forward)
        assert (
            Action("refuse" if policy is STANDARD else "strip", "tool_choice")
            in verdict.actions
        )


LOOKUP: dict[str, Any] = {"type": "function", "name": "lookup", "parameters": {}}


@pytest.mark.parametrize("family", FAMILIES)
class TestPinnedValues:
    ORG = Policy(
        "org",
        set={"instructions": "Be brief.", "tools": [LOOKUP]},
        default={"voice": "verse"},
        deny=frozenset({"instructions", "tools", "tool_choice", "voice"}),
        on_violation="refuse",
    )

    def test_the_set_value_passes_a_deny(self, family: Family) -> None:
        """A denied field equal to what the policy sets changes nothing."""
        verdict = judge(
            self.ORG,
            family,
            update(family, instructions="Be brief.", tools=[dict(LOOKUP)]),
        )
        assert isinstance(verdict, Forward)
        assert verdict.actions == ()

    def test_the_default_of_a_denied_field_is_pinned(self, family: Family) -> None:
        """The client cannot have changed a denied default: repeating it is no change."""
        assert isinstance(
            judge(self.ORG, family, update(family, voice="verse")), Forward
        )
        assert isinstance(
            judge(self.ORG, family, update(family, voice="alloy")), Refuse
        )

    def test_emptying_set_tools_is_a_change(self, family: Family) -> None:
        """With the organisation's tools in the session, tools: [] would remove them."""
        assert isinstance(judge(self.ORG, family, update(family, tools=[])), Refuse)

    def test_none_is_a_change_when_tools_exist(self, family: Family) -> None:
        """tool_choice none is only harmless while no tool can be in the session."""
        assert isinstance(
            judge(self.ORG, family, update(family, tool_choice="none")), Refuse
        )
        assert isinstance(
            judge(self.ORG, family, update(family, tool_choice="auto")), Forward
        )

    def test_a_set_value_the_family_cannot_receive_pins_nothing(
        self, family: Family
    ) -> None:
        """A GA-only set voice overrides the default, so a preview session gets neither."""
        policy = Policy(
            "marin",
            set={"voice": "marin"},
            default={"voice": "alloy"},
            deny=frozenset({"voice"}),
            on_violation="refuse",
        )
        pinned = ["marin"] if family == "ga" else []
        assert policy.unchanged("voice", family) == pinned
        assert (policy.initial_session(family) is None) == (family == "preview")
        for voice in ("marin", "alloy"):
            verdict = judge(policy, family, update(family, voice=voice))
            assert isinstance(verdict, Forward) == (voice in pinned)

    def test_unchanged_values(self, family: Family) -> None:
        """What each denied field may repeat: set, then default, then the upstream default."""
        assert self.ORG.unchanged("instructions", family) == ["Be brief."]
        assert self.ORG.unchanged("voice", family) == ["verse"]
        assert self.ORG.unchanged("tool_choice", family) == ["auto"]
        assert STANDARD.unchanged("tool_choice", family) == ["auto", "none"]
        assert STANDARD.unchanged("instructions", family) == []


# --- Strip ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
class TestStrip:
    def test_denied_fields_go_and_the_rest_is_forwarded(self, family: Family) -> None:
        """A framework's whole update minus the denied tools: its voice and VAD settings stand."""
        tools = [{"type": "function", "name": "get_weather", "parameters": {}}]
        event = update(
            family,
            tools=tools,
            voice="verse",
            instructions="Be a pirate.",
            turn_detection=dict(TURN),
        )
        verdict = judge(STRIPPING, family, event)
        assert isinstance(verdict, Forward)
        session = verdict.event["session"]
        assert "tools" not in session
        assert "instructions" not in session
        assert get(session, SESSION_PATHS[family]["voice"]) == "verse"
        assert get(session, SESSION_PATHS[family]["turn_detection"]) == TURN
        assert verdict.actions == (
            Action("strip", "instructions"),
            Action("strip", "tools"),
        )

    def test_emptied_ga_objects_go_with_the_field(self, family: Family) -> None:
        """Stripping the only field of audio.input leaves no empty audio object behind."""
        policy = Policy("p", deny=frozenset({"input_audio_noise_reduction"}))
        verdict = judge(
            policy,
            family,
            update(family, input_audio_noise_reduction={"type": "far_field"}),
        )
        assert isinstance(verdict, Forward)
        assert verdict.event["session"] == (
            {"type": "realtime"} if family == "ga" else {}
        )

    def test_an_update_stripped_empty_is_still_forwarded(self, family: Family) -> None:
        """The client still gets the session.updated it waits for."""
        verdict = judge(STRIPPING, family, update(family, instructions="x"))
        assert isinstance(verdict, Forward)
        assert verdict.event["session"] == (
            {"type": "realtime"} if family == "ga" else {}
        )

    def test_a_voice_outside_the_list_is_stripped(self, family: Family) -> None:
        """The session keeps its voice; the client's other fields pass."""
        verdict = judge(
            STRIPPING,
            family,
            update(family, voice="shimmer", temperature=0.7)
            if family == "preview"
            else update(family, voice="shimmer", max_response_output_tokens=10),
        )
        assert isinstance(verdict, Forward)
        assert verdict.actions == (Action("strip", "voice"),)
        assert len(verdict.event["session"]) == (1 if family == "preview" else 2)

    def test_response_overrides_are_stripped(self, family: Family) -> None:
        """A response.create keeps its other overrides and out-of-band input."""
        event = response_create(family, instructions="leak", voice="verse")
        event["response"]["conversation"] = "none"
        verdict = judge(STRIPPING, family, event)
        assert isinstance(verdict, Forward)
        assert "instructions" not in verdict.event["response"]
        assert verdict.event["response"]["conversation"] == "none"

    def test_system_items_leave_the_out_of_band_input(self, family: Family) -> None:
        """Only the system message goes; the user's items stay in order."""
        user = {"type": "message", "role": "user", "content": []}
        event = {
            "type": "response.create",
            "response": {
                "input": [
                    {"type": "message", "role": "system", "content": []},
                    user,
                    {"type": "message", "role": "system", "content": []},
                ]
            },
        }
        verdict = judge(STRIPPING, family, event)
        assert isinstance(verdict, Forward)
        assert verdict.event["response"]["input"] == [user]
        assert verdict.actions == (Action("strip", "instructions"),)

    def test_a_system_item_is_refused_whatever_the_mode(self, family: Family) -> None:
        """conversation.item.create is the item: nothing would be left to forward."""
        event = {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "system", "content": []},
        }
        assert isinstance(judge(STRIPPING, family, event), Refuse)

    def test_non_numbers_in_a_range_are_stripped(self, family: Family) -> None:
        """A limit that cannot be clamped goes; a sub-field goes alone."""
        policy = Policy("p", range={"turn_detection.threshold": (0.2, 0.8)})
        event = update(family, turn_detection={"type": "server_vad", "threshold": "hi"})
        verdict = judge(policy, family, event)
        assert isinstance(verdict, Forward)
        assert get(
            verdict.event["session"], SESSION_PATHS[family]["turn_detection"]
        ) == {"type": "server_vad"}
        verdict = judge(
            STRIPPING, family, update(family, max_response_output_tokens="x")
        )
        assert isinstance(verdict, Forward)
        assert verdict.actions == (Action("strip", "max_response_output_tokens"),)


class TestStripUnits:
    POLICY = Policy(
        "sub",
        allow={
            "turn_detection.type": frozenset({"server_vad", "semantic_vad"}),
            "turn_detection.eagerness": frozenset({"low"}),
            "input_audio_transcription.language": frozenset({"en"}),
        },
    )

    def test_an_optional_sub_key_goes_alone(self) -> None:
        """A disallowed eagerness is stripped; the semantic VAD settings stay."""
        verdict = judge(
            self.POLICY,
            "ga",
            update(
                "ga",
                turn_detection={"type": "semantic_vad", "eagerness": "high"},
                input_audio_transcription={"model": "whisper-1", "language": "fr"},
            ),
        )
        assert isinstance(verdict, Forward)
        audio_input = verdict.event["session"]["audio"]["input"]
        assert audio_input["turn_detection"] == {"type": "semantic_vad"}
        assert audio_input["transcription"] == {"model": "whisper-1"}

    def test_a_type_takes_its_object_with_it(self) -> None:
        """Turning detection off (type none) is stripped as a whole."""
        verdict = judge(self.POLICY, "preview", update("preview", turn_detection=None))
        assert isinstance(verdict, Forward)
        assert verdict.event["session"] == {}


class TestPerRuleOnViolation:
    def test_a_rule_can_refuse_in_a_stripping_policy(self) -> None:
        """voice refuses, the rest strips."""
        policy = replace(STRIPPING, rule_on_violation={"voice": "refuse"})
        assert isinstance(judge(policy, "ga", update("ga", voice="shimmer")), Refuse)
        verdict = judge(policy, "ga", update("ga", instructions="x"))
        assert isinstance(verdict, Forward)

    def test_a_rule_can_strip_in_a_refusing_policy(self) -> None:
        """tools strips, instructions still refuse."""
        policy = replace(STANDARD, rule_on_violation={"tools": "strip"})
        tools = [{"type": "function", "name": "f"}]
        verdict = judge(
            policy, "preview", update("preview", tools=tools, voice="verse")
        )
        assert isinstance(verdict, Forward)
        assert verdict.event["session"] == {"voice": "verse"}
        assert isinstance(
            judge(policy, "preview", update("preview", instructions="x")), Refuse
        )


# --- Tool allow-lists -----------------------------------------------------------------

DOCS = {
    "type": "mcp",
    "server_label": "docs",
    "server_url": "https://mcp.example.com/docs",
    "require_approval": "never",
}
TOOLS = Policy(
    "tools",
    allow_tools=ToolAllowList(
        frozenset({"get_weather"}),
        frozenset({McpServer("docs", server_url="https://mcp.example.com/docs")}),
    ),
)


def fn(name: str) -> dict[str, Any]:
    return {"type": "function", "name": name, "parameters": {"type": "object"}}


@pytest.mark.parametrize("family", FAMILIES)
class TestToolAllowList:
    def test_listed_function_tools_pass(self, family: Family) -> None:
        """An approved tool is forwarded as sent."""
        event = update(family, tools=[fn("get_weather")], tool_choice="required")
        verdict = judge(TOOLS, family, copy.deepcopy(event))
        assert isinstance(verdict, Forward)
        assert verdict.event == event

    def test_only_the_unlisted_tools_are_stripped(self, family: Family) -> None:
        """The approved tool stays, in place."""
        verdict = judge(
            TOOLS, family, update(family, tools=[fn("wire_money"), fn("get_weather")])
        )
        assert isinstance(verdict, Forward)
        assert verdict.event["session"]["tools"] == [fn("get_weather")]
        assert verdict.actions == (Action("strip", "tools"),)

    def test_refusal_names_the_first_unlisted_tool(self, family: Family) -> None:
        """With on_violation refuse, the param points at the tool."""
        policy = replace(TOOLS, on_violation="refuse")
        verdict = judge(
            policy, family, update(family, tools=[fn("get_weather"), fn("wire_money")])
        )
        assert isinstance(verdict, Refuse)
        assert verdict.param == "session.tools[1]"
        assert "'wire_money'" in verdict.message

    @pytest.mark.parametrize(
        "choice",
        [
            {"type": "function", "name": "wire_money"},
            {"type": "function", "function": {"name": "wire_money"}},
            {"type": "mcp", "server_label": "other"},
            ["auto"],
        ],
    )
    def test_tool_choice_must_name_a_listed_tool(
        self, family: Family, choice: Any
    ) -> None:
        """A forced tool outside the list goes; modes and listed tools stay."""
        verdict = judge(TOOLS, family, update(family, tool_choice=choice))
        assert isinstance(verdict, Forward)
        assert "tool_choice" not in verdict.event["session"]
        for fine in (
            "auto",
            "none",
            "required",
            {"type": "function", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "mcp", "server_label": "docs"},
        ):
            kept = judge(TOOLS, family, update(family, tool_choice=fine))
            assert isinstance(kept, Forward)
            assert kept.actions == ()

    def test_not_a_list(self, family: Family) -> None:
        """tools that are not a list cannot be approved."""
        verdict = judge(TOOLS, family, update(family, tools={"type": "function"}))
        assert isinstance(verdict, Forward)
        assert "tools" not in verdict.event["session"]

    @pytest.mark.parametrize(
        "name", [42, None, True, ["get_weather"], {"name": "get_weather"}]
    )
    def test_a_name_of_another_type_is_judged_not_raised(
        self, family: Family, name: Any
    ) -> None:
        """A list or object name (unhashable) is an unapproved tool, not a TypeError."""
        bad = {"type": "function", "name": name}
        for choice in (bad, {"type": "function", "function": {"name": name}}):
            event = update(family, tools=[bad, fn("get_weather")], tool_choice=choice)
            verdict = judge(TOOLS, family, copy.deepcopy(event))
            assert isinstance(verdict, Forward)
            assert verdict.event["session"]["tools"] == [fn("get_weather")]
            assert "tool_choice" not in verdict.event["session"]
            refused = judge(replace(TOOLS, on_violation="refuse"), family, event)
            assert isinstance(refused, Refuse)
            assert refused.param == "session.tools[0]"
            alone = update(family, tool_choice=choice)
            refused = judge(replace(TOOLS, on_violation="refuse"), family, alone)
            assert isinstance(refused, Refuse)
            assert refused.param == "session.tool_choice"

    @pytest.mark.parametrize(
        ("flat", "nested"),
        [("wire_money", "get_weather"), ("get_weather", "wire_money")],
    )
    def test_a_choice_spelling_two_names_needs_both_approved(
        self, family: Family, flat: str, nested: str
    ) -> None:
        """Which spelling an upstream reads is not the relay's to guess."""
        choice = {"type": "function", "name": flat, "function": {"name": nested}}
        verdict = judge(TOOLS, family, update(family, tool_choice=choice))
        assert isinstance(verdict, Forward)
        assert "tool_choice" not in verdict.event["session"]
        both = {
            "type": "function",
            "name": "get_weather",
            "function": {"name": "get_weather"},
        }
        kept = judge(TOOLS, family, update(family, tool_choice=both))
        assert isinstance(kept, Forward)
        assert kept.actions == ()

    def test_response_tools_obey_the_allow_list(self, family: Family) -> None:
        """response.create's own tools and tool_choice: the same rule, param under response."""
        event = response_create(
            family,
            tools=[fn("get_weather"), fn("wire_money")],
            tool_choice={"type": "function", "name": "wire_money"},
            instructions="Be brief.",
        )
        stripped = judge(TOOLS, family, copy.deepcopy(event))
        assert isinstance(stripped, Forward)
        assert stripped.event["response"] == {
            "tools": [fn("get_weather")],
            "instructions": "Be brief.",
        }
        assert stripped.actions == (Action("strip", "tools"),)
        refused = judge(replace(TOOLS, on_violation="refuse"), family, event)
        assert isinstance(refused, Refuse)
        assert refused.param == "response.tools[1]"
        choice = response_create(
            family, tool_choice={"type": "function", "name": "wire_money"}
        )
        refused = judge(replace(TOOLS, on_violation="refuse"), family, choice)
        assert isinstance(refused, Refuse)
        assert refused.param == "response.tool_choice"


class TestMcpApproval:
    def test_an_approved_server(self) -> None:
        """Label and address both match."""
        assert TOOLS.allow_tools is not None
        assert TOOLS.allow_tools.admits(DOCS)

    @pytest.mark.parametrize(
        "changes",
        [
            {"server_url": "https://evil.example.com/docs"},
            {"server_label": "wiki"},
            {"server_url": None, "connector_id": "connector_gmail"},
            {"tunnel_id": "tunnel_1"},
        ],
    )
    def test_the_label_alone_is_not_an_approval(self, changes: dict[str, Any]) -> None:
        """Another address under an approved label (or another label) is not approved."""
        tool = {k: v for k, v in {**DOCS, **changes}.items() if v is not None}
        assert TOOLS.allow_tools is not None
        assert not TOOLS.allow_tools.admits(tool)

    def test_connectors(self) -> None:
        """A connector is approved by its id."""
        approved = ToolAllowList(
            mcp_servers=frozenset({McpServer("mail", connector_id="connector_gmail")})
        )
        tool = {
            "type": "mcp",
            "server_label": "mail",
            "connector_id": "connector_gmail",
        }
        assert approved.admits(tool)
        assert not approved.admits({**tool, "server_url": "https://x.example"})
        assert not approved.admits({"type": "web_search"})
        assert not approved.admits("get_weather")
        assert not approved.admits_choice(5)


@pytest.mark.parametrize("family", FAMILIES)
class TestChoiceUnderToolsDeny:
    """deny: [tools] alone: tool_choice may still be set, but only to name the relay's tools."""

    ORG = Policy("org", set={"tools": [fn("lookup")]}, deny=frozenset({"tools"}))

    @pytest.mark.parametrize(
        "choice",
        [
            {"type": "function", "name": "wire_money"},
            {"type": "function", "function": {"name": "wire_money"}},
            {"type": "mcp", "server_label": "docs"},
            {"type": "function", "name": ["lookup"]},
            5,
            None,
        ],
    )
    def test_a_choice_naming_another_tool_is_a_tools_violation(
        self, family: Family, choice: Any
    ) -> None:
        """Stripped by default, refused with refuse; in a session or a response."""
        event = update(family, tool_choice=choice, instructions="x")
        verdict = judge(self.ORG, family, copy.deepcopy(event))
        assert isinstance(verdict, Forward)
        assert "tool_choice" not in verdict.event["session"]
        assert verdict.actions == (Action("strip", "tools"),)
        strict = replace(self.ORG, on_violation="refuse")
        refused = judge(strict, family, event)
        assert isinstance(refused, Refuse)
        assert refused.param == "session.tool_choice"
        refused = judge(strict, family, response_create(family, tool_choice=choice))
        assert isinstance(refused, Refuse)
        assert refused.param == "response.tool_choice"

    def test_modes_and_the_relays_tools_pass(self, family: Family) -> None:
        """auto, none, required and a choice naming a set tool change nothing the policy guards."""
        for choice in (
            "auto",
            "none",
            "required",
            {"type": "function", "name": "lookup"},
        ):
            verdict = judge(self.ORG, family, update(family, tool_choice=choice))
            assert isinstance(verdict, Forward)
            assert verdict.actions == ()

    def test_with_no_tool_in_the_session_only_modes_pass(self, family: Family) -> None:
        """required with nothing to call is the upstream's to answer; a named tool is not."""
        policy = Policy("p", deny=frozenset({"tools"}), on_violation="refuse")
        assert isinstance(
            judge(policy, family, update(family, tool_choice="required")), Forward
        )
        named = update(family, tool_choice={"type": "function", "name": "lookup"})
        assert isinstance(judge(policy, family, named), Refuse)

    def test_a_denied_or_set_choice_follows_its_own_rule(self, family: Family) -> None:
        """With tool_choice denied or set, its own rule decides (no second verdict)."""
        lookup = {"type": "function", "name": "lookup"}
        denied = replace(self.ORG, deny=frozenset({"tools", "tool_choice"}))
        verdict = judge(denied, family, update(family, tool_choice=lookup))
        assert isinstance(verdict, Forward)
        assert verdict.actions == (Action("strip", "tool_choice"),)
        forced = replace(self.ORG, set={**self.ORG.set, "tool_choice": lookup})
        verdict = judge(forced, family, update(family, tool_choice="none"))
        assert isinstance(verdict, Forward)
        assert verdict.event["session"]["tool_choice"] == lookup
        assert verdict.actions == (Action("overwrite", "tool_choice"),)


# --- Fields rendered per family --------------------------------------------------------

GA_ONLY = Policy(
    "ga-only",
    set={
        "turn_detection": {"type": "server_vad", "idle_timeout_ms": 6000},
        "truncation": "disabled",
    },
    default={
        "voice": "marin",
        "reasoning": {"effort": "low"},
        "tools": [fn("lookup"), DOCS],
        "tool_choice": {"type": "mcp", "server_label": "docs"},
    },
)


class TestPerFamily:
    def test_preview_initial_session_has_no_ga_only_parts(self) -> None:
        """idle_timeout_ms, truncation, reasoning, MCP tools and choice, marin: all left out."""
        assert GA_ONLY.initial_session("preview") == {
            "turn_detection": {"type": "server_vad"},
            "tools": [fn("lookup")],
        }

    def test_ga_initial_session_has_everything(self) -> None:
        """GA gets the policy as written."""
        assert GA_ONLY.initial_session("ga") == {
            "type": "realtime",
            "audio": {
                "input": {
                    "turn_detection": {"type": "server_vad", "idle_timeout_ms": 6000}
                },
                "output": {"voice": "marin"},
            },
            "truncation": "disabled",
            "reasoning": {"effort": "low"},
            "tools": [fn("lookup"), DOCS],
            "tool_choice": {"type": "mcp", "server_label": "docs"},
        }

    def test_a_preview_client_update_gets_the_preview_form(self) -> None:
        """The set turn_detection overwrites a client's one without idle_timeout_ms."""
        verdict = judge(
            GA_ONLY,
            "preview",
            update(
                "preview",
                turn_detection={"type": "server_vad", "idle_timeout_ms": 9000},
            ),
        )
        assert isinstance(verdict, Forward)
        assert verdict.event["session"]["turn_detection"] == {"type": "server_vad"}
        same = judge(
            GA_ONLY, "preview", update("preview", turn_detection={"type": "server_vad"})
        )
        assert isinstance(same, Forward)
        assert same.actions == ()

    def test_ga_only_fields_are_not_governed_on_preview(self) -> None:
        """A preview session has no truncation or reasoning for a rule to act on."""
        policy = Policy(
            "p", deny=frozenset({"truncation", "reasoning"}), on_violation="refuse"
        )
        event = {"type": "session.update", "session": {"truncation": "auto"}}
        assert isinstance(judge(policy, "preview", event), Forward)
        ga = {
            "type": "session.update",
            "session": {"type": "realtime", "truncation": "auto"},
        }
        assert isinstance(judge(policy, "ga", ga), Refuse)

    def test_reasoning_effort_in_a_ga_response(self) -> None:
        """A per-response reasoning effort obeys its allow-list."""
        policy = Policy("p", allow={"reasoning.effort": frozenset({"low"})})
        event = {
            "type": "response.create",
            "response": {"reasoning": {"effort": "xhigh"}, "instructions": "x"},
        }
        verdict = judge(policy, "ga", event)
        assert isinstance(verdict, Forward)
        assert verdict.event["response"] == {"instructions": "x"}


# --- Properties over any input ----------------------------------------------------------

_json: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(
        [
            "inf",
            "alloy",
            "verse",
            "shimmer",
            "near_field",
            "server_vad",
            "semantic_vad",
            "auto",
            "none",
            "required",
        ]
    )
    | st.just([]),
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


_CASES = st.sampled_from(FAMILIES).flatmap(
    lambda family: st.tuples(st.just(family), client_events(family))
)
# What STANDARD's denied fields may repeat (written out, not asked of the engine).
_UNCHANGED: dict[str, list[Any]] = {"tools": [[]], "tool_choice": ["auto", "none"]}


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
        if name in policy.deny and value not in _UNCHANGED.get(name, []):
            problems.append(f"denied {name}={value!r} forwarded")
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


def _fields(family: Family, event: dict[str, Any]) -> dict[str, Any]:
    """The governed fields present in an event, by name."""
    response = event["type"] == "response.create"
    paths = RESPONSE_PATHS[family] if response else SESSION_PATHS[family]
    container = event["response" if response else "session"]
    found = {}
    for name, path in paths.items():
        try:
            found[name] = get(container, path)
        except (KeyError, TypeError):
            continue
    return found


def _alone(family: Family, event: dict[str, Any], name: str) -> dict[str, Any]:
    response = event["type"] == "response.create"
    paths = RESPONSE_PATHS[family] if response else SESSION_PATHS[family]
    value = copy.deepcopy(_fields(family, event)[name])
    container = nest(paths[name], value)
    if family == "ga" and not response:
        container = {"type": "realtime", **container}
    return {"type": event["type"], "response" if response else "session": container}


# Generation is cheap; on a loaded 2-core machine a single draw can still stall.
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_CASES, st.sampled_from([STANDARD, STRIPPING]))
def test_nothing_forwarded_violates_the_policy(
    case: tuple[Family, dict[str, Any]], policy: Policy
) -> None:
    """For any client session.update/response.create, a forwarded event obeys every rule, and is final."""
    family, event = case
    verdict = judge(policy, family, copy.deepcopy(event))
    if isinstance(verdict, Forward):
        assert _violations(policy, family, verdict.event) == []
        again = judge(policy, family, copy.deepcopy(verdict.event))
        assert isinstance(again, Forward)
        assert again.event == verdict.event
        assert again.actions == ()
    else:
        assert verdict.code in ("policy_violation", "invalid_value", "invalid_event")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_CASES)
def test_strip_drops_exactly_what_refuse_refuses(
    case: tuple[Family, dict[str, Any]],
) -> None:
    """Nothing the policy allows is dropped: a field is stripped iff, sent alone, it is refused.

    Unknown keys always survive, and a stripping policy refuses only what no
    mode could forward (the documented corrections, a malformed event).
    """
    family, event = case
    stripped = judge(STRIPPING, family, copy.deepcopy(event))
    refused = judge(STANDARD, family, copy.deepcopy(event))
    if isinstance(stripped, Refuse):
        assert stripped.code in ("invalid_value", "invalid_event")
        assert isinstance(refused, Refuse)
        return
    assert isinstance(refused, Refuse) == any(
        action.action == "strip" for action in stripped.actions
    )
    kept = _fields(family, stripped.event)
    for name in _fields(family, event):
        alone = judge(STANDARD, family, _alone(family, event, name))
        assert (name in kept) == isinstance(alone, Forward), name
    key = "response" if event["type"] == "response.create" else "session"
    if "extra" in event[key]:
        assert stripped.event[key]["extra"] == event[key]["extra"]


# Tool-shaped client input: the keys a tool or a tool_choice has, with the
# approved values, their near misses and any other JSON (lists and objects too).
_tool_values: st.SearchStrategy[Any] = (
    st.sampled_from(["get_weather", "wire_money", "docs", DOCS["server_url"]])
    | st.lists(st.just("get_weather"), min_size=1, max_size=1)
    | st.just({"name": "get_weather"})
    | _json
)
_tool_like: st.SearchStrategy[Any] = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "mcp"]) | _json},
    optional={
        "name": _tool_values,
        "function": st.fixed_dictionaries({"name": _tool_values}) | _tool_values,
        "server_label": _tool_values,
        "server_url": _tool_values,
        "connector_id": _tool_values,
    },
)


def _approved_tool(tool: Any) -> bool:
    """TOOLS' approvals, written out independently of ToolAllowList."""
    if not isinstance(tool, dict):
        return False
    if tool.get("type") == "function":
        return tool.get("name") == "get_weather"
    return (
        tool.get("type") == "mcp"
        and tool.get("server_label") == "docs"
        and tool.get("server_url") == DOCS["server_url"]
        and "connector_id" not in tool
        and "tunnel_id" not in tool
    )


def _approved_choice(choice: Any) -> bool:
    if isinstance(choice, str):
        return True
    if not isinstance(choice, dict):
        return False
    if choice.get("type") == "mcp":
        return choice.get("server_label") == "docs"
    nested = choice.get("function")
    names = [choice["name"]] if "name" in choice else []
    if "function" in choice:
        names.append(nested.get("name") if isinstance(nested, dict) else None)
    return (
        choice.get("type") == "function"
        and names != []
        and all(name == "get_weather" for name in names)
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(FAMILIES),
    st.sampled_from(["session.update", "response.create"]),
    st.lists(_tool_like | _tool_values, max_size=4) | _tool_values,
    _tool_like | _tool_values,
    st.sampled_from(["strip", "refuse"]),
)
def test_the_tool_allow_list_holds_for_any_input(
    family: Family, kind: str, tools: Any, choice: Any, mode: str
) -> None:
    """Whatever a client puts in tools and tool_choice: judged (never raised), and only approvals pass."""
    build = update if kind == "session.update" else response_create
    event = build(family, tools=tools, tool_choice=choice)
    policy = replace(TOOLS, on_violation="refuse" if mode == "refuse" else "strip")
    verdict = judge(policy, family, copy.deepcopy(event))
    key = "session" if kind == "session.update" else "response"
    if isinstance(verdict, Refuse):
        assert mode == "refuse"
        assert verdict.param is not None
        assert verdict.param.startswith(f"{key}.tool")
        return
    forwarded = verdict.event[key]
    if "tools" in forwarded:
        assert isinstance(forwarded["tools"], list)
        assert all(_approved_tool(tool) for tool in forwarded["tools"])
    if "tool_choice" in forwarded:
        assert _approved_choice(forwarded["tool_choice"])
    if mode == "refuse":
        assert verdict.event == event
