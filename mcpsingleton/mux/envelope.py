"""The envelope of one JSON-RPC line, read without decoding its body. Pure functions, no I/O.

Routing a message needs its kind, `id` and `method`; decoding and re-encoding a 10 MB `result` only to
change the id costs tens of milliseconds. `scan` walks the top-level object of a line (jsonwalk.py),
decodes only the small members (`jsonrpc`, `id`, `method`) and skips the others at copy speed.
`replace_id` splices a new id into the original bytes. A line still arriving is read by linehead.py
(its start) and linetail.py (its end).

`scan` answers None whenever it is not certain, and the caller then uses the full parser
(`jsonrpc.parse`), so every error reply and log line stays as it is. It answers None for: batches,
duplicate keys (top level, or directly in `params`/`result`), anything `jsonrpc.check` would refuse,
bytes that are not UTF-8, any control byte (a tab or CR anywhere, even as whitespace between tokens),
NaN/Infinity, nesting deeper than `MAX_DEPTH`, and bodies made of so many small tokens that walking
them would cost more than parsing them (`Walk.budget`). Everything else of the JSON grammar is checked,
except one thing inside skipped strings: that every backslash escape is one JSON allows (`"\\q"`).
Such a line is forwarded as the backend wrote it, and the client's own parser reports it, as with a
direct connection.

When the router may forward the bytes with only the id spliced (it decides; this module only reads),
with the same bookkeeping and counters as the full path (stats, pending, inflight, outstanding):
- backend → session, `kind == "response"` whose id is an int in `pending`, where that request's reply
  may pass as written (`Requests.as_written`: no reply hook, not stateless-era, not `tasks/list`, its
  session attached, no batch waiting for it; a progress token is released), and its `result`, when it
  is an object, has no `task` member (`Envelope.body`; a created task must be recorded). Splice
  `encode_id(original id)`; an `error` member still counts as an error.
- session → backend, `kind == "request"` when the backend is ready, the method is none the router
  answers or rewrites itself (initialize, ping, server/discover, subscriptions/listen,
  logging/setLevel, resources/(un)subscribe, tasks/get|result|cancel), and `params` is absent, null,
  an array, or an object without a `_meta` member (`Envelope.body`: no progress token, no stateless-era
  fields). Splice the new backend id.
- session → backend, `kind == "response"` to an `outstanding` server request of that same session
  without a reply hook: splice the backend's own id back.
Everything else (notifications, requests from the backend, batches, lines `scan` declines) takes
the full parser. Lines under ~16 KiB gain nothing (bench/bench_json.py): keep the full path for them.
"""

from __future__ import annotations

import json

from . import linehead, linetail
from .jsonwalk import BODIES, OPEN_ARRAY, OPEN_OBJECT, Span, Unsure, Walk, Walked, plain_utf8, small


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


def scan(line: bytes) -> Envelope | None:
    """The envelope of one JSON-RPC message line, or None when the full parser must decide."""
    if not plain_utf8(line):
        return None
    try:
        walk = Walk(line)
        walked, end = walk.members(walk.skip_spaces(0), BODIES)
        if walk.skip_spaces(end) != len(line):
            return None
        return _classify(line, walked)
    except (Unsure, IndexError, ValueError):
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


def reply_id(line: bytes) -> object:
    """The id of a reply the full parser could not read (nested too deeply, cut short), where the line
    certainly is a reply: its first open member is `result` or `error`, no `method` is in sight, and its
    head or its tail names the id. None otherwise. So an unusable reply is still answered (with an error)."""
    opened = linehead.head(line)
    if opened is None or opened.open_key not in ("result", "error"):
        return None
    members = {**(linetail.tail(line) or {}), **opened.members}
    if "method" in members:
        return None
    try:
        return small(line, members.get("id"))
    except (ValueError, Unsure):
        return None


def id_at_end(line: bytes) -> object:
    """The id a line the full parser could not read names among the last members of its object, or None.

    Such a line is often the rest of a request whose head a broker that died had read (its id written last,
    as TypeScript clients do): its parse error is answered under that id, so the request is answered, not
    left in silence. Sound for the rest of any valid line: reading backwards from its closing brace never
    needs the part that was lost (linetail.py)."""
    try:
        return small(line, (linetail.tail(line) or {}).get("id"))
    except (ValueError, Unsure):
        return None


def _classify(line: bytes, walked: Walked) -> Envelope | None:
    """The envelope when `jsonrpc.check` would accept the message, else None (it will say why)."""
    members = walked.members
    if small(line, members.get("jsonrpc")) != "2.0":
        return None
    checked_id = _routing_id(line, members.get("id"))
    if "method" not in members:
        return Envelope("response", walked, checked_id, None) if "result" in members or "error" in members else None
    method = small(line, members["method"])
    if not isinstance(method, str) or ("id" in members and checked_id is None):
        return None
    params = members.get("params")
    if params is not None and line[params[0]] not in (OPEN_OBJECT, OPEN_ARRAY) and line[slice(*params)] != b"null":
        return None  # "params": null is allowed, any other scalar is not
    return Envelope("request" if "id" in members else "notification", walked, checked_id, method)


def _routing_id(line: bytes, span: Span | None) -> str | int | None:
    """The id as MCP allows it (a string or an integer, never a bool or a float), or None when absent/null."""
    value = small(line, span)
    if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise Unsure
