"""The envelope of one JSON-RPC line, read without decoding its body. Pure functions, no I/O.

`head` and `tail` read the start and the end of a line that is still arriving (mux/streaming.py).

Routing a message needs its kind, `id` and `method`; decoding and re-encoding a 10 MB `result` only to
change the id costs tens of milliseconds. `scan` walks the top-level object of a line, decodes only
the small members (`jsonrpc`, `id`, `method`) and skips the others at copy speed: strings with
`bytes.find`, containers token by token. `replace_id` splices a new id into the original bytes.

`scan` answers None whenever it is not certain, and the caller then uses the full parser
(`jsonrpc.parse`), so every error reply and log line stays as it is. It answers None for: batches,
duplicate keys (top level, or directly in `params`/`result`), anything `jsonrpc.check` would refuse,
bytes that are not UTF-8, any control byte (a tab or CR anywhere, even as whitespace between tokens),
NaN/Infinity, nesting deeper than `MAX_DEPTH`, text escaped twice over with many escaped backslashes
before quotes, and bodies made of so many small tokens that walking them would cost more than parsing
them (`_Walk.budget`). Everything else of the JSON grammar is checked, except one thing inside
skipped strings: that every backslash escape is one JSON allows (`"\\q"`). Such a line is forwarded
as the backend wrote it, and the client's own parser reports it, as with a direct connection.

When the router may forward the bytes with only the id spliced (it decides; this module only reads),
with the same bookkeeping and counters as the full path (stats, pending, inflight, outstanding):
- backend → session, `kind == "response"` whose id is an int in `pending`, where that entry has no
  reply hook, no progress token and is not a modern-era request (no completion to add), its method is
  not `tasks/list` (filtered per owner), its session is still attached and has no unfinished batch
  expecting that id (batch replies are joined into one array), and its `result`, when it is an object,
  has no `task` member (`Envelope.body`; a created task must be recorded). Splice
  `encode_id(original id)`; an `error` member still counts as an error.
- session → backend, `kind == "request"` when the backend is ready, the method is none the router
  answers or rewrites itself (initialize, ping, server/discover, subscriptions/listen,
  logging/setLevel, resources/(un)subscribe, tasks/get|result|cancel), and `params` is absent, null,
  an array, or an object without a `_meta` member (`Envelope.body`: no progress token, no modern
  envelope). Splice the
  new backend id.
- session → backend, `kind == "response"` to an `outstanding` server request of that same session
  without a reply hook: splice the backend's own id back.
Everything else (notifications, requests from the backend, batches, lines `scan` declines) takes
the full parser. Lines under ~16 KiB gain nothing (bench/bench_json.py): keep the full path for them.
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
_SPOTS_PER_WINDOW = 64
_SMALL_VALUE = 1024
"""Top-level members decoded for routing (`jsonrpc`, `id`, `method`) longer than this: not certain."""

Span = tuple[int, int]
BODIES = ("params", "result")
"""Top-level members whose own members are read too (a created task, a progress token or envelope)."""


class Walked:
    """An object's members, and the members of those named in BODIES that are objects."""

    __slots__ = ("inner", "members")

    def __init__(self) -> None:
        self.members: dict[str, Span] = {}
        self.inner: dict[str, dict[str, Span]] = {}


