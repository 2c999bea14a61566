"""The session's responses: deciding, starting, cancelling and draining them in order.

Pure. At most one response is active (``response.done`` not produced yet),
and events come out strictly in order.

What a response says is decided when it starts: a tool call (see
:mod:`relay.simulator.tools`), or an answer. The answer is a canned sentence:

* after a tool's output (the last context item is a ``function_call_output``,
  or the response just ran an MCP tool): "This is the Realtime simulator.
  The <name> tool returned <N> characters.";
* otherwise: "This is the Realtime simulator. I heard <N.N> seconds of
  audio.", N.N being the audio of the last user message in the context, with
  " and saw <K> image(s)" before the period when that message holds images.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from relay.simulator import mcp
from relay.simulator._checks import Invalid
from relay.simulator.audio import response_audio
from relay.simulator.conversation import Conversation, Item
from relay.simulator.overrides import ResponseParams
from relay.simulator.responses import Answer, Planned, ResponseStream
from relay.simulator.tools import FunctionCall, McpCall, choose_call
from relay.simulator.usage import RateLimits, context_tokens
from relay.simulator.wire import EventFactory, JSONObject, event_type


def heard_transcript(heard_ms: int, images: int = 0) -> str:
    """What the simulated model says after hearing ``heard_ms`` of audio (and images)."""
    seen = ""
    if images:
        seen = f" and saw {images} image{'s' if images > 1 else ''}"
    return (
        f"This is the Realtime simulator. I heard {heard_ms / 1000:.1f} "
        f"seconds of audio{seen}."
    )


def tool_transcript(name: str, output: str) -> str:
    """What the simulated model says after a tool named ``name`` returned ``output``."""
    return (
        f"This is the Realtime simulator. The {name} tool returned "
        f"{len(output)} characters."
    )


class Responder:
    """Owns the response streams of one session."""

    def __init__(
        self, events: EventFactory, conversation: Conversation, *, audio_ms: int
    ) -> None:
        self._events = events
        self._conversation = conversation
        # Length of the generated assistant audio per answer.
        self._audio_ms = audio_ms
        # Streams with events left to produce, oldest first.
        self._streams: deque[ResponseStream] = deque()
        self._rate_limits = RateLimits()
        # Audio of the last response whose response.done was produced since
        # take_finished was last called (the idle timer's input).
        self._finished_audio_ms: int | None = None
        self.voice_locked = False
        """True once assistant audio was produced: the voice is then immutable."""

    @property
    def active(self) -> ResponseStream | None:
        """The response whose ``response.done`` is not produced yet, if any."""
        return next((s for s in self._streams if not s.finished), None)

    def start(
        self,
        params: ResponseParams,
        context: Sequence[Item],
        mcp_tools: Mapping[str, Sequence[JSONObject]],
    ) -> None:
        """Start a response to ``context`` (the items the model reads).

        ``mcp_tools`` holds the tools each MCP server listed, by server label.

        Raises:
            Invalid: ``conversation_already_has_active_response``.
        """
        active = self.active
        if active is not None:
            raise Invalid(
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress: "
                f"{active.response_id}. Wait until the response is finished "
                "before creating a new one.",
                None,
            )
        call = choose_call(params.tools, params.tool_choice, context, mcp_tools)
        plan: list[Planned]
        if isinstance(call, FunctionCall):
            plan = [call]  # The client runs it; the answer comes in a later response.
        elif isinstance(call, McpCall):
            output = mcp.call_tool(call.name, call.arguments)
            plan = [call, self._answer(params, tool_transcript(call.name, output))]
        else:
            plan = [self._answer(params, _answer_text(context))]
        self._streams.append(
            ResponseStream(
                events=self._events,
                params=params,
                conversation=self._conversation,
                input_tokens=context_tokens(params.instructions, context),
                plan=plan,
                rate_limits=self._rate_limits,
            )
        )

    def _answer(self, params: ResponseParams, transcript: str) -> Answer:
        if not params.audio_output:
            return Answer(transcript)
        audio = response_audio(self._audio_ms, params.output_format, params.voice)
        return Answer(transcript, audio)

    def cancel(self, response_id: str | None, reason: str) -> bool:
        """Cancel the active response (if ``response_id`` is None or matches it).

        Returns whether a response was cancelled; its remaining events change
        accordingly (see :meth:`ResponseStream.cancel`).
        """
        active = self.active
        if active is None or response_id not in (None, active.response_id):
            return False
        return active.cancel(reason)

    @property
    def next_audio_ms(self) -> int | None:
        """Audio milliseconds of the next event if it is an audio delta, else None."""
        for stream in self._streams:
            if not stream.exhausted:
                return stream.next_audio_ms
        return None

    def next_event(self) -> JSONObject | None:
        """Produce the next response event, or None when nothing is pending."""
        while self._streams:
            stream = self._streams[0]
            event = stream.next_event()
            if event is None:
                self._streams.popleft()
                continue
            if event["type"] == event_type(self._events.family, "response.audio.delta"):
                self.voice_locked = True
            elif event["type"] == "response.done":
                self._finished_audio_ms = stream.audio_output_ms
            return event
        return None

    def take_finished(self) -> int | None:
        """Return the audio length of a response finished since the last call, if any."""
        finished, self._finished_audio_ms = self._finished_audio_ms, None
        return finished

    def stop(self) -> None:
        """Drop every pending response event (the session is over)."""
        self._streams.clear()


def _answer_text(context: Sequence[Item]) -> str:
    """The canned answer to ``context`` (see the module docstring)."""
    if context and context[-1].wire["type"] == "function_call_output":
        call_id = context[-1].wire["call_id"]
        names = [
            item.wire["name"]
            for item in context
            if item.wire["type"] == "function_call" and item.wire["call_id"] == call_id
        ]
        name = names[-1] if names else "function"
        return tool_transcript(name, context[-1].wire["output"])
    users = [item for item in context if item.wire.get("role") == "user"]
    if not users:
        return heard_transcript(0)
    last = users[-1]
    images = sum(1 for part in last.wire["content"] if part["type"] == "input_image")
    return heard_transcript(last.audio_ms, images)
