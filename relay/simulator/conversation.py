"""The session's one default conversation and the items in it (protocol.md §4).

Pure. Items are kept in their wire shape (``object: "realtime.item"``) minus
audio bytes, which sit beside them: events never carry item audio except
``conversation.item.retrieved``.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from dataclasses import dataclass

from relay.simulator._checks import Invalid
from relay.simulator.wire import JSONObject


ROOT = "root"
"""``previous_item_id`` that inserts at the start of the conversation."""


@dataclass
class Item:
    """One conversation item."""

    wire: JSONObject
    """The item as events show it, without audio bytes."""
    audio: bytes = b""
    """User audio, in the session's input format when it was added."""
    audio_ms: int = 0
    """Duration of the item's audio (input or output), for the usage formula."""

    @property
    def id(self) -> str:
        """The item id (``item_…`` or the client's own id)."""
        return str(self.wire["id"])

    def texts(self) -> list[str]:
        """Return the text the usage formula counts: what the model reads as text.

        User audio counts as audio, so user transcripts are not text tokens;
        assistant transcripts are. Images count nothing.
        """
        kind = self.wire["type"]
        if kind == "function_call":
            return [self.wire["arguments"]]
        if kind == "function_call_output":
            return [self.wire["output"]]
        if kind == "mcp_call":
            return [t for t in (self.wire["arguments"], self.wire["output"]) if t]
        if kind != "message":
            return []  # An MCP tool list: not billed by the formula.
        assistant = self.wire["role"] == "assistant"
        texts = []
        for part in self.wire["content"]:
            texts.append(part.get("text") or "")
            if assistant:
                texts.append(part.get("transcript") or "")
        return [text for text in texts if text]

    def snapshot(self, *, with_audio: bool = False) -> JSONObject:
        """Return a copy of the wire item for an event (``with_audio`` for retrieve)."""
        wire = copy.deepcopy(self.wire)
        if with_audio and self.audio:
            for part in wire["content"]:
                if part["type"] == "input_audio":
                    part["audio"] = _b64(self.audio)
        return wire


class Conversation:
    """The ordered items of the default conversation (``conv_…``)."""

    def __init__(self, conversation_id: str) -> None:
        self.id = conversation_id
        """The conversation id shown in ``conversation.created`` and responses."""
        # Ordered as the model reads them; conversations are short, so a list is fine.
        self._items: list[Item] = []

    def __iter__(self) -> Iterator[Item]:
        return iter(list(self._items))

    def __contains__(self, item_id: object) -> bool:
        return any(item.id == item_id for item in self._items)

    def get(self, item_id: str) -> Item | None:
        """Return the item with ``item_id``, if any."""
        return next((item for item in self._items if item.id == item_id), None)

    def last_id(self) -> str | None:
        """Return the id of the last item, or None for an empty conversation."""
        return self._items[-1].id if self._items else None

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert ``item``; return the id of the item now before it.

        ``previous_item_id`` None appends, :data:`ROOT` inserts first, and an
        item id inserts after that item.

        Raises:
            Invalid: ``item``'s id is taken or ``previous_item_id`` is unknown.
        """
        if item.id in self:
            raise Invalid(
                "invalid_value",
                f"Item with id '{item.id[:64]}' already exists.",
                "item.id",
            )
        if previous_item_id is None:
            previous = self.last_id()
            self._items.append(item)
            return previous
        if previous_item_id == ROOT:
            self._items.insert(0, item)
            return None
        for index, existing in enumerate(self._items):
            if existing.id == previous_item_id:
                self._items.insert(index + 1, item)
                return previous_item_id
        raise Invalid(
            "item_create_invalid_previous_item_id",
            f"Error adding item: the previous item with id "
            f"'{previous_item_id[:64]}' does not exist.",
            "previous_item_id",
        )

    def require(self, item_id: str, operation: str) -> Item:
        """Return the item ``operation`` (retrieve, delete, truncate) targets.

        Raises:
            Invalid: ``item_<operation>_invalid_item_id`` if there is no such item.
        """
        item = self.get(item_id)
        if item is None:
            raise Invalid(
                f"item_{operation}_invalid_item_id",
                f"Cannot {operation} item: no item with id '{item_id[:64]}' exists.",
                "item_id",
            )
        return item

    def remove(self, item_id: str) -> None:
        """Delete the item with ``item_id`` (see :meth:`require`)."""
        self._items.remove(self.require(item_id, "delete"))

    def truncate(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        """Cut an assistant audio part at ``audio_end_ms`` and drop its transcript.

        Raises:
            Invalid: No such item, not an assistant audio part, or
                ``audio_end_ms`` beyond the item's audio (protocol.md §4.7).
        """
        item = self.require(item_id, "truncate")
        content = item.wire.get("content", [])
        if (
            item.wire.get("role") != "assistant"
            or content_index >= len(content)
            or content[content_index]["type"] not in ("audio", "output_audio")
        ):
            raise Invalid(
                "invalid_value",
                "Only the audio content of assistant messages can be truncated.",
                "content_index",
            )
        if audio_end_ms > item.audio_ms:
            raise Invalid(
                "invalid_value",
                f"audio_end_ms ({audio_end_ms}) is longer than the item's audio "
                f"({item.audio_ms} ms).",
                "audio_end_ms",
            )
        item.audio_ms = audio_end_ms
        # The model must not "remember" words the user never heard.
        content[content_index]["transcript"] = ""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