class Envelope:
    """What the router needs from one line: kind, id (and where its value sits), method, member spans."""

    __slots__ = ("body", "id", "id_span", "kind", "members", "method")

    def __init__(self, kind: str, walked: Walked, request_id: str | int | None, method: str | None):
        self.kind = kind  # "request", "notification" or "response"
        self.members = walked.members  # every top-level key → (start, end) of its value in the line
        self.id = request_id
        self.id_span: Span | None = walked.members.get("id")
        self.method = method
        # the members of `result` (a response) or `params` (a request), when that value is an object
        self.body = walked.inner.get("params" if method is not None else "result")

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
        walked, end = walk.members(walk.skip_spaces(0), BODIES)
        if walk.skip_spaces(end) != len(line):
            return None
        return _classify(line, walked)
    except (_Unsure, IndexError, ValueError):
        return None


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

    def members(self, i: int, bodies: tuple[str, ...] = ()) -> tuple[Walked, int]:
        """The object at i: each key → its value's span (and the members of `bodies`), and the index after it."""
        line = self.line
        if line[i] != _OPEN_OBJECT:
            raise _Unsure
        walked = Walked()
        i = self.skip_spaces(i + 1)
        if line[i] == _CLOSE_OBJECT:
            return walked, i + 1
        while True:
            key_end = self.string_end(i)
            key = self.decode_string(i, key_end)
            if key in walked.members:
                raise _Unsure  # json.loads keeps the last one; the router must not guess
            start = self.skip_spaces(self.expect(key_end, _COLON))
            if key in bodies and line[start] == _OPEN_OBJECT:
                inner, end = self.members(start)
                walked.inner[key] = inner.members
            else:
                end = self.value_end(start)
            walked.members[key] = (start, end)
            i = self.skip_spaces(end)
            if line[i] == _CLOSE_OBJECT:
                return walked, i + 1
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
                return self.blanked_string_end(quote)
            self.tick()
            quote = line.find(b'"', quote + 1)
        if quote < 0:
            raise _Unsure
        return quote + 1

    def blanked_string_end(self, escaped_quote: int) -> int:
        """The closing quote after `escaped_quote`, found window by window in copies where every
        backslash-quote pair is blanked (small copies: no fresh pages to fault in for a 10 MB line).

        Blanking also hides a real quote that follows an escaped backslash (`\\\\"`): each such spot is
        checked on its own. Text escaped twice over is full of them; past `_SPOTS_PER_WINDOW` in one
        window the full parser is the cheaper way.
        """
        line, window_start = self.line, escaped_quote + 1
        while window_start < len(line):
            window = line[window_start : window_start + _BLANKING_WINDOW].replace(b'\\"', b"__")
            found = window.find(b'"')
            if found == 0 and line[window_start - 1] == _BACKSLASH:  # its pair began in the previous window
                found = window.find(b'"', 1)
            end = found if found >= 0 else len(window)
            limit = window_start + end
            # a spot leaves a backslash unblanked; JSON serialized into a text usually has none
            unblanked = window.find(b"\\", 0, end) >= 0 or line[window_start - 1] == _BACKSLASH
            spot = line.find(b'\\\\"', window_start - 2, limit) if unblanked else -1
            for _ in range(_SPOTS_PER_WINDOW):
                if spot < 0:
                    break
                if self.quote_is_real(spot + 2):
                    return spot + 3
                spot = line.find(b'\\\\"', spot + 3, limit)
            else:
                raise _Unsure
            if found >= 0:
                return limit + 1
            window_start = limit
        raise _Unsure

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


def _classify(line: bytes, walked: Walked) -> Envelope | None:
    """The envelope when `jsonrpc.check` would accept the message, else None (it will say why)."""
    members = walked.members
    if _small(line, members.get("jsonrpc")) != "2.0":
        return None
    checked_id = _routing_id(line, members.get("id"))
    if "method" not in members:
        return Envelope("response", walked, checked_id, None) if "result" in members or "error" in members else None
    method = _small(line, members["method"])
    if not isinstance(method, str) or ("id" in members and checked_id is None):
        return None
    params = members.get("params")
    if params is not None and line[params[0]] not in (_OPEN_OBJECT, _OPEN_ARRAY) and line[slice(*params)] != b"null":
        return None  # "params": null is allowed, any other scalar is not
    return Envelope("request" if "id" in members else "notification", walked, checked_id, method)


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


# ---- a line too long to wait for: its head and its tail ----------------------------------------


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


def member_value(line: bytes, members: dict[str, Span], key: str) -> object:
    """A short member of `members` decoded (None when absent or null); ValueError when it is too long."""
    try:
        return _small(line, members.get(key))
    except _Unsure:
        raise ValueError(f"{key} is too long to be read") from None


def head(line: bytes) -> Head | None:
    """The head of a line whose end has not arrived: its complete members up to the one still open (None
    when the line is not an object being written, or its head is not control-free UTF-8). Only the head is
    read: what follows the open member's start is the caller's to pass on unread."""
    walk = _Walk(line)
    try:
        found = _open_object(walk, walk.skip_spaces(0))
        if found is None:
            return None
        members, open_key, open_start = found
        opened = Head(members, open_key, open_start)
        if open_key in BODIES and line[open_start] == _OPEN_OBJECT:
            inner = _open_object(walk, open_start)
            if inner is not None:
                opened.body, opened.body_open, _ = inner
    except (_Unsure, IndexError, ValueError):
        return None
    return opened if _plain_utf8(line[:open_start]) else None


def _open_object(walk: _Walk, i: int) -> tuple[dict[str, Span], str, int] | None:
    """The object at i, read up to its first member whose value does not end within the line."""
    line = walk.line
    if line[i] != _OPEN_OBJECT:
        return None
    members: dict[str, Span] = {}
    i = walk.skip_spaces(i + 1)
    while True:
        key_end = walk.string_end(i)
        key = walk.decode_string(i, key_end)
        if key in members:
            return None
        start = walk.skip_spaces(walk.expect(key_end, _COLON))
        try:
            end = walk.value_end(start)
            i = walk.skip_spaces(end)
            closing = line[i]
        except (_Unsure, IndexError):
            return members, key, start  # runs past what has arrived (or past the walk's budget)
        if closing != _COMMA:
            return None  # the object ends (or is broken) within the line: nothing is open
        members[key] = (start, end)
        i = walk.skip_spaces(i + 1)


