"""The sans-I/O session: conversations as scripts, no sockets, no event loop."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from relay.simulator import Family, SessionOptions
from relay.simulator.audio import silence_pcm16, speech_like_pcm16
from tests.simulator.helpers import NOW, Script, b64, error_of, types


PREVIEW_AUDIO_RESPONSE = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.created",
    "response.content_part.added",
    *["response.audio.delta", "response.audio_transcript.delta"] * 7,
    "response.audio.done",
    "response.audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.done",
]
GA_AUDIO_RESPONSE = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    *["response.output_audio.delta", "response.output_audio_transcript.delta"] * 7,
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]
TRANSCRIPT = "This is the Realtime simulator. I heard {} seconds of audio."


def manual(script: Script) -> None:
    """Turn server VAD off (preview or GA spelling)."""
    if script.session.family is Family.PREVIEW:
        update: dict[str, Any] = {"turn_detection": None}
    else:
        update = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
    assert types(script.send({"type": "session.update", "session": update})) == [
        "session.updated"
    ]


def user_text(text: str) -> dict[str, Any]:
    content = [{"type": "input_text", "text": text}]
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": content},
    }


def done_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    [done] = [e for e in events if e["type"] == "response.done"]
    response: dict[str, Any] = done["response"]
    return response


class TestOpening:
    def test_preview_greets_with_the_session_only(self) -> None:
        """Preview sends session.created (full session), no conversation.created."""
        [created] = Script(Family.PREVIEW).opening
        assert created["type"] == "session.created"
        session = created["session"]
        assert session["id"].startswith("sess_")
        assert session["model"] == "deployment-1"
        assert session["expires_at"] == int(NOW) + 3600  # Azure's 60 minutes.
        assert session["voice"] == "alloy"

    def test_conversation_created_on_request(self) -> None:
        """conversation_created=True adds conversation.created on preview (not GA)."""
        options = SessionOptions(conversation_created=True)
        created, conversation = Script(Family.PREVIEW, options=options).opening
        assert (created["type"], conversation["type"]) == (
            "session.created",
            "conversation.created",
        )
        assert conversation["conversation"]["object"] == "realtime.conversation"
        assert conversation["conversation"]["id"].startswith("conv_")
        assert types(Script(Family.GA, options=options).opening) == ["session.created"]

    def test_ga_greets_with_the_ga_session(self) -> None:
        """GA sends only session.created, with the GA session shape."""
        [created] = Script(Family.GA).opening
        assert created["type"] == "session.created"
        assert created["session"]["type"] == "realtime"
        assert created["session"]["audio"]["output"]["voice"] == "alloy"

    def test_expires_at_follows_max_session_seconds(self) -> None:
        """expires_at shows the configured cap."""
        script = Script(options=SessionOptions(max_session_seconds=60))
        assert script.opening[0]["session"]["expires_at"] == int(NOW) + 60

    def test_server_event_ids_are_unique(self) -> None:
        """Every server event has its own event_… id."""
        script = Script()
        events = (
            script.opening
            + script.send(user_text("hi"))
            + script.send({"type": "response.create"})
        )
        ids = [e["event_id"] for e in events]
        assert all(i.startswith("event_") for i in ids)
        assert len(set(ids)) == len(ids)


class TestSessionUpdate:
    def test_answers_with_the_full_effective_session(self) -> None:
        """session.updated carries every field, with the change applied."""
        script = Script()
        [updated] = script.send(
            {"type": "session.update", "session": {"voice": "sage"}}
        )
        assert updated["type"] == "session.updated"
        expected = dict(script.opening[0]["session"], voice="sage")
        assert updated["session"] == expected

    def test_errors_echo_the_client_event_id_and_change_nothing(self) -> None:
        """A rejected update answers error(param, event_id) and keeps the old session."""
        script = Script()
        before = script.session.session
        event = {
            "type": "session.update",
            "event_id": "c_1",
            "session": {"voice": "sage", "temperature": 5},
        }
        error = error_of(script.send(event))
        assert error == {
            "type": "invalid_request_error",
            "code": "decimal_above_max_value",
            "message": error["message"],
            "param": "session.temperature",
            "event_id": "c_1",
        }
        assert script.session.session == before

    def test_voice_is_locked_after_audio(self) -> None:
        """Once the model spoke, the voice cannot change (cannot_update_voice)."""
        script = Script()
        script.send({"type": "response.create"})
        error = error_of(
            script.send({"type": "session.update", "session": {"voice": "sage"}})
        )
        assert error["code"] == "cannot_update_voice"

    def test_voice_is_not_locked_by_text_responses(self) -> None:
        """A text-only response produces no audio, so the voice stays free."""
        script = Script()
        script.send({"type": "response.create", "response": {"modalities": ["text"]}})
        assert types(
            script.send({"type": "session.update", "session": {"voice": "sage"}})
        ) == ["session.updated"]


class TestInputAudioBuffer:
    def test_append_has_no_answer(self) -> None:
        """Appending audio is not acknowledged (protocol.md §4.3)."""
        script = Script()
        manual(script)
        assert script.append(speech_like_pcm16(0.5)) == []

    @pytest.mark.parametrize("audio", ["not base64!", "QUJ", 42])
    def test_invalid_audio_is_an_error(self, audio: object) -> None:
        """Invalid base64 (or a non-string) is rejected with param "audio"."""
        event = {"type": "input_audio_buffer.append", "event_id": "c_9", "audio": audio}
        error = error_of(Script().send(event))
        assert error["param"] == "audio"
        assert error["event_id"] == "c_9"

    def test_commit_needs_100_ms(self) -> None:
        """Below 100 ms the commit fails with input_audio_buffer_commit_empty."""
        script = Script()
        manual(script)
        assert (
            error_of(script.send({"type": "input_audio_buffer.commit"}))["code"]
            == "input_audio_buffer_commit_empty"
        )
        script.append(silence_pcm16(0.099))
        error = error_of(script.send({"type": "input_audio_buffer.commit"}))
        assert error["code"] == "input_audio_buffer_commit_empty"
        assert "99.00ms" in error["message"]

    def test_commit_makes_a_user_item(self) -> None:
        """committed + conversation.item.created for a user audio item."""
        script = Script()
        manual(script)
        script.append(silence_pcm16(0.1))
        committed, created = script.send({"type": "input_audio_buffer.commit"})
        assert committed["type"] == "input_audio_buffer.committed"
        assert committed["previous_item_id"] is None
        assert created["type"] == "conversation.item.created"
        assert created["item"] == {
            "id": committed["item_id"],
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }

    def test_ga_commit_announces_added_and_done(self) -> None:
        """GA: committed, conversation.item.added, conversation.item.done."""
        script = Script(Family.GA)
        manual(script)
        script.append(silence_pcm16(0.2))
        events = script.send({"type": "input_audio_buffer.commit"})
        assert types(events) == [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        assert events[1]["item"]["object"] == "realtime.item"

    def test_clear_empties_the_buffer(self) -> None:
        """After clear, there is nothing to commit."""
        script = Script()
        manual(script)
        script.append(silence_pcm16(0.5))
        assert types(script.send({"type": "input_audio_buffer.clear"})) == [
            "input_audio_buffer.cleared"
        ]
        assert (
            error_of(script.send({"type": "input_audio_buffer.commit"}))["code"]
            == "input_audio_buffer_commit_empty"
        )

    def test_server_vad_turn_commits_and_responds(self) -> None:
        """Speech then silence: speech_started/stopped, auto-commit, automatic response."""
        script = Script()
        events = script.append(
            speech_like_pcm16(1.2, leading_silence=0.5, trailing_silence=0.6)
        )
        assert types(events) == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.created",
            *PREVIEW_AUDIO_RESPONSE,
        ]
        started, stopped, committed = events[:3]
        assert started["audio_start_ms"] == 200
        assert started["item_id"] == stopped["item_id"] == committed["item_id"]
        heard = (stopped["audio_end_ms"] - started["audio_start_ms"]) / 1000
        assert done_of(events)["output"][0]["content"][0][
            "transcript"
        ] == TRANSCRIPT.format(f"{heard:.1f}")

    def test_vad_without_create_response_only_commits(self) -> None:
        """create_response false: the turn is committed but not answered."""
        script = Script()
        script.send(
            {
                "type": "session.update",
                "session": {"turn_detection": {"create_response": False}},
            }
        )
        events = script.append(speech_like_pcm16(0.5, trailing_silence=0.5))
        assert types(events)[-2:] == [
            "input_audio_buffer.committed",
            "conversation.item.created",
        ]
        assert not script.session.response_active

    def test_no_turn_detection_means_manual_commit_only(self) -> None:
        """With turn_detection null, speech triggers nothing."""
        script = Script()
        manual(script)
        assert script.append(speech_like_pcm16(1.0, trailing_silence=1.0)) == []

    def test_semantic_vad_waits_per_eagerness(self) -> None:
        """semantic_vad "low" needs 1.2 s of silence; 0.6 s keeps the turn open."""
        script = Script()
        script.send(
            {
                "type": "session.update",
                "session": {
                    "turn_detection": {"type": "semantic_vad", "eagerness": "low"}
                },
            }
        )
        assert types(script.append(speech_like_pcm16(0.5, trailing_silence=0.6))) == [
            "input_audio_buffer.speech_started"
        ]
        assert "input_audio_buffer.speech_stopped" in types(
            script.append(silence_pcm16(0.8))
        )

    def test_transcription_event_when_enabled(self) -> None:
        """With input transcription on, a commit is followed by a transcript."""
        script = Script(Family.GA)
        update = {
            "type": "realtime",
            "audio": {
                "input": {
                    "turn_detection": None,
                    "transcription": {"model": "whisper-1"},
                }
            },
        }
        script.send({"type": "session.update", "session": update})
        script.append(silence_pcm16(1.5))
        events = script.send({"type": "input_audio_buffer.commit"})
        transcript = "(simulated transcript of 1.5 seconds of audio)"
        words = transcript.split(" ")
        assert types(events) == [
            "input_audio_buffer.committed",
            "conversation.item.added",
            *["conversation.item.input_audio_transcription.delta"] * len(words),
            "conversation.item.input_audio_transcription.completed",
            "conversation.item.done",
        ]
        deltas = events[2:-2]
        assert "".join(d["delta"] for d in deltas) == transcript
        assert {(d["item_id"], d["content_index"]) for d in deltas} == {
            (events[0]["item_id"], 0)
        }
        completed = events[-2]
        assert completed["transcript"] == transcript
        assert completed["usage"] == {"type": "duration", "seconds": 1.5}
        assert events[-1]["item"]["content"][0]["transcript"] == transcript

    def test_speech_interrupts_an_active_response(self) -> None:
        """Barge-in: speech_started cancels the response in progress (turn_detected)."""
        script = Script()
        script.session.receive(json.dumps({"type": "response.create"}), NOW)
        first = [script.session.next_response_event() for _ in range(6)]
        assert types([e for e in first if e])[-1] == "response.audio.delta"
        events = script.append(speech_like_pcm16(0.3))
        assert types(events)[0] == "input_audio_buffer.speech_started"
        response = done_of(events)
        assert response["status"] == "cancelled"
        assert response["status_details"] == {
            "type": "cancelled",
            "reason": "turn_detected",
        }


class TestResponses:
    @pytest.mark.parametrize(
        ("family", "expected"),
        [(Family.PREVIEW, PREVIEW_AUDIO_RESPONSE), (Family.GA, GA_AUDIO_RESPONSE)],
    )
    def test_audio_response_sequence(self, family: Family, expected: list[str]) -> None:
        """The full event sequence of an audio response, with each family's names."""
        events = Script(family).send({"type": "response.create"})
        assert types(events) == expected
        created = events[0]["response"]
        assert (
            created["object"],
            created["status"],
            created["output"],
            created["usage"],
        ) == (
            "realtime.response",
            "in_progress",
            [],
            None,
        )
        deltas = [e for e in events if e["type"].endswith("audio.delta")]
        sizes = [len(base64.b64decode(d["delta"])) for d in deltas]
        assert sizes == [
            4800,
            7200,
            9600,
            4800,
            7200,
            9600,
            4800,
        ]  # 100/150/200 ms, 1 s in all.
        transcript = "".join(
            e["delta"] for e in events if e["type"].endswith("audio_transcript.delta")
        )
        assert transcript == TRANSCRIPT.format("0.0")
        response = done_of(events)
        assert response["status"] == "completed"
        [item] = response["output"]
        assert item["object"] == "realtime.item"
        assert item["status"] == "completed"
        part_type = "audio" if family is Family.PREVIEW else "output_audio"
        assert item["content"] == [{"type": part_type, "transcript": transcript}]

    @pytest.mark.parametrize(
        ("family", "response", "delta", "done"),
        [
            (
                Family.PREVIEW,
                {"modalities": ["text"]},
                "response.text.delta",
                "response.text.done",
            ),
            (
                Family.GA,
                {"output_modalities": ["text"]},
                "response.output_text.delta",
                "response.output_text.done",
            ),
        ],
    )
    def test_text_response_sequence(
        self, family: Family, response: dict[str, Any], delta: str, done: str
    ) -> None:
        """Text-only responses stream text deltas and no audio."""
        events = Script(family).send({"type": "response.create", "response": response})
        names = types(events)
        assert not any("audio" in name for name in names)
        assert names.count(delta) == 11  # One delta per word.
        text = "".join(e["delta"] for e in events if e["type"] == delta)
        [text_done] = [e for e in events if e["type"] == done]
        assert text_done["text"] == text == TRANSCRIPT.format("0.0")
        assert done_of(events)["usage"]["output_token_details"] == {
            "text_tokens": 16,
            "audio_tokens": 0,
        }

    def test_usage_follows_the_documented_formula(self) -> None:
        """Exact usage over two turns (see relay/simulator/usage.py)."""
        script = Script()
        script.send(
            {
                "type": "session.update",
                "session": {"instructions": "Be brief.", "turn_detection": None},
            }
        )
        script.send(user_text("Hello there"))
        first = script.send({"type": "response.create"})
        assert done_of(first)["usage"] == {
            "total_tokens": 42,
            "input_tokens": 6,  # "Be brief." 3 + "Hello there" 3
            "output_tokens": 36,  # 61-character transcript 16 + 1 s of audio 20
            "input_token_details": {
                "cached_tokens": 0,
                "text_tokens": 6,
                "audio_tokens": 0,
            },
            "output_token_details": {"text_tokens": 16, "audio_tokens": 20},
        }
        script.append(speech_like_pcm16(1.0))
        script.send({"type": "input_audio_buffer.commit"})
        second = script.send({"type": "response.create"})
        assert done_of(second)["usage"] == {
            "total_tokens": 78,
            "input_tokens": 42,
            "output_tokens": 36,
            # Text: 3 + 3 + the first answer's transcript 16; audio: 1 s user + 1 s assistant.
            "input_token_details": {
                "cached_tokens": 0,
                "text_tokens": 22,
                "audio_tokens": 20,
            },
            "output_token_details": {"text_tokens": 16, "audio_tokens": 20},
        }
        # At its start, the second response reserves its input and the
        # 4,096-token output cap; the first one's reservation was settled.
        assert second[1]["rate_limits"] == [
            {
                "name": "requests",
                "limit": 1000,
                "remaining": 998,
                "reset_seconds": 60.0,
            },
            {
                "name": "tokens",
                "limit": 100000,
                "remaining": 100000 - 42 - (42 + 4096),
                "reset_seconds": 60.0,
            },
        ]
        assert done_of(second)["output"][0]["content"][0][
            "transcript"
        ] == TRANSCRIPT.format("1.0")

    def test_one_active_response_at_a_time(self) -> None:
        """A second response.create while one is active is an error; the first goes on."""
        script = Script()
        assert (
            script.session.receive(json.dumps({"type": "response.create"}), NOW) == []
        )
        assert script.session.next_response_event() is not None
        second = json.dumps({"type": "response.create", "event_id": "c_2"})
        error = error_of(script.session.receive(second, NOW))
        assert error["code"] == "conversation_already_has_active_response"
        assert error["event_id"] == "c_2"
        assert done_of(script.drain())["status"] == "completed"
        assert types(script.send({"type": "response.create"}))[0] == "response.created"

    def test_cancel_ends_the_response(self) -> None:
        """response.cancel: the rest becomes part/item .done, response.done (cancelled)."""
        script = Script()
        script.session.receive(json.dumps({"type": "response.create"}), NOW)
        head = [script.session.next_response_event() for _ in range(7)]
        assert [e["type"] for e in head if e][-2:] == [
            "response.audio.delta",
            "response.audio_transcript.delta",
        ]
        tail = script.send({"type": "response.cancel"})
        assert types(tail) == [
            "response.content_part.done",
            "response.output_item.done",
            "response.done",
        ]
        response = done_of(tail)
        assert response["status"] == "cancelled"
        assert response["status_details"] == {
            "type": "cancelled",
            "reason": "client_cancelled",
        }
        assert response["output"][0]["status"] == "incomplete"
        assert response["output"][0]["content"][0]["transcript"] == "This "
        assert response["usage"]["output_token_details"] == {
            "text_tokens": 2,
            "audio_tokens": 2,
        }
        assert not script.session.response_active

    def test_cancel_right_after_creation(self) -> None:
        """Cancelling before any item: response.done with no output."""
        script = Script(Family.GA)
        script.session.receive(json.dumps({"type": "response.create"}), NOW)
        assert script.session.next_response_event() is not None
        tail = script.send({"type": "response.cancel"})
        assert types(tail) == ["rate_limits.updated", "response.done"]
        assert done_of(tail)["output"] == []

    def test_cancel_between_item_and_announcement(self) -> None:
        """Cancelling after output_item.added still announces the conversation item."""
        script = Script(Family.GA)
        script.session.receive(json.dumps({"type": "response.create"}), NOW)
        for _ in range(3):
            script.session.next_response_event()
        tail = script.send({"type": "response.cancel"})
        assert types(tail) == [
            "conversation.item.added",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ]

    @pytest.mark.parametrize(
        "event",
        [
            {"type": "response.cancel"},
            {"type": "response.cancel", "response_id": "resp_x"},
        ],
    )
    def test_cancel_without_active_response(self, event: dict[str, Any]) -> None:
        """Nothing (matching) to cancel: response_cancel_not_active."""
        script = Script()
        script.session.receive(json.dumps({"type": "response.create"}), NOW)
        if "response_id" not in event:
            script.drain()
        assert (
            error_of(script.session.receive(json.dumps(event), NOW))["code"]
            == "response_cancel_not_active"
        )

    def test_out_of_band_response(self) -> None:
        """conversation "none": no conversation item, conversation_id null, metadata echoed."""
        script = Script()
        event = {
            "type": "response.create",
            "response": {"conversation": "none", "metadata": {"topic": "x"}},
        }
        events = script.send(event)
        assert "conversation.item.created" not in types(events)
        response = done_of(events)
        assert response["conversation_id"] is None
        assert response["metadata"] == {"topic": "x"}
        item_id = response["output"][0]["id"]
        retrieve = {"type": "conversation.item.retrieve", "item_id": item_id}
        assert (
            error_of(script.send(retrieve))["code"] == "item_retrieve_invalid_item_id"
        )

    def test_response_input_replaces_the_context(self) -> None:
        """response.input items (and references) are the whole context."""
        script = Script()
        [created] = script.send(user_text("A long message that is not in the context"))
        response = {
            "conversation": "none",
            "instructions": "",
            "input": [
                {"type": "item_reference", "id": created["item"]["id"]},
                user_text("abcd")["item"],
            ],
        }
        events = script.send({"type": "response.create", "response": response})
        assert done_of(events)["usage"]["input_token_details"]["text_tokens"] == 11 + 1

    def test_unknown_item_reference(self) -> None:
        """A reference to a missing item is an error."""
        event = {
            "type": "response.create",
            "response": {"input": [{"type": "item_reference", "id": "item_x"}]},
        }
        assert error_of(Script().send(event))["param"] == "response.input[0].id"

    def test_g711_output(self) -> None:
        """G.711 output deltas carry 8 kHz bytes."""
        events = Script().send(
            {
                "type": "response.create",
                "response": {"output_audio_format": "g711_ulaw"},
            }
        )
        sizes = [
            len(base64.b64decode(e["delta"]))
            for e in events
            if e["type"] == "response.audio.delta"
        ]
        assert sizes == [800, 1200, 1600, 800, 1200, 1600, 800]
        assert done_of(events)["output_audio_format"] == "g711_ulaw"

    def test_preview_and_ga_response_objects(self) -> None:
        """Preview responses echo modalities/voice/temperature; GA output_modalities/audio."""
        preview = done_of(
            Script().send({"type": "response.create", "response": {"voice": "echo"}})
        )
        assert (preview["modalities"], preview["voice"], preview["temperature"]) == (
            ["text", "audio"],
            "echo",
            0.8,
        )
        ga = done_of(Script(Family.GA).send({"type": "response.create"}))
        assert ga["output_modalities"] == ["audio"]
        assert ga["audio"] == {
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"}
        }
        assert "temperature" not in ga

    def test_invalid_overrides_are_errors(self) -> None:
        """response.create validates its overrides."""
        error = error_of(
            Script().send({"type": "response.create", "response": {"voice": "nova"}})
        )
        assert error["param"] == "response.voice"


