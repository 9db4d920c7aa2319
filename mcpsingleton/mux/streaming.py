"""Streaming: a line too long to wait for passes through the broker as it arrives, in either direction.

Store-and-forward costs a big message a full copy in the broker and one more full pipe transfer;
streamed, it costs neither (bench/bench_big.py). The broker offers the head of a line once
`STREAM_FROM` bytes of it arrived without its end; the head decides, and everything else waits for
its end as before.

Backend replies (`open_stream`, `BackendStream`): only a `result` whose asker is certain before its
end, with nothing for the router to do but the id:
- the head holds the id (Python servers write it first): the pending request it names; or
- the id comes last (TypeScript servers write `result` first): the backend owes exactly one request,
  and no request abandoned by another session may still be answered (its late reply must never reach
  this one). The id is read from the end of the line (`envelope.tail`); the last `HOLD` bytes wait.
The request must meet the conditions of the spliced path (envelope.py): no reply hook, not a 2026-07-28
request, not tasks/list, no batch waiting for it, its session attached, no task created. A progress
token is released at the end.

Session requests (`open_session_stream`, `SessionStream`): a method the router neither answers nor
rewrites, the backend ready, the session placed, no `_meta` in the head, and no other request streaming
to that backend. The id is replaced at the head, or (TypeScript clients) in the held-back tail, where a
`_meta` holding only a progress token and ending the params is rewritten too. Any other `_meta` may
only be seen after parts have passed: then the rest waits, the backend's copy is cut off (a broken
line, which SDK servers drop), and the whole request takes the full path.

What streaming gives up, stated: the bytes after the head are not checked (control bytes, UTF-8,
structure). A malformed reply reaches its session as the backend wrote it, as on a direct connection;
when its end does not carry the id it was routed by, the session also gets -32603 for its request. A
backend lost in the middle of a reply: the line is ended there (the client's parser drops it) and the
request fails as every request of a lost backend does. A backend lost in the middle of a request: with
the id first, the request failed with the rest; with the id last, it goes to the next backend in full.
"""

from __future__ import annotations

import json
import re

from .. import envelope, jsonrpc
from ..envelope import Span, encode_id
from ..jsonrpc import Id, id_key
from . import failures
from .actions import BackendPart, Log, StreamPart, ToSession
from .requests import Pending

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..envelope import Head
    from .actions import Action
    from .router import Mux

STREAM_FROM = 64 * 1024
"""A line is offered for streaming once this much of it arrived without its end."""
HOLD = 1024
"""Bytes held back from the end of a reply whose id comes last, until its end shows that id."""

Piece = bytes | memoryview


def open_stream(mux: Mux, line_head: bytes) -> BackendStream | None:
    """A stream for the backend line that starts with `line_head`, or None: wait for its end."""
    if len(line_head) < mux.fast_path_from:
        return None
    opened = envelope.head(line_head)
    if opened is None or not _plain_result(line_head, opened):
        return None
    requests = mux.requests
    if "id" in opened.members:
        backend_id = opened.small(line_head, "id")
        pending = requests.pending.get(backend_id) if type(backend_id) is int else None
    elif len(requests.pending) == 1:
        backend_id, pending = next(iter(requests.pending.items()))
        if any(asker != pending.session for asker in requests.abandoned.values()):
            return None  # another session's cancelled request may be the one answered here
    else:
        return None
    if pending is None or not _streamable(mux, pending):
        return None
    assert type(backend_id) is int
    return BackendStream(mux, backend_id, pending, opened.members.get("id"))


def _plain_result(line_head: bytes, opened: Head) -> bool:
    """A JSON-RPC result object is what is open, and it does not create a task."""
    if opened.open_key != "result" or line_head[opened.open_start] != ord("{"):
        return False
    if "method" in opened.members or "error" in opened.members or "task" in opened.body:
        return False
    try:
        version = opened.small(line_head, "jsonrpc")
    except ValueError:
        return False
    return version in (None, "2.0") and opened.body_open != "task"


def _streamable(mux: Mux, pending: Pending) -> bool:
    """The reply to `pending` needs nothing from the router but its asker's id (as on the spliced path)."""
    if pending.session is None or pending.original_id is None or pending.on_reply is not None:
        return False
    if pending.modern or pending.method == "tasks/list":
        return False
    session = mux.sessions.get(pending.session)
    return session is not None and not mux.batches.expects(session, pending.original_id)


