"""Runs one simulated session over one WebSocket connection.

The driver only moves data: a reader pump feeds client frames to the sans-I/O
:class:`~relay.simulator.engine.SimSession`, and a writer pump sends what the
session produces, pacing audio deltas, waking the session up for its timers
(expiry, idle timeout) and injecting the armed mid-session faults. Both pumps live in one
:class:`asyncio.TaskGroup`; when either finishes, the other is cancelled, so
no task outlives the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from relay.simulator.engine import SimSession
from relay.simulator.faults import Faults
from relay.simulator.wire import JSONObject, event_type


logger = logging.getLogger("relay.simulator")

# Close code after ``session_expired``: Azure's is undocumented (protocol.md §1.4).
EXPIRED_CLOSE_CODE = 1000


class _Finished(Exception):
    """Raised by a pump to end the connection's task group."""


class ConnectionDriver:
    """Pumps events between a :class:`ServerConnection` and a :class:`SimSession`."""

    def __init__(
        self,
        ws: ServerConnection,
        session: SimSession,
        *,
        faults: Faults,
        audio_speed: float | None,
        clock: Callable[[], float],
        record: Callable[[str | bytes], None] | None = None,
    ) -> None:
        """``clock`` returns Unix time; ``audio_speed`` paces audio deltas.

        Each audio delta of N ms is followed by N / ``audio_speed`` ms before
        the next one (2.0: audio streams at twice real time); None sends
        deltas as fast as the client reads. ``record`` is told every client
        frame received (the simulator's stats).
        """
        self._ws = ws
        self._record = record
        self._session = session
        self._faults = faults
        self._audio_speed = audio_speed
        self._clock = clock
        # Immediate answers waiting to be sent, in order.
        self._outbox: deque[JSONObject] = deque()
        # Set by the reader whenever the outbox or the session changed.
        self._wakeup = asyncio.Event()
        # Once stalled, nothing is sent again and answers are dropped.
        self._stalled = False
        # Response whose first content delta was sent (faults fire after it).
        self._delta_response_id: str | None = None
        family = session.family
        self._content_deltas = {
            event_type(family, "response.audio.delta"),
            event_type(family, "response.text.delta"),
        }

    async def run(self) -> None:
        """Serve the connection until it closes (or a fault or expiry closes it)."""
        self._outbox.extend(self._session.open())
        try:
            async with asyncio.TaskGroup() as pumps:
                pumps.create_task(self._read(), name="simulator-read")
                pumps.create_task(self._write(), name="simulator-write")
        except* _Finished:
            pass

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self._ws:
                if self._record is not None:
                    self._record(message)
                now = self._clock()
                if isinstance(message, str):
                    events = self._session.receive(message, now)
                else:
                    events = self._session.receive_bytes(message, now)
                if not self._stalled:
                    self._outbox.extend(events)
                self._wakeup.set()
        raise _Finished

    async def _write(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._write_until_done()
        raise _Finished

    async def _write_until_done(self) -> None:
        loop = asyncio.get_running_loop()
        pace_until = 0.0
        while True:
            self._outbox.extend(self._session.tick(self._clock()))
            if self._outbox:
                answer = self._outbox.popleft()
                await self._send(json.dumps(answer))
                if answer["type"] == "session.created" and self._faults.take_stall(
                    "session_created"
                ):
                    await self._stall("after session.created")
                continue
            if self._session.expired:
                logger.info("simulator.session_expired")
                await self._ws.close(EXPIRED_CLOSE_CODE, "session expired")
                return
            audio_ms = self._session.next_audio_ms
            if audio_ms is not None and loop.time() < pace_until:
                await self._sleep(pace_until - loop.time())
                continue
            event = self._session.next_response_event()
            if event is None:
                await self._sleep(self._until_wakeup())
                continue
            await self._send_response_event(event)
            if audio_ms is not None and self._audio_speed:
                pace_until = loop.time() + audio_ms / 1000 / self._audio_speed

    async def _send_response_event(self, event: JSONObject) -> None:
        first_delta = (
            event["type"] in self._content_deltas
            and event["response_id"] != self._delta_response_id
        )
        text = json.dumps(event)
        if not first_delta:
            await self._send(text)
            return
        self._delta_response_id = event["response_id"]
        size = self._faults.take_oversized()
        if size is not None:
            logger.info("simulator.fault oversized_frame bytes=%d", size)
            # Trailing whitespace keeps the frame valid JSON and the event intact.
            text += " " * (size - len(text))
        await self._send(text)
        await self._after_first_delta()

    async def _after_first_delta(self) -> None:
        code = self._faults.take_close()
        if code is not None:
            logger.info("simulator.fault close_mid_response code=%d", code)
            await self._ws.close(code, "simulated fault")
            raise _Finished
        if self._faults.take_reset():
            logger.info("simulator.fault reset_mid_response")
            self._reset()
            await self._ws.wait_closed()
            raise _Finished
        if self._faults.take_stall("mid_response"):
            await self._stall("mid-response")

    def _reset(self) -> None:
        transport = self._ws.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER with a zero timeout makes close() send RST, not FIN.
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        transport.abort()

    async def _stall(self, where: str) -> None:
        logger.info("simulator.fault stall %s", where)
        self._stalled = True
        self._outbox.clear()
        await self._ws.wait_closed()
        raise _Finished

    async def _send(self, text: str) -> None:
        # Awaiting each send lets TCP backpressure slow the writer down.
        await self._ws.send(text)

    async def _sleep(self, seconds: float | None) -> None:
        """Wait until the reader signals new work, or ``seconds`` (None: no limit)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()
        self._wakeup.clear()

    def _until_wakeup(self) -> float | None:
        wakeup = self._session.wakeup
        return None if wakeup is None else max(0.0, wakeup - self._clock())
