"""One simulated model response as a lazy, cancellable stream of server events.

Pure. The stream is built when the response is created, but each event is
only produced when :meth:`ResponseStream.next_event` is called, so the network
edge decides the pace, and a cancellation (``response.cancel`` or a barge-in)
changes what the remaining events say.

Audio responses (preview names; GA renames per protocol.md §4.2)::

    response.created, response.output_item.added, conversation.item.created,
    response.content_part.added, (response.audio.delta,
    response.audio_transcript.delta) x N, response.audio.done,
    response.audio_transcript.done, response.content_part.done,
    response.output_item.done, [GA: conversation.item.done], response.done,
    rate_limits.updated

Text-only responses use ``response.text.delta``/``response.text.done`` instead.
"""

from __future__ import annotations

import base64
import copy
import functools
import itertools
import re
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from relay.simulator.conversation import Conversation, Item
from relay.simulator.overrides import ResponseParams
from relay.simulator.schema import ga_audio_format_object
from relay.simulator.usage import RateLimits, TokenCounts, output_tokens, usage_object
from relay.simulator.wire import EventFactory, Family, JSONObject


AUDIO_CHUNK_MS = (100, 150, 200)
"""Durations of successive audio deltas, cycled (Azure sends 100–250 ms, §4.3)."""


def canned_transcript(heard_ms: int) -> str:
    """Return what the simulated model says after hearing ``heard_ms`` of user audio."""
    return f"This is the Realtime simulator. I heard {heard_ms / 1000:.1f} seconds of audio."