class BackendStream:
    """One reply on its way to its session: the head with the asker's id spliced in, then the rest as it
    arrives. The request stays pending (and its session busy) until `end`: should the backend be lost
    before, the request fails as every other does."""

    def __init__(self, mux: Mux, backend_id: int, pending: Pending, id_span: envelope.Span | None) -> None:
        assert pending.session is not None and pending.original_id is not None
        self.mux = mux
        self.backend_id = backend_id
        self.session = pending.session
        self.new_id = encode_id(pending.original_id)
        self.id_at_end = id_span is None
        self.held = b""
        self.id_span = id_span
        self.failed = False  # ended, or broken by an internal error: what still comes is dropped
        mux.stats["fast_path"] += 1
        mux.stats["streamed"] += 1

    # ---- entry points: like the mux's, they never raise (a failure ends the line and fails the request)

    def start(self, line_head: bytes) -> list[Action]:
        """The head the stream was opened with."""
        return self._safely(self._start, line_head)

    def more(self, data: Piece) -> list[Action]:
        """More of the line (without its end); a view is only valid during the call (what is kept is copied)."""
        return self._safely(self._more, data)

    def end(self, last: Piece) -> list[Action]:
        """The rest of the line, its newline included: the line is finished and the request answered."""
        actions = self._safely(self._end, last)
        self.failed = True  # nothing more belongs to this line
        return actions

    def abort(self) -> list[Action]:
        """The backend is gone in the middle of the line: end it where it stopped (the request stays owed)."""
        if self.failed:
            return []
        self.failed = True
        self.mux.stats["dropped"] += 1
        return [StreamPart(self.session, (self.held, b"\n"), done=True)]

    def _safely(self, step: Callable[[Piece], list[Action]], data: Piece) -> list[Action]:
        if self.failed:
            return []
        try:
            return step(data)
        except Exception as exc:
            self.failed = True
            self.mux.stats["internal_errors"] += 1
            text = f"internal error while streaming a reply to session {self.session}: {failures.describe(exc)}"
            ended = StreamPart(self.session, (b"\n",), done=True)
            return [ended, Log(text), *self.mux.requests.fail(self.backend_id, "mcpsingleton: internal error")]

    # ---- the line -----------------------------------------------------------------------------

    def _start(self, line_head: Piece) -> list[Action]:
        if self.id_span is None:
            return self._more(line_head)
        start, end = self.id_span
        view = memoryview(line_head)
        return [StreamPart(self.session, (view[:start], self.new_id, view[end:]))]

    def _more(self, data: Piece) -> list[Action]:
        if not self.id_at_end:
            return [StreamPart(self.session, (data,))]
        if len(data) >= HOLD:
            parts: tuple[Piece, ...] = (self.held, memoryview(data)[:-HOLD])
            self.held = bytes(data[-HOLD:])
        else:
            joined = self.held + data
            parts, self.held = (joined[:-HOLD],), joined[-HOLD:]
        return [StreamPart(self.session, parts)]

    def _end(self, last: Piece) -> list[Action]:
        if not self.id_at_end:
            return [StreamPart(self.session, (last,), done=True), *self.mux.requests.streamed(self.backend_id)]
        actions = self._more(last)
        line_tail, self.held = self.held, b""
        span = self._id_at_end(line_tail)
        if span is None:
            actions.append(StreamPart(self.session, (line_tail,), done=True))
            return actions + self._lost_id()
        start, end = span
        actions.append(StreamPart(self.session, (line_tail[:start], self.new_id, line_tail[end:]), done=True))
        return actions + self.mux.requests.streamed(self.backend_id)

    def _id_at_end(self, line_tail: bytes) -> envelope.Span | None:
        """Where the id this reply was routed by sits in its last bytes, or None when it is not there."""
        members = envelope.tail(line_tail)
        span = members.get("id") if members is not None else None
        if span is None or line_tail[span[0] : span[1]] != encode_id(self.backend_id):
            return None
        return span

    def _lost_id(self) -> list[Action]:
        """The reply did not end with the id it was routed by: its asker gets -32603, a late reply is dropped."""
        self.mux.stats["dropped"] += 1
        requests = self.mux.requests
        pending = requests.pending.get(self.backend_id)
        if pending is not None:
            requests.abandoned[self.backend_id] = pending.session
        reason = "mcpsingleton: the backend's reply did not end with the id of the request it answered"
        log = Log(f"a streamed reply to session {self.session} did not end with id {self.backend_id}; -32603 sent")
        return [log, *requests.fail(self.backend_id, reason)]


