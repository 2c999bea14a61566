"""The byte-bounded outbox between a leg's reader and the other leg's writer."""

from __future__ import annotations

import asyncio

import pytest

from relay._outbox import CloseRequest, Outbox, frame_size


def test_frame_size_counts_utf8_bytes() -> None:
    """Text is measured as it travels: UTF-8."""
    assert frame_size("abc") == 3
    assert frame_size("é") == 2
    assert frame_size(b"\x00" * 5) == 5


async def test_frames_then_close_come_out_in_order() -> None:
    """A close is delivered after the frames queued before it; later frames are refused."""
    box = Outbox(1024)
    assert await box.put("a")
    assert await box.put(b"b")
    box.close(1000, "bye")
    assert not await box.put("too late")
    assert await box.get() == "a"
    assert await box.get() == b"b"
    assert await box.get() == CloseRequest(1000, "bye")


async def test_put_waits_for_room_and_resumes_in_order() -> None:
    """A full outbox holds the producer until the consumer makes room."""
    box = Outbox(10)
    assert await box.put("x" * 8)
    blocked = asyncio.ensure_future(box.put("y" * 8))
    await asyncio.sleep(0)
    assert not blocked.done()
    assert box.size == 8
    assert await box.get() == "x" * 8
    assert await blocked
    assert await box.get() == "y" * 8
    assert box.size == 0


async def test_oversized_frame_passes_an_empty_outbox() -> None:
    """A frame bigger than the bound still moves when nothing else is queued."""
    box = Outbox(4)
    assert await box.put("x" * 100)
    assert await box.get() == "x" * 100


async def test_discard_releases_producers_and_ends_the_consumer() -> None:
    """When the leg is gone nothing waits forever: put returns False, get returns None."""
    box = Outbox(4)
    assert await box.put("full")
    blocked = asyncio.ensure_future(box.put("more"))
    await asyncio.sleep(0)
    box.discard()
    assert await blocked is False
    assert await box.get() is None
    assert box.size == 0


async def test_get_waits_for_a_frame() -> None:
    """The consumer sleeps until something is queued."""
    box = Outbox(16)
    getter = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    assert not getter.done()
    await box.put("hello")
    assert await getter == "hello"


@pytest.mark.parametrize("first", ["close", "discard"])
async def test_close_and_discard_are_idempotent(first: str) -> None:
    """Repeated or mixed close/discard calls leave a consistent state."""
    box = Outbox(16)
    if first == "close":
        box.close(1000, "a")
        box.close(1011, "b")
        assert await box.get() == CloseRequest(1000, "a")
    box.discard()
    box.discard()
    assert await box.get() is None
