"""HTTP/1.1 by hand over raw TCP, for what no HTTP library will send.

Trickled heads, 100 KB headers, garbage and broken upgrade requests: the
requests the relay must refuse before routing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from relay.service.metrics import HTTP_REFUSALS
from tests.helpers.servers import Stack


@contextlib.asynccontextmanager
async def raw_connection(
    stack: Stack,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A TCP connection to the relay's main port; closed after the block."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.relay.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def refusal_counts(stack: Stack) -> dict[str, float]:
    """``relay_http_refusals_total`` by reason, every reason present."""
    return {
        reason: stack.registry.get_sample_value(
            "relay_http_refusals_total", {"reason": reason}
        )
        or 0.0
        for reason in HTTP_REFUSALS
    }
