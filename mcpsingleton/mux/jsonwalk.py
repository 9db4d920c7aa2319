"""One left-to-right walk over a JSON object's bytes, checking the grammar without decoding the values.

The scanner under envelope.py and linehead.py: keys are decoded, values are only skipped (strings
with `quotes.closing_quote`, containers token by token, without a call stack) and their spans kept.
Whenever it cannot vouch for what it reads it raises `Unsure`, and the caller leaves the line to the
full parser. `Walk.budget` bounds its Python steps: beyond them the full parser is the cheaper way.
"""

from __future__ import annotations

import codecs
import json
import re

from . import quotes

MAX_DEPTH = 64
"""Deeper nesting is left to the full parser (which has its own recursion limit)."""

QUOTE, BACKSLASH, SPACE = 0x22, 0x5C, 0x20
OPEN_OBJECT, CLOSE_OBJECT, OPEN_ARRAY, CLOSE_ARRAY = 0x7B, 0x7D, 0x5B, 0x5D
COMMA, COLON = 0x2C, 0x3A
SCALAR = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|true|false|null")
_CONTROL_BYTES = tuple(bytes([code]) for code in range(0x20))
_UTF8_CHUNK = 256 * 1024
_SMALL_VALUE = 1024
"""Members decoded for routing (`jsonrpc`, `id`, `method`) longer than this: not certain."""

Span = tuple[int, int]
BODIES = ("params", "result")
"""Top-level members whose own members are read too (a created task, a progress token, era fields)."""


class Unsure(Exception):
    """The walk cannot vouch for the line: the caller must use the full parser."""


def plain_utf8(line: bytes) -> bool:
    """UTF-8 as the full parser accepts it (surrogates too), without control bytes (tabs, CR included)."""
    if any(control in line for control in _CONTROL_BYTES):
        return False
    if line.isascii():
        return True
    decoder = codecs.getincrementaldecoder("utf-8")("surrogatepass")  # chunked: no full-size copy
    view = memoryview(line)
    try:
        for offset in range(0, len(line), _UTF8_CHUNK):
            decoder.decode(view[offset : offset + _UTF8_CHUNK])
        decoder.decode(b"", True)
    except UnicodeDecodeError:
        return False
    return True


def small(line: bytes, span: Span | None) -> object:
    """A short value decoded; None when absent or null. Raises Unsure when it is too long to be sure of."""
    if span is None:
        return None
    start, end = span
    if end - start > _SMALL_VALUE:
        raise Unsure
    return json.loads(line[start:end])


def member_value(line: bytes, members: dict[str, Span], key: str) -> object:
    """A short member of `members` decoded (None when absent or null); ValueError when it is too long."""
    try:
        return small(line, members.get(key))
    except Unsure:
        raise ValueError(f"{key} is too long to be read") from None


class Walked:
    """An object's members, and the members of those named in BODIES that are objects."""

    __slots__ = ("inner", "members")

    def __init__(self) -> None:
        self.members: dict[str, Span] = {}
        self.inner: dict[str, dict[str, Span]] = {}


class Walk:
    """One left-to-right walk over a line whose bytes are already known to be control-free UTF-8."""

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.budget = 256 + len(line) // 1024  # Python steps; beyond these the full parser is the cheaper way

    def tick(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise Unsure

    def skip_spaces(self, i: int) -> int:
        line, end = self.line, len(self.line)
        while i < end and line[i] == SPACE:
            i += 1
        return i

    def expect(self, i: int, byte: int) -> int:
        """Index after `byte` (spaces before it allowed)."""
        i = self.skip_spaces(i)
        if self.line[i] != byte:
            raise Unsure
        return i + 1

    def members(self, i: int, bodies: tuple[str, ...] = ()) -> tuple[Walked, int]:
        """The object at i: each key → its value's span (and the members of `bodies`), and the index after it."""
        line = self.line
        if line[i] != OPEN_OBJECT:
            raise Unsure
        walked = Walked()
        i = self.skip_spaces(i + 1)
        if line[i] == CLOSE_OBJECT:
            return walked, i + 1
        while True:
            key_end = self.string_end(i)
            key = self.decode_string(i, key_end)
            if key in walked.members:
                raise Unsure  # json.loads keeps the last one; the router must not guess
            start = self.skip_spaces(self.expect(key_end, COLON))
            if key in bodies and line[start] == OPEN_OBJECT:
                inner, end = self.members(start)
                walked.inner[key] = inner.members
            else:
                end = self.value_end(start)
            walked.members[key] = (start, end)
            i = self.skip_spaces(end)
            if line[i] == CLOSE_OBJECT:
                return walked, i + 1
            if line[i] != COMMA:
                raise Unsure
            i = self.skip_spaces(i + 1)

    def decode_string(self, start: int, end: int) -> str:
        raw = self.line[start + 1 : end - 1]
        if BACKSLASH in raw:
            decoded = json.loads(self.line[start:end])
            if not isinstance(decoded, str):
                raise Unsure
            return decoded
        return raw.decode("utf-8", "surrogatepass")

    def value_end(self, i: int) -> int:
        """Index after the JSON value starting at i, checked but not decoded."""
        first = self.line[i]
        if first == QUOTE:
            return self.string_end(i)
        if first in (OPEN_OBJECT, OPEN_ARRAY):
            return self.container_end(i)
        return self.scalar_end(i)

    def scalar_end(self, i: int) -> int:
        self.tick()
        match = SCALAR.match(self.line, i)
        if match is None:
            raise Unsure
        return match.end()

    def string_end(self, i: int) -> int:
        """Index after the string whose opening quote is at i."""
        if self.line[i] != QUOTE:
            raise Unsure
        self.tick()
        quote, _ = quotes.closing_quote(self.line, i + 1, on_step=self.tick)
        if quote < 0:
            raise Unsure
        return quote + 1

    def container_end(self, i: int) -> int:
        """Index after the object or array at i, walking every token in it (without a call stack)."""
        line = self.line
        closers: list[int] = []
        while True:
            self.tick()
            opener = line[i]
            if opener in (OPEN_OBJECT, OPEN_ARRAY):
                closer = CLOSE_OBJECT if opener == OPEN_OBJECT else CLOSE_ARRAY
                closers.append(closer)
                if len(closers) > MAX_DEPTH:
                    raise Unsure
                i = self.skip_spaces(i + 1)
                if line[i] == closer:
                    closers.pop()
                    i += 1
                elif opener == OPEN_OBJECT:
                    i = self.skip_spaces(self.expect(self.string_end(i), COLON))
                    continue
                else:
                    continue
            elif opener == QUOTE:
                i = self.string_end(i)
            else:
                i = self.scalar_end(i)
            i = self.after_value(i, closers)
            if not closers:
                return i

    def after_value(self, i: int, closers: list[int]) -> int:
        """Past the closers that end here; at the start of the next value (after its key) otherwise."""
        line = self.line
        while closers:
            i = self.skip_spaces(i)
            if line[i] == closers[-1]:
                closers.pop()
                i += 1
                continue
            if line[i] != COMMA:
                raise Unsure
            i = self.skip_spaces(i + 1)
            if closers[-1] == CLOSE_OBJECT:
                i = self.skip_spaces(self.expect(self.string_end(i), COLON))
            return i
        return i
