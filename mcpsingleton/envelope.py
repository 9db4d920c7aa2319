"""The envelope of one JSON-RPC line, read without decoding its body. Pure functions, no I/O.

Routing a message needs its kind, `id` and `method`; decoding and re-encoding a 10 MB `result` only to
change the id costs tens of milliseconds. `scan` walks the top-level object of a line, decodes only
the small members (`jsonrpc`, `id`, `method`) and skips the others at copy speed: strings with
`bytes.find`, containers token by token. `replace_id` splices a new id into the original bytes.

`scan` answers None whenever it is not certain, and the caller then uses the full parser
(`jsonrpc.parse`), so every error reply and log line stays as it is. It answers None for: batches,
duplicate top-level keys, anything `jsonrpc.check` would refuse, bytes that are not UTF-8, any control
byte (a tab or CR anywhere, even as whitespace between tokens), NaN/Infinity, nesting deeper than
`MAX_DEPTH`, and bodies made of so many small tokens that walking them would cost more than parsing
them (`_Walk.budget`). Everything else of the JSON grammar is checked, except one thing inside
skipped strings: that every backslash escape is one JSON allows (`"\\q"`). Such a line is forwarded
as the backend wrote it, and the client's own parser reports it, as with a direct connection.

When the fast path may be taken (the router decides; this module only reads):
- backend → session, a response (`kind == "response"`) whose id is a pending request of a session
  with no reply hook, no progress token, a handshake-era session (no modern completion), a method
  other than `tasks/list`, and whose `result` (`object_members`) has no `task` member: splice the
  session's original id (`encode_id`) into the line. An `error` member still counts as an error.
- session → backend, a request whose method the router forwards unchanged (not a local or
  bookkeeping method) and whose `params` has no `_meta` member (no progress token, no modern
  envelope): splice the broker's id in.
Everything else (notifications, server requests, batches, `_meta`) takes the full parser.
"""

from __future__ import annotations

import codecs
import json
import re

MAX_DEPTH = 64
"""Deeper nesting is left to the full parser (which has its own recursion limit)."""

_QUOTE, _BACKSLASH, _SPACE = 0x22, 0x5C, 0x20
_OPEN_OBJECT, _CLOSE_OBJECT, _OPEN_ARRAY, _CLOSE_ARRAY = 0x7B, 0x7D, 0x5B, 0x5D
_COMMA, _COLON = 0x2C, 0x3A
_CONTROL_BYTES = tuple(bytes([code]) for code in range(0x20))
_SCALAR = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|true|false|null")
_UTF8_CHUNK = 256 * 1024
_BLANKING_WINDOW = 32 * 1024
_SPOTS_CHECKED = 64
_SMALL_VALUE = 1024
"""Top-level members decoded for routing (`jsonrpc`, `id`, `method`) longer than this: not certain."""

Span = tuple[int, int]


class Envelope:
    """What the router needs from one line: kind, id (and where its value sits), method, member spans."""

    __slots__ = ("id", "id_span", "kind", "members", "method")

    def __init__(self, kind: str, members: dict[str, Span], request_id: str | int | None, method: str | None):
        self.kind = kind  # "request", "notification" or "response"
        self.members = members  # every top-level key → (start, end) of its value in the line
        self.id = request_id
        self.id_span: Span | None = members.get("id")
        self.method = method

    def __repr__(self) -> str:
        return f"Envelope({self.kind}, id={self.id!r}, method={self.method!r})"


class _Unsure(Exception):
    """The walk cannot vouch for the line: the caller must use the full parser."""


def scan(line: bytes) -> Envelope | None:
    """The envelope of one JSON-RPC message line, or None when the full parser must decide."""
    if not _plain_utf8(line):
        return None
    try:
        walk = _Walk(line)
        start = walk.skip_spaces(0)
        members, end = walk.members(start)
        if walk.skip_spaces(end) != len(line):
            return None
        return _classify(line, members)
    except (_Unsure, IndexError, ValueError):
        return None


