"""What the kernel holds for a connection: the bytes its peer has not taken yet.

The stall watchdog needs to see a peer read. The transport's write buffer
shows it only once the kernel's send buffer has room again, and on Linux that
buffer grows to megabytes (``net.ipv4.tcp_wmem``): a peer reading 64 KB/s could
drain it for many seconds before the transport's buffer moved. The kernel's
send queue (``SIOCOUTQ``: bytes not yet acknowledged by the peer, whose
window opens only as its application reads) goes down as soon as it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import termios
from typing import Final


__all__ = ["UNKNOWN", "send_queue", "socket_fd"]

UNKNOWN: Final = -1
"""A file descriptor that is not known (no socket, or the platform cannot tell)."""

# SIOCOUTQ has the value of TIOCOUTQ on Linux; elsewhere the ioctl fails on a
# socket, and the queue counts as empty.
_OUTQ: Final = getattr(termios, "TIOCOUTQ", None)
_INT: Final = struct.Struct("i")


def socket_fd(transport: asyncio.BaseTransport) -> int:
    """The file descriptor of ``transport``'s socket (under TLS too), or :data:`UNKNOWN`."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return UNKNOWN
    fd = sock.fileno()
    return fd if isinstance(fd, int) else UNKNOWN


def send_queue(fd: int) -> int:
    """Bytes in the kernel's send queue of socket ``fd`` not yet taken by its peer.

    0 when unknown (``fd`` is :data:`UNKNOWN`, or the platform cannot tell):
    the caller then sees the transport's buffer only. The caller must know
    that ``fd`` is still the connection's (its transport is not closed).
    """
    if fd == UNKNOWN or _OUTQ is None:
        return 0
    with contextlib.suppress(OSError):
        (queued,) = _INT.unpack(fcntl.ioctl(fd, _OUTQ, bytes(_INT.size)))
        return int(queued)
    return 0
