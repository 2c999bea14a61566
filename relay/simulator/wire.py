"""Wire vocabulary shared by the simulator: protocol families, event names, ids, errors.

Everything here is pure. Server events are plain JSON objects (``dict``) because
that is what goes on the wire and what tests compare against.
"""

from __future__ import annotations

import enum
import random
import string
from collections.abc import Callable
from typing import Any, TypeAlias


JSONObject: TypeAlias = dict[str, Any]
"""A decoded JSON object: one client or server event, or a part of one."""


class Family(enum.StrEnum):
    """Protocol family of a connection, chosen by the handshake URL (protocol.md §1.1)."""

    PREVIEW = "preview"
    """The beta/preview event names and session shape (protocol.md §3.1)."""

    GA = "ga"
    """The GA event names and ``session.type = "realtime"`` shape (protocol.md §3.2)."""


# protocol.md §4.2 rename table. Keys are preview names.
_GA_NAMES = {
    "response.text.delta": "response.output_text.delta",
    "response.text.done": "response.output_text.done",
    "response.audio.delta": "response.output_audio.delta",
    "response.audio.done": "response.output_audio.done",
    "response.audio_transcript.delta": "response.output_audio_transcript.delta",
    "response.audio_transcript.done": "response.output_audio_transcript.done",
    # GA servers announce new items with ``conversation.item.added`` (and finalise
    # them with ``conversation.item.done``) where preview sends
    # ``conversation.item.created``. That is OpenAI's GA behaviour per the
    # openai-python GA types; UNVERIFIED that Azure's GA endpoint does the same.
    "conversation.item.created": "conversation.item.added",
}


def event_type(family: Family, preview_name: str) -> str:
    """Return the server event type for ``family``, given its preview name."""
    if family is Family.GA:
        return _GA_NAMES.get(preview_name, preview_name)
    return preview_name


_ID_ALPHABET = string.ascii_letters + string.digits
# Azure ids look like ``event_AhbxcTqlUCcm4XLtyZOrl``: a prefix and 21 base62 chars.
_ID_LENGTH = 21


class IdFactory:
    """Deterministic generator of Azure-looking ids (``event_…``, ``item_…``).

    The simulator core never touches global randomness, so a session built
    with the same seed produces the same ids; the network edge passes a fresh
    random seed per connection.
    """

    def __init__(self, seed: int = 0) -> None:
        # Private generator: ids must not depend on, or disturb, global state.
        self._random = random.Random(seed)

    def __call__(self, prefix: str) -> str:
        """Return a new id such as ``resp_Xy…`` (125 random bits: collisions are moot)."""
        suffix = "".join(self._random.choices(_ID_ALPHABET, k=_ID_LENGTH))
        return f"{prefix}_{suffix}"


def error_event(
    event_id: str,
    *,
    code: str,
    message: str,
    param: str | None = None,
    client_event_id: str | None = None,
    error_type: str = "invalid_request_error",
) -> JSONObject:
    """Build an ``error`` server event (protocol.md §1.4).

    Args:
        event_id: The server event id of the error event itself.
        code: Machine-readable error code, e.g. ``input_audio_buffer_commit_empty``.
        message: Human-readable explanation.
        param: Dotted path of the offending parameter, if any.
        client_event_id: ``event_id`` of the client event that caused the error.
        error_type: ``invalid_request_error`` or ``server_error``.
    """
    return {
        "type": "error",
        "event_id": event_id,
        "error": {
            "type": error_type,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        },
    }


class EventFactory:
    """Builds server events for one family, each with a fresh ``event_id``."""

    def __init__(self, family: Family, ids: Callable[[str], str]) -> None:
        self.family = family
        """The family whose event names are produced."""
        self.ids = ids
        """The session's id source, for the ids events refer to."""

    def __call__(self, preview_type: str, **fields: Any) -> JSONObject:
        """Return a ``preview_type`` event (renamed for GA) carrying ``fields``."""
        return {
            "type": event_type(self.family, preview_type),
            "event_id": self.ids("event"),
            **fields,
        }

    def error(
        self,
        code: str,
        message: str,
        param: str | None = None,
        client_event_id: str | None = None,
    ) -> JSONObject:
        """Return an ``invalid_request_error`` event (see :func:`error_event`)."""
        return error_event(
            self.ids("event"),
            code=code,
            message=message,
            param=param,
            client_event_id=client_event_id,
        )
