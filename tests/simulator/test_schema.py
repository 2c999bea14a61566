"""Session configuration: defaults, every validation rule of both families, settings."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from relay.simulator.audio import AudioFormat
from relay.simulator.schema import (
    SchemaError,
    TurnDetection,
    default_session,
    settings,
    update_session,
)
from relay.simulator.wire import Family


def preview() -> dict[str, Any]:
    return default_session(
        Family.PREVIEW, session_id="sess_1", model="dep", expires_at=99
    )


def ga() -> dict[str, Any]:
    return default_session(Family.GA, session_id="sess_1", model="dep", expires_at=99)


def update_preview(
    update: object, *, voice_locked: bool = False
) -> dict[str, Any] | SchemaError:
    return update_session(Family.PREVIEW, preview(), update, voice_locked=voice_locked)


def update_ga(
    update: dict[str, Any], *, voice_locked: bool = False
) -> dict[str, Any] | SchemaError:
    return update_session(
        Family.GA, ga(), {"type": "realtime", **update}, voice_locked=voice_locked
    )


def rejected(result: dict[str, Any] | SchemaError) -> SchemaError:
    assert isinstance(result, SchemaError), result
    return result


def accepted(result: dict[str, Any] | SchemaError) -> dict[str, Any]:
    assert not isinstance(result, SchemaError), result
    return result


class TestDefaults:
    def test_preview_session_has_every_field_azure_reports(self) -> None:
        """The preview session object carries all fields of protocol.md §4.4, in order."""
        assert list(preview()) == [
            "id", "object", "model", "expires_at", "modalities", "instructions", "voice",
            "input_audio_format", "output_audio_format", "input_audio_transcription",
            "input_audio_noise_reduction", "turn_detection", "tools", "tool_choice",
            "temperature", "max_response_output_tokens", "client_secret", "include",
        ]  # fmt: skip
        assert preview()["turn_detection"] == {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 200,
            "create_response": True,
            "interrupt_response": True,
        }
        assert preview()["temperature"] == 0.8
        assert preview()["max_response_output_tokens"] == "inf"

    def test_ga_session_has_the_ga_shape(self) -> None:
        """The GA session object has type, output_modalities and nested audio settings."""
        session = ga()
        assert session["type"] == "realtime"
        assert session["object"] == "realtime.session"
        assert session["output_modalities"] == ["audio"]
        assert "temperature" not in session
        assert session["audio"]["input"]["format"] == {
            "type": "audio/pcm",
            "rate": 24000,
        }
        assert session["audio"]["input"]["turn_detection"]["idle_timeout_ms"] is None
        assert session["audio"]["output"] == {
            "format": {"type": "audio/pcm", "rate": 24000},
            "voice": "alloy",
            "speed": 1.0,
        }

    def test_defaults_are_independent_copies(self) -> None:
        """Mutating one default session does not affect the next."""
        first = preview()
        first["turn_detection"]["threshold"] = 0.9
        assert preview()["turn_detection"]["threshold"] == 0.5


class TestPreviewUpdates:
    def test_only_present_fields_change(self) -> None:
        """A partial update keeps every other field."""
        session = accepted(
            update_preview({"voice": "verse", "instructions": "Be brief."})
        )
        assert session["voice"] == "verse"
        assert session["instructions"] == "Be brief."
        assert {
            k: v for k, v in session.items() if k not in ("voice", "instructions")
        } == {k: v for k, v in preview().items() if k not in ("voice", "instructions")}

    def test_rejected_update_leaves_the_session_untouched(self) -> None:
        """update_session never mutates its input, even when one field is bad."""
        session = preview()
        before = copy.deepcopy(session)
        result = update_session(
            Family.PREVIEW,
            session,
            {"voice": "verse", "temperature": 9},
            voice_locked=False,
        )
        rejected(result)
        assert session == before

    @pytest.mark.parametrize("value", [True, False])
    def test_boolean_noise_reduction_is_rejected(self, value: bool) -> None:
        """The May-2025 doc bug (a boolean) is an invalid_type error."""
        error = rejected(update_preview({"input_audio_noise_reduction": value}))
        assert error.code == "invalid_type"
        assert error.param == "session.input_audio_noise_reduction"
        assert "boolean" in error.message

    @pytest.mark.parametrize(
        "value", [None, {"type": "near_field"}, {"type": "far_field"}]
    )
    def test_noise_reduction_accepts_null_and_both_types(self, value: object) -> None:
        """null turns it off; near_field and far_field are the two settings."""
        session = accepted(update_preview({"input_audio_noise_reduction": value}))
        assert session["input_audio_noise_reduction"] == value

    @pytest.mark.parametrize(
        ("value", "code", "param"),
        [
            (
                {"type": "studio"},
                "invalid_value",
                "session.input_audio_noise_reduction.type",
            ),
            (
                {},
                "missing_required_parameter",
                "session.input_audio_noise_reduction.type",
            ),
            (
                {"type": "near_field", "level": 2},
                "unknown_parameter",
                "session.input_audio_noise_reduction.level",
            ),
            ("near_field", "invalid_type", "session.input_audio_noise_reduction"),
        ],
    )
    def test_malformed_noise_reduction(
        self, value: object, code: str, param: str
    ) -> None:
        """Anything but null or {type: near_field|far_field} is rejected."""
        error = rejected(update_preview({"input_audio_noise_reduction": value}))
        assert (error.code, error.param) == (code, param)

    @pytest.mark.parametrize("voice", ["marin", "cedar", "nova", "ALLOY", ""])
    def test_unknown_preview_voice(self, voice: str) -> None:
        """Only Azure's eight preview voices are accepted on preview."""
        error = rejected(update_preview({"voice": voice}))
        assert (error.code, error.param) == ("invalid_value", "session.voice")

    def test_voice_of_wrong_type(self) -> None:
        """A non-string voice is an invalid_type error."""
        error = rejected(update_preview({"voice": 3}))
        assert (error.code, error.param) == ("invalid_type", "session.voice")

    @pytest.mark.parametrize(
        ("value", "code"),
        [
            (0.59, "decimal_below_min_value"),
            (1.21, "decimal_above_max_value"),
            (0, "decimal_below_min_value"),
            (10**400, "decimal_above_max_value"),
            (True, "invalid_type"),
            ("0.8", "invalid_type"),
        ],
    )
    def test_temperature_outside_range(self, value: object, code: str) -> None:
        """Temperature is a number in 0.6–1.2."""
        error = rejected(update_preview({"temperature": value}))
        assert (error.code, error.param) == (code, "session.temperature")
        assert len(error.message) < 300

    @pytest.mark.parametrize("value", [0.6, 1.2, 1])
    def test_temperature_bounds_are_inclusive(self, value: float) -> None:
        """0.6 and 1.2 are valid temperatures, and so are integers."""
        assert accepted(update_preview({"temperature": value}))["temperature"] == value

    @pytest.mark.parametrize(
        ("value", "code"),
        [
            (0, "integer_below_min_value"),
            (4097, "integer_above_max_value"),
            ("infinite", "invalid_value"),
            (1.5, "invalid_type"),
            (True, "invalid_type"),
        ],
    )
    def test_max_tokens_outside_range(self, value: object, code: str) -> None:
        """max_response_output_tokens is an integer 1–4096 or "inf"."""
        error = rejected(update_preview({"max_response_output_tokens": value}))
        assert (error.code, error.param) == (code, "session.max_response_output_tokens")

    @pytest.mark.parametrize("value", [1, 4096, "inf"])
    def test_max_tokens_valid(self, value: object) -> None:
        """The bounds and "inf" are accepted."""
        assert (
            accepted(update_preview({"max_response_output_tokens": value}))[
                "max_response_output_tokens"
            ]
            == value
        )

    @pytest.mark.parametrize("value", [True, False, "eager", 1, None])
    def test_eagerness_must_be_one_of_four_strings(self, value: object) -> None:
        """Eagerness is low/medium/high/auto, never a boolean (protocol.md §6)."""
        detection = {"type": "semantic_vad", "eagerness": value}
        error = rejected(update_preview({"turn_detection": detection}))
        assert error.param == "session.turn_detection.eagerness"
        assert error.code == ("invalid_value" if value == "eager" else "invalid_type")

    @pytest.mark.parametrize("value", ["low", "medium", "high", "auto"])
    def test_eagerness_on_semantic_vad(self, value: str) -> None:
        """semantic_vad takes an eagerness; defaults fill the rest."""
        session = accepted(
            update_preview(
                {"turn_detection": {"type": "semantic_vad", "eagerness": value}}
            )
        )
        assert session["turn_detection"] == {
            "type": "semantic_vad",
            "eagerness": value,
            "create_response": True,
            "interrupt_response": True,
        }

    def test_eagerness_only_on_semantic_vad(self) -> None:
        """Eagerness on server_vad is an unknown parameter."""
        error = rejected(
            update_preview(
                {"turn_detection": {"type": "server_vad", "eagerness": "low"}}
            )
        )
        assert (error.code, error.param) == (
            "unknown_parameter",
            "session.turn_detection.eagerness",
        )

    def test_threshold_only_on_server_vad(self) -> None:
        """server_vad's knobs are unknown parameters on semantic_vad."""
        error = rejected(
            update_preview(
                {"turn_detection": {"type": "semantic_vad", "threshold": 0.5}}
            )
        )
        assert (error.code, error.param) == (
            "unknown_parameter",
            "session.turn_detection.threshold",
        )

    @pytest.mark.parametrize(
        ("value", "code"),
        [
            (-0.01, "decimal_below_min_value"),
            (1.01, "decimal_above_max_value"),
            (False, "invalid_type"),
        ],
    )
    def test_threshold_outside_range(self, value: object, code: str) -> None:
        """The VAD threshold is a number in 0–1."""
        error = rejected(
            update_preview(
                {"turn_detection": {"type": "server_vad", "threshold": value}}
            )
        )
        assert (error.code, error.param) == (code, "session.turn_detection.threshold")

    @pytest.mark.parametrize("field", ["prefix_padding_ms", "silence_duration_ms"])
    def test_durations_are_non_negative_integers(self, field: str) -> None:
        """Padding and silence are integers (not strings, as Azure's tables say) >= 0."""
        for value, code in (
            (-1, "integer_below_min_value"),
            ("300", "invalid_type"),
            (300.5, "invalid_type"),
        ):
            error = rejected(
                update_preview({"turn_detection": {"type": "server_vad", field: value}})
            )
            assert (error.code, error.param) == (
                code,
                f"session.turn_detection.{field}",
            )

    def test_server_vad_defaults_fill_missing_fields(self) -> None:
        """A turn_detection object replaces the old one; missing fields get defaults."""
        session = accepted(
            update_preview(
                {
                    "turn_detection": {
                        "silence_duration_ms": 800,
                        "create_response": False,
                    }
                }
            )
        )
        assert session["turn_detection"] == {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 800,
            "create_response": False,
            "interrupt_response": True,
        }

    @pytest.mark.parametrize("value", [None, {"type": "none"}])
    def test_turn_detection_can_be_off(self, value: object) -> None:
        """null (and rtclient's {"type": "none"}) disable turn detection."""
        session = accepted(update_preview({"turn_detection": value}))
        assert session["turn_detection"] == value
        assert settings(Family.PREVIEW, session).turn_detection is None

    def test_idle_timeout_is_ga_only(self) -> None:
        """idle_timeout_ms is a GA server_vad field."""
        error = rejected(update_preview({"turn_detection": {"idle_timeout_ms": 6000}}))
        assert error.code == "unknown_parameter"

    def test_unknown_fields_are_rejected(self) -> None:
        """Fields outside Azure's preview table are unknown parameters."""
        for field in ("foo", "speed", "tracing", "output_modalities"):
            error = rejected(update_preview({field: 1}))
            assert (error.code, error.param) == (
                "unknown_parameter",
                f"session.{field}",
            )

    def test_model_is_accepted_and_ignored(self) -> None:
        """A model field (sent by some clients) does not change the deployment."""
        assert accepted(update_preview({"model": "other"}))["model"] == "dep"

    @pytest.mark.parametrize(
        ("update", "code", "param"),
        [
            ({"instructions": 5}, "invalid_type", "session.instructions"),
            ({"modalities": "audio"}, "invalid_type", "session.modalities"),
            ({"modalities": ["audio"]}, "invalid_value", "session.modalities"),
            (
                {"modalities": ["text", "video"]},
                "invalid_value",
                "session.modalities[1]",
            ),
            (
                {"input_audio_format": "mp3"},
                "invalid_value",
                "session.input_audio_format",
            ),
            (
                {"output_audio_format": None},
                "invalid_type",
                "session.output_audio_format",
            ),
            (
                {"turn_detection": {"type": "magic"}},
                "invalid_value",
                "session.turn_detection.type",
            ),
            (
                {"turn_detection": {"create_response": "yes"}},
                "invalid_type",
                "session.turn_detection.create_response",
            ),
            ({"turn_detection": []}, "invalid_type", "session.turn_detection"),
            (
                {"input_audio_transcription": {"model": "whisper-2"}},
                "invalid_value",
                "session.input_audio_transcription.model",
            ),
            (
                {"input_audio_transcription": {"language": 1}},
                "invalid_type",
                "session.input_audio_transcription.language",
            ),
            ({"tools": {}}, "invalid_type", "session.tools"),
            (
                {"tools": [{"type": "function"}]},
                "missing_required_parameter",
                "session.tools[0].name",
            ),
            (
                {"tools": [{"name": "f"}]},
                "missing_required_parameter",
                "session.tools[0].type",
            ),
            (
                {"tools": [{"type": "mcp", "server_label": "x"}]},
                "invalid_value",
                "session.tools[0].type",
            ),
            (
                {"tools": [{"type": "function", "name": "f", "parameters": []}]},
                "invalid_type",
                "session.tools[0].parameters",
            ),
            ({"tool_choice": "sometimes"}, "invalid_value", "session.tool_choice"),
            (
                {"tool_choice": {"type": "function"}},
                "missing_required_parameter",
                "session.tool_choice.name",
            ),
            ({"tool_choice": 3}, "invalid_type", "session.tool_choice"),
        ],
    )
    def test_wrong_types_and_values(
        self, update: dict[str, Any], code: str, param: str
    ) -> None:
        """Each malformed field names itself in ``param``."""
        error = rejected(update_preview(update))
        assert (error.code, error.param) == (code, param)

    def test_session_must_be_an_object(self) -> None:
        """session.update's payload is an object."""
        error = rejected(update_preview(["voice"]))
        assert (error.code, error.param) == ("invalid_type", "session")

    def test_full_example_from_the_protocol_reference(self) -> None:
        """protocol.md §3.1's example update is accepted as is."""
        update = {
            "modalities": ["text", "audio"], "voice": "alloy", "instructions": "Be brief.",
            "input_audio_format": "pcm16", "output_audio_format": "pcm16",
            "input_audio_noise_reduction": {"type": "near_field"},
            "input_audio_transcription": {"model": "whisper-1", "language": "en"},
            "turn_detection": {"type": "semantic_vad", "eagerness": "low", "create_response": True, "interrupt_response": True},
            "tools": [], "tool_choice": "auto", "temperature": 0.8, "max_response_output_tokens": "inf",
        }  # fmt: skip
        session = accepted(update_preview(update))
        assert session["input_audio_transcription"] == {
            "model": "whisper-1",
            "language": "en",
            "prompt": None,
        }

    @pytest.mark.parametrize(
        "choice",
        [
            "auto",
            "none",
            "required",
            {"type": "function", "name": "f"},
            {"type": "function", "function": {"name": "f"}},
        ],
    )
    def test_tool_choice_shapes(self, choice: object) -> None:
        """Preview takes OpenAI's flat and Azure's nested named-function shapes."""
        assert (
            accepted(update_preview({"tool_choice": choice}))["tool_choice"] == choice
        )

    def test_voice_is_immutable_once_audio_was_produced(self) -> None:
        """After assistant audio, changing the voice fails; keeping it is fine."""
        error = rejected(update_preview({"voice": "verse"}, voice_locked=True))
        assert (error.code, error.param) == ("cannot_update_voice", "session.voice")
        accepted(update_preview({"voice": "alloy"}, voice_locked=True))


