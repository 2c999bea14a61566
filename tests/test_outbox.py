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
    """A close is delivered after the frames queued before it; later frames are dropped."""
    box = Outbox(1024)
    assert box.push("a")
    assert box.push(b"b")
    box.close(1000, "bye")
    assert not box.push("too late")
    assert await box.get() == "a"
    assert await box.get() == b"b"
    assert await box.get() == CloseRequest(1000, "bye")


async def test_wait_room_holds_the_producer_until_the_consumer_drains() -> None:
    """Past the bound the producer waits; one get makes room."""
    box = Outbox(10)
    box.push("x" * 8)
    box.push("y" * 8)
    waiting = asyncio.ensure_future(box.wait_room())
    await asyncio.sleep(0)
    assert not waiting.done()
    assert box.size == 16
    assert await box.get() == "x" * 8
    async with asyncio.timeout(1):
        await waiting
    assert box.size == 8


async def test_under_the_bound_there_is_no_wait() -> None:
    """wait_room returns at once while the outbox is under its bound."""
    box = Outbox(10)
    box.push("x" * 9)
    async with asyncio.timeout(1):
        await box.wait_room()


async def test_discard_releases_producers_and_ends_the_consumer() -> None:
    """When the leg is gone nothing waits forever."""
    box = Outbox(4)
    box.push("full")
    waiting = asyncio.ensure_future(box.wait_room())
    await asyncio.sleep(0)
    box.discard()
    async with asyncio.timeout(1):
        await waiting
    assert not box.push("more")
    assert await box.get() is None
    assert box.size == 0


async def test_get_waits_for_a_frame() -> None:
    """The consumer sleeps until something is queued."""
    box = Outbox(16)
    getter = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    assert not getter.done()
    box.push("hello")
    async with asyncio.timeout(1):
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
