"""JSON with comments and trailing commas (VS Code's dialect, a superset of every client's JSON).

The parser keeps the position of every value, so edits replace exactly one value's text and leave
comments, commas, indentation and key order as the user wrote them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from mcpsingleton.ops.configs.entries import (
    FIX,
    ArgsArray,
    ConfigError,
    Document,
    EnvSpot,
    ServerEntry,
    Slot,
    Span,
    is_secret,
)

_BLANK = re.compile(r"(?:[ \t\r\n]+|//[^\n]*|/\*.*?\*/)*", re.DOTALL)
_STRING = re.compile(r'"[^"\\\x00-\x1f]*(?:\\.[^"\\\x00-\x1f]*)*"')
_BLANK_STARTS = " \t\r\n/"
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_LITERALS = {"true": True, "false": False, "null": None}


@dataclass
class Node:
    """A value and where it is written; objects keep their members, arrays their items."""

    start: int
    end: int
    value: Any
    key_start: int = -1  # where a member's key is written (-1 for the root and array items)
    members: dict[str, Node] = field(default_factory=dict)
    items: list[Node] = field(default_factory=list)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 1 if text.startswith("\ufeff") else 0

    def fail(self, what: str) -> ConfigError:
        line = self.text.count("\n", 0, self.pos) + 1
        column = self.pos - self.text.rfind("\n", 0, self.pos)
        return ConfigError(f"not valid JSON (line {line}, column {column}: {what}); {FIX}")

    def blank(self) -> str:
        char = self.text[self.pos : self.pos + 1]
        if char and char in _BLANK_STARTS:
            blank = _BLANK.match(self.text, self.pos)
            assert blank is not None  # it starts with one of _BLANK_STARTS
            self.pos = blank.end()
            char = self.text[self.pos : self.pos + 1]
        return char

    def document(self) -> Node:
        self.blank()
        node = self.value()
        if self.blank():
            raise self.fail("unexpected text after the end")
        return node

    def value(self) -> Node:
        char = self.text[self.pos : self.pos + 1]
        if char == "{":
            return self.object()
        if char == "[":
            return self.array()
        if char == '"':
            return self.string()
        return self.scalar()

    def string(self) -> Node:
        match = _STRING.match(self.text, self.pos)
        if not match:
            raise self.fail("unterminated string or control character in a string")
        token = match.group()
        try:
            value = json.loads(token) if "\\" in token else token[1:-1]
        except json.JSONDecodeError as exc:
            raise self.fail("bad escape in a string") from exc
        self.pos = match.end()
        return Node(match.start(), match.end(), value)

    def scalar(self) -> Node:
        start = self.pos
        for word, value in _LITERALS.items():
            if self.text.startswith(word, start):
                self.pos += len(word)
                return Node(start, self.pos, value)
        match = _NUMBER.match(self.text, start)
        if not match:
            raise self.fail("expected a value" if start < len(self.text) else "unexpected end of file")
        self.pos = match.end()
        return Node(start, self.pos, json.loads(match.group()))

    def object(self) -> Node:
        node = Node(self.pos, 0, None)
        self.pos += 1
        while self.blank() != "}":
            if self.text[self.pos : self.pos + 1] != '"':
                raise self.fail("expected a quoted key or '}'")
            key = self.string()
            if self.blank() != ":":
                raise self.fail("expected ':' after a key")
            self.pos += 1
            self.blank()
            member = node.members[key.value] = self.value()
            member.key_start = key.start
            if not self.separator("}"):
                raise self.fail("expected ',' or '}'")
        self.pos += 1
        node.end = self.pos
        node.value = {key: member.value for key, member in node.members.items()}
        return node

    def array(self) -> Node:
        node = Node(self.pos, 0, None)
        self.pos += 1
        while self.blank() != "]":
            node.items.append(self.value())
            if not self.separator("]"):
                raise self.fail("expected ',' or ']'")
        self.pos += 1
        node.end = self.pos
        node.value = [item.value for item in node.items]
        return node

    def separator(self, closing: str) -> bool:
        """Consume a ',' (a trailing one is fine) or stop before `closing`; False on anything else."""
        char = self.blank()
        if char == ",":
            self.pos += 1
            return True
        return char == closing


def parse(text: str) -> Node:
    """The JSON(C) document's root node; ConfigError says where the text is not valid."""
    try:
        return _Parser(text).document()
    except RecursionError as exc:
        raise ConfigError(f"not valid JSON (nested too deeply); {FIX}") from exc


