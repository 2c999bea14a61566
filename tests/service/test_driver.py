"""The session driver over two real legs (socketpairs): relaying, and a bug in the relay.

The peers are plain streams on the other ends: the client's sends masked
frames, the upstream's unmasked ones, as on the wire. No server, no
handshake: the driver starts where the endpoint hands it two open legs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import pytest
import structlog

from relay.config import FlowSettings
from relay.sansio.commands import Command, Ended, Metered, TokensUsed
from relay.sansio.limits import SessionLimits
from relay.sansio.session import RelaySession
from relay.service.driver import SessionDriver
from relay.typing import Side
from relay.ws.frames import CLOSE, TEXT, build_frame
from relay.ws.leg import Leg
from tests.helpers.timing import SECOND


class _LegProtocol(asyncio.Protocol):
    """Hands a transport's callbacks to the leg made on connection."""

    def __init__(self, *, server: bool, name: str) -> None:
        self._server, self._name = server, name
        self.leg: Leg | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.leg = Leg(
            cast(asyncio.Transport, transport),
            server=self._server,
            max_size=1 << 20,
            ping_interval=None,
            ping_timeout=None,
            close_timeout=1.0,
            write_limit=1 << 20,
            name=self._name,
        )

    def data_received(self, data: bytes) -> None:
        assert self.leg is not None
        self.leg.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.leg is not None
        self.leg.connection_lost()

    def pause_writing(self) -> None:
        assert self.leg is not None
        self.leg.pause_writing()

    def resume_writing(self) -> None:
        assert self.leg is not None
        self.leg.resume_writing()


class _Quiet:
    """An observer that records nothing."""

    def policy_applied(self, action: str, field: str) -> None:
        pass

    def stalled(self, side: Side) -> None:
        pass

    def metered(self, fact: Metered) -> None:
        pass

    def tokens(self, usage: TokensUsed) -> None:
        pass

    def first_audio(self, seconds: float) -> None:
        pass


@dataclass
class Peer:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def frame(self) -> tuple[int, bytes]:
        """One unmasked frame (the relay never masks towards the client; the
        upstream peer's frames from the relay are masked: unmasked here)."""
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        mask = await self.reader.readexactly(4) if second & 0x80 else None
        payload = await self.reader.readexactly(length)
        if mask is not None:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return first & 0x0F, payload


@dataclass
class Running:
    driver: SessionDriver
    run: asyncio.Task[Ended]
    client: Peer
    upstream: Peer


async def _leg(sock: socket.socket, *, server: bool, name: str) -> Leg:
    loop = asyncio.get_running_loop()
    protocol = _LegProtocol(server=server, name=name)
    await loop.create_connection(lambda: protocol, sock=sock)
    assert protocol.leg is not None
    return protocol.leg


@contextlib.asynccontextmanager
async def driven(session: RelaySession) -> AsyncIterator[Running]:
    """A driver relaying between two socketpair legs, with a peer on each."""
    client_pair, upstream_pair = socket.socketpair(), socket.socketpair()
    client_leg = await _leg(client_pair[0], server=True, name="client")
    upstream_leg = await _leg(upstream_pair[0], server=False, name="upstream")
    client = Peer(*await asyncio.open_connection(sock=client_pair[1]))
    upstream = Peer(*await asyncio.open_connection(sock=upstream_pair[1]))
    driver = SessionDriver(
        client_leg,
        upstream_leg,
        session,
        flow=FlowSettings(ping_interval=None, ping_timeout=None),
        observer=_Quiet(),
    )
    async with asyncio.TaskGroup() as group:
        run = group.create_task(driver.run())
        try:
            yield Running(driver, run, client, upstream)
        finally:
            for peer in (client, upstream):
                peer.writer.close()
            async with asyncio.timeout(5 * SECOND):
                await asyncio.wait([run])


def _close_code(payload: bytes) -> int:
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


