"""The slow lane: large messages' work a step per turn of the loop, for the whole process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from relay.ws.frames import TEXT, build_frame
from relay.ws.lane import LANE_FROM, Lane, lane
from tests.helpers.timing import SECOND
from tests.ws.test_leg import open_leg
from tests.ws.test_upstream import switching


def job(name: str, steps: int, log: list[str]) -> Iterator[None]:
    for step in range(steps):
        log.append(f"{name}{step}")
        yield


async def test_one_step_per_turn_round_robin() -> None:
    """Two jobs alternate, and other callbacks of the loop run between any two steps."""
    loop = asyncio.get_running_loop()
    log: list[str] = []
    done = loop.create_future()
    slow = Lane(loop)
    slow.submit(job("a", 3, log))
    slow.submit(job("b", 2, log))

    def tick(turns: int) -> None:
        log.append("|")
        if turns and len(slow):
            loop.call_soon(tick, turns - 1)
        else:
            done.set_result(None)

    loop.call_soon(tick, 20)
    async with asyncio.timeout(5 * SECOND):
        await done
    steps = "".join(log).split("|")
    assert [step for step in steps if step] == ["a0", "b0", "a1", "b1", "a2"]
    assert all(len(step) <= 2 for step in steps)  # never two steps in one turn
    assert len(slow) == 0


async def test_a_failing_job_is_dropped_and_the_others_go_on() -> None:
    loop = asyncio.get_running_loop()
    log: list[str] = []
    finished = loop.create_future()

    def broken() -> Iterator[None]:
        yield
        raise RuntimeError("a bug in one job")

    def last() -> Iterator[None]:
        yield from job("c", 2, log)
        finished.set_result(None)

    slow = Lane(loop)
    slow.submit(broken())
    slow.submit(last())
    async with asyncio.timeout(5 * SECOND):
        await finished
    assert log == ["c0", "c1"]


async def test_a_leg_hands_a_large_message_over_through_the_lane_in_order() -> None:
    """The large message is delivered turns after its read, the small one after it."""
    loop = asyncio.get_running_loop()
    attached = asyncio.Event()
    large = b'"' + b"x" * LANE_FROM + b'"'

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            writer.write(switching(request))
            await attached.wait()  # so the messages take the driver's path
            writer.write(
                build_frame(TEXT, large, mask=False)
                + build_frame(TEXT, b"after", mask=False)
            )
            await writer.drain()
            await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        leg = await open_leg(f"ws://127.0.0.1:{port}/", max_message_bytes=2 * LANE_FROM)
        both = loop.create_future()
        received: list[int] = []

        def on_message(data: str | bytes, raw: bytes | None, size: int) -> None:
            received.append(size)
            if len(received) == 2:
                both.set_result(None)

        before = lane().submitted
        leg.attach(on_message, lambda code, reason: None, lambda: None)
        attached.set()
        async with asyncio.timeout(5 * SECOND):
            await both
        assert received == [len(large), len(b"after")]
        assert lane().submitted == before + 1
        assert len(lane()) == 0
        leg.close(1000, "")
        async with asyncio.timeout(5 * SECOND):
            await leg.done
