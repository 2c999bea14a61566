"""One simulated model response as a lazy, cancellable stream of server events.

Pure. The stream is built when the response is created, but each event is
only produced when :meth:`ResponseStream.next_event` is called, so the network
edge decides the pace, and a cancellation (``response.cancel`` or a barge-in)
changes what the remaining events say.

A response has one or more output items, streamed one after the other
(preview names; GA renames per protocol.md §4.2)::

    response.created, rate_limits.updated,
    then for each output item:
        response.output_item.added, conversation.item.created,
        <the item's own events>,
        response.output_item.done, [GA: conversation.item.done],
    response.done

An answer (``message``) streams ``response.content_part.added``, then
``(response.audio.delta, response.audio_transcript.delta) x N``,
``response.audio.done`` and ``response.audio_transcript.done`` (text-only:
``response.text.delta`` per word and ``response.text.done``), then
``response.content_part.done``. A ``function_call`` streams
``response.function_call_arguments.delta`` x N and ``.done``. A GA
``mcp_call`` streams ``response.mcp_call_arguments.delta`` x N, ``.done``,
``response.mcp_call.in_progress`` and ``response.mcp_call.completed``.
Out-of-band responses (``conversation: "none"``) send no conversation item
events.
"""

from __future__ import annotations

import base64
import copy
import functools
import itertools
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from relay.simulator import mcp
from relay.simulator.conversation import Conversation, Item
from relay.simulator.overrides import ResponseParams
from relay.simulator.schema import ga_audio_format_object
from relay.simulator.tools import FunctionCall, McpCall
from relay.simulator.usage import RateLimits, TokenCounts, output_tokens, usage_object
from relay.simulator.wire import EventFactory, Family, JSONObject


AUDIO_CHUNK_MS = (100, 150, 200)
"""Durations of successive audio deltas, cycled (Azure sends 100–250 ms, §4.3)."""

ARGUMENTS_CHUNK_CHARS = 8
"""Characters of tool-call arguments per ``…arguments.delta`` event."""

MAX_OUTPUT_TOKENS = 4096
"""The output cap of every realtime model: what ``"inf"`` reserves."""


@dataclass(frozen=True)
class Answer:
    """A planned assistant message: ``transcript`` and, for audio output, ``audio``."""

    transcript: str
    audio: bytes = b""
    """In the response's output format; empty for text-only responses."""


Planned = Answer | FunctionCall | McpCall
"""One output item a response will stream, in plan order."""


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


