"""Client events at the edges of what the relay accepts: large legitimate ones, and attacks.

The legitimate ones are what :data:`relay.sansio.wire.MAX_VALUES` and its
siblings must always admit; the attacks are the shapes that cost a JSON parser
the most per byte, which the same bounds must refuse before parsing.
"""

from __future__ import annotations

import base64
import json


def tool(number: int) -> dict[str, object]:
    """A function tool with a realistic JSON-schema: 8 parameters, enums, a nested object."""
    return {
        "type": "function",
        "name": f"lookup_customer_record_{number}",
        "description": (
            "Looks up a customer record by id, email or phone: returns name, "
            "address, orders (last 50), open tickets and notes. Use it when the "
            "caller asks about an order, a delivery, a refund, or their account; "
            "never guess an id."
        ),
        "parameters": {
            "type": "object",
            "properties": {
                "customer_id": {
                    "type": "string",
                    "description": "The customer's id, e.g. C-123456.",
                    "pattern": "^C-[0-9]{6}$",
                },
                "email": {"type": "string", "format": "email"},
                "phone": {"type": "string", "description": "E.164, e.g. +14155550123."},
                "include": {
                    "type": "array",
                    "items": {
                        "type": "string",
                        "enum": ["orders", "tickets", "notes", "addresses", "payments"],
                    },
                    "uniqueItems": True,
                },
                "order_filter": {
                    "type": "object",
                    "properties": {
                        "status": {
                            "type": "string",
                            "enum": ["pending", "shipped", "delivered", "returned"],
                        },
                        "since": {"type": "string", "format": "date"},
                        "until": {"type": "string", "format": "date"},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 50},
                    },
                    "required": ["status"],
                    "additionalProperties": False,
                },
                "locale": {
                    "type": "string",
                    "enum": ["en-US", "en-GB", "fr-FR", "de-DE", "es-ES", "ja-JP"],
                    "default": "en-US",
                },
                "verbose": {"type": "boolean", "default": False},
                "reason": {"type": "string", "maxLength": 500},
            },
            "required": ["include", "reason"],
            "additionalProperties": False,
        },
    }


def many_tools(count: int = 128) -> str:
    """A GA ``session.update`` with ``count`` tools (128: about 18,000 values and keys)."""
    return json.dumps(
        {
            "type": "session.update",
            "event_id": "evt_tools",
            "session": {
                "type": "realtime",
                "instructions": "You are a helpful support agent. " * 40,
                "tools": [tool(number) for number in range(count)],
                "tool_choice": "auto",
            },
        }
    )


def image_item(size: int) -> str:
    """A GA ``conversation.item.create`` with an ``input_image`` data URL of ``size`` bytes."""
    data = base64.b64encode(bytes(range(256)) * (size * 3 // 4 // 256)).decode()
    return json.dumps(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in this picture?"},
                    {
                        "type": "input_image",
                        "image_url": "data:image/png;base64," + data,
                    },
                ],
            },
        }
    )


def long_instructions(size: int) -> str:
    """A ``session.update`` whose instructions, ``size`` characters, are full of , : [ {."""
    line = "Rules: first, greet; then ask: name, date, {topic}: [a, b]; answer.\n"
    return json.dumps(
        {
            "type": "session.update",
            "session": {"instructions": line * (size // len(line))},
        }
    )


def function_output(size: int) -> str:
    """A ``function_call_output`` whose output is about ``size`` bytes of JSON, escaped."""
    rows = [
        {"id": n, "name": f"item {n}", "tags": ["a", "b"]} for n in range(size // 50)
    ]
    return json.dumps(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": "call_1",
                "output": json.dumps({"rows": rows}),
            },
        }
    )


def flat(unit: str, count: int, kind: str = "session.update") -> str:
    """A ``kind`` event whose ``x`` is an array of ``count`` copies of the JSON text ``unit``."""
    return f'{{"type":"{kind}","x":[' + ",".join([unit] * count) + "]}"


def keys(count: int) -> str:
    """An event whose ``x`` is an object of ``count`` distinct keys."""
    members = ",".join(f'"{number:x}":0' for number in range(count))
    return '{"type":"session.update","x":{' + members + "}}"