def _chunks(audio: bytes, bytes_per_ms: int) -> list[tuple[bytes, int]]:
    """Split ``audio`` into ``(bytes, milliseconds)`` chunks of AUDIO_CHUNK_MS."""
    chunks = []
    sizes = itertools.cycle(AUDIO_CHUNK_MS)
    start = 0
    while start < len(audio):
        piece = audio[start : start + next(sizes) * bytes_per_ms]
        chunks.append((piece, len(piece) // bytes_per_ms))
        start += len(piece)
    return chunks


class _Step(NamedTuple):
    """One planned event: how to produce it, and whether it is an audio delta."""

    produce: Callable[[], JSONObject]
    audio: bool = False


class ResponseStream:
    """The events of one response, produced on demand."""

    def __init__(
        self,
        *,
        events: EventFactory,
        params: ResponseParams,
        conversation: Conversation,
        input_tokens: TokenCounts,
        transcript: str,
        audio: bytes,
        rate_limits: RateLimits,
    ) -> None:
        """Plan a response that says ``transcript`` and, for audio output, plays ``audio``.

        ``audio`` is in ``params.output_format``. Unless the response is out of
        band, its output item joins ``conversation`` when it is announced.
        """
        self._events = events
        self._family = events.family
        self._params = params
        self._conversation = conversation
        self._input_tokens = input_tokens
        self._rate_limits = rate_limits
        self.response_id = events.ids("resp")
        """The ``resp_…`` id of this response."""
        self._item = Item(
            {
                "id": events.ids("item"),
                "object": "realtime.item",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
        )
        # Text produced so far: the usage formula bills only what was sent.
        self._text = ""
        # Response status, as response.done will report it.
        self._status = "in_progress"
        self._status_details: JSONObject | None = None
        # Progress flags: what was announced, what is open, what joined the
        # conversation; a cancellation closes exactly what is open.
        self._announced = self._item_open = self._part_open = False
        self._created_sent = self._in_conversation = self._item_created_sent = False
        # The item before ours in the conversation, once it joined.
        self._previous_item_id: str | None = None
        # Total of response.done's usage, charged by rate_limits.updated.
        self._total_tokens = 0
        self._done = False
        # Events still to produce, in order.
        self._steps: deque[_Step] = deque()
        self._plan(transcript, audio)

    @property
    def finished(self) -> bool:
        """True once ``response.done`` was produced (the response is no longer active)."""
        return self._done

    @property
    def exhausted(self) -> bool:
        """True once every event, including ``rate_limits.updated``, was produced."""
        return not self._steps

    @property
    def audio_delta_next(self) -> bool:
        """Whether the next event is an audio delta (the events an edge paces)."""
        return bool(self._steps) and self._steps[0].audio

    def next_event(self) -> JSONObject | None:
        """Produce the next event of the response, or None when there are no more."""
        return self._steps.popleft().produce() if self._steps else None

    def cancel(self, reason: str) -> bool:
        """End the response early with status ``cancelled``; False if already finished.

        ``reason`` is ``client_cancelled`` or ``turn_detected``. The remaining
        events become the ``.done`` events of the content part and output item
        that are open (the partial item stays in the conversation with status
        ``incomplete``), ``response.done`` and ``rate_limits.updated``. That
        exact tail is UNVERIFIED against Azure.
        """
        if self._done or self._status == "cancelled":
            return False
        self._status = "cancelled"
        self._status_details = {"type": "cancelled", "reason": reason}
        self._steps.clear()
        if not self._created_sent:
            # Production is lazy, but Azure announces a response as soon as it
            # exists: a response cancelled before that still opens with it.
            self._queue(self._response_created)
        if self._in_conversation and not self._item_created_sent:
            self._queue(self._item_created)
        if self._part_open:
            self._queue(self._content_part_done)
        if self._item_open:
            self._queue(self._output_item_done)
            if self._in_conversation and self._family is Family.GA:
                self._queue(self._item_done)
        self._queue(self._response_done, self._rate_limits_updated)
        return True

    # Planning

    def _plan(self, transcript: str, audio: bytes) -> None:
        self._queue(self._response_created, self._output_item_added)
        if not self._params.out_of_band:
            self._queue(self._item_created)
        self._queue(self._content_part_added)
        words = re.findall(r"\S+\s*", transcript)
        if self._params.audio_output:
            chunks = _chunks(audio, self._params.output_format.bytes_per_ms)
            for index, (chunk, ms) in enumerate(chunks):
                self._steps.append(
                    _Step(functools.partial(self._audio_delta, chunk, ms), audio=True)
                )
                # Spread the words evenly over the audio chunks.
                first = index * len(words) // len(chunks)
                last = (index + 1) * len(words) // len(chunks)
                if first < last:
                    text = "".join(words[first:last])
                    self._queue(
                        functools.partial(
                            self._text_delta, "response.audio_transcript.delta", text
                        )
                    )
            self._queue(self._audio_done, self._text_done)
        else:
            for word in words:
                self._queue(
                    functools.partial(self._text_delta, "response.text.delta", word)
                )
            self._queue(self._text_done)
        self._queue(self._content_part_done, self._output_item_done)
        if not self._params.out_of_band and self._family is Family.GA:
            self._queue(self._item_done)
        self._queue(self._response_done, self._rate_limits_updated)

    def _queue(self, *steps: Callable[[], JSONObject]) -> None:
        self._steps.extend(_Step(step) for step in steps)

    # Steps: each produces one event and records its effect.

    def _where(self) -> JSONObject:
        return {
            "response_id": self.response_id,
            "item_id": self._item.id,
            "output_index": 0,
            "content_index": 0,
        }

    def _response_created(self) -> JSONObject:
        self._created_sent = True
        response = self._response_object(usage=None)
        # It describes the response at its creation, even if it was cancelled since.
        response.update(status="in_progress", status_details=None)
        return self._events("response.created", response=response)

    def _output_item_added(self) -> JSONObject:
        self._announced = self._item_open = True
        event = self._events(
            "response.output_item.added",
            response_id=self.response_id,
            output_index=0,
            item=self._item.snapshot(),
        )
        if not self._params.out_of_band:
            self._previous_item_id = self._conversation.add(self._item)
            self._in_conversation = True
        return event

    def _item_created(self) -> JSONObject:
        # GA: conversation.item.added. Both describe the new, still empty item.
        self._item_created_sent = True
        return self._events(
            "conversation.item.created",
            previous_item_id=self._previous_item_id,
            item=self._item.snapshot(),
        )

    def _item_done(self) -> JSONObject:
        return self._events(
            "conversation.item.done",
            previous_item_id=self._previous_item_id,
            item=self._item.snapshot(),
        )

    def _part_kinds(self) -> tuple[str, str]:
        # (content part event type, item content type). The GA SDK types keep
        # "audio"/"text" in content_part events while GA items say
        # "output_audio"/"output_text" (protocol.md §4.2's table suggests the
        # latter for both; UNVERIFIED which Azure sends in part events).
        kind = "audio" if self._params.audio_output else "text"
        prefix = "output_" if self._family is Family.GA else ""
        return kind, prefix + kind

    def _content_part_added(self) -> JSONObject:
        self._part_open = True
        part_kind, item_kind = self._part_kinds()
        field = "transcript" if self._params.audio_output else "text"
        self._item.wire["content"].append({"type": item_kind, field: ""})
        return self._events(
            "response.content_part.added",
            **self._where(),
            part={"type": part_kind, field: ""},
        )

    def _audio_delta(self, chunk: bytes, ms: int) -> JSONObject:
        self._item.audio_ms += ms
        delta = base64.b64encode(chunk).decode("ascii")
        return self._events("response.audio.delta", **self._where(), delta=delta)

    def _text_delta(self, preview_type: str, text: str) -> JSONObject:
        self._text += text
        field = "transcript" if self._params.audio_output else "text"
        self._item.wire["content"][0][field] = self._text
        return self._events(preview_type, **self._where(), delta=text)

    def _audio_done(self) -> JSONObject:
        return self._events("response.audio.done", **self._where())

    def _text_done(self) -> JSONObject:
        if self._params.audio_output:
            return self._events(
                "response.audio_transcript.done", **self._where(), transcript=self._text
            )
        return self._events("response.text.done", **self._where(), text=self._text)

    def _content_part_done(self) -> JSONObject:
        self._part_open = False
        part_kind, _ = self._part_kinds()
        field = "transcript" if self._params.audio_output else "text"
        return self._events(
            "response.content_part.done",
            **self._where(),
            part={"type": part_kind, field: self._text},
        )

    def _output_item_done(self) -> JSONObject:
        self._item_open = False
        self._item.wire["status"] = (
            "incomplete" if self._status == "cancelled" else "completed"
        )
        return self._events(
            "response.output_item.done",
            response_id=self.response_id,
            output_index=0,
            item=self._item.snapshot(),
        )

    def _response_done(self) -> JSONObject:
        self._done = True
        if self._status == "in_progress":
            self._status = "completed"
        audio_ms = self._item.audio_ms if self._params.audio_output else 0
        usage = usage_object(self._input_tokens, output_tokens(self._text, audio_ms))
        self._total_tokens = usage["total_tokens"]
        return self._events(
            "response.done", response=self._response_object(usage=usage)
        )

    def _rate_limits_updated(self) -> JSONObject:
        limits = self._rate_limits.charge(self._total_tokens)
        return self._events("rate_limits.updated", rate_limits=limits)

    def _response_object(self, *, usage: JSONObject | None) -> JSONObject:
        params = self._params
        output = [self._item.snapshot()] if self._announced else []
        response: JSONObject = {
            "object": "realtime.response",
            "id": self.response_id,
            "status": self._status,
            "status_details": copy.deepcopy(self._status_details),
            "output": output,
            "conversation_id": None if params.out_of_band else self._conversation.id,
        }
        modalities = ["audio"] if params.audio_output else ["text"]
        if self._family is Family.PREVIEW:
            response["modalities"] = (
                ["text", "audio"] if params.audio_output else ["text"]
            )
            response["voice"] = params.voice
            response["output_audio_format"] = params.output_format.value
            response["temperature"] = params.temperature
        else:
            response["output_modalities"] = modalities
            response["audio"] = {
                "output": {
                    "format": ga_audio_format_object(params.output_format),
                    "voice": params.voice,
                }
            }
        response["max_output_tokens"] = params.max_output_tokens
        response["metadata"] = copy.deepcopy(params.metadata)
        response["usage"] = usage
        return response
