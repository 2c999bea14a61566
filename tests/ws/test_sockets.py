"""The kernel's send queue of a socket, as the stall watchdog reads it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from relay.ws.sockets import UNKNOWN, send_queue, socket_fd
from tests.helpers.timing import SECOND


async def test_the_send_queue_holds_what_the_peer_has_not_taken() -> None:
    """Bytes the peer does not read stay queued; as it reads, the queue goes down."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    with sender, peer:
        assert send_queue(sender.fileno()) == 0
        sender.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                sender.send(b"x" * 65536)
        queued = send_queue(sender.fileno())
        assert queued > 0
        peer.recv(65536)
        async with asyncio.timeout(5 * SECOND):
            while True:
                if send_queue(sender.fileno()) < queued:
                    break
                await asyncio.sleep(0.01)  # polling the kernel's count, bounded


async def test_no_socket_or_no_answer_counts_as_empty() -> None:
    """An unknown descriptor, a pipe or a closed descriptor: 0, never an error."""
    assert send_queue(UNKNOWN) == 0
    read, write = os.pipe()
    os.close(read)
    assert send_queue(write) == 0
    os.close(write)
    assert send_queue(write) == 0


async def test_socket_fd_of_transports() -> None:
    """A transport's socket has a descriptor; a transport without one has none."""
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        assert socket_fd(writer.transport) == writer.get_extra_info("socket").fileno()
        writer.close()
    read, write = os.pipe()
    transport, _ = await loop.connect_write_pipe(
        asyncio.BaseProtocol, os.fdopen(write, "wb")
    )
    try:
        assert socket_fd(transport) == UNKNOWN
    finally:
        transport.close()
        os.close(read)