def reply_id(line: bytes) -> object:
    """The id of a reply the full parser could not read (nested too deeply, cut short), where the line
    certainly is a reply: its first open member is `result` or `error`, no `method` is in sight, and its
    head or its tail names the id. None otherwise. So an unusable reply is still answered (with an error)."""
    opened = head(line)
    if opened is None or opened.open_key not in ("result", "error"):
        return None
    members = {**(tail(line) or {}), **opened.members}
    if "method" in members:
        return None
    try:
        return member_value(line, members, "id")
    except (ValueError, _Unsure):
        return None


_TAIL_SPACES = b" \t\r\n"
_SCALAR_BYTES = frozenset(b"0123456789+-.eEtrufalsn")


def tail(line: bytes) -> dict[str, Span] | None:
    """The top-level members at the end of a line, read backwards for as long as their values are scalars
    or strings without escapes (the first other value ends the reading); None when the line does not end
    as an object does. Sound for any valid JSON object: the closing brace is outside every string, so each
    member read backwards from it is a real top-level member."""
    j = _back_spaces(line, len(line))
    if j == 0 or line[j - 1] != _CLOSE_OBJECT:
        return None
    members: dict[str, Span] = {}
    j = _back_spaces(line, j - 1)
    while True:
        value_start = _simple_value_start(line, j)
        if value_start is None:
            return members
        colon = _back_spaces(line, value_start)
        if colon == 0 or line[colon - 1] != _COLON:
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
        if before and line[before - 1] == _OPEN_OBJECT:
            return members
        if before == 0 or line[before - 1] != _COMMA:
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
    if line[end - 1] == _QUOTE:
        return _plain_string_start(line, end)
    start = end
    while start > 0 and line[start - 1] in _SCALAR_BYTES:
        start -= 1
    return start if start and _SCALAR.fullmatch(line, start, end) else None


def _plain_string_start(line: bytes, end: int) -> int | None:
    """The opening quote of the string ending at `end`, when it holds no backslash and no control byte
    and that quote is certainly not escaped (the byte before it is seen, and is not a backslash)."""
    if end < 2 or line[end - 1] != _QUOTE:
        return None
    start = line.rfind(b'"', 0, end - 1)
    if start < 1 or line[start - 1] == _BACKSLASH:
        return None
    content = line[start + 1 : end - 1]
    if _BACKSLASH in content or any(byte < _SPACE for byte in content):
        return None
    return start


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
    walk = _Walk(line)
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
            if line[i] == _QUOTE:
                return OpenString(path, i, levels) if _plain_utf8(line[:i]) else None
            if line[i] != _OPEN_OBJECT:
                return None
    except (_Unsure, IndexError, ValueError):
        return None
    return None


def closing_quote(piece: bytes, escaped: bool) -> tuple[int, bool]:
    """In the content of a string that `piece` continues: the index of its closing quote (-1 when it does
    not close here), and whether the piece's last byte leaves the next one escaped. `escaped`: the previous
    piece did. Plain text costs one memchr; past a few escaped quotes, one blanked copy of the rest."""
    quote = piece.find(b'"')
    for _ in range(_QUOTES_BEFORE_BLANKING):
        if quote < 0:
            return -1, _ends_escaping(piece, escaped)
        if _quote_is_real(piece, quote, escaped):
            return quote, False
        quote = piece.find(b'"', quote + 1)
    if quote < 0:
        return -1, _ends_escaping(piece, escaped)
    # text escaped into text (thousands of \"): from just after the last escaped quote (nothing carries
    # over it), escape pairs blanked in a copy, the first quote left is the closing one
    start = piece.rfind(b'"', 0, quote) + 1
    found = piece[start:].replace(b"\\\\", b"__").replace(b'\\"', b"__").find(b'"')
    if found >= 0:
        return start + found, False
    return -1, _ends_escaping(piece, escaped)


def _quote_is_real(piece: bytes, quote: int, escaped: bool) -> bool:
    """An even run of backslashes before it (the previous piece's trailing escape counted)."""
    run = 0
    while run < quote and piece[quote - 1 - run] == _BACKSLASH:
        run += 1
    return (run + (escaped if run == quote else 0)) % 2 == 0


_QUOTES_BEFORE_BLANKING = 16


def _ends_escaping(piece: bytes, escaped: bool) -> bool:
    """Whether an odd run of backslashes ends `piece` (counting the previous piece's, when it is all of them)."""
    run = 0
    while run < len(piece) and piece[len(piece) - 1 - run] == _BACKSLASH:
        run += 1
    return (run + escaped) % 2 == 1 if run == len(piece) else run % 2 == 1