class TestGaUpdates:
    def test_type_is_required(self) -> None:
        """A GA update without session.type is rejected (AZ-MIG)."""
        error = rejected(
            update_session(Family.GA, ga(), {"instructions": "x"}, voice_locked=False)
        )
        assert (error.code, error.param) == (
            "missing_required_parameter",
            "session.type",
        )

    def test_transcription_type_is_rejected_on_a_realtime_session(self) -> None:
        """A realtime session cannot become a transcription session."""
        error = rejected(
            update_session(
                Family.GA, ga(), {"type": "transcription"}, voice_locked=False
            )
        )
        assert (error.code, error.param) == ("invalid_value", "session.type")

    def test_temperature_is_gone(self) -> None:
        """GA has no temperature."""
        error = rejected(update_ga({"temperature": 0.8}))
        assert (error.code, error.param) == ("unknown_parameter", "session.temperature")

    def test_preview_field_names_are_unknown(self) -> None:
        """Preview spellings are not GA fields."""
        for field in (
            "voice",
            "modalities",
            "turn_detection",
            "max_response_output_tokens",
        ):
            assert rejected(update_ga({field: None})).code == "unknown_parameter"

    @pytest.mark.parametrize("voice", ["marin", "cedar", "alloy"])
    def test_ga_voices(self, voice: str) -> None:
        """GA adds marin and cedar to the preview voices."""
        session = accepted(update_ga({"audio": {"output": {"voice": voice}}}))
        assert session["audio"]["output"]["voice"] == voice
        assert session["audio"]["output"]["format"] == {
            "type": "audio/pcm",
            "rate": 24000,
        }

    def test_nested_audio_updates_merge(self) -> None:
        """audio.input and audio.output fields change individually."""
        session = accepted(
            update_ga(
                {
                    "audio": {
                        "input": {
                            "noise_reduction": {"type": "far_field"},
                            "format": {"type": "audio/pcmu"},
                        }
                    }
                }
            )
        )
        audio_in = session["audio"]["input"]
        assert audio_in["noise_reduction"] == {"type": "far_field"}
        assert audio_in["format"] == {"type": "audio/pcmu"}
        assert audio_in["turn_detection"]["type"] == "server_vad"
        assert settings(Family.GA, session).input_format is AudioFormat.G711_ULAW

    @pytest.mark.parametrize(
        ("update", "code", "param"),
        [
            (
                {"output_modalities": ["audio", "text"]},
                "invalid_value",
                "session.output_modalities",
            ),
            ({"output_modalities": []}, "invalid_value", "session.output_modalities"),
            (
                {"audio": {"input": {"noise_reduction": True}}},
                "invalid_type",
                "session.audio.input.noise_reduction",
            ),
            (
                {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
                "invalid_value",
                "session.audio.input.format.rate",
            ),
            (
                {"audio": {"input": {"format": "pcm16"}}},
                "invalid_type",
                "session.audio.input.format",
            ),
            (
                {"audio": {"input": {"format": {"type": "audio/pcmu", "rate": 8000}}}},
                "unknown_parameter",
                "session.audio.input.format.rate",
            ),
            (
                {"audio": {"input": {"turn_detection": {"idle_timeout_ms": 4999}}}},
                "integer_below_min_value",
                "session.audio.input.turn_detection.idle_timeout_ms",
            ),
            (
                {"audio": {"input": {"turn_detection": {"type": "none"}}}},
                "invalid_value",
                "session.audio.input.turn_detection.type",
            ),
            (
                {"audio": {"output": {"speed": 1.6}}},
                "decimal_above_max_value",
                "session.audio.output.speed",
            ),
            (
                {"audio": {"output": {"voice": "nova"}}},
                "invalid_value",
                "session.audio.output.voice",
            ),
            ({"audio": {"video": {}}}, "unknown_parameter", "session.audio.video"),
            (
                {"audio": {"input": {"voice": "alloy"}}},
                "unknown_parameter",
                "session.audio.input.voice",
            ),
            (
                {"max_output_tokens": 5000},
                "integer_above_max_value",
                "session.max_output_tokens",
            ),
            ({"truncation": "sometimes"}, "invalid_value", "session.truncation"),
            (
                {"truncation": {"type": "retention_ratio", "retention_ratio": 2}},
                "decimal_above_max_value",
                "session.truncation.retention_ratio",
            ),
            ({"include": ["everything"]}, "invalid_value", "session.include[0]"),
            (
                {"prompt": {"version": "1"}},
                "missing_required_parameter",
                "session.prompt.id",
            ),
            ({"tracing": "manual"}, "invalid_value", "session.tracing"),
            (
                {"tools": [{"type": "mcp"}]},
                "missing_required_parameter",
                "session.tools[0].server_label",
            ),
            (
                {"tool_choice": {"type": "function", "function": {"name": "f"}}},
                "unknown_parameter",
                "session.tool_choice.function",
            ),
        ],
    )
    def test_wrong_types_and_values(
        self, update: dict[str, Any], code: str, param: str
    ) -> None:
        """Each malformed GA field names itself in ``param``."""
        error = rejected(update_ga(update))
        assert (error.code, error.param) == (code, param)

    def test_quickstart_example_is_accepted(self) -> None:
        """protocol.md §3.2's example update (Azure's GA quickstart shape) is accepted."""
        update = {
            "model": "gpt-realtime", "instructions": "You are a helpful assistant.", "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000}, "noise_reduction": {"type": "far_field"},
                    "transcription": {"model": "whisper-1"},
                    "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                       "silence_duration_ms": 200, "create_response": True},
                },
                "output": {"voice": "alloy", "format": {"type": "audio/pcm", "rate": 24000}},
            },
        }  # fmt: skip
        session = accepted(update_ga(update))
        assert session["audio"]["input"]["transcription"]["model"] == "whisper-1"

    def test_ga_extras(self) -> None:
        """MCP tools, truncation, prompt, include and tracing are GA fields."""
        session = accepted(
            update_ga(
                {
                    "tools": [
                        {
                            "type": "mcp",
                            "server_label": "docs",
                            "server_url": "https://x",
                            "require_approval": "never",
                        }
                    ],
                    "tool_choice": {"type": "mcp", "server_label": "docs"},
                    "truncation": {
                        "type": "retention_ratio",
                        "retention_ratio": 0.5,
                        "token_limits": {"post_instructions": 100},
                    },
                    "prompt": {"id": "pmpt_1", "variables": {"a": "b"}},
                    "include": ["item.input_audio_transcription.logprobs"],
                    "tracing": {"workflow_name": "w"},
                }
            )
        )
        assert session["truncation"]["token_limits"] == {"post_instructions": 100}

    def test_voice_lock_applies_to_ga(self) -> None:
        """The GA voice is immutable once audio was produced, too."""
        error = rejected(
            update_ga({"audio": {"output": {"voice": "marin"}}}, voice_locked=True)
        )
        assert (error.code, error.param) == (
            "cannot_update_voice",
            "session.audio.output.voice",
        )