def object_members(line: bytes, span: Span) -> dict[str, Span] | None:
    """The members of the object at `span` (e.g. a response's `result`), or None if not certainly one."""
    start, end = span
    if line[start] != _OPEN_OBJECT:
        return None
    try:
        members, stop = _Walk(line).members(start)
    except (_Unsure, IndexError, ValueError):
        return None
    return members if stop == end else None


def replace_id(line: bytes, span: Span, new_id: bytes) -> bytes:
    """The line with the value at `span` (the top-level id) replaced by the encoded `new_id`."""
    start, end = span
    return b"".join((line[:start], new_id, line[end:]))


def encode_id(value: str | int) -> bytes:
    """An id as the full encoder writes it (UTF-8, or escaped when it holds lone surrogates)."""
    if isinstance(value, int):
        return str(value).encode("ascii")
    try:
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value).encode("ascii")


def _plain_utf8(line: bytes) -> bool:
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


class _Walk:
    """One left-to-right walk over a line whose bytes are already known to be control-free UTF-8."""

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.budget = 256 + len(line) // 1024  # Python steps; beyond these the full parser is the cheaper way
        self.escapes_before_blanking = 16  # past these, blanking windows is cheaper than a step per quote

    def tick(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise _Unsure

    def skip_spaces(self, i: int) -> int:
        line, end = self.line, len(self.line)
        while i < end and line[i] == _SPACE:
            i += 1
        return i

    def expect(self, i: int, byte: int) -> int:
        """Index after `byte` (spaces before it allowed)."""
        i = self.skip_spaces(i)
        if self.line[i] != byte:
            raise _Unsure
        return i + 1

    def members(self, i: int) -> tuple[dict[str, Span], int]:
        """The object at i: each key → its value's span, and the index after the object."""
        line = self.line
        if line[i] != _OPEN_OBJECT:
            raise _Unsure
        members: dict[str, Span] = {}
        i = self.skip_spaces(i + 1)
        if line[i] == _CLOSE_OBJECT:
            return members, i + 1
        while True:
            key_end = self.string_end(i)
            key = self.decode_string(i, key_end)
            if key in members:
                raise _Unsure  # json.loads keeps the last one; the router must not guess
            start = self.skip_spaces(self.expect(key_end, _COLON))
            end = self.value_end(start)
            members[key] = (start, end)
            i = self.skip_spaces(end)
            if line[i] == _CLOSE_OBJECT:
                return members, i + 1
            if line[i] != _COMMA:
                raise _Unsure
            i = self.skip_spaces(i + 1)

    def decode_string(self, start: int, end: int) -> str:
        raw = self.line[start + 1 : end - 1]
        if _BACKSLASH in raw:
            decoded = json.loads(self.line[start:end])
            if not isinstance(decoded, str):
                raise _Unsure
            return decoded
        return raw.decode("utf-8", "surrogatepass")

    def value_end(self, i: int) -> int:
        """Index after the JSON value starting at i, checked but not decoded."""
        first = self.line[i]
        if first == _QUOTE:
            return self.string_end(i)
        if first in (_OPEN_OBJECT, _OPEN_ARRAY):
            return self.container_end(i)
        return self.scalar_end(i)

    def scalar_end(self, i: int) -> int:
        self.tick()
        match = _SCALAR.match(self.line, i)
        if match is None:
            raise _Unsure
        return match.end()

    def string_end(self, i: int) -> int:
        """Index after the string whose opening quote is at i.

        Text that embeds JSON has thousands of escaped quotes; past a few, one blanked copy of the line
        finds the closing quote in one `find` instead of one Python step per escaped quote.
        """
        line = self.line
        if line[i] != _QUOTE:
            raise _Unsure
        self.tick()
        escaped = 0
        quote = line.find(b'"', i + 1)
        while quote > 0 and not self.quote_is_real(quote):
            escaped += 1
            if escaped == self.escapes_before_blanking:
                return self.blanked_string_end(i, quote)
            self.tick()
            quote = line.find(b'"', quote + 1)
        if quote < 0:
            raise _Unsure
        return quote + 1

    def blanked_string_end(self, start: int, escaped_quote: int) -> int:
        """The closing quote, found window by window in copies where every backslash-quote pair is blanked.

        Windows keep each copy small (no fresh pages to fault in for a 10 MB line). Blanking also hides
        a real quote that follows an escaped backslash (`\\\\"`): each such spot is checked on its own.
        """
        line, window_start = self.line, escaped_quote + 1
        candidate = -1
        while candidate < 0:
            if window_start >= len(line):
                raise _Unsure
            window = line[window_start : window_start + _BLANKING_WINDOW].replace(b'\\"', b"__")
            found = window.find(b'"')
            if found == 0 and line[window_start - 1] == _BACKSLASH:  # its pair began in the previous window
                found = window.find(b'"', 1)
            candidate = window_start + found if found >= 0 else -1
            window_start += _BLANKING_WINDOW
        spot = line.find(b'\\\\"', start, candidate)
        for _ in range(_SPOTS_CHECKED):
            if spot < 0:
                return candidate + 1
            if self.quote_is_real(spot + 2):
                return spot + 3
            spot = line.find(b'\\\\"', spot + 3, candidate)
        raise _Unsure  # JSON escaped twice over (text holding JSON that holds quotes): the full parser is cheaper

    def quote_is_real(self, quote: int) -> bool:
        """A quote ends a string when an even number of backslashes precede it."""
        line, run = self.line, quote - 1
        while line[run] == _BACKSLASH:
            run -= 1
        return (quote - run) % 2 == 1

    def container_end(self, i: int) -> int:
        """Index after the object or array at i, walking every token in it (without a call stack)."""
        line = self.line
        closers: list[int] = []
        while True:
            self.tick()
            opener = line[i]
            if opener in (_OPEN_OBJECT, _OPEN_ARRAY):
                closer = _CLOSE_OBJECT if opener == _OPEN_OBJECT else _CLOSE_ARRAY
                closers.append(closer)
                if len(closers) > MAX_DEPTH:
                    raise _Unsure
                i = self.skip_spaces(i + 1)
                if line[i] == closer:
                    closers.pop()
                    i += 1
                elif opener == _OPEN_OBJECT:
                    i = self.skip_spaces(self.expect(self.string_end(i), _COLON))
                    continue
                else:
                    continue
            elif opener == _QUOTE:
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
            if line[i] != _COMMA:
                raise _Unsure
            i = self.skip_spaces(i + 1)
            if closers[-1] == _CLOSE_OBJECT:
                i = self.skip_spaces(self.expect(self.string_end(i), _COLON))
            return i
        return i


def _classify(line: bytes, members: dict[str, Span]) -> Envelope | None:
    """The envelope when `jsonrpc.check` would accept the message, else None (it will say why)."""
    if _small(line, members.get("jsonrpc")) != "2.0":
        return None
    checked_id = _routing_id(line, members.get("id"))
    if "method" not in members:
        return Envelope("response", members, checked_id, None) if "result" in members or "error" in members else None
    method = _small(line, members["method"])
    if not isinstance(method, str) or ("id" in members and checked_id is None):
        return None
    params = members.get("params")
    if params is not None and line[params[0]] not in (_OPEN_OBJECT, _OPEN_ARRAY) and line[slice(*params)] != b"null":
        return None  # "params": null is allowed, any other scalar is not
    return Envelope("request" if "id" in members else "notification", members, checked_id, method)


def _small(line: bytes, span: Span | None) -> object:
    """A short top-level value decoded; None when absent or null."""
    if span is None:
        return None
    start, end = span
    if end - start > _SMALL_VALUE:
        raise _Unsure
    return json.loads(line[start:end])


def _routing_id(line: bytes, span: Span | None) -> str | int | None:
    """The id as MCP allows it (a string or an integer, never a bool or a float), or None when absent/null."""
    value = _small(line, span)
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise _Unsure
