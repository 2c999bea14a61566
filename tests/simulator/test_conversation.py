"""The conversation store: ordering, lookups, deletion, truncation."""

from __future__ import annotations

import pytest

from relay.simulator._checks import Invalid
from relay.simulator.conversation import ROOT, Conversation, Item


def item(item_id: str, role: str = "user") -> Item:
    part = (
        {"type": "audio", "transcript": "words"}
        if role == "assistant"
        else {"type": "input_text", "text": "t"}
    )
    return Item(
        {"id": item_id, "type": "message", "role": role, "content": [part]},
        audio_ms=1000,
    )


def ids(conversation: Conversation) -> list[str]:
    return [entry.id for entry in conversation]


def test_add_reports_the_previous_item() -> None:
    """Appending, inserting at root and after an item."""
    conversation = Conversation("conv_1")
    assert conversation.add(item("a")) is None
    assert conversation.add(item("b")) == "a"
    assert conversation.add(item("c"), ROOT) is None
    assert conversation.add(item("d"), "c") == "c"
    assert ids(conversation) == ["c", "d", "a", "b"]
    assert conversation.last_id() == "b"


def test_add_rejects_duplicates_and_unknown_predecessors() -> None:
    """Ids are unique; the predecessor must exist."""
    conversation = Conversation("conv_1")
    conversation.add(item("a"))
    with pytest.raises(Invalid) as duplicate:
        conversation.add(item("a"))
    assert duplicate.value.param == "item.id"
    with pytest.raises(Invalid) as unknown:
        conversation.add(item("b"), "zzz")
    assert unknown.value.code == "item_create_invalid_previous_item_id"
    assert ids(conversation) == ["a"]


def test_require_and_remove() -> None:
    """Missing items raise item_<operation>_invalid_item_id."""
    conversation = Conversation("conv_1")
    conversation.add(item("a"))
    assert conversation.require("a", "retrieve").id == "a"
    conversation.remove("a")
    assert "a" not in conversation
    with pytest.raises(Invalid) as missing:
        conversation.remove("a")
    assert missing.value.code == "item_delete_invalid_item_id"


def test_truncate() -> None:
    """Truncation cuts the audio and clears the transcript, within bounds."""
    conversation = Conversation("conv_1")
    conversation.add(item("a", role="assistant"))
    with pytest.raises(Invalid):
        conversation.truncate("a", 0, 1001)
    conversation.truncate("a", 0, 250)
    truncated = conversation.require("a", "truncate")
    assert truncated.audio_ms == 250
    assert truncated.wire["content"][0]["transcript"] == ""
    assert truncated.texts() == []


def test_snapshots_are_copies() -> None:
    """Events hold copies: later changes to the item do not leak into them."""
    entry = item("a", role="assistant")
    snapshot = entry.snapshot()
    entry.wire["content"][0]["transcript"] = "changed"
    assert snapshot["content"][0]["transcript"] == "words"