def _pieces(text: str, size: int) -> list[str]:
    """Split ``text`` into pieces of ``size`` characters (one empty piece for "")."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class _Step(NamedTuple):
    """One planned event: how to produce it, and the audio it carries."""

    produce: Callable[[], JSONObject]
    audio_ms: int | None = None
    """Milliseconds of audio of an audio delta; None for any other event."""


class ResponseStream:
    """The events of one response, produced on demand."""

    def __init__(
        self,
        *,
        events: EventFactory,
        params: ResponseParams,
        conversation: Conversation,
        input_tokens: TokenCounts,
        plan: Sequence[Planned],
        rate_limits: RateLimits,
    ) -> None:
        """Plan a response that streams the output items of ``plan`` in order.

        Unless the response is out of band, each output item joins
        ``conversation`` when it is announced.
        """
        self.events = events
        """The session's event factory (shared with the output items)."""
        self.family = events.family
        """The session's protocol family."""
        self.params = params
        """The response's effective settings."""
        self.conversation = conversation
        """The conversation the output items join (unless out of band)."""
        self._input_tokens = input_tokens
        self._rate_limits = rate_limits
        self.response_id = events.ids("resp")
        """The ``resp_…`` id of this response."""
        # Tokens the response reserves at its start (Azure 2026: the output
        # cap), replaced by its real usage at response.done.
        cap = params.max_output_tokens
        self._reserved = input_tokens.total + (
            cap if isinstance(cap, int) else MAX_OUTPUT_TOKENS
        )
        # Response status, as response.done will report it.
        self._status = "in_progress"
        self._status_details: JSONObject | None = None
        # Progress flags; a cancellation completes what was started.
        self._created_sent = self._limits_sent = self._done = False
        self._outputs: list[_Output] = []
        # Events still to produce, in order.
        self._steps: deque[_Step] = deque()
        self._queue(self._response_created, self._rate_limits_updated)
        for index, planned in enumerate(plan):
            output = _output(self, index, planned)
            self._outputs.append(output)
            self._steps.extend(output.plan())
        self._queue(self._response_done)

    @property
    def finished(self) -> bool:
        """True once ``response.done`` was produced (the response is no longer active)."""
        return self._done

    @property
    def exhausted(self) -> bool:
        """True once every event was produced."""
        return not self._steps

    @property
    def cancelled(self) -> bool:
        """True once the response was cancelled."""
        return self._status == "cancelled"

    @property
    def audio_output_ms(self) -> int:
        """Milliseconds of assistant audio produced so far (its playback length)."""
        return sum(output.audio_ms for output in self._outputs)

    @property
    def next_audio_ms(self) -> int | None:
        """Audio milliseconds of the next event if it is an audio delta, else None."""
        return self._steps[0].audio_ms if self._steps else None

    def next_event(self) -> JSONObject | None:
        """Produce the next event of the response, or None when there are no more."""
        return self._steps.popleft().produce() if self._steps else None

    def cancel(self, reason: str) -> bool:
        """End the response early with status ``cancelled``; False if already finished.

        ``reason`` is ``client_cancelled`` or ``turn_detected``. The remaining
        events become the closing events of the output item that is open (a
        partial item stays in the conversation with status ``incomplete``)
        and ``response.done``; items not started are dropped. That exact tail
        is UNVERIFIED against Azure.
        """
        if self._done or self.cancelled:
            return False
        self._status = "cancelled"
        self._status_details = {"type": "cancelled", "reason": reason}
        self._steps.clear()
        if not self._created_sent:
            # Production is lazy, but Azure announces a response as soon as it
            # exists: a response cancelled before that still opens with it.
            self._queue(self._response_created)
        if not self._limits_sent:
            self._queue(self._rate_limits_updated)
        for output in self._outputs:
            if output.open:
                self._queue(*output.closing())
        self._queue(self._response_done)
        return True

    def _queue(self, *steps: Callable[[], JSONObject]) -> None:
        self._steps.extend(_Step(step) for step in steps)

    # Steps of the response itself

    def _response_created(self) -> JSONObject:
        self._created_sent = True
        response = self._response_object(usage=None)
        # It describes the response at its creation, even if it was cancelled since.
        response.update(status="in_progress", status_details=None)
        return self.events("response.created", response=response)

    def _rate_limits_updated(self) -> JSONObject:
        # Azure 2026: at the start of a response, reserving its output tokens.
        self._limits_sent = True
        limits = self._rate_limits.reserve(self._reserved)
        return self.events("rate_limits.updated", rate_limits=limits)

    def _response_done(self) -> JSONObject:
        self._done = True
        if self._status == "in_progress":
            self._status = "completed"
        text = "".join(output.text for output in self._outputs)
        usage = usage_object(
            self._input_tokens, output_tokens(text, self.audio_output_ms)
        )
        self._rate_limits.settle(self._reserved, usage["total_tokens"])
        return self.events("response.done", response=self._response_object(usage=usage))

    def _response_object(self, *, usage: JSONObject | None) -> JSONObject:
        params = self.params
        output = [o.item.snapshot() for o in self._outputs if o.announced]
        response: JSONObject = {
            "object": "realtime.response",
            "id": self.response_id,
            "status": self._status,
            "status_details": copy.deepcopy(self._status_details),
            "output": output,
            "conversation_id": None if params.out_of_band else self.conversation.id,
        }
        modalities = ["audio"] if params.audio_output else ["text"]
        if self.family is Family.PREVIEW:
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


def _output(stream: ResponseStream, index: int, planned: Planned) -> _Output:
    if isinstance(planned, Answer):
        return _MessageOutput(stream, index, planned)
    if isinstance(planned, FunctionCall):
        return _FunctionCallOutput(stream, index, planned)
    return _McpCallOutput(stream, index, planned)