# ---- a session's request too long to wait for ----------------------------------------------------

_ESCAPED_LETTER = re.compile(rb"\\u00(?:5[fF]|6[15dD]|74)")
"""An escape of a letter of `_meta` (or `_`): the only way that key can be written but as `"_meta"`."""
_OVERLAP = 6
"""Bytes of the previous piece searched again with the next one: a `"_meta"` split between two reads."""


def open_session_stream(mux: Mux, sid: int, line_head: bytes) -> SessionStream | None:
    """A stream for the session line that starts with `line_head`, or None: wait for its end."""
    session = mux.sessions.get(sid)
    if len(line_head) < mux.fast_path_from or session is None or session.parked or not mux.backend.ready:
        return None
    if mux.inbound is not None:  # another session's request is half written: this one waits for its end
        return None
    opened = envelope.head(line_head)
    if opened is None or opened.open_key != "params" or line_head[opened.open_start] != ord("{"):
        return None
    if "_meta" in opened.body or opened.body_open == "_meta" or "result" in opened.members or "error" in opened.members:
        return None
    try:
        method, version = opened.small(line_head, "method"), opened.small(line_head, "jsonrpc")
        request_id = opened.small(line_head, "id")
    except ValueError:
        return None
    if not isinstance(method, str) or version not in (None, "2.0") or _answered_here(mux, method):
        return None
    if "id" not in opened.members:
        return SessionStream(mux, sid, method, None, None)  # the id comes last (TypeScript clients)
    if not jsonrpc.valid_id(request_id):
        return None
    assert isinstance(request_id, str | int)
    return SessionStream(mux, sid, method, request_id, opened.members["id"])


def _answered_here(mux: Mux, method: str) -> bool:
    """The router answers or rewrites this method itself: its requests never pass as written."""
    return method in mux.session_requests or method in mux.session_notifications