class TestItems:
    def test_create_links_items(self) -> None:
        """conversation.item.created reports the previous item id."""
        script = Script()
        [first] = script.send(user_text("one"))
        [second] = script.send(user_text("two"))
        assert first["previous_item_id"] is None
        assert second["previous_item_id"] == first["item"]["id"]
        assert first["item"]["content"] == [{"type": "input_text", "text": "one"}]

    def test_ga_create_sends_added_and_done(self) -> None:
        """GA announces a created item with conversation.item.added then .done."""
        assert types(Script(Family.GA).send(user_text("x"))) == [
            "conversation.item.added",
            "conversation.item.done",
        ]

    def test_insert_at_root_and_after(self) -> None:
        """previous_item_id "root" inserts first; an id inserts after that item."""
        script = Script()
        [a] = script.send(user_text("a"))
        [b] = script.send({**user_text("b"), "previous_item_id": "root"})
        [c] = script.send({**user_text("c"), "previous_item_id": b["item"]["id"]})
        assert b["previous_item_id"] is None
        assert c["previous_item_id"] == b["item"]["id"]
        [d] = script.send(user_text("d"))
        assert d["previous_item_id"] == a["item"]["id"]  # a is still last: b, c, a, d.

    def test_unknown_previous_item(self) -> None:
        """An unknown previous_item_id is an error and adds nothing."""
        error = error_of(
            Script().send({**user_text("x"), "previous_item_id": "item_nope"})
        )
        assert (error["code"], error["param"]) == (
            "item_create_invalid_previous_item_id",
            "previous_item_id",
        )

    def test_duplicate_item_id(self) -> None:
        """Client-chosen ids must be unique."""
        script = Script()
        event = user_text("x")
        event["item"]["id"] = "my_item"
        script.send(event)
        assert error_of(script.send(event))["param"] == "item.id"

    def test_function_call_output(self) -> None:
        """function_call_output items are accepted and counted as text."""
        item = {
            "type": "function_call_output",
            "call_id": "call_1",
            "output": '{"temp_c":4}',
        }
        [created] = Script().send({"type": "conversation.item.create", "item": item})
        assert created["item"]["call_id"] == "call_1"
        assert created["item"]["object"] == "realtime.item"

    @pytest.mark.parametrize(
        ("item", "param"),
        [
            (
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "audio", "audio": "AAAA"}],
                },
                "item.content[0].type",
            ),
            ({"type": "message", "role": "tool", "content": []}, "item.role"),
            ({"type": "message", "role": "user"}, "item.content"),
            (
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text"}],
                },
                "item.content[0].text",
            ),
            ({"type": "function_call", "name": "f", "call_id": "c"}, "item.arguments"),
            ({"role": "user", "content": []}, "item.type"),
            (
                {"type": "message", "role": "user", "content": [], "extra": 1},
                "item.extra",
            ),
        ],
    )
    def test_invalid_items(self, item: dict[str, Any], param: str) -> None:
        """Malformed items (and assistant audio injection) are rejected."""
        assert (
            error_of(Script().send({"type": "conversation.item.create", "item": item}))[
                "param"
            ]
            == param
        )

    def test_retrieve_includes_user_audio(self) -> None:
        """conversation.item.retrieved carries the committed audio."""
        script = Script()
        manual(script)
        audio = speech_like_pcm16(0.2)
        script.append(audio)
        committed, _ = script.send({"type": "input_audio_buffer.commit"})
        [retrieved] = script.send(
            {"type": "conversation.item.retrieve", "item_id": committed["item_id"]}
        )
        assert base64.b64decode(retrieved["item"]["content"][0]["audio"]) == audio

    def test_user_audio_item_from_create(self) -> None:
        """input_audio parts keep their audio server-side, not in the created event."""
        script = Script()
        part = {"type": "input_audio", "audio": b64(silence_pcm16(0.5))}
        [created] = script.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [part]},
            }
        )
        assert created["item"]["content"] == [
            {"type": "input_audio", "transcript": None}
        ]
        events = script.send({"type": "response.create"})
        assert done_of(events)["usage"]["input_token_details"]["audio_tokens"] == 5

    def test_delete(self) -> None:
        """conversation.item.deleted; deleting again fails."""
        script = Script()
        [created] = script.send(user_text("x"))
        item_id = created["item"]["id"]
        [deleted] = script.send(
            {"type": "conversation.item.delete", "item_id": item_id}
        )
        assert (deleted["type"], deleted["item_id"]) == (
            "conversation.item.deleted",
            item_id,
        )
        error = error_of(
            script.send({"type": "conversation.item.delete", "item_id": item_id})
        )
        assert error["code"] == "item_delete_invalid_item_id"

    def test_truncate_assistant_audio(self) -> None:
        """Truncation shortens the audio and drops the transcript; bounds are checked."""
        script = Script()
        item_id = done_of(script.send({"type": "response.create"}))["output"][0]["id"]
        truncate = {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
        }
        assert (
            error_of(script.send({**truncate, "audio_end_ms": 1001}))["param"]
            == "audio_end_ms"
        )
        [truncated] = script.send({**truncate, "audio_end_ms": 500})
        assert truncated == {
            **truncated,
            "type": "conversation.item.truncated",
            "item_id": item_id,
            "audio_end_ms": 500,
        }
        [retrieved] = script.send(
            {"type": "conversation.item.retrieve", "item_id": item_id}
        )
        assert retrieved["item"]["content"][0]["transcript"] == ""
        assert (
            error_of(script.send({**truncate, "content_index": 1, "audio_end_ms": 0}))[
                "param"
            ]
            == "content_index"
        )

    def test_truncate_rejects_user_items_and_unknown_ids(self) -> None:
        """Only assistant audio can be truncated."""
        script = Script()
        [created] = script.send(user_text("x"))
        truncate = {
            "type": "conversation.item.truncate",
            "content_index": 0,
            "audio_end_ms": 0,
        }
        assert (
            error_of(script.send({**truncate, "item_id": created["item"]["id"]}))[
                "param"
            ]
            == "content_index"
        )
        assert (
            error_of(script.send({**truncate, "item_id": "nope"}))["code"]
            == "item_truncate_invalid_item_id"
        )
        assert (
            error_of(
                script.send({"type": "conversation.item.truncate", "item_id": "x"})
            )["code"]
            == "missing_required_parameter"
        )


