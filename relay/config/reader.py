"""Typed, path-aware reading of a parsed YAML document.

Every accessor either returns a value of the promised type or raises
:exc:`~relay.exceptions.ConfigError` naming the file, the key path (e.g.
``clients[1].key_sha256``) and what was expected. Sections remember which keys
were read, so :meth:`Section.finish` can refuse unknown keys: a typo in a
security setting must never be silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import NoReturn

import yaml

from relay.exceptions import ConfigError


__all__ = ["Node", "Section", "load_yaml"]


def describe(value: object) -> str:
    """A short, safe rendering of an offending value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one."""


def _construct_mapping(
    loader: _StrictLoader, node: yaml.MappingNode
) -> dict[object, object]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_yaml(text: str, source: str) -> Section:
    """Parse ``text`` (from ``source``) into the root :class:`Section`.

    Raises:
        ConfigError: the YAML is malformed, has duplicate keys, or its root is
            not a mapping.
    """
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    if document is None:
        document = {}
    return Node(document, "", source).as_section()


class Node:
    """One value of the document and where it was found."""

    __slots__ = ("path", "source", "value")

    def __init__(self, value: object, path: str, source: str) -> None:
        self.value = value
        self.path = path
        self.source = source

    def fail(self, expected: str) -> NoReturn:
        """Raise a :exc:`ConfigError` saying what was expected here."""
        where = self.path or "(top level)"
        raise ConfigError(
            f"{self.source}: {where}: expected {expected}, got {describe(self.value)}"
        )

    def as_str(self, *, allow_empty: bool = False) -> str:
        """A string (non-empty unless ``allow_empty``)."""
        if not isinstance(self.value, str) or (not allow_empty and not self.value):
            self.fail("a non-empty string")
        return self.value

    def as_choice(self, choices: tuple[str, ...]) -> str:
        """One of ``choices``."""
        if not isinstance(self.value, str) or self.value not in choices:
            self.fail("one of " + ", ".join(choices))
        return self.value

    def as_bool(self) -> bool:
        """A boolean (YAML ``true``/``false``)."""
        if not isinstance(self.value, bool):
            self.fail("true or false")
        return self.value

    def as_int(self, *, minimum: int | None = None, maximum: int | None = None) -> int:
        """An integer within the inclusive bounds (booleans are not integers here)."""
        value = self.value
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(_bounded("an integer", minimum, maximum))
        if (minimum is not None and value < minimum) or (
            maximum is not None and value > maximum
        ):
            self.fail(_bounded("an integer", minimum, maximum))
        return value

    def as_float(
        self, *, minimum: float | None = None, maximum: float | None = None
    ) -> float:
        """A finite number within the inclusive bounds."""
        value = self.value
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            self.fail(_bounded("a number", minimum, maximum))
        if (minimum is not None and value < minimum) or (
            maximum is not None and value > maximum
        ):
            self.fail(_bounded("a number", minimum, maximum))
        return float(value)

    def as_list(self) -> list[Node]:
        """A list; each item knows its index in the path."""
        if not isinstance(self.value, list):
            self.fail("a list")
        return [
            Node(item, f"{self.path}[{index}]", self.source)
            for index, item in enumerate(self.value)
        ]

    def as_section(self) -> Section:
        """A mapping with string keys."""
        if not isinstance(self.value, Mapping):
            self.fail("a mapping")
        for key in self.value:
            if not isinstance(key, str):
                Node(key, self.path, self.source).fail("string keys")
        return Section(self.value, self.path, self.source)


def _bounded(kind: str, minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{kind} from {minimum} to {maximum}"
    if minimum is not None:
        return f"{kind} >= {minimum}"
    if maximum is not None:
        return f"{kind} <= {maximum}"
    return kind


class Section:
    """A mapping of the document that tracks which keys were read."""

    __slots__ = ("_mapping", "_read", "path", "source")

    def __init__(self, mapping: Mapping[str, object], path: str, source: str) -> None:
        self._mapping = mapping
        self._read: set[str] = set()
        self.path = path
        self.source = source

    def _child_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str) -> Node | None:
        """The value at ``key``, or ``None`` when absent or null."""
        self._read.add(key)
        if self._mapping.get(key) is None:
            return None
        return Node(self._mapping[key], self._child_path(key), self.source)

    def require(self, key: str, expected: str) -> Node:
        """The value at ``key``; a missing or null key is an error."""
        node = self.get(key)
        if node is None:
            raise ConfigError(
                f"{self.source}: {self._child_path(key)}: missing, expected {expected}"
            )
        return node

    def section(self, key: str) -> Section:
        """The mapping at ``key``; an absent key reads as an empty section."""
        node = self.get(key)
        if node is None:
            return Section({}, self._child_path(key), self.source)
        return node.as_section()

    def items(self) -> Iterator[tuple[str, Node]]:
        """Every entry, for sections whose keys are names (e.g. deployments)."""
        for key, value in self._mapping.items():
            self._read.add(key)
            yield key, Node(value, self._child_path(key), self.source)

    def __contains__(self, key: str) -> bool:
        return key in self._mapping

    def finish(self) -> None:
        """Refuse keys nobody read: they are typos or unsupported settings."""
        unknown = sorted(set(self._mapping) - self._read)
        if unknown:
            known = ", ".join(sorted(self._read)) or "none"
            raise ConfigError(
                f"{self.source}: {self._child_path(unknown[0])}: unknown key (known keys here: {known})"
            )