class SessionStream:
    """One request on its way to the backend: the head under a fresh backend id, then the rest as it arrives.

    `_meta` (a progress token, a 2026-07-28 envelope) must be rewritten, and may come after the head: every
    piece is searched for that key before it is passed on. Should it be there, what follows waits, and at
    the line's end the backend's copy is cut off (a broken line, which it drops) and the whole request
    takes the full path. The pieces are kept until the end for that reason."""

    def __init__(self, mux: Mux, sid: int, method: str, request_id: Id | None, id_span: Span | None) -> None:
        self.mux = mux
        self.sid = sid
        self.method = method
        self.request_id = request_id
        self.id_span = id_span
        self.backend_id = mux.requests.new_id()
        self.kept: list[bytes] = []  # the whole line so far, for the full path should it be needed
        self.held = b""  # the last bytes, when the id comes last: it is spliced there at the end
        self.overlap = b""
        self.last_byte = 0  # the last byte that is not whitespace: a request ends with its object's brace
        self.waiting: str | None = None  # why the rest waits for the line's end, then takes the full path
        self.cut = True  # the backend has part of the line: it must be cut off before anything else goes
        self.failed = False  # ended, lost with its backend, or broken by an internal error
        mux.inbound = self
        mux.stats["fast_path"] += 1
        mux.stats["streamed"] += 1

    def close(self) -> None:
        """Nothing more of this line goes to the backend; another session's request may stream now."""
        self.failed = True
        self._release()

    def _release(self) -> None:
        if self.mux.inbound is self:
            self.mux.inbound = None

    def backend_lost(self) -> None:
        """The backend that had the head is gone. With the id first, the request failed with the rest of what
        it owed; with the id last, nobody knows it yet: it goes to the next backend in full at its end."""
        if self.id_span is not None:
            self.close()
            return
        self.waiting, self.cut = "its backend was lost while it arrived", False
        self._release()

    # ---- entry points: they never raise -----------------------------------------------------------

    def start(self, line_head: bytes) -> list[Action]:
        return self._safely(self._start, line_head)

    def more(self, data: Piece) -> list[Action]:
        return self._safely(self._more, bytes(data))  # kept: a view would be copied (the reader passes bytes)

    def end(self, last: Piece) -> list[Action]:
        actions = self._safely(self._end, bytes(last))
        self.close()
        return actions

    def abort(self) -> list[Action]:
        """The session is gone in the middle of the line: the backend's copy is cut off, nobody waits for it."""
        if self.failed:
            return []
        self.close()
        self._untrack()
        return [*self._cut(), Log(f"session {self.sid} left in the middle of a request; dropped")]

    def _cut(self) -> list[Action]:
        """End the backend's part of the line where it stands (a broken line, which it drops)."""
        return [BackendPart((b"\n",), done=True)] if self.cut else []

    def _safely(self, step: Callable[[bytes], list[Action]], data: bytes) -> list[Action]:
        if self.failed:
            return []
        try:
            return step(data)
        except Exception as exc:
            self.close()
            self.mux.stats["internal_errors"] += 1
            self._untrack()
            text = f"internal error while streaming a request of session {self.sid}: {failures.describe(exc)}"
            actions: list[Action] = [*self._cut(), Log(text)]
            session = self.mux.sessions.get(self.sid)
            if session is not None and self.request_id is not None:
                text = "mcpsingleton: internal error"
                actions += self.mux.reply_error(session, self.request_id, jsonrpc.INTERNAL_ERROR, text)
            return actions

    # ---- the line -----------------------------------------------------------------------------

    def _start(self, line_head: bytes) -> list[Action]:
        if self.id_span is not None and self.request_id is not None:
            self._track(self.request_id)
        if self.id_span is None:
            return self._more(line_head)
        self.kept.append(line_head)
        if self._meta_ahead(line_head, 0, len(line_head)):
            return []
        start, end = self.id_span
        view = memoryview(line_head)
        return [BackendPart((view[:start], encode_id(self.backend_id), view[end:]))]

    def _more(self, data: bytes) -> list[Action]:
        self.kept.append(data)
        self.last_byte = _last_solid_byte(data, self.last_byte)
        if self.waiting:
            return []
        if self.id_span is not None:  # the id came first: everything passes
            return [] if self._meta_ahead(data, 0, len(data)) else [BackendPart((data,))]
        if len(data) >= HOLD:  # the id comes last: the last HOLD bytes wait for the end
            if self._meta_ahead(self.held, 0, len(self.held)) or self._meta_ahead(data, 0, len(data) - HOLD):
                return []
            parts: tuple[bytes | memoryview, ...] = (self.held, memoryview(data)[:-HOLD])
            self.held = data[-HOLD:]
            return [BackendPart(parts)]
        joined = self.held + data
        if self._meta_ahead(joined, 0, len(joined) - HOLD):
            return []
        self.held = joined[-HOLD:]
        return [BackendPart((joined[:-HOLD],))]

    def _meta_ahead(self, data: bytes, start: int, end: int) -> bool:
        """Whether data[start:end], about to pass, may hold `_meta` (then nothing more passes)."""
        if end > start:
            if _has_meta(self.overlap + data[start : start + _OVERLAP], 0) or _has_meta(data, start, end):
                self.waiting = "it carries _meta after its first bytes"
            self.overlap = data[max(start, end - _OVERLAP) : end]
        return self.waiting is not None

    def _end(self, last: bytes) -> list[Action]:
        actions = self._more(last)
        if self.waiting:
            return actions + self._full_path(self.waiting)
        if self.id_span is not None:
            if self.last_byte != ord("}"):
                return [*actions, BackendPart((), done=True), *self._cut_short()]
            self.mux.stats["requests"] += 1
            return [*actions, BackendPart((), done=True)]
        line_tail, self.held = self.held, b""
        spliced = self._spliced_tail(line_tail)
        if spliced is None:
            return actions + self._full_path("its id or its _meta is not among its last members as expected")
        self.mux.stats["requests"] += 1
        return [*actions, BackendPart(spliced, done=True)]

    def _spliced_tail(self, line_tail: bytes) -> tuple[bytes, ...] | None:
        """The last bytes of a request whose id comes last, with the backend's id (and, when `_meta` ends
        its params as TypeScript clients write a progress token, the backend's token) spliced in."""
        found = envelope.tail_split(line_tail)
        span = found[0].get("id") if found is not None else None
        if found is None or span is None or "method" in found[0]:
            return None
        request_id = json.loads(line_tail[span[0] : span[1]])
        if not jsonrpc.valid_id(request_id):
            return None
        splices = [(span, encode_id(self.backend_id))]
        token = None
        if _has_meta(self.overlap + line_tail, 0):
            meta = self._progress_meta(line_tail, found[1])
            if meta is None:
                return None
            token, meta_span = meta
            splices.insert(0, (meta_span, b'{"progressToken":%d}' % self.backend_id))
        self._track(request_id, token)
        parts: list[bytes] = []
        done = 0
        for (start, end), new in splices:
            parts += (line_tail[done:start], new)
            done = end
        return (*parts, line_tail[done:])

    def _progress_meta(self, line_tail: bytes, params_end: int) -> tuple[Id, Span] | None:
        """The progress token of a `_meta` that is the last member of the object ending at `params_end`
        (the params, as TypeScript clients write them), and where that `_meta` sits; None for any other."""
        inner = envelope.tail(line_tail[:params_end]) if params_end else None
        span = inner.get("_meta") if inner is not None else None
        seen = self.overlap + line_tail
        if span is None or seen.count(b'"_meta"') != 1 or _ESCAPED_LETTER.search(seen) is not None:
            return None
        meta = json.loads(line_tail[span[0] : span[1]])
        token = meta.get("progressToken") if isinstance(meta, dict) and list(meta) == ["progressToken"] else None
        return (token, span) if jsonrpc.valid_id(token) else None

    def _cut_short(self) -> list[Action]:
        """The line passed on ends before its object does (a truncated request): it is answered here with
        -32700, as the full path would; the server dropped what it got, as SDK servers do."""
        self._untrack()
        self.mux.stats["errors"] += 1
        self.mux.stats["rejected"] += 1
        error = jsonrpc.error(self.request_id, jsonrpc.PARSE_ERROR, "Parse error: the line ends before its object does")
        log = Log(f"session {self.sid}: a streamed request ended before its object did; -32700")
        return [log, ToSession(self.sid, error)]

    def _full_path(self, why: str) -> list[Action]:
        """The backend's copy is cut off where it stands; the whole line is routed anew, as any other."""
        self._untrack()
        line = b"".join(self.kept).rstrip(b"\r\n")
        self.kept = []
        log = Log(f"session {self.sid}: a {len(line) >> 10} KiB request was not passed on as it came ({why}); resent")
        return [*self._cut(), log, *self.mux.from_session(self.sid, line)]

    def _track(self, request_id: Id, token: Id | None = None) -> None:
        session = self.mux.sessions.get(self.sid)
        if session is not None:
            self.request_id = request_id
            claimed = self.mux.progress.adopt(self.sid, token, self.backend_id) if token is not None else None
            self.mux.requests.track(self.backend_id, Pending(self.sid, request_id, self.method, claimed), session)

    def _untrack(self) -> None:
        """Forget the request the backend will never see whole (it may have been tracked at the head)."""
        pending = self.mux.requests.pending.pop(self.backend_id, None)
        session = self.mux.sessions.get(self.sid)
        if pending is not None and session is not None and pending.original_id is not None:
            session.inflight.pop(id_key(pending.original_id), None)


def _last_solid_byte(data: bytes, before: int) -> int:
    """The last byte of `data` that is not JSON whitespace (`before` when there is none)."""
    end = len(data)
    while end and data[end - 1] in _SPACES:
        end -= 1
    return data[end - 1] if end else before


_SPACES = b" \t\r\n"


def _has_meta(data: bytes, start: int, end: int | None = None) -> bool:
    """Whether data[start:end] may hold the key `_meta`: memchr for `_` and `\\` first (text without them,
    base64 for instance, is cleared at copy speed; a multi-byte search costs ~0.5 ms per MiB)."""
    end = len(data) if end is None else end
    underscore = data.find(b"_", start, end)
    if underscore >= 0 and data.find(b'"_meta"', max(start, underscore - 1), end) >= 0:
        return True
    backslash = data.find(b"\\", start, end)
    return backslash >= 0 and _ESCAPED_LETTER.search(data, backslash, end) is not None