class TestGarbage:
    @pytest.mark.parametrize(
        ("text", "code"),
        [
            ("not json", "invalid_json"),
            ("", "invalid_json"),
            ("{", "invalid_json"),
            ('{"type": NaN}', "invalid_json"),
            ('{"type": "session.update", "x": Infinity}', "invalid_json"),
            ('{"type": "session.update", "x": 1e999}', "invalid_json"),
            ('{"type": "session.update", "x": ' + "9" * 5000 + "}", "invalid_json"),
            ("[]", "invalid_type"),
            ('"session.update"', "invalid_type"),
            ("42", "invalid_type"),
            ("null", "invalid_type"),
            ("{}", "missing_required_parameter"),
            ('{"type": 7}', "invalid_type"),
            ('{"type": "session.delete"}', "invalid_value"),
            ('{"type": "transcription_session.update"}', "invalid_value"),
            ('{"type": "input_audio_buffer.clear", "x": 1}', "unknown_parameter"),
            ('{"type": "input_audio_buffer.clear", "event_id": 5}', "invalid_type"),
            ('{"type": "output_audio_buffer.clear"}', "unsupported_event"),
        ],
    )
    def test_malformed_frames_get_error_events(self, text: str, code: str) -> None:
        """Garbage is answered with one error event; the session keeps working."""
        script = Script()
        assert error_of(script.send(text))["code"] == code
        assert types(script.send({"type": "session.update", "session": {}})) == [
            "session.updated"
        ]

    def test_unknown_type_lists_the_supported_ones(self) -> None:
        """The error for an unknown type names the valid client events."""
        error = error_of(Script().send({"type": "foo"}))
        assert error["param"] == "type"
        assert "'response.create'" in error["message"]

    def test_huge_numbers_are_range_errors(self) -> None:
        """Big integers are parsed but fail range checks, with a clipped message."""
        error = error_of(
            Script().send(
                '{"type":"session.update","session":{"temperature":' + "9" * 4000 + "}}"
            )
        )
        assert error["code"] == "decimal_above_max_value"
        assert len(error["message"]) < 200

    @pytest.mark.parametrize("depth", [65, 100, 100_000])
    def test_deep_nesting_is_rejected(self, depth: int) -> None:
        """Deeply nested JSON is refused, however deep."""
        text = (
            '{"type":"session.update","session":{"tools":'
            + "[" * depth
            + "]" * depth
            + "}}"
        )
        assert error_of(Script().send(text))["code"] == "invalid_json"

    def test_moderate_nesting_is_accepted(self) -> None:
        """Tool schemas may nest (up to the limit)."""
        parameters: dict[str, Any] = {}
        for _ in range(25):  # 50 levels, plus 4 for the event around them.
            parameters = {"properties": {"x": parameters}}
        tool = {"type": "function", "name": "f", "parameters": parameters}
        [updated] = Script().send(
            {"type": "session.update", "session": {"tools": [tool]}}
        )
        assert updated["session"]["tools"] == [tool]

    def test_binary_frames_are_errors(self) -> None:
        """The API speaks text frames only."""
        script = Script()
        error = error_of(script.session.receive_bytes(b"\x00\x01", NOW))
        assert error["code"] == "unsupported_binary_frame"


