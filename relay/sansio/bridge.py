"""The protocol bridge: a preview-protocol client on a GA upstream.

Azure deprecated the preview realtime protocol on 2026-04-30; its GA endpoint
(``/openai/v1/realtime?model=``) speaks the GA events and session shape
(protocol.md §3.2, §4.2). A deployment configured with
``upstream_protocol: ga`` sends every session there, and :class:`Bridge`
translates the events of a client that speaks the preview protocol, both
ways, so that the client sees a preview session and the upstream a GA one.

Everything else in the session (policy, hiding, metering) sees the GA side:
client events are translated *before* the policy judges them, upstream events
*after* they are metered and hidden. That is the one normalised view.

**Client to upstream** (:meth:`Bridge.client_event`):

- ``session.update``: the flat preview session becomes the nested GA one
  (the map of protocol.md §3.3, kept in :data:`~relay.sansio.fields.FIELDS`),
  with ``type: "realtime"`` added; ``modalities`` ``["text", "audio"]``
  becomes ``output_modalities`` ``["audio"]`` (audio with its transcript);
  ``speed`` moves to ``audio.output.speed``; ``turn_detection``
  ``{"type": "none"}`` (rtclient's "off") becomes ``null``; a named
  ``tool_choice`` in Azure's preview shape ``{type, function: {name}}``
  becomes GA's ``{type, name}``. ``temperature`` does not exist in GA: it is
  remembered (and reported back in the session) but not sent.
- ``response.create``: the same renames inside ``response`` (``modalities``,
  ``voice``, ``output_audio_format``, ``max_response_output_tokens``), and
  the items of ``response.input`` as below; ``temperature`` is dropped.
- ``conversation.item.create``: assistant content ``text``/``audio`` becomes
  ``output_text``/``output_audio``.
- Values a rename cannot read (a modality list with a number in it, a format
  that is not a preview name) move to the GA key unchanged, so that the
  upstream refuses them with its own error; keys the preview protocol does
  not have are passed as they are (a preview client may opt into a GA
  setting such as ``truncation``). Every other client event is the same in
  both protocols and passes untouched, audio appends included.

**Upstream to client** (:meth:`Bridge.upstream_frame`):

- Renamed events (``response.output_audio.delta`` to ``response.audio.delta``,
  the transcript and text events) are renamed without parsing: the answer
  is how the text's beginning changes (:class:`Renamed`), and the driver
  builds the client's frame from the bytes received, so an audio delta's
  base64 is never decoded, and copied once.
- ``session.created``/``session.updated`` show the session in the preview
  shape: GA-only fields (``type``, ``truncation``, ``prompt``,
  ``reasoning``, ``parallel_tool_calls``), MCP tools and ``idle_timeout_ms``
  are left out, even when the client set them itself; ``temperature`` is
  the client's.
- ``conversation.item.added`` becomes ``conversation.item.created``;
  ``conversation.item.done`` has no preview counterpart and is dropped (the
  item's final state reaches the client in ``response.output_item.done`` and
  ``response.done``, as in preview).
- Items (in item, output-item and response events) and content parts say
  ``text``/``audio`` for GA's ``output_text``/``output_audio``; responses
  say ``modalities``, ``voice`` and ``output_audio_format``.
- ``error`` events name the preview parameter (``session.voice`` for
  ``session.audio.output.voice``), in ``param`` and where the message
  quotes it.
- Events only GA has (MCP, ``input_audio_buffer.timeout_triggered``,
  diarized transcription segments, DTMF), which a preview client meets only
  when GA-only settings are in force, and unknown events pass unchanged.

GA-only settings reach the upstream from the policy, or from the client
itself (GA keys and values in its events pass, as above), as far as the
policy lets them: the policy judges the translated event.

The translation never fails: a frame it cannot read is passed as it came.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from relay.sansio.fields import ABSENT, FIELDS, JSON, for_family, put, read
from relay.sansio.wire import dump, parse_upstream


__all__ = [
    "DEFAULT_TEMPERATURE",
    "RENAMED_EVENTS",
    "Bridge",
    "Renamed",
    "preview_param",
]

DEFAULT_TEMPERATURE: Final = 0.8
"""The preview default (protocol.md §3.1), reported until the client sets one."""

RENAMED_EVENTS: Final[Mapping[str, str]] = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}
"""GA server events whose preview counterpart differs only in name (protocol.md §4.2)."""


@dataclass(frozen=True, slots=True)
class Renamed:
    """A frame shown with its first ``cut`` characters replaced by ``head``.

    Both are ASCII: the beginning of a renamed event, ``{"type":"<name>"``.
    """

    head: str
    cut: int

    def apply(self, text: str) -> str:
        """``text`` renamed."""
        return self.head + text[self.cut :]


_RENAMED_PREFIXES: Final[Mapping[str, Renamed]] = {
    ga: Renamed('{"type":"' + preview + '"', len('{"type":"' + ga + '"'))
    for ga, preview in RENAMED_EVENTS.items()
}
"""How each renamed event's text begins, in preview's words: one instance per
name, so that renaming allocates nothing but the frame."""

_SAME_EVENTS: Final = frozenset(
    {
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "output_audio_buffer.cleared",
        "rate_limits.updated",
        "response.function_call_arguments.delta",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.failed",
        "conversation.item.deleted",
        "conversation.item.truncated",
        "conversation.created",
    }
)
"""Server events the same in both protocols: passed without parsing."""

_DROPPED_EVENTS: Final = frozenset({"conversation.item.done"})

_TYPE_PREFIX: Final = '{"type":"'

# GA session keys with no preview counterpart of the same name.
_GA_ONLY_SESSION_KEYS: Final = frozenset(
    {
        "type",
        "audio",
        "output_modalities",
        "max_output_tokens",
        "truncation",
        "prompt",
        "reasoning",
        "parallel_tool_calls",
    }
)
_PREVIEW_FORMATS: Final[Mapping[str, JSON]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}
_CONTENT_TO_GA: Final = {"text": "output_text", "audio": "output_audio"}
_CONTENT_FROM_GA: Final = {"output_text": "text", "output_audio": "audio"}


def _modalities_to_ga(value: JSON) -> JSON:
    # GA has one output modality: audio (with its transcript) or text.
    if isinstance(value, list) and value and set(value) <= {"text", "audio"}:
        return ["audio"] if "audio" in value else ["text"]
    return value  # not a preview value: the upstream says what is wrong


def _format_to_ga(value: JSON) -> JSON:
    if isinstance(value, str) and value in _PREVIEW_FORMATS:
        return dict(_PREVIEW_FORMATS[value])
    return value


def _turn_detection_to_ga(value: JSON) -> JSON:
    # rtclient turns detection off with {"type": "none"}; GA says null.
    if isinstance(value, dict) and value.get("type") == "none" and len(value) == 1:
        return None
    return value


_TO_GA: Final[Mapping[str, Callable[[JSON], JSON]]] = {
    "modalities": _modalities_to_ga,
    "input_audio_format": _format_to_ga,
    "output_audio_format": _format_to_ga,
    "turn_detection": _turn_detection_to_ga,
}


def _ga_paths(*, response: bool) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Preview key -> (field name, GA path), for a session or a response object.

    ``temperature`` has no GA path and is not listed.
    """
    paths: dict[str, tuple[str, tuple[str, ...]]] = {}
    for name, field in FIELDS.items():
        path = field.ga_response_path if response else field.ga_path
        if path is None or not field.preview:
            continue
        for key in field.preview_response_keys if response else (name,):
            paths[key] = (name, path)
    return paths


_SESSION_PATHS: Final = _ga_paths(response=False)
_RESPONSE_PATHS: Final = _ga_paths(response=True)
_RESPONSE_KEYS: Final = frozenset((*_RESPONSE_PATHS, "temperature"))


def _params() -> dict[str, str]:
    """GA parameter path -> preview parameter path, for error events."""
    params: dict[str, str] = {}
    for name, field in FIELDS.items():
        if not field.preview:
            continue
        if field.ga_path is not None:
            params["session." + ".".join(field.ga_path)] = "session." + name
        if field.ga_response_path is not None and field.preview_response_keys:
            params["response." + ".".join(field.ga_response_path)] = (
                "response." + field.preview_response_keys[0]
            )
    params["session.audio.output.speed"] = "session.speed"
    return params


_PARAMS: Final = _params()


def preview_param(param: str | None) -> str | None:
    """An error's ``param`` as a preview client wrote it (``session.voice``).

    A GA path the field table maps, or a path under one, is renamed; anything
    else is returned as it is.
    """
    if param is None:
        return None
    path = param
    while True:
        mapped = _PARAMS.get(path)
        if mapped is not None:
            return mapped + param[len(path) :]
        cut = path.rfind(".")
        if cut < 0:
            return param
        path = path[:cut]


def _item_to_ga(item: JSON) -> None:
    if not isinstance(item, dict):
        return
    content = item.get("content")
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                kind = part.get("type")
                if isinstance(kind, str) and kind in _CONTENT_TO_GA:
                    part["type"] = _CONTENT_TO_GA[kind]


def _item_from_ga(item: JSON) -> None:
    if not isinstance(item, dict):
        return
    content = item.get("content")
    if isinstance(content, list):
        for part in content:
            _part_from_ga(part)


def _part_from_ga(part: JSON) -> None:
    if isinstance(part, dict):
        kind = part.get("type")
        if isinstance(kind, str) and kind in _CONTENT_FROM_GA:
            part["type"] = _CONTENT_FROM_GA[kind]


class Bridge:
    """Translation state of one preview client on a GA upstream.

    Pure and per session: it remembers what the preview client said that GA
    cannot hold (its ``temperature``) or says differently (the shape of a
    named ``tool_choice``), to show the client its own session back.
    """

    __slots__ = ("_nested_choice", "temperature")

    def __init__(self) -> None:
        self.temperature: JSON = DEFAULT_TEMPERATURE
        """The temperature the client set last (GA has none): shown in its session."""
        # Whether the client names a tool in Azure's preview shape
        # {"type": "function", "function": {"name": ...}}; GA's is flat.
        self._nested_choice = False

    # Client to upstream

    def client_event(self, event: dict[str, JSON]) -> bool:
        """Translate a parsed client event to GA, in place; whether it changed.

        An event that did not change may be forwarded as the client's text.
        """
        kind = event["type"]
        if kind == "session.update":
            session = event.get("session")
            if not isinstance(session, dict):
                return False  # the upstream says what is wrong
            event["session"] = self._session_to_ga(session)
            return True
        if kind == "response.create":
            response = event.get("response")
            if not isinstance(response, dict):
                return False
            event["response"] = self._response_to_ga(response)
            return True
        if kind == "conversation.item.create":
            _item_to_ga(event.get("item"))
            return True
        return False

    def _session_to_ga(self, session: dict[str, JSON]) -> dict[str, JSON]:
        ga: dict[str, JSON] = {"type": "realtime"}
        for key, value in session.items():
            if key in _SESSION_PATHS or key in ("temperature", "speed"):
                continue
            # Keys preview lacks pass as sent, "type" included: a preview
            # client may opt into a GA setting, and the upstream judges the rest.
            ga[key] = value
        for key, value in session.items():
            if key == "temperature":
                self.temperature = value
            elif key == "speed":
                put(ga, ("audio", "output", "speed"), value)
            elif key in _SESSION_PATHS:
                name, path = _SESSION_PATHS[key]
                put(ga, path, self._value_to_ga(name, value))
        return ga

    def _response_to_ga(self, response: dict[str, JSON]) -> dict[str, JSON]:
        ga: dict[str, JSON] = {}
        for key, value in response.items():
            if key not in _RESPONSE_KEYS:
                ga[key] = value
        for key, value in response.items():
            if key in _RESPONSE_PATHS:  # not temperature: none in GA
                name, path = _RESPONSE_PATHS[key]
                put(ga, path, self._value_to_ga(name, value))
        inputs = ga.get("input")
        if isinstance(inputs, list):
            for item in inputs:
                _item_to_ga(item)
        return ga

    def _value_to_ga(self, name: str, value: JSON) -> JSON:
        if name == "tool_choice":
            return self._choice_to_ga(value)
        convert = _TO_GA.get(name)
        return value if convert is None else convert(value)

    def _choice_to_ga(self, value: JSON) -> JSON:
        if (
            isinstance(value, dict)
            and value.get("type") == "function"
            and "name" not in value
            and isinstance(value.get("function"), dict)
        ):
            function = value["function"]
            if set(function) == {"name"}:
                self._nested_choice = True
                flat = {k: v for k, v in value.items() if k != "function"}
                flat["name"] = function["name"]
                return flat
        if isinstance(value, dict) and "name" in value:
            self._nested_choice = False
        return value

    # Upstream to client

    def upstream_frame(self, data: str | bytes) -> str | bytes | Renamed | None:
        """An upstream frame as the preview client reads it; ``None``: not for it.

        A renamed event whose text begins with its type is not copied here:
        the :class:`Renamed` answer says how its beginning changes (the
        caller may build the new frame from the bytes received). Events the
        same in both protocols are returned as they are, unparsed; the others
        are parsed, translated and written anew. A frame that is not a
        readable event is returned unchanged.
        """
        if not isinstance(data, str):
            return data
        if data.startswith(_TYPE_PREFIX):
            end = data.find('"', len(_TYPE_PREFIX))
            if end > 0:
                named = data[len(_TYPE_PREFIX) : end]
                renamed = _RENAMED_PREFIXES.get(named)
                if renamed is not None:
                    return renamed
                if named in _SAME_EVENTS:
                    return data
        event = parse_upstream(data)
        if event is None:
            return data
        kind = event.get("type")
        if not isinstance(kind, str) or kind in _SAME_EVENTS:
            return data
        if kind in _DROPPED_EVENTS:
            return None
        preview_name = RENAMED_EVENTS.get(kind)
        if preview_name is not None:
            event["type"] = preview_name
            return dump(event)
        if not self.upstream_event(event):
            return data
        return dump(event)

    def upstream_event(self, event: dict[str, JSON]) -> bool:
        """Translate a parsed upstream event to preview, in place; whether it changed."""
        kind = event.get("type")
        if kind in ("session.created", "session.updated"):
            session = event.get("session")
            if isinstance(session, dict):
                event["session"] = self.session_from_ga(session)
            return True
        if kind == "conversation.item.added":
            event["type"] = "conversation.item.created"
            _item_from_ga(event.get("item"))
            return True
        if kind in (
            "conversation.item.retrieved",
            "response.output_item.added",
            "response.output_item.done",
        ):
            _item_from_ga(event.get("item"))
            return True
        if kind in ("response.content_part.added", "response.content_part.done"):
            _part_from_ga(event.get("part"))
            return True
        if kind in ("response.created", "response.done"):
            response = event.get("response")
            if isinstance(response, dict):
                event["response"] = self._response_from_ga(response)
            return True
        if kind == "response.function_call_arguments.done":
            # GA adds the function's name; the preview event has none.
            return event.pop("name", ABSENT) is not ABSENT
        if kind == "error":
            error = event.get("error")
            if isinstance(error, dict) and isinstance(error.get("param"), str):
                ga = error["param"]
                param = preview_param(ga)
                if param != ga:
                    error["param"] = param
                    message = error.get("message")
                    if isinstance(message, str):
                        error["message"] = message.replace(f"'{ga}'", f"'{param}'")
                    return True
            return False
        return False

    def session_from_ga(self, session: dict[str, JSON]) -> dict[str, JSON]:
        """A GA ``session`` object in the preview shape (see the module docstring)."""
        preview: dict[str, JSON] = {
            key: value
            for key, value in session.items()
            if key not in _GA_ONLY_SESSION_KEYS and key not in FIELDS
        }
        for name in _SESSION_PATHS:  # a session's keys are the field names
            for _, value in read(session, FIELDS[name], "ga", response=False):
                if name == "tool_choice":
                    value = self._choice_from_ga(value)
                elif name in ("tools", "turn_detection"):
                    # MCP tools and idle_timeout_ms have no preview form.
                    value = for_family(name, value, "preview")
                preview[name] = value
        preview["temperature"] = self.temperature
        audio = session.get("audio")
        output = audio.get("output") if isinstance(audio, dict) else None
        if isinstance(output, dict) and "speed" in output:
            preview["speed"] = output["speed"]
        return preview

    def _choice_from_ga(self, value: JSON) -> JSON:
        if (
            self._nested_choice
            and isinstance(value, dict)
            and value.get("type") == "function"
            and "name" in value
        ):
            nested = {k: v for k, v in value.items() if k != "name"}
            nested["function"] = {"name": value["name"]}
            return nested
        return value

    def _response_from_ga(self, response: dict[str, JSON]) -> dict[str, JSON]:
        preview = {
            key: value
            for key, value in response.items()
            if key not in ("output_modalities", "audio")
        }
        for name in ("modalities", "voice", "output_audio_format"):
            for _, value in read(response, FIELDS[name], "ga", response=True):
                preview[name] = value
        preview.setdefault("temperature", self.temperature)
        output = preview.get("output")
        if isinstance(output, list):
            for item in output:
                _item_from_ga(item)
        return preview
