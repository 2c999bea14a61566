"""Heap freed after large messages goes back to the system."""

from __future__ import annotations

import asyncio
import platform
import subprocess
import sys

import pytest

from relay.ws.frames import BINARY, build_frame
from relay.ws.memory import LARGE_MESSAGE, Trimmer, trimmer
from tests.helpers.timing import SECOND
from tests.ws.test_leg import open_leg, scripted


_PATTERN = """
import os, sys

from relay.ws.memory import malloc_trim

def rss_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

base = rss_mib()
# What 20 hostile clients make the relay do: 16 MiB frames arriving in 4 KiB
# reads, interleaved, with small objects allocated meanwhile that live on.
sessions, small = [[] for _ in range(20)], []
for _ in range(4096):
    for chunks in sessions:
        chunks.append(os.urandom(4096))
        small.append(object())
frames = [b"".join(chunks) for chunks in sessions]  # each frame complete
# Other sessions go on: their buffers now sit above the frames' in the heap.
others = [os.urandom(1000) for _ in range(100)]
for chunks in sessions:
    chunks.clear()
del frames
freed = rss_mib() - base
malloc_trim()
print(freed, rss_mib() - base)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_a_trim_returns_what_glibc_keeps_after_large_frames() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PATTERN],
        capture_output=True,
        text=True,
        timeout=60 * SECOND,
        check=True,
    )
    freed, trimmed = map(float, result.stdout.split())
    assert freed > 200  # MiB glibc keeps after 320 MiB were freed: the reason
    assert trimmed < 30


async def test_large_messages_schedule_one_trim_a_while_later() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    calls: list[float] = []

    def trim() -> None:
        calls.append(loop.time())
        if not done.done():
            done.set_result(None)

    trims = Trimmer(loop, quiet=0.05, trim=trim)
    trims.released(LARGE_MESSAGE - 1)
    states = [trims.scheduled]  # ordinary messages cost a comparison
    started = loop.time()
    for _ in range(100):
        trims.released(LARGE_MESSAGE)
    states.append(trims.scheduled)
    assert states == [False, True]
    async with asyncio.timeout(5 * SECOND):
        await done
    assert len(calls) == 1
    assert calls[0] - started >= 0.05
    assert (trims.trims, trims.scheduled) == (1, False)
    trims.released(16 * LARGE_MESSAGE)
    states.append(trims.scheduled)
    trims.close()
    states.append(trims.scheduled)
    assert states == [False, True, True, False]


async def test_no_trim_while_large_messages_keep_coming() -> None:
    """A stream of them reuses its memory: a trim waits for a quiet spell."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    releases: list[float] = []
    trimmed: list[float] = []

    def trim() -> None:
        trimmed.append(loop.time())
        if len(releases) == 11 and not done.done():
            done.set_result(None)

    trims = Trimmer(loop, quiet=0.1, trim=trim)

    def release(left: int) -> None:
        releases.append(loop.time())
        trims.released(LARGE_MESSAGE)
        if left:
            loop.call_later(0.03, release, left - 1)

    release(10)
    async with asyncio.timeout(5 * SECOND):
        await done
    # However late the timers ran: no trim within `quiet` of a release.
    for at in trimmed:
        assert not any(at - 0.1 < released <= at for released in releases)
    assert trimmed[-1] >= releases[-1] + 0.1


async def test_a_leg_asks_for_a_trim_after_a_large_message() -> None:
    payload = b"\0" * LARGE_MESSAGE
    async with scripted(build_frame(BINARY, payload, mask=False)) as peer:
        leg = await open_leg(peer.url, max_message_bytes=2 * LARGE_MESSAGE)
        received: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        leg.attach(
            lambda data, raw, size: received.set_result(size),
            lambda code, reason: None,
            lambda: None,
        )
        async with asyncio.timeout(5 * SECOND):
            assert await received == LARGE_MESSAGE
        assert trimmer().scheduled
        leg.abort()