class TestExpiry:
    def test_session_expires_once(self) -> None:
        """At the deadline: one session_expired error, then silence."""
        script = Script(options=SessionOptions(max_session_seconds=1800))
        session = script.session
        assert session.deadline == NOW + 1800
        assert session.tick(NOW + 1799) == []
        error = error_of(session.tick(NOW + 1800))
        assert error == {
            "type": "invalid_request_error",
            "code": "session_expired",
            "message": "Your session hit the maximum duration of 30 minutes.",
            "param": None,
            "event_id": None,
        }
        assert session.expired
        assert session.tick(NOW + 1900) == []
        assert (
            session.receive(json.dumps({"type": "response.create"}), NOW + 1900) == []
        )
        assert session.next_response_event() is None

    def test_receive_after_the_deadline_expires(self) -> None:
        """A client event arriving late gets the expiry error instead of an answer."""
        script = Script(options=SessionOptions(max_session_seconds=90))
        script.session.receive(json.dumps({"type": "response.create"}), NOW)
        events = script.session.receive(
            json.dumps({"type": "input_audio_buffer.clear"}), NOW + 90
        )
        assert (
            error_of(events)["message"]
            == "Your session hit the maximum duration of 90 seconds."
        )
        assert script.session.next_response_event() is None
        assert script.session.receive_bytes(b"x", NOW + 91) == []

    def test_no_deadline_by_default(self) -> None:
        """Without max_session_seconds, sessions never expire."""
        session = Script().session
        assert session.deadline is None
        assert session.tick(NOW + 10**9) == []
        assert session.wakeup is None


