"""Drop-in without an SDK: plain `websockets`, as any internal app can write it.

Run `make run` in another terminal, then `python examples/websockets_client.py`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os

from websockets.asyncio.client import connect

from relay.simulator.audio import silence_pcm16, speech_like_pcm16


RELAY = os.environ.get("RELAY_URL", "127.0.0.1:8080")
KEY = os.environ.get("RELAY_KEY", "relay-dev-key")
URL = f"ws://{RELAY}/openai/v1/realtime?model=gpt-realtime"  # GA protocol


async def main() -> None:
    async with connect(
        URL, additional_headers={"api-key": KEY}, compression=None
    ) as ws:
        print("<-", json.loads(await ws.recv())["type"])  # session.created
        speech = speech_like_pcm16(1.0) + silence_pcm16(0.8)
        for offset in range(0, len(speech), 4800):  # 100 ms chunks
            chunk = base64.b64encode(speech[offset : offset + 4800]).decode()
            await ws.send(
                json.dumps({"type": "input_audio_buffer.append", "audio": chunk})
            )
        async for message in ws:
            event = json.loads(message)
            if event["type"] != "response.output_audio.delta":
                print("<-", event["type"])
            if event["type"] == "response.done":
                print("usage:", event["response"]["usage"]["total_tokens"], "tokens")
                break


if __name__ == "__main__":
    asyncio.run(main())
