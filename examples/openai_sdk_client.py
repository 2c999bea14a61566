"""Drop-in: the official `openai` SDK's Azure realtime client, pointed at the relay.

Run `make run` in another terminal, then `python examples/openai_sdk_client.py`.
Only the endpoint and the key differ from talking to Azure directly; the
plaintext local relay needs `websocket_base_url` because the SDK forces wss.
"""

from __future__ import annotations

import asyncio
import base64
import os

from openai import AsyncAzureOpenAI

from relay.simulator.audio import silence_pcm16, speech_like_pcm16


RELAY = os.environ.get("RELAY_URL", "127.0.0.1:8080")
KEY = os.environ.get("RELAY_KEY", "relay-dev-key")


async def main() -> None:
    client = AsyncAzureOpenAI(
        azure_endpoint=f"http://{RELAY}",
        api_key=KEY,  # the relay's client key, not an Azure key
        api_version="2025-04-01-preview",
        websocket_base_url=f"ws://{RELAY}/openai",
    )
    async with client.beta.realtime.connect(
        model="gpt-4o-realtime-preview"
    ) as connection:
        print("<-", (await connection.recv()).type)  # session.created
        await connection.session.update(session={"voice": "alloy"})
        speech = speech_like_pcm16(1.0) + silence_pcm16(0.8)  # server VAD ends the turn
        await connection.input_audio_buffer.append(
            audio=base64.b64encode(speech).decode()
        )
        audio_bytes = 0
        async for event in connection:
            if event.type == "response.audio.delta":
                audio_bytes += len(base64.b64decode(event.delta))
            else:
                print("<-", event.type)
            if event.type == "response.done":
                break
        print(f"received {audio_bytes / 48_000:.2f} s of audio")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