class _Output:
    """One output item of a response, and how far its streaming got."""

    def __init__(self, stream: ResponseStream, index: int, wire: JSONObject) -> None:
        self.stream = stream
        """The response this item belongs to."""
        self.index = index
        """Its ``output_index``."""
        self.item = Item(wire)
        """The item, as events show it."""
        self.announced = False
        """``response.output_item.added`` was produced."""
        self.open = False
        """Announced and ``response.output_item.done`` not produced yet."""
        self.text = ""
        """The model's text produced so far (transcript, text or arguments): billed."""
        self.audio_ms = 0
        """Assistant audio produced so far."""
        # In the conversation (not out of band), the item before it, and
        # whether conversation.item.created/added was produced.
        self._joined = False
        self._previous_item_id: str | None = None
        self._created_sent = False

    def plan(self) -> list[_Step]:
        """Return every event of the item, from announcement to completion."""
        steps = [_Step(self._added)]
        if not self.stream.params.out_of_band:
            steps.append(_Step(self._item_created))
        steps += self._body()
        steps.append(_Step(self._output_item_done))
        if not self.stream.params.out_of_band and self.stream.family is Family.GA:
            steps.append(_Step(self._item_done))
        return steps

    def closing(self) -> list[Callable[[], JSONObject]]:
        """Return the events that close the item after a cancellation."""
        steps: list[Callable[[], JSONObject]] = []
        if self._joined and not self._created_sent:
            steps.append(self._item_created)
        steps += self._close_body()
        steps.append(self._output_item_done)
        if self._joined and self.stream.family is Family.GA:
            steps.append(self._item_done)
        return steps

    def _body(self) -> list[_Step]:
        raise NotImplementedError

    def _close_body(self) -> list[Callable[[], JSONObject]]:
        raise NotImplementedError

    def _status_done(self) -> str:
        return "incomplete" if self.stream.cancelled else "completed"

    def _added(self) -> JSONObject:
        self.announced = self.open = True
        event = self.stream.events(
            "response.output_item.added",
            response_id=self.stream.response_id,
            output_index=self.index,
            item=self.item.snapshot(),
        )
        if not self.stream.params.out_of_band:
            self._previous_item_id = self.stream.conversation.add(self.item)
            self._joined = True
        return event

    def _item_created(self) -> JSONObject:
        # GA: conversation.item.added. Both describe the new, unfinished item.
        self._created_sent = True
        return self.stream.events(
            "conversation.item.created",
            previous_item_id=self._previous_item_id,
            item=self.item.snapshot(),
        )

    def _output_item_done(self) -> JSONObject:
        self.open = False
        if "status" in self.item.wire:
            self.item.wire["status"] = self._status_done()
        return self.stream.events(
            "response.output_item.done",
            response_id=self.stream.response_id,
            output_index=self.index,
            item=self.item.snapshot(),
        )

    def _item_done(self) -> JSONObject:
        return self.stream.events(
            "conversation.item.done",
            previous_item_id=self._previous_item_id,
            item=self.item.snapshot(),
        )


class _MessageOutput(_Output):
    """An assistant message: one audio (with transcript) or text content part."""

    def __init__(self, stream: ResponseStream, index: int, answer: Answer) -> None:
        super().__init__(
            stream,
            index,
            {
                "id": stream.events.ids("item"),
                "object": "realtime.item",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            },
        )
        self._answer = answer
        self._part_open = False

    def _where(self) -> JSONObject:
        return {
            "response_id": self.stream.response_id,
            "item_id": self.item.id,
            "output_index": self.index,
            "content_index": 0,
        }

    def _body(self) -> list[_Step]:
        audio_output = self.stream.params.audio_output
        steps = [_Step(self._content_part_added)]
        words = re.findall(r"\S+\s*", self._answer.transcript)
        if audio_output:
            fmt = self.stream.params.output_format
            chunks = _chunks(self._answer.audio, fmt.bytes_per_ms)
            for index, (chunk, ms) in enumerate(chunks):
                steps.append(
                    _Step(functools.partial(self._audio_delta, chunk, ms), audio_ms=ms)
                )
                # Spread the words evenly over the audio chunks.
                first = index * len(words) // len(chunks)
                last = (index + 1) * len(words) // len(chunks)
                if first < last:
                    text = "".join(words[first:last])
                    steps.append(_Step(functools.partial(self._text_delta, text)))
            steps.append(_Step(self._audio_done))
        else:
            steps += [_Step(functools.partial(self._text_delta, w)) for w in words]
        steps += [_Step(self._text_done), _Step(self._content_part_done)]
        return steps

    def _close_body(self) -> list[Callable[[], JSONObject]]:
        return [self._content_part_done] if self._part_open else []

    def _kinds(self) -> tuple[str, str, str]:
        # (content part type, item content type, text field). The GA SDK types
        # keep "audio"/"text" in content_part events while GA items say
        # "output_audio"/"output_text" (protocol.md §4.2's table suggests the
        # latter for both; UNVERIFIED which Azure sends in part events).
        audio = self.stream.params.audio_output
        kind = "audio" if audio else "text"
        prefix = "output_" if self.stream.family is Family.GA else ""
        return kind, prefix + kind, "transcript" if audio else "text"

    def _content_part_added(self) -> JSONObject:
        self._part_open = True
        part_kind, item_kind, field = self._kinds()
        self.item.wire["content"].append({"type": item_kind, field: ""})
        return self.stream.events(
            "response.content_part.added",
            **self._where(),
            part={"type": part_kind, field: ""},
        )

    def _audio_delta(self, chunk: bytes, ms: int) -> JSONObject:
        self.audio_ms += ms
        self.item.audio_ms += ms
        delta = base64.b64encode(chunk).decode("ascii")
        return self.stream.events("response.audio.delta", **self._where(), delta=delta)

    def _text_delta(self, text: str) -> JSONObject:
        self.text += text
        _, _, field = self._kinds()
        self.item.wire["content"][0][field] = self.text
        kind = (
            "response.audio_transcript.delta"
            if self.stream.params.audio_output
            else "response.text.delta"
        )
        return self.stream.events(kind, **self._where(), delta=text)

    def _audio_done(self) -> JSONObject:
        return self.stream.events("response.audio.done", **self._where())

    def _text_done(self) -> JSONObject:
        if self.stream.params.audio_output:
            return self.stream.events(
                "response.audio_transcript.done", **self._where(), transcript=self.text
            )
        return self.stream.events("response.text.done", **self._where(), text=self.text)

    def _content_part_done(self) -> JSONObject:
        self._part_open = False
        part_kind, _, field = self._kinds()
        return self.stream.events(
            "response.content_part.done",
            **self._where(),
            part={"type": part_kind, field: self.text},
        )