class TestSettings:
    def test_preview_settings(self) -> None:
        """The typed view of the default preview session."""
        view = settings(Family.PREVIEW, preview())
        assert view.input_format is AudioFormat.PCM16
        assert view.audio_output
        assert not view.transcription
        assert view.turn_detection == TurnDetection(
            "server_vad", 0.5, 300, 200, True, True
        )

    @pytest.mark.parametrize(
        ("eagerness", "silence"),
        [("low", 1200), ("medium", 700), ("auto", 700), ("high", 300)],
    )
    def test_semantic_vad_maps_eagerness_to_silence(
        self, eagerness: str, silence: int
    ) -> None:
        """semantic_vad is simulated as server_vad with an eagerness-dependent silence."""
        session = accepted(
            update_preview(
                {"turn_detection": {"type": "semantic_vad", "eagerness": eagerness}}
            )
        )
        detection = settings(Family.PREVIEW, session).turn_detection
        assert detection is not None
        assert (detection.kind, detection.silence_duration_ms) == (
            "semantic_vad",
            silence,
        )

    def test_ga_text_only(self) -> None:
        """output_modalities ["text"] turns audio output off."""
        session = accepted(
            update_ga(
                {
                    "output_modalities": ["text"],
                    "audio": {"output": {"format": {"type": "audio/pcma"}}},
                }
            )
        )
        view = settings(Family.GA, session)
        assert not view.audio_output
        assert view.output_format is AudioFormat.G711_ALAW
