"""Codex's config.toml (`[mcp_servers.NAME]` with command/args/env), edited as text so comments survive.

tomllib validates the file and supplies the values; a small scanner records where each value is written.
Arrays of tables are scanned like plain tables (no index in the path): Codex keeps servers in plain tables.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
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

SERVERS = "mcp_servers"

_SPACE = re.compile(r"[ \t]*")
_BLANK = re.compile(r"(?:[ \t\r\n]+|#[^\n]*)*")
_LINE_END = re.compile(r"[ \t]*(?:#[^\r\n]*)?")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_BASIC = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_LITERAL = re.compile(r"'[^'\n]*'")
_MULTILINE = (re.compile(r'"""(?:[^"\\]|\\.|"(?!""))*"{3,5}', re.DOTALL), re.compile(r"'''.*?'{3,5}", re.DOTALL))
_SCALAR = re.compile(r"[^\s,\]}#]+(?: [0-9]{2}:[^\s,\]}#]*)?")  # a date-time may hold one space


@dataclass(frozen=True)
class _Written:
    """Where one key's value is written."""

    key: int  # start of the (possibly dotted) key
    last_key: int  # start of the key's last part
    span: Span
    items: tuple[Span, ...] | None  # arrays only
    inline: bool  # inside an inline table
    container: bool


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.written: dict[tuple[str, ...], _Written] = {}
        self.headers: dict[tuple[str, ...], Span] = {}  # [table] lines, to their ends

    def fail(self) -> ConfigError:
        line = self.text.count("\n", 0, self.pos) + 1
        return ConfigError(f"cannot follow the TOML layout at line {line}; please report this, and wrap by hand")

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def skip(self, pattern: re.Pattern[str]) -> str:
        match = pattern.match(self.text, self.pos)
        if match is None:
            raise self.fail()
        self.pos = match.end()
        return self.peek()

    def scan(self) -> dict[tuple[str, ...], _Written]:
        table: tuple[str, ...] = ()
        while self.skip(_BLANK):
            start = self.pos
            is_header = self.peek() == "["
            if is_header:
                table = self.header()
            else:
                self.keyval(table, inline=False)
            if self.skip(_LINE_END) not in ("", "\n", "\r"):
                raise self.fail()
            if is_header:
                self.headers[table] = Span(start, self.pos)
        return self.written

    def header(self) -> tuple[str, ...]:
        closing = "]]" if self.text.startswith("[[", self.pos) else "]"
        self.pos += len(closing)
        path = self.key()[0]
        if not self.text.startswith(closing, self.pos):
            raise self.fail()
        self.pos += len(closing)
        return path

    def key(self) -> tuple[tuple[str, ...], int, int]:
        parts, start = [], self.pos
        while True:
            self.skip(_SPACE)
            last = self.pos
            parts.append(self.key_part())
            if self.skip(_SPACE) != ".":
                return tuple(parts), start, last
            self.pos += 1

    def key_part(self) -> str:
        bare = _BARE_KEY.match(self.text, self.pos)
        quoted = bare or _BASIC.match(self.text, self.pos) or _LITERAL.match(self.text, self.pos)
        if not quoted:
            raise self.fail()
        self.pos = quoted.end()
        return quoted.group() if bare else tomllib.loads("k = " + quoted.group())["k"]

    def keyval(self, table: tuple[str, ...], inline: bool) -> None:
        parts, key, last_key = self.key()
        if self.peek() != "=":
            raise self.fail()
        self.pos += 1
        self.skip(_SPACE)
        path, start = table + parts, self.pos
        items = self.value(path)
        container = items is not None or self.text[start] == "{"
        self.written[path] = _Written(key, last_key, Span(start, self.pos), items, inline, container)

    def value(self, path: tuple[str, ...]) -> tuple[Span, ...] | None:
        """Consume one value; an array's item spans are returned, inline tables record their keys."""
        if self.peek() == "[":
            return self.array(path)
        if self.peek() == "{":
            self.inline_table(path)
            return None
        for pattern in (*_MULTILINE, _BASIC, _LITERAL, _SCALAR):
            match = pattern.match(self.text, self.pos)
            if match:
                self.pos = match.end()
                return None
        raise self.fail()

    def array(self, path: tuple[str, ...]) -> tuple[Span, ...]:
        self.pos += 1
        items = []
        while self.skip(_BLANK) != "]":
            start = self.pos
            self.value((*path, "[]"))
            items.append(Span(start, self.pos))
            if self.skip(_BLANK) == ",":
                self.pos += 1
            elif self.peek() != "]":
                raise self.fail()
        self.pos += 1
        return tuple(items)

    def inline_table(self, path: tuple[str, ...]) -> None:
        self.pos += 1
        while self.skip(_BLANK) != "}":
            self.keyval(path, inline=True)
            if self.skip(_BLANK) == ",":
                self.pos += 1
            elif self.peek() != "}":
                raise self.fail()
        self.pos += 1


def quote(value: str) -> str:
    """A TOML basic string: JSON's escapes are all valid TOML; DEL must be escaped as well."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def load(text: str) -> Document:
    """The `mcp_servers` entries of a Codex config.toml."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML ({exc}); {FIX}") from exc
    scanner = _Scanner(text)
    written = scanner.scan()
    servers = data.get(SERVERS)
    entries = (
        tuple(_entry(text, written, scanner.headers, name, value) for name, value in servers.items())
        if isinstance(servers, dict)
        else ()
    )
    secrets = tuple(
        spot.span for path, spot in written.items() if not spot.container and is_secret(path, _value_at(data, path))
    )
    return Document(text, data, entries, secrets, quote, pair, partial(_drop, text, written, scanner.headers))


def _drop(
    text: str, written: dict[tuple[str, ...], _Written], headers: dict[tuple[str, ...], Span], path: tuple[str, ...]
) -> Span | None:
    """The member at `path` with its separator: a key's whole line(s), a pair of an inline table with the comma
    before (or after) it, or a `[table]` from its header to the next one."""
    spot = written.get(path)
    if spot is not None and spot.inline:
        return _inline_pair(written, path, spot)
    if spot is not None:
        after = text.find("\n", spot.span.end)
        return Span(_line_start(text, spot.key), len(text) if after < 0 else after + 1)
    header = headers.get(path)
    if header is None:
        return None
    following = [span.start for span in headers.values() if span.start > header.start]
    return Span(_line_start(text, header.start), _line_start(text, min(following)) if following else len(text))


def _inline_pair(written: dict[tuple[str, ...], _Written], path: tuple[str, ...], spot: _Written) -> Span:
    siblings = sorted((other for key, other in written.items() if key[:-1] == path[:-1] and other.inline),
                      key=lambda other: other.key)
    index = siblings.index(spot)
    if index > 0:
        return Span(siblings[index - 1].span.end, spot.span.end)
    if len(siblings) > 1:
        return Span(spot.key, siblings[1].key)
    return Span(spot.key, spot.span.end)


def _line_start(text: str, pos: int) -> int:
    return text.rfind("\n", 0, pos) + 1


def pair(key: str, value: str) -> str:
    return f"{key if _BARE_KEY.fullmatch(key) else quote(key)} = {quote(value)}"


def _value_at(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _entry(
    text: str, written: dict[tuple[str, ...], _Written], headers: dict[tuple[str, ...], Span], name: str, data: object
) -> ServerEntry:
    path = (SERVERS, name)
    command, args = written.get((*path, "command")), written.get((*path, "args"))
    array = None
    if args is not None and args.items is not None:
        array = ArgsArray(args.span.start + 1, args.items, args.span.end - 1)
    if command is None or not (isinstance(data, dict) and isinstance(data.get("command"), str)):
        return ServerEntry(name, path, data, None, array, None, None)
    pos, lead = _after(text, command)
    env = _env_spot(text, written.get((*path, "env")), headers.get((*path, "env")), "env" in data, pos, lead)
    return ServerEntry(name, path, data, command.span, array, Slot(pos, lead + "args = "), env)


def _after(text: str, command: _Written) -> tuple[int, str]:
    """Where a new member goes after the command, and what leads it: in its inline table, or on the next
    line with its indentation and the same dotted key prefix."""
    if command.inline:
        return command.span.end, ", "
    end, newline = _line_end(text, command.span.end)
    indent = text[text.rfind("\n", 0, command.key) + 1 : command.key]
    return end, newline + indent + text[command.key : command.last_key]


def _line_end(text: str, pos: int) -> tuple[int, str]:
    """The end of the line holding `pos` (before its newline) and the file's newline."""
    end = text.find("\n", pos)
    if end < 0:
        return len(text), "\r\n" if "\r\n" in text else "\n"
    return (end - 1, "\r\n") if text[end - 1] == "\r" else (end, "\n")


def _env_spot(
    text: str, inline: _Written | None, header: Span | None, has_env: bool, pos: int, lead: str
) -> EnvSpot | None:
    """First in an inline env table; first under an [….env] header; or a new env member after the command."""
    if inline is not None and text[inline.span.start] == "{":
        empty = text[inline.span.start + 1 : inline.span.end - 1].strip() == ""
        return EnvSpot(inline.span.start + 1, " ", " " if empty else ",")
    if header is not None:
        end, newline = _line_end(text, header.start)
        return EnvSpot(end, newline + text[text.rfind("\n", 0, header.start) + 1 : header.start], "")
    return None if has_env else EnvSpot(pos, lead + "env = { ", " }")
