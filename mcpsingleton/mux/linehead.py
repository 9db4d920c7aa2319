"""The head of a JSON-RPC line that is still arriving: what can be known before its end. Pure functions.

mux/backend_stream.py streams a reply once its head shows who asked; mux/session_stream.py streams a
request cut inside one big string (`open_string`). Only the head is read: what follows the open
member's start is the caller's to pass on unread.
"""

from __future__ import annotations

from .jsonwalk import BODIES, COLON, COMMA, MAX_DEPTH, OPEN_OBJECT, QUOTE, Span, Unsure, Walk, member_value, plain_utf8


class Head:
    """The start of a line: its top-level members complete so far, and the member whose value is still open."""

    __slots__ = ("body", "body_open", "members", "open_key", "open_start")

    def __init__(self, members: dict[str, Span], open_key: str, open_start: int) -> None:
        self.members = members
        self.open_key = open_key
        self.open_start = open_start
        self.body: dict[str, Span] = {}  # the open value's own complete members, when it is an object
        self.body_open: str | None = None  # and its open member

    def small(self, line: bytes, key: str) -> object:
        """A complete short member decoded (None when absent or null); raises ValueError when unsure."""
        return member_value(line, self.members, key)


def head(line: bytes) -> Head | None:
    """The head of a line whose end has not arrived: its complete members up to the one still open (None
    when the line is not an object being written, or its head is not control-free UTF-8)."""
    walk = Walk(line)
    try:
        found = _open_object(walk, walk.skip_spaces(0))
        if found is None:
            return None
        members, open_key, open_start = found
        opened = Head(members, open_key, open_start)
        if open_key in BODIES and line[open_start] == OPEN_OBJECT:
            inner = _open_object(walk, open_start)
            if inner is not None:
                opened.body, opened.body_open, _ = inner
    except (Unsure, IndexError, ValueError):
        return None
    return opened if plain_utf8(line[:open_start]) else None


class OpenString:
    """A line cut inside one string value: the keys of the objects down to it, where the string starts,
    and the members of each of those objects that came before it."""

    __slots__ = ("levels", "path", "start")

    def __init__(self, path: list[str], start: int, levels: list[dict[str, Span]]) -> None:
        self.path = path
        self.start = start
        self.levels = levels


def open_string(line: bytes) -> OpenString | None:
    """Where the head of a line is cut, when that is inside a string nested only in objects (a big text,
    file or base64 argument): everything after is that string's content, up to its closing quote."""
    walk = Walk(line)
    path: list[str] = []
    levels: list[dict[str, Span]] = []
    try:
        i = walk.skip_spaces(0)
        for _ in range(MAX_DEPTH):
            found = _open_object(walk, i)
            if found is None:
                return None
            members, key, i = found
            path.append(key)
            levels.append(members)
            if line[i] == QUOTE:
                return OpenString(path, i, levels) if plain_utf8(line[:i]) else None
            if line[i] != OPEN_OBJECT:
                return None
    except (Unsure, IndexError, ValueError):
        return None
    return None


def _open_object(walk: Walk, i: int) -> tuple[dict[str, Span], str, int] | None:
    """The object at i, read up to its first member whose value does not end within the line."""
    line = walk.line
    if line[i] != OPEN_OBJECT:
        return None
    members: dict[str, Span] = {}
    i = walk.skip_spaces(i + 1)
    while True:
        key_end = walk.string_end(i)
        key = walk.decode_string(i, key_end)
        if key in members:
            return None
        start = walk.skip_spaces(walk.expect(key_end, COLON))
        try:
            end = walk.value_end(start)
            i = walk.skip_spaces(end)
            closing = line[i]
        except (Unsure, IndexError):
            return members, key, start  # runs past what has arrived (or past the walk's budget)
        if closing != COMMA:
            return None  # the object ends (or is broken) within the line: nothing is open
        members[key] = (start, end)
        i = walk.skip_spaces(i + 1)
