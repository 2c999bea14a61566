"""Real clients nobody here wrote: the official `openai` SDK, through the relay.

Drop-in means a client changes only its endpoint and key. These tests point the
SDK's Azure realtime clients (preview/beta and GA) and its plain GA client at
the relay and complete a spoken turn each.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import replace
from typing import Any

import pytest
from openai import AsyncOpenAI

from relay.simulator.audio import speech_like_pcm16
from relay.typing import DrainNotice
from tests.helpers.clients import azure_client
from tests.helpers.servers import (
    CLIENT_KEY,
    DEPLOYMENT,
    GA_DEPLOYMENT,
    GA_VERSION,
    PREVIEW_VERSION,
    make_settings,
    relay_stack,
)
from tests.helpers.timing import SECOND


SPEECH = base64.b64encode(speech_like_pcm16(1.0)).decode()


async def collect(connection: Any, until: str) -> list[str]:
    """Event types received up to and including ``until``."""
    types: list[str] = []
    async with asyncio.timeout(10 * SECOND):
        async for event in connection:
            types.append(event.type)
            if event.type == until:
                return types
    raise AssertionError(f"connection ended before {until!r}: {types[-10:]}")


async def test_azure_beta_realtime_client_completes_a_turn() -> None:
    """`AsyncAzureOpenAI(...).beta.realtime.connect()` on the preview protocol."""
    async with relay_stack() as stack:
        client = azure_client(stack, PREVIEW_VERSION)
        async with client.beta.realtime.connect(model=DEPLOYMENT) as connection:
            first = await connection.recv()
            assert first.type == "session.created"
            # null turns server VAD off (manual commit); the SDK's beta types omit null.
            await connection.session.update(
                session={"turn_detection": None, "voice": "verse"}  # type: ignore[typeddict-item]
            )
            assert "session.updated" in await collect(connection, "session.updated")
            await connection.input_audio_buffer.append(audio=SPEECH)
            await connection.input_audio_buffer.commit()
            await connection.response.create()
            types = await collect(connection, "response.done")
            assert "response.audio.delta" in types
            assert "response.audio_transcript.delta" in types
        await client.close()
        [handshake] = stack.simulator.stats.handshakes
        # The deployment's upstream speaks GA (the default): bridged.
        assert handshake.query == {"model": DEPLOYMENT}


async def test_azure_ga_realtime_client_completes_a_turn() -> None:
    """`AsyncAzureOpenAI(...).realtime.connect()` (GA events on the Azure path)."""
    async with relay_stack() as stack:
        client = azure_client(stack, GA_VERSION)
        async with client.realtime.connect(model=GA_DEPLOYMENT) as connection:
            first = await connection.recv()
            assert first.type == "session.created"
            await connection.session.update(
                session={
                    "type": "realtime",
                    "audio": {"input": {"turn_detection": None}},
                }
            )
            assert "session.updated" in await collect(connection, "session.updated")
            await connection.input_audio_buffer.append(audio=SPEECH)
            await connection.input_audio_buffer.commit()
            await connection.response.create()
            types = await collect(connection, "response.done")
            assert "response.output_audio.delta" in types
        await client.close()


async def test_plain_openai_client_on_the_ga_path() -> None:
    """Azure's documented GA pattern: `AsyncOpenAI(websocket_base_url=.../openai/v1)`, key as Bearer."""
    async with relay_stack() as stack:
        client = AsyncOpenAI(
            api_key=CLIENT_KEY, websocket_base_url=f"{stack.ws}/openai/v1"
        )
        async with client.realtime.connect(model=GA_DEPLOYMENT) as connection:
            assert (await connection.recv()).type == "session.created"
            await connection.response.create()
            types = await collect(connection, "response.done")
            assert "response.output_audio.delta" in types
        await client.close()


@pytest.mark.parametrize("notice", ["event", "error"])
async def test_the_sdk_takes_either_drain_notice_and_carries_on(
    notice: DrainNotice,
) -> None:
    """A drain mid-session: the SDK parses the notice (it is lenient about types) and the turn completes."""
    first, *others = make_settings("http://127.0.0.1:1").clients
    clients = (replace(first, drain_notice=notice), *others)
    async with relay_stack(clients=clients) as stack:
        client = azure_client(stack, GA_VERSION)
        async with client.realtime.connect(model=GA_DEPLOYMENT) as connection:
            assert (await connection.recv()).type == "session.created"
            stack.relay.app.drain.begin()
            # Typed as the SDK's known events; the relay's own type is not one.
            told: Any = await connection.recv()
            if notice == "event":
                assert told.type == "relay.draining"
            else:
                assert told.type == "error"
                assert told.error.code == "relay_draining"
            await connection.session.update(
                session={
                    "type": "realtime",
                    "audio": {"input": {"turn_detection": None}},
                }
            )
            assert "session.updated" in await collect(connection, "session.updated")
            await connection.input_audio_buffer.append(audio=SPEECH)
            await connection.input_audio_buffer.commit()
            await connection.response.create()
            assert "response.done" in await collect(connection, "response.done")
        await client.close()
