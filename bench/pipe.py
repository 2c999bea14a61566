"""A byte pipe in Python: the floor any Python relay stands on (bench path `pipe`).

    python bench/pipe.py --port P --upstream U    (port 0: any; the port is printed)

Each accepted TCP connection is spliced to a new connection to 127.0.0.1:U,
bytes forwarded both ways unread (the WebSocket handshake included), on the
same event loop the relay uses (uvloop) with the same backpressure as its
legs. It does nothing a relay must do (no framing, no policy, no metrics,
no auth), so its CPU per message is the cost of one Python callback, one
read and one write per frame: what is left when all relay logic is free.
Never used by the relay itself.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

import uvloop


HIGH_WATER = 1 << 20


class Half(asyncio.Protocol):
    """One side of the splice; forwards what it reads to its peer's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Half | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
            return
        peer.transport.write(data)

    def pause_writing(self) -> None:  # our socket is full: stop reading the peer
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def serve(port: int, upstream: int) -> None:
    loop = asyncio.get_running_loop()

    async def splice(client: Half) -> None:
        try:
            async with asyncio.timeout(10):
                _, server = await loop.create_connection(Half, "127.0.0.1", upstream)
        except (OSError, TimeoutError):
            if client.transport is not None:
                client.transport.close()
            return
        client.peer, server.peer = server, client
        assert server.transport is not None
        for chunk in client.early:
            server.transport.write(chunk)
        client.early.clear()

    tasks: set[asyncio.Task[None]] = set()

    def accepted() -> Half:
        half = Half()
        task = loop.create_task(splice(half))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return half

    server = await loop.create_server(accepted, "127.0.0.1", port, backlog=4096)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream))


if __name__ == "__main__":
    main()