def idle_session(timeout_ms: int = 5000, **detection: Any) -> Script:
    """A GA session whose server VAD has an idle timeout."""
    script = Script(Family.GA)
    vad = {"type": "server_vad", "idle_timeout_ms": timeout_ms, **detection}
    update = {"type": "realtime", "audio": {"input": {"turn_detection": vad}}}
    assert types(script.send({"type": "session.update", "session": update})) == [
        "session.updated"
    ]
    return script


class TestIdleTimeout:
    def test_fires_after_playback_plus_the_timeout(self) -> None:
        """response.done + 1 s of audio + 5 s: timeout_triggered, a commit, a response."""
        script = idle_session()
        unarmed = script.session.wakeup
        assert unarmed is None  # Only a response arms the timer.
        script.send({"type": "response.create"})
        assert script.session.wakeup == NOW + 6.0
        assert script.wait(5.9) == []
        events = script.wait(0.1)
        assert types(events)[:4] == [
            "input_audio_buffer.timeout_triggered",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        triggered, committed = events[0], events[1]
        assert triggered["item_id"] == committed["item_id"]
        assert triggered["audio_start_ms"] == triggered["audio_end_ms"] == 0
        assert types(events)[4:6] == ["response.created", "rate_limits.updated"]
        assert done_of(events)["status"] == "completed"
        # The prompt's own response.done arms the timer again.
        assert script.session.wakeup == script.now + 6.0

    def test_marks_the_silent_audio_after_playback(self) -> None:
        """audio_start_ms is where playback ended in the input audio, end where it fired."""
        script = idle_session(silence_duration_ms=500)
        script.send({"type": "response.create"})
        script.append(silence_pcm16(6.5))  # The client streams silence meanwhile.
        events = script.wait(6.0)
        [triggered] = [
            e for e in events if e["type"] == "input_audio_buffer.timeout_triggered"
        ]
        assert (triggered["audio_start_ms"], triggered["audio_end_ms"]) == (1000, 6500)
        # The segment is committed: the prompt heard its 5.5 s.
        transcript = done_of(events)["output"][0]["content"][0]["transcript"]
        assert transcript == TRANSCRIPT.format("5.5")

    def test_speech_disarms_it(self) -> None:
        """A user who speaks (VAD speech_started) stops the timer."""
        script = idle_session()
        script.send({"type": "response.create"})
        script.append(speech_like_pcm16(0.5))
        assert script.session.wakeup is None
        assert script.wait(60) == []

    def test_not_armed_while_the_user_speaks(self) -> None:
        """A response cut by barge-in ends while the user speaks: no timer then."""
        script = idle_session()
        script.session.receive(json.dumps({"type": "response.create"}), script.now)
        for _ in range(6):
            script.session.next_response_event()
        events = script.append(speech_like_pcm16(0.5))  # Speech goes on.
        assert done_of(events)["status"] == "cancelled"
        assert script.session.wakeup is None
        assert script.wait(60) == []

    def test_turned_off_before_it_fires(self) -> None:
        """A session.update that drops the timeout keeps it from firing."""
        script = idle_session()
        script.send({"type": "response.create"})
        update = {
            "type": "realtime",
            "audio": {"input": {"turn_detection": {"type": "server_vad"}}},
        }
        script.send({"type": "session.update", "session": update})
        assert script.wait(10) == []

    def test_not_while_a_response_runs(self) -> None:
        """A response in progress when the timer is due: no timeout."""
        script = idle_session()
        script.send({"type": "response.create"})
        script.now += 6
        script.session.receive(json.dumps({"type": "response.create"}), script.now - 1)
        assert script.session.tick(script.now) == []
        assert script.session.response_active

    def test_wakeup_is_the_earlier_timer(self) -> None:
        """wakeup: the session's expiry or the idle timer, whichever comes first."""
        script = Script(Family.GA, options=SessionOptions(max_session_seconds=3))
        assert script.session.wakeup == NOW + 3
        vad = {"type": "server_vad", "idle_timeout_ms": 5000}
        update = {"type": "realtime", "audio": {"input": {"turn_detection": vad}}}
        script.send({"type": "session.update", "session": update})
        script.send({"type": "response.create"})
        assert script.session.wakeup == NOW + 3

    def test_idle_timeout_is_ga_server_vad_only(self) -> None:
        """The field is unknown on preview and bounded to 5-30 s."""
        preview = Script(Family.PREVIEW)
        vad = {"type": "server_vad", "idle_timeout_ms": 5000}
        error = error_of(
            preview.send({"type": "session.update", "session": {"turn_detection": vad}})
        )
        assert error["code"] == "unknown_parameter"
        ga = Script(Family.GA)
        vad["idle_timeout_ms"] = 1000
        update = {"type": "realtime", "audio": {"input": {"turn_detection": vad}}}
        assert (
            error_of(ga.send({"type": "session.update", "session": update}))["code"]
            == "integer_below_min_value"
        )


class TestTranscriptionFailure:
    def test_failed_under_the_fault_switch(self) -> None:
        """fail_transcription: one failed event instead of deltas; one-shot."""
        script = Script()
        update = {
            "input_audio_transcription": {"model": "whisper-1"},
            "turn_detection": None,
        }
        script.send({"type": "session.update", "session": update})
        script.faults.fail_transcription = True
        script.append(silence_pcm16(0.5))
        events = script.send({"type": "input_audio_buffer.commit"})
        assert types(events) == [
            "input_audio_buffer.committed",
            "conversation.item.created",
            "conversation.item.input_audio_transcription.failed",
        ]
        failed = events[-1]
        assert failed["item_id"] == events[0]["item_id"]
        assert failed["content_index"] == 0
        assert failed["error"]["type"] == "transcription_error"
        assert events[1]["item"]["content"][0]["transcript"] is None
        assert not script.faults.fail_transcription  # Consumed.
        script.append(silence_pcm16(0.5))
        again = script.send({"type": "input_audio_buffer.commit"})
        assert (
            types(again)[-1] == "conversation.item.input_audio_transcription.completed"
        )

    def test_no_transcription_leaves_the_switch_armed(self) -> None:
        """A commit without transcription configured does not consume the switch."""
        script = Script()
        manual(script)
        script.faults.fail_transcription = True
        script.append(silence_pcm16(0.5))
        script.send({"type": "input_audio_buffer.commit"})
        assert script.faults.fail_transcription


PNG_URL = "data:image/png;base64," + b64(b"\x89PNG\r\n\x1a\n")


class TestImageInput:
    def test_ga_accepts_and_echoes_an_image(self) -> None:
        """input_image with a data URL is echoed in item.added/done and seen."""
        script = Script(Family.GA)
        image = {"type": "input_image", "image_url": PNG_URL, "detail": "high"}
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Look"}, image],
        }
        events = script.send({"type": "conversation.item.create", "item": item})
        assert types(events) == ["conversation.item.added", "conversation.item.done"]
        for event in events:
            assert event["item"]["content"][1] == image
        answer = script.send({"type": "response.create"})
        assert done_of(answer)["output"][0]["content"][0]["transcript"] == (
            "This is the Realtime simulator. I heard 0.0 seconds of audio and saw 1 image."
        )

    @pytest.mark.parametrize(
        ("part", "param"),
        [
            ({"type": "input_image"}, "item.content[0].image_url"),
            (
                {"type": "input_image", "image_url": "https://x/y.png"},
                "item.content[0].image_url",
            ),
            (
                {"type": "input_image", "image_url": "data:image/gif;base64,R0lG"},
                "item.content[0].image_url",
            ),
            (
                {"type": "input_image", "image_url": "data:image/png;base64,!!"},
                "item.content[0].image_url",
            ),
            (
                {"type": "input_image", "image_url": PNG_URL, "detail": "max"},
                "item.content[0].detail",
            ),
            (
                {"type": "input_image", "image_url": PNG_URL, "x": 1},
                "item.content[0].x",
            ),
        ],
    )
    def test_invalid_images(self, part: dict[str, Any], param: str) -> None:
        """Only PNG/JPEG data URLs and the three detail levels are accepted."""
        script = Script(Family.GA)
        item = {"type": "message", "role": "user", "content": [part]}
        error = error_of(
            script.send({"type": "conversation.item.create", "item": item})
        )
        assert error["param"] == param

    def test_preview_has_no_image_input(self) -> None:
        """Preview refuses input_image parts (the beta protocol has none)."""
        script = Script(Family.PREVIEW)
        image = {"type": "input_image", "image_url": PNG_URL}
        item = {"type": "message", "role": "user", "content": [image]}
        error = error_of(
            script.send({"type": "conversation.item.create", "item": item})
        )
        assert (error["code"], error["param"]) == (
            "invalid_value",
            "item.content[0].type",
        )