class _FunctionCallOutput(_Output):
    """A ``function_call`` item: the client runs the function and answers."""

    def __init__(self, stream: ResponseStream, index: int, call: FunctionCall) -> None:
        super().__init__(
            stream,
            index,
            {
                "id": stream.events.ids("item"),
                "object": "realtime.item",
                "type": "function_call",
                "status": "in_progress",
                "name": call.name,
                "call_id": stream.events.ids("call"),
                "arguments": "",
            },
        )
        self._call = call
        self._arguments_open = False

    def _where(self) -> JSONObject:
        return {
            "response_id": self.stream.response_id,
            "item_id": self.item.id,
            "output_index": self.index,
            "call_id": self.item.wire["call_id"],
        }

    def _body(self) -> list[_Step]:
        pieces = _pieces(self._call.arguments, ARGUMENTS_CHUNK_CHARS)
        steps = [_Step(functools.partial(self._delta, piece)) for piece in pieces]
        return [*steps, _Step(self._arguments_done)]

    def _close_body(self) -> list[Callable[[], JSONObject]]:
        # The SDK documents the done event for cancelled responses too.
        return [self._arguments_done] if self._arguments_open else []

    def _delta(self, piece: str) -> JSONObject:
        self._arguments_open = True
        self.text += piece
        self.item.wire["arguments"] = self.text
        return self.stream.events(
            "response.function_call_arguments.delta", **self._where(), delta=piece
        )

    def _arguments_done(self) -> JSONObject:
        self._arguments_open = False
        fields = self._where()
        if self.stream.family is Family.GA:
            fields["name"] = self.item.wire["name"]  # GA adds it; beta types lack it.
        return self.stream.events(
            "response.function_call_arguments.done", **fields, arguments=self.text
        )


class _McpCallOutput(_Output):
    """A GA ``mcp_call`` item: the service runs the tool on the (fake) MCP server."""

    def __init__(self, stream: ResponseStream, index: int, call: McpCall) -> None:
        # The SDK's mcp_call item has no object or status field.
        super().__init__(
            stream,
            index,
            {
                "id": stream.events.ids("mcp"),
                "type": "mcp_call",
                "server_label": call.server_label,
                "name": call.name,
                "arguments": "",
                "output": None,
                "error": None,
            },
        )
        self._call = call
        self._arguments_open = False

    def _where(self) -> JSONObject:
        return {"item_id": self.item.id, "output_index": self.index}

    def _body(self) -> list[_Step]:
        pieces = _pieces(self._call.arguments, ARGUMENTS_CHUNK_CHARS)
        steps = [_Step(functools.partial(self._delta, piece)) for piece in pieces]
        return [
            *steps,
            _Step(self._arguments_done),
            _Step(self._in_progress),
            _Step(self._completed),
        ]

    def _close_body(self) -> list[Callable[[], JSONObject]]:
        return [self._arguments_done] if self._arguments_open else []

    def _delta(self, piece: str) -> JSONObject:
        self._arguments_open = True
        self.text += piece
        self.item.wire["arguments"] = self.text
        return self.stream.events(
            "response.mcp_call_arguments.delta",
            response_id=self.stream.response_id,
            **self._where(),
            delta=piece,
        )

    def _arguments_done(self) -> JSONObject:
        self._arguments_open = False
        return self.stream.events(
            "response.mcp_call_arguments.done",
            response_id=self.stream.response_id,
            **self._where(),
            arguments=self.text,
        )

    def _in_progress(self) -> JSONObject:
        return self.stream.events("response.mcp_call.in_progress", **self._where())

    def _completed(self) -> JSONObject:
        self.item.wire["output"] = mcp.call_tool(self._call.name, self.text)
        return self.stream.events("response.mcp_call.completed", **self._where())
