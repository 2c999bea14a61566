"""Conversation items built from client input or from committed user audio.

Pure. :func:`parse_item` validates the items of ``conversation.item.create``,
:func:`resolve_input` those of ``response.input``; :func:`user_audio_item`
builds the user message a commit of the input audio buffer becomes.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

from relay.simulator._checks import (
    Invalid,
    as_base64,
    as_choice,
    as_list,
    as_object,
    as_optional_str,
    as_str,
    check_keys,
    missing,
)
from relay.simulator.audio import AudioFormat, duration_ms
from relay.simulator.conversation import Conversation, Item
from relay.simulator.wire import Family, JSONObject


def user_audio_item(item_id: str, audio: bytes, fmt: AudioFormat) -> Item:
    """Return the user message holding committed ``audio`` (in ``fmt``)."""
    wire = {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": None}],
    }
    return Item(wire, audio=audio, audio_ms=round(duration_ms(len(audio), fmt)))


def parse_item(
    family: Family,
    raw: object,
    param: str,
    *,
    new_id: Callable[[], str],
    input_format: AudioFormat,
) -> Item:
    """Validate a client item (``conversation.item.create`` or ``response.input``).

    Supported: ``message`` (user, system, assistant text; GA user messages
    also take ``input_image`` parts), ``function_call`` and
    ``function_call_output``. Assistant audio cannot be injected
    (protocol.md §4.3). ``new_id`` is called when the client gave no ``id``.

    Raises:
        Invalid: The item is malformed.
    """
    obj = as_object(raw, param)
    if "type" not in obj:
        raise missing(f"{param}.type")
    kind = as_choice(
        obj["type"],
        f"{param}.type",
        ("message", "function_call", "function_call_output"),
    )
    common = {"id", "type", "object", "status"}
    item_id = as_str(obj["id"], f"{param}.id") if "id" in obj else new_id()
    wire: JSONObject = {
        "id": item_id,
        "object": "realtime.item",
        "type": kind,
        "status": "completed",
    }
    if kind == "function_call":
        check_keys(
            obj,
            param,
            common | {"name", "call_id", "arguments"},
            {"name", "call_id", "arguments"},
        )
        for key in ("name", "call_id", "arguments"):
            wire[key] = as_str(obj[key], f"{param}.{key}")
        return Item(wire)
    if kind == "function_call_output":
        check_keys(obj, param, common | {"call_id", "output"}, {"call_id", "output"})
        wire["call_id"] = as_str(obj["call_id"], f"{param}.call_id")
        wire["output"] = as_str(obj["output"], f"{param}.output")
        return Item(wire)
    check_keys(obj, param, common | {"role", "content"}, {"role", "content"})
    role = as_choice(obj["role"], f"{param}.role", ("user", "assistant", "system"))
    user_parts: tuple[str, ...] = ("input_text", "input_audio")
    if family is Family.GA:
        user_parts = (*user_parts, "input_image")  # gpt-realtime image input.
    allowed_parts = {
        "user": user_parts,
        "system": ("input_text",),
        "assistant": ("text",) if family is Family.PREVIEW else ("output_text",),
    }[role]
    content: list[JSONObject] = []
    audio = b""
    for index, raw_part in enumerate(as_list(obj["content"], f"{param}.content")):
        where = f"{param}.content[{index}]"
        part = as_object(raw_part, where)
        if "type" not in part:
            raise missing(f"{where}.type")
        part_type = as_choice(part["type"], f"{where}.type", allowed_parts)
        if part_type == "input_audio":
            check_keys(part, where, {"type", "audio", "transcript"}, {"audio"})
            audio += as_base64(part["audio"], f"{where}.audio")
            transcript = as_optional_str(part.get("transcript"), f"{where}.transcript")
            content.append({"type": part_type, "transcript": transcript})
        elif part_type == "input_image":
            content.append(_image_part(part, where))
        else:
            check_keys(part, where, {"type", "text"}, {"text"})
            content.append(
                {"type": part_type, "text": as_str(part["text"], f"{where}.text")}
            )
    wire["role"] = role
    wire["content"] = content
    return Item(
        wire, audio=audio, audio_ms=round(duration_ms(len(audio), input_format))
    )


_IMAGE_URL = re.compile(r"data:image/(png|jpeg);base64,(.*)", re.DOTALL)


def _image_part(part: dict[str, object], where: str) -> JSONObject:
    """An ``input_image`` part: a PNG or JPEG data URL, echoed as given."""
    check_keys(part, where, {"type", "image_url", "detail"}, {"image_url"})
    url = as_str(part["image_url"], f"{where}.image_url")
    match = _IMAGE_URL.fullmatch(url)
    try:
        if match is None:
            raise ValueError(url)
        base64.b64decode(match.group(2), validate=True)
    except ValueError:  # binascii.Error is a ValueError.
        raise Invalid(
            "invalid_value",
            f"Invalid '{where}.image_url': expected a data URL of a base64 PNG or "
            "JPEG image (data:image/png;base64,...).",
            f"{where}.image_url",
        ) from None
    image: JSONObject = {"type": "input_image", "image_url": url}
    if "detail" in part:
        image["detail"] = as_choice(
            part["detail"], f"{where}.detail", ("auto", "low", "high")
        )
    return image


def resolve_input(
    family: Family,
    raw_items: list[object],
    conversation: Conversation,
    *,
    new_id: Callable[[], str],
    input_format: AudioFormat,
) -> list[Item]:
    """Return the context of ``response.input``: new items, or references to existing ones.

    Raises:
        Invalid: An item is malformed or a reference names no existing item.
    """
    context = []
    for index, raw in enumerate(raw_items):
        param = f"response.input[{index}]"
        obj = as_object(raw, param)
        if obj.get("type") != "item_reference":
            context.append(
                parse_item(family, obj, param, new_id=new_id, input_format=input_format)
            )
            continue
        check_keys(obj, param, {"type", "id"}, {"id"})
        item_id = as_str(obj["id"], f"{param}.id")
        item = conversation.get(item_id)
        if item is None:
            raise Invalid(
                "invalid_value",
                f"Item with id '{item_id[:64]}' not found.",
                f"{param}.id",
            )
        context.append(item)
    return context
