"""The end of a JSON-RPC line, read backwards: the id a TypeScript server writes last. Pure functions.

Used where only the end of a line is at hand or needed: a streamed reply's held last bytes
(mux/backend_stream.py), and a reply the full parser could not read (`envelope.reply_id`).
"""

from __future__ import annotations

from .jsonwalk import BACKSLASH, CLOSE_OBJECT, COLON, COMMA, OPEN_OBJECT, QUOTE, SCALAR, SPACE, Span

_TAIL_SPACES = b" \t\r\n"
_SCALAR_BYTES = frozenset(b"0123456789+-.eEtrufalsn")


def tail(line: bytes) -> dict[str, Span] | None:
    """The top-level members at the end of a line, read backwards for as long as their values are scalars
    or strings without escapes (the first other value ends the reading); None when the line does not end
    as an object does. Sound for any valid JSON object: the closing brace is outside every string, so each
    member read backwards from it is a real top-level member."""
    j = _back_spaces(line, len(line))
    if j == 0 or line[j - 1] != CLOSE_OBJECT:
        return None
    members: dict[str, Span] = {}
    j = _back_spaces(line, j - 1)
    while True:
        value_start = _simple_value_start(line, j)
        if value_start is None:
            return members
        colon = _back_spaces(line, value_start)
        if colon == 0 or line[colon - 1] != COLON:
            return None
        key_end = _back_spaces(line, colon - 1)
        key_start = _plain_string_start(line, key_end)
        if key_start is None:
            return None
        try:
            key = line[key_start + 1 : key_end - 1].decode("utf-8", "strict")
        except UnicodeDecodeError:
            return None
        if key in members:
            return None
        members[key] = (value_start, j)
        before = _back_spaces(line, key_start)
        if before and line[before - 1] == OPEN_OBJECT:
            return members
        if before == 0 or line[before - 1] != COMMA:
            return None
        j = _back_spaces(line, before - 1)


def _back_spaces(line: bytes, j: int) -> int:
    while j > 0 and line[j - 1] in _TAIL_SPACES:
        j -= 1
    return j


def _simple_value_start(line: bytes, end: int) -> int | None:
    """Where the value ending at `end` starts, when it is a scalar or a string without escapes."""
    if end == 0:
        return None
    if line[end - 1] == QUOTE:
        return _plain_string_start(line, end)
    start = end
    while start > 0 and line[start - 1] in _SCALAR_BYTES:
        start -= 1
    return start if start and SCALAR.fullmatch(line, start, end) else None


def _plain_string_start(line: bytes, end: int) -> int | None:
    """The opening quote of the string ending at `end`, when it holds no backslash and no control byte
    and that quote is certainly not escaped (the byte before it is seen, and is not a backslash)."""
    if end < 2 or line[end - 1] != QUOTE:
        return None
    start = line.rfind(b'"', 0, end - 1)
    if start < 1 or line[start - 1] == BACKSLASH:
        return None
    content = line[start + 1 : end - 1]
    if BACKSLASH in content or any(byte < SPACE for byte in content):
        return None
    return start