def quote(value: str) -> str:
    """A JSON string literal, non-ASCII kept readable."""
    return json.dumps(value, ensure_ascii=False)


def load(text: str, server_paths: tuple[tuple[str, ...], ...]) -> Document:
    """The file's server entries under each of `server_paths` (keys from the root; '*' is any key)."""
    root = parse(text)
    entries = tuple(
        _entry(text, (*path, name), node)
        for path, servers in _find(root, server_paths)
        for name, node in servers.members.items()
    )
    return Document(text, root.value, entries, tuple(_secrets(root)), quote, pair, partial(_drop, root))


def _find(root: Node, server_paths: tuple[tuple[str, ...], ...]) -> Iterator[tuple[tuple[str, ...], Node]]:
    for pattern in server_paths:
        found: list[tuple[tuple[str, ...], Node]] = [((), root)]
        for key in pattern:
            found = [
                ((*path, name), child)
                for path, node in found
                for name, child in node.members.items()
                if key in ("*", name)
            ]
        yield from ((path, node) for path, node in found if isinstance(node.value, dict))


def _entry(text: str, path: tuple[str, ...], node: Node) -> ServerEntry:
    command, args = node.members.get("command"), node.members.get("args")
    token = Span(command.start, command.end) if command and isinstance(command.value, str) else None
    array = None
    if args is not None and isinstance(args.value, list):
        array = ArgsArray(args.start + 1, tuple(Span(item.start, item.end) for item in args.items), args.end - 1)
    slot = Slot(token.end, ', "args": ') if token else None
    return ServerEntry(path[-1], path, node.value, token, array, slot, _env_spot(text, node, token))


def _env_spot(text: str, entry: Node, command: Span | None) -> EnvSpot | None:
    """First in the env object, in its own line layout; or a new env member right after the command."""
    env = entry.members.get("env")
    if env is None:
        return EnvSpot(command.end, ', "env": {', "}") if command else None
    if not isinstance(env.value, dict):
        return None
    if not env.members:
        return EnvSpot(env.start + 1, "", "")
    lead = text[env.start + 1 : len(text) - len(text[env.start + 1 :].lstrip(" \t\r\n"))]
    return EnvSpot(env.start + 1, lead, ",") if "\n" in lead else EnvSpot(env.start + 1, "", ", ")


def _drop(root: Node, path: tuple[str, ...]) -> Span | None:
    """The member at `path` with the comma before it (or, for a first member, the comma after it)."""
    parent: Node | None = root
    for key in path[:-1]:
        parent = parent.members.get(key) if parent else None
    if parent is None or path[-1] not in parent.members:
        return None
    keys = list(parent.members)
    index = keys.index(path[-1])
    member = parent.members[path[-1]]
    if index > 0:
        return Span(parent.members[keys[index - 1]].end, member.end)
    if len(keys) > 1:
        return Span(member.key_start, parent.members[keys[1]].key_start)
    return Span(member.key_start, member.end)


def pair(key: str, value: str) -> str:
    return f"{quote(key)}: {quote(value)}"


def _secrets(node: Node, path: tuple[str, ...] = (), secret: bool = False) -> Iterator[Span]:
    """Spans of the scalar values `is_secret` names, anywhere in the file; everything below a secret key."""
    if not isinstance(node.value, dict | list):
        if secret or is_secret(path, node.value):
            yield Span(node.start, node.end)
        return
    for key, member in node.members.items():
        yield from _secrets(member, (*path, key), secret or is_secret((*path, key), None))
    for item in node.items:
        yield from _secrets(item, path, secret)
