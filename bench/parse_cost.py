"""What one client message can cost the event loop to parse (docs/performance.md).

    python bench/parse_cost.py [--relay-src DIR] [--parsers] [--shapes] [--rss]

``--parsers``: microseconds per 1.3 KB audio append (the hot path) for the
stdlib parser, the relay's two readers, and orjson and msgspec when they are
importable (they are not dependencies). ``--shapes``: CPU milliseconds to
read 16 MiB client messages of the shapes that cost a parser most, and of
large legitimate events, through ``relay.sansio.wire.parse_event`` (and
``complexity_error`` alone when the tree has it). ``--rss``: how much each
shape raises the peak RSS of a fresh process. ``--relay-src`` measures the
relay of another tree (a ``git worktree`` of an older commit). CPU time, the
best of a few runs: the machine's other load does not enter it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import json
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from functools import partial
from typing import Any


SIZE = 16 * 1024 * 1024
APPEND = "input_audio_buffer.append"


def fill(unit: str, size: int = SIZE, kind: str = "session.update") -> str:
    """An event whose ``x`` is an array of ``unit`` repeated to ``size`` characters."""
    head, tail = f'{{"type":"{kind}","x":[', "]}"
    return head + ",".join([unit] * ((size - len(head) - 2) // (len(unit) + 1))) + tail


def keys(size: int = SIZE) -> str:
    head, members, length = '{"type":"session.update","x":{', [], 32
    while length < size:
        members.append(f'"{len(members):x}":0')
        length += len(members[-1]) + 1
    return head + ",".join(members[:-1]) + "}}"


def string(body: str, size: int = SIZE) -> str:
    head = '{"type":"session.update","x":"'
    return head + body * ((size - len(head) - 2) // len(body)) + '"}'


def padded(unit: str, count: int, size: int = SIZE) -> str:
    """``count`` units, then a string of commas filling the message to ``size``."""
    head = '{"type":"session.update","x":[' + ",".join([unit] * count) + '],"pad":"'
    return head + "," * (size - len(head) - 2) + '"}'


def tools(count: int = 128) -> str:
    schema = {
        "type": "object",
        "properties": {
            name: {
                "type": "string",
                "description": f"The {name}.",
                "enum": ["a", "b", "c"],
            }
            for name in (
                "id",
                "email",
                "phone",
                "status",
                "since",
                "locale",
                "reason",
                "tag",
            )
        },
        "required": ["id", "reason"],
        "additionalProperties": False,
    }
    tool = {
        "type": "function",
        "name": "lookup",
        "description": "Looks up a record.",
        "parameters": schema,
    }
    return json.dumps({"type": "session.update", "session": {"tools": [tool] * count}})


def shapes() -> dict[str, Callable[[], str]]:
    return {
        "many keys": keys,
        "numbers [0,0,...]": lambda: fill("0"),
        "floats [1e-400,...]": lambda: fill("1e-400"),
        "empty objects [{},...]": lambda: fill("{}"),
        "empty arrays [[],...]": lambda: fill("[]"),
        'strings ["",...]': lambda: fill('""'),
        "literals [true,...]": lambda: fill("true"),
        "nesting 60 deep, repeated": lambda: fill("[" * 59 + "0" + "]" * 59),
        "escapes \\u0000": lambda: string("\\u0000"),
        "escapes \\n": lambda: string("\\n"),
        "punctuation in a string": lambda: string(",:[{"),
        "integers of 4300 digits": lambda: fill("9" * 4300),
        "floats of 4000 digits": lambda: fill("1." + "1" * 4000),
        "32,760 floats 1e-400 + padding": lambda: padded("1e-400", 32_760),
        "32,760 floats of 240 digits + padding": lambda: padded(
            "0." + "9" * 240, 32_760
        ),
        "legit: 128 tools": tools,
        "legit: 12 MiB image data URL": lambda: json.dumps(
            {
                "type": "conversation.item.create",
                "item": {
                    "content": [
                        {
                            "type": "input_image",
                            "image_url": "data:image/png;base64," + "QUJD" * (3 << 20),
                        }
                    ]
                },
            }
        ),
    }


def cpu_ms(function: Callable[[], Any], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        started = time.process_time()
        function()
        best = min(best, time.process_time() - started)
    return best * 1000


def parsers() -> None:
    from relay.sansio import wire

    audio = base64.b64encode(bytes(960)).decode()
    event = json.dumps(
        {"type": APPEND, "event_id": "evt_0123456789abcdef", "audio": audio},
        separators=(",", ":"),
    )
    cases: dict[str, Callable[[], object]] = {
        "json.loads": lambda: json.loads(event),
        "wire.plain_append (json's C scanner)": lambda: wire.plain_append(event),
        "wire.parse_event (json with hooks)": lambda: wire.parse_event(event),
    }
    try:
        import orjson

        cases["orjson.loads"] = lambda: orjson.loads(event)
    except ImportError:
        pass
    try:
        import msgspec

        decoder = msgspec.json.Decoder()
        cases["msgspec.json.Decoder().decode"] = lambda: decoder.decode(event)
    except ImportError:
        pass
    print(f"{len(event)}-character append event, CPU time, best of 9 x 20,000:")
    for name, case in cases.items():
        best = min(
            timeit.repeat(case, timer=time.process_time, number=20_000, repeat=9)
        )
        best = best / 20_000 * 1e6
        print(f"  {name:40s} {best:5.2f} us")


def run_shapes() -> None:
    from relay.sansio import wire

    check = getattr(wire, "complexity_error", None)
    print(f"{'shape':40s} {'MiB':>5s} {'parse_event':>11s} {'check':>7s}  verdict")
    for name, build in shapes().items():
        text = build()
        verdict = "parsed"

        def parse(text: str = text) -> None:
            nonlocal verdict
            try:
                wire.parse_event(text)
            except wire.InvalidEvent as exc:
                verdict = f"refused: {exc}"[:48]

        total = cpu_ms(parse)
        alone = f"{cpu_ms(partial(check, text)):5.1f}" if check else "    -"
        print(
            f"{name:40s} {len(text) / 2**20:5.1f} {total:8.1f} ms {alone} ms  {verdict}",
            flush=True,
        )


def rss_child(name: str) -> None:
    from relay.sansio import wire

    text = shapes()[name]()
    gc.collect()
    # Reset the peak (VmHWM) to the current RSS, so that building the text
    # does not count.
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _status("VmRSS")
    with contextlib.suppress(wire.InvalidEvent):
        wire.parse_event(text)
    print((_status("VmHWM") - before) / 1024)


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def rss(source: str | None) -> None:
    print(f"{'shape':40s} peak RSS increase")
    for name in shapes():
        command = [sys.executable, __file__, "--rss-child", name]
        if source:
            command += ["--relay-src", source]
        output = subprocess.run(
            command, check=True, capture_output=True, text=True
        ).stdout
        print(f"{name:40s} {float(output):7.1f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--relay-src", help="a tree whose relay/ to measure")
    parser.add_argument("--parsers", action="store_true")
    parser.add_argument("--shapes", action="store_true")
    parser.add_argument("--rss", action="store_true")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay_src:
        sys.path.insert(0, args.relay_src)
    if args.rss_child:
        rss_child(args.rss_child)
        return
    everything = not (args.parsers or args.shapes or args.rss)
    if args.parsers or everything:
        parsers()
    if args.shapes or everything:
        run_shapes()
    if args.rss or everything:
        rss(args.relay_src)


if __name__ == "__main__":
    main()