class TestGptRealtime2:
    def test_reasoning_and_parallel_tool_calls_are_echoed(self) -> None:
        """GA session.update takes reasoning.effort and parallel_tool_calls."""
        script = Script(Family.GA)
        assert "reasoning" not in script.opening[0]["session"]
        update = {
            "type": "realtime",
            "reasoning": {"effort": "minimal"},
            "parallel_tool_calls": True,
        }
        [updated] = script.send({"type": "session.update", "session": update})
        assert updated["session"]["reasoning"] == {"effort": "minimal"}
        assert updated["session"]["parallel_tool_calls"] is True
        reset = {"type": "realtime", "reasoning": None}
        [updated] = script.send({"type": "session.update", "session": reset})
        assert updated["session"]["reasoning"] is None

    @pytest.mark.parametrize(
        ("reasoning", "code", "param"),
        [
            ({"effort": "extreme"}, "invalid_value", "session.reasoning.effort"),
            ({"summary": "auto"}, "unknown_parameter", "session.reasoning.summary"),
            ("high", "invalid_type", "session.reasoning"),
        ],
    )
    def test_invalid_reasoning(self, reasoning: object, code: str, param: str) -> None:
        """reasoning is an object with one effort of the documented values."""
        script = Script(Family.GA)
        update = {"type": "realtime", "reasoning": reasoning}
        error = error_of(script.send({"type": "session.update", "session": update}))
        assert (error["code"], error["param"]) == (code, param)

    def test_preview_rejects_reasoning(self) -> None:
        """reasoning is a GA field: unknown on preview."""
        error = error_of(
            Script().send(
                {"type": "session.update", "session": {"reasoning": {"effort": "low"}}}
            )
        )
        assert error["code"] == "unknown_parameter"

    def test_response_create_takes_reasoning(self) -> None:
        """response.create validates reasoning and parallel_tool_calls (not echoed)."""
        script = Script(Family.GA)
        events = script.send(
            {
                "type": "response.create",
                "response": {
                    "reasoning": {"effort": "high"},
                    "parallel_tool_calls": False,
                },
            }
        )
        assert "reasoning" not in done_of(events)
        error = error_of(
            script.send(
                {"type": "response.create", "response": {"parallel_tool_calls": "yes"}}
            )
        )
        assert error["param"] == "response.parallel_tool_calls"
