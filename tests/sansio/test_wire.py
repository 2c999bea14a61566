"""Client events are bounded in complexity before they are parsed, and read strictly."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import example, given, settings, strategies as st

from relay.sansio.wire import (
    MAX_DEPTH,
    MAX_ESCAPES,
    MAX_VALUES,
    UPSTREAM_MAX_VALUES,
    InvalidEvent,
    complexity_error,
    dump,
    parse_event,
    parse_upstream,
)
from tests.helpers.events import (
    flat,
    function_output,
    image_item,
    keys,
    long_instructions,
    many_tools,
)


MiB = 1024 * 1024


def values_and_keys(value: Any) -> int:
    """Values plus object keys in a parsed document."""
    if isinstance(value, dict):
        return 1 + sum(1 + values_and_keys(child) for child in value.values())
    if isinstance(value, list):
        return 1 + sum(values_and_keys(child) for child in value)
    return 1


def bound(value: Any) -> int:
    """What the check counts: one plus the [ { , : outside strings (an empty container counts twice)."""

    def structural(value: Any) -> int:
        if not isinstance(value, dict | list):
            return 0
        children = list(value.values()) if isinstance(value, dict) else value
        colons = len(value) if isinstance(value, dict) else 0
        commas = max(len(children) - 1, 0)
        return 1 + commas + colons + sum(structural(child) for child in children)

    return 1 + structural(value)


def nest(levels: int, kinds: str = "[") -> str:
    """``levels`` objects or arrays (taking turns through ``kinds``) around a 0."""
    text = "0"
    for level in reversed(range(levels)):
        kind = kinds[level % len(kinds)]
        text = "[" + text + "]" if kind == "[" else '{"k":' + text + "}"
    return text


def depth(value: Any) -> int:
    """Objects and arrays nested in one another."""
    if isinstance(value, dict | list):
        children = value.values() if isinstance(value, dict) else value
        return 1 + max((depth(child) for child in children), default=0)
    return 0


class TestLegitimateEvents:
    @pytest.mark.parametrize(
        "text",
        [
            many_tools(128),
            image_item(6 * MiB),
            long_instructions(4 * MiB),
            function_output(1 * MiB),
            # A client that escapes every non-ASCII character (Python's default).
            json.dumps(
                {
                    "type": "session.update",
                    "session": {"instructions": "日本語" * 100_000},
                }
            ),
        ],
        ids=[
            "128-tools",
            "image-6MiB",
            "instructions-4MiB",
            "function-output-1MiB",
            "ascii-escapes",
        ],
    )
    def test_large_events_are_within_the_bounds(self, text: str) -> None:
        assert complexity_error(text) is None
        assert parse_event(text) == json.loads(text)

    def test_128_tools_leave_room(self) -> None:
        """The bound is well above a realistic 128-tool session.update."""
        tools = values_and_keys(json.loads(many_tools(128)))
        assert 15_000 < tools < MAX_VALUES / 1.5


class TestValues:
    # Root object, "type" and its value, "x" and its array: five, then the elements.
    @pytest.mark.parametrize("unit", ["0", "1.5", '""', "true", '{"a":0}'])
    def test_exactly_the_limit_passes_and_one_more_is_refused(self, unit: str) -> None:
        per_unit = values_and_keys(json.loads(unit))
        count = (MAX_VALUES - 5) // per_unit
        text = flat(unit, count)
        assert values_and_keys(json.loads(text)) <= MAX_VALUES
        assert len(text) >= 2 * MAX_VALUES  # counted, not bounded by its length
        parse_event(text)
        more = flat(unit, count + 1)
        assert values_and_keys(json.loads(more)) > MAX_VALUES
        with pytest.raises(InvalidEvent, match="too many values"):
            parse_event(more)

    @pytest.mark.parametrize(
        "text",
        [
            flat("0", 8 * MAX_VALUES),
            flat("{}", 8 * MAX_VALUES),
            flat("[]", 8 * MAX_VALUES),
            flat('""', 8 * MAX_VALUES),
            flat("null", 8 * MAX_VALUES),
            flat("[" * 60 + "]" * 60, MAX_VALUES),
            keys(8 * MAX_VALUES),
            # Strings with escapes are read one by one, up to the limit.
            flat('"\\n"', 8 * MAX_VALUES),
        ],
        ids=[
            "numbers",
            "objects",
            "arrays",
            "strings",
            "literals",
            "nests",
            "keys",
            "escaped",
        ],
    )
    def test_attack_shapes_are_refused(self, text: str) -> None:
        assert complexity_error(text) == "the event has too many values"

    @pytest.mark.parametrize(
        "string",
        ['"\\\\"', '"\\"\\\\"', '"a\\n"', '"\\u005c"', '"[,{:"', '"\\"[0,0]\\""'],
    )
    def test_values_after_a_string_count_whatever_it_holds(self, string: str) -> None:
        """No escape or punctuation in a string hides the values after it."""
        text = (
            '{"type":"x","s":' + string + ',"x":[' + ",".join(["0"] * MAX_VALUES) + "]}"
        )
        assert complexity_error(text) == "the event has too many values"

    def test_punctuation_in_strings_counts_nothing(self) -> None:
        text = json.dumps({"type": "x", "s": '"[0,{"a":1},' * MAX_VALUES})
        assert complexity_error(text) is None


class TestDepth:
    # The event object holds the nest: one level more than the nest itself.
    @pytest.mark.parametrize("padding", [0, 2 * MAX_VALUES])
    @pytest.mark.parametrize("kinds", ["[", "{", "[{"])
    def test_the_deepest_allowed_nesting_passes(self, padding: int, kinds: str) -> None:
        text = (
            '{"type":"x","pad":"'
            + " " * padding
            + '","x":'
            + nest(MAX_DEPTH - 1, kinds)
            + "}"
        )
        assert depth(parse_event(text)) == MAX_DEPTH

    @pytest.mark.parametrize("padding", [0, 2 * MAX_VALUES])
    @pytest.mark.parametrize("kinds", ["[", "{", "[{"])
    def test_one_more_level_is_refused(self, padding: int, kinds: str) -> None:
        text = (
            '{"type":"x","pad":"'
            + " " * padding
            + '","x":'
            + nest(MAX_DEPTH, kinds)
            + "}"
        )
        assert depth(json.loads(text)) == MAX_DEPTH + 1
        with pytest.raises(InvalidEvent, match="nested too deeply"):
            parse_event(text)

    def test_brackets_in_strings_are_no_nesting(self) -> None:
        text = json.dumps({"type": "x", "s": "[[[[" * 1000, "t": "]" * 10})
        assert complexity_error(text) is None


class TestMalformed:
    """A malformed text is counted up to the string where the parser stops."""

    @pytest.mark.parametrize(
        "string",
        [
            '"\\n',  # unterminated
            '"\\q"',  # an escape JSON does not have
            '"\\n\n"',  # a raw control character
        ],
    )
    def test_nothing_after_a_malformed_string_counts(self, string: str) -> None:
        """Brackets before it are nesting; brackets from it on are never parsed."""
        rest = "[" * 100
        with pytest.raises(ValueError, match=r"Invalid|Unterminated"):
            json.loads("[" + string + rest)
        assert complexity_error("[" + string + rest, max_depth=4) is None
        assert (
            complexity_error("[" * 5 + string + rest, max_depth=4)
            == "the event is nested too deeply"
        )


class TestEscapes:
    def test_too_many_escapes_are_refused(self) -> None:
        text = json.dumps({"type": "x", "s": "\n" * (MAX_ESCAPES + 1)})
        assert complexity_error(text) == "the event has too many escaped characters"

    def test_the_limit_passes(self) -> None:
        text = json.dumps({"type": "x", "s": "\n" * MAX_ESCAPES})
        assert parse_event(text)["s"] == "\n" * MAX_ESCAPES


class TestNumbers:
    largest = int(sys.float_info.max)

    @pytest.mark.parametrize("number", [largest, -largest, 10**307, 0, -1])
    def test_integers_a_double_can_hold_pass(self, number: int) -> None:
        assert parse_event(f'{{"type":"x","n":{number}}}')["n"] == number

    @pytest.mark.parametrize("number", [largest + 1, -largest - 1, 10**309, 10**4000])
    def test_larger_integers_are_refused(self, number: int) -> None:
        with pytest.raises(InvalidEvent, match="too large"):
            parse_event(f'{{"type":"x","n":{number}}}')

    def test_floats_too_large_are_refused(self) -> None:
        with pytest.raises(InvalidEvent, match="too large"):
            parse_event('{"type":"x","n":1e309}')


class TestUpstream:
    def test_objects_are_read_as_sent(self) -> None:
        text = '{"type":"response.done","n":1e999,"d":"a","d":"b"}'
        assert parse_upstream(text) == json.loads(text)
        assert parse_upstream(text.encode()) == json.loads(text)

    @pytest.mark.parametrize(
        "data",
        [b"\xff{}", "[1]", "{", flat("0", UPSTREAM_MAX_VALUES), "[" * 100 + "]" * 100],
    )
    def test_anything_else_is_none(self, data: str | bytes) -> None:
        assert parse_upstream(data) is None

    def test_a_session_updated_echoing_the_largest_update_is_read(self) -> None:
        tools = [json.loads(many_tools(1))["session"]["tools"][0]] * (MAX_VALUES // 150)
        echo = json.dumps({"type": "session.updated", "session": {"tools": tools}})
        assert parse_upstream(echo) is not None


def test_dump_writes_a_lone_surrogate_as_an_escape() -> None:
    """A client may send "\\ud800"; what the relay writes must still be UTF-8."""
    event = parse_event(
        '{"type":"session.update","session":{"instructions":"a\\ud800é"}}'
    )
    text = dump(event)
    text.encode("utf-8")
    assert json.loads(text) == event


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=400)
@given(
    _json,
    st.booleans(),
    st.sampled_from([(",", ":"), (", ", ": ")]),
    st.integers(1, 40),
    st.integers(0, 8),
)
# A short text with empty arrays: within the limit (3 values), over the
# count that holds an empty container twice (5).
@example([[], []], False, (",", ":"), 4, 3)
def test_the_check_is_exact(
    value: Any, ascii_only: bool, separators: tuple[str, str], limit: int, nesting: int
) -> None:
    """Refused exactly past the limits (an empty container counted twice), for any document.

    Except that a text too short to hold more than the limit, with no more
    brackets than the depth allows, passes without being counted (the
    check's shortcut): its empty containers count once.
    """
    text = json.dumps(value, ensure_ascii=ascii_only, separators=separators)
    reason = complexity_error(text, max_values=limit, max_depth=nesting)
    if reason is None:
        assert values_and_keys(value) <= limit
        assert depth(value) <= nesting
    short = len(text) < 2 * limit and text.count("[") + text.count("{") <= nesting
    if short or (bound(value) <= limit and depth(value) <= nesting):
        assert reason is None
    elif reason == "the event has too many values":
        assert bound(value) > limit
    else:
        assert reason == "the event is nested too deeply"
        assert depth(value) > nesting