async def test_messages_are_relayed_both_ways_as_sent() -> None:
    async with driven(RelaySession(limits=SessionLimits())) as running:
        event = b'{"type":"input_audio_buffer.append","audio":"AAAA"}'
        running.client.writer.write(build_frame(TEXT, event, mask=True))
        async with asyncio.timeout(5 * SECOND):
            assert await running.upstream.frame() == (TEXT, event)
        reply = b'{"type":"response.done","response":{}}'
        running.upstream.writer.write(build_frame(TEXT, reply, mask=False))
        async with asyncio.timeout(5 * SECOND):
            assert await running.client.frame() == (TEXT, reply)
        assert running.driver.counters.client_messages == 1
        assert running.driver.counters.upstream_messages == 1


async def test_a_bridged_sessions_renamed_frames_reach_the_client_renamed() -> None:
    """SendEdited: built from the frame received (or, for a held one, from its text)."""
    session = RelaySession(family="ga", bridged=True, limits=SessionLimits())
    async with driven(session) as running:
        created = b'{"type":"session.created","session":{"type":"realtime"}}'
        running.upstream.writer.write(build_frame(TEXT, created, mask=False))
        audio = "A" * 70_000  # past a 16-bit length: the header changes size
        for name in ("output_audio", "output_audio_transcript", "output_text"):
            delta = f'{{"type":"response.{name}.delta","delta":"{audio}"}}'
            running.upstream.writer.write(build_frame(TEXT, delta.encode(), mask=False))
        async with asyncio.timeout(5 * SECOND):
            _opcode, payload = await running.client.frame()
            assert json.loads(payload)["session"] == {"temperature": 0.8}
            for name in ("audio", "audio_transcript", "text"):
                assert await running.client.frame() == (
                    TEXT,
                    f'{{"type":"response.{name}.delta","delta":"{audio}"}}'.encode(),
                )
        # In two fragments there is no frame to edit: the text is sent.
        first, rest = b'{"type":"response.output_', b'audio.delta","delta":"AA=="}'
        running.upstream.writer.write(
            bytes((TEXT, len(first))) + first + bytes((0x80, len(rest))) + rest
        )
        async with asyncio.timeout(5 * SECOND):
            assert await running.client.frame() == (
                TEXT,
                b'{"type":"response.audio.delta","delta":"AA=="}',
            )


class _Broken(RelaySession):
    """A core with a bug in one of its entry points."""

    def __init__(self, broken: str) -> None:
        super().__init__(limits=SessionLimits(messages_per_second=100))
        self._broken = broken

    def _bug(self, name: str) -> None:
        if name == self._broken:
            raise RuntimeError(f"a bug in {name}")

    def client_message(
        self, data: str | bytes, now: float, admitted: bool = False
    ) -> list[Command]:
        self._bug("client_message")
        return super().client_message(data, now, admitted)

    def upstream_message(self, data: str | bytes, now: float) -> list[Command]:
        self._bug("upstream_message")
        return super().upstream_message(data, now)

    def client_frame(self, size: int, first: bool, now: float) -> list[Command] | None:
        self._bug("client_frame")
        return super().client_frame(size, first, now)


@pytest.mark.parametrize(
    ("broken", "sender"),
    [
        ("client_message", "client"),
        ("client_frame", "client"),
        ("upstream_message", "upstream"),
    ],
)
async def test_a_bug_in_the_core_ends_this_session_with_1011(
    broken: str, sender: str
) -> None:
    """Whichever way into the core raised: logged, both legs closed with 1011, the driver returns."""
    with structlog.testing.capture_logs() as logs:
        async with driven(_Broken(broken)) as running:
            peer = running.client if sender == "client" else running.upstream
            peer.writer.write(
                build_frame(TEXT, b'{"type":"x"}', mask=sender == "client")
            )
            async with asyncio.timeout(5 * SECOND):
                closes: dict[str, int] = {}
                for name, other in (
                    ("client", running.client),
                    ("upstream", running.upstream),
                ):
                    for _ in range(10):  # at most a few frames before the close
                        opcode, payload = await other.frame()
                        if opcode == CLOSE:
                            closes[name] = _close_code(payload)
                            break
                ended = await running.run
    assert closes == {"client": 1011, "upstream": 1011}
    assert ended == Ended("relay_error", 1011, "internal relay error")
    crashed = [entry for entry in logs if entry["event"] == "session.crashed"]
    assert len(crashed) == 1
    assert crashed[0]["exc_info"] is True or crashed[0].get("exc_info")
