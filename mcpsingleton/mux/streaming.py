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

Session requests (`open_session_stream`, `SessionStream`): cut inside one big string nested only in
objects under `params` (a text, a file, base64), a method the router neither answers nor rewrites, the
backend ready, the session placed and not on 2026-07-28, no `_meta` in the head, and no other request
streaming to that backend. The string's content passes as it arrives; what follows its closing quote
waits for the line's end and is checked with the string taken as empty (`envelope.scan`): one request,
the same method, no duplicate member, `_meta` holding at most a progress token (a TypeScript client's,
which ends the params: rewritten in place). The id is replaced at the head, or in that held end. A line
that fails the check, stalls (broker timer) or loses its backend never reaches a backend whole: the
copy is cut off (a broken line, which servers drop) and the request takes the full path at its end.
Until the backend has the whole line, every other message to it waits: a stalled writer is cut off
after 0.5 s (sessions.py), so it cannot hold the others up for longer.

What streaming gives up, stated: the bytes of a reply after its head, and the content of a request's big
string, are not checked (control bytes, UTF-8, escapes); they reach the other end as written, as on a
direct connection. A reply whose end does not carry the id it was routed by: its request also gets
-32603. A backend lost in the middle of a reply: the line is ended before the held bytes (the client's
parser drops it) and the request fails as every request of a lost backend does.
"""

from __future__ import annotations

import json

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
        self.request_id = self.new_id.decode("utf-8", "replace")
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
        """The backend is gone in the middle of the line: end it where it stopped, without the held bytes (they
        may complete an object still carrying the backend's id), so the client drops it; the request stays owed."""
        if self.failed:
            return []
        self.failed = True
        self.mux.stats["dropped"] += 1
        return [self._part((b"\n",), done=True)]

    def _safely(self, step: Callable[[Piece], list[Action]], data: Piece) -> list[Action]:
        if self.failed:
            return []
        try:
            return step(data)
        except Exception as exc:
            self.failed = True
            self.mux.stats["internal_errors"] += 1
            text = f"internal error while streaming a reply to session {self.session}: {failures.describe(exc)}"
            ended = self._part((b"\n",), done=True)
            return [ended, Log(text), *self.mux.requests.fail(self.backend_id, "mcpsingleton: internal error")]

    # ---- the line -----------------------------------------------------------------------------

    def _part(self, parts: tuple[Piece, ...], done: bool = False) -> StreamPart:
        return StreamPart(self.session, parts, done, self.request_id)

    def _start(self, line_head: Piece) -> list[Action]:
        if self.id_span is None:
            return self._more(line_head)
        start, end = self.id_span
        view = memoryview(line_head)
        return [self._part((view[:start], self.new_id, view[end:]))]

    def _more(self, data: Piece) -> list[Action]:
        if not self.id_at_end:
            return [self._part((data,))]
        if len(data) >= HOLD:
            parts: tuple[Piece, ...] = (self.held, memoryview(data)[:-HOLD])
            self.held = bytes(data[-HOLD:])
        else:
            joined = self.held + data
            parts, self.held = (joined[:-HOLD],), joined[-HOLD:]
        return [self._part(parts)]

    def _end(self, last: Piece) -> list[Action]:
        if not self.id_at_end:
            return [self._part((last,), done=True), *self.mux.requests.streamed(self.backend_id)]
        actions = self._more(last)
        line_tail, self.held = self.held, b""
        span = self._id_at_end(line_tail)
        if span is None:
            actions.append(self._part((line_tail,), done=True))
            return actions + self._lost_id()
        start, end = span
        actions.append(self._part((line_tail[:start], self.new_id, line_tail[end:]), done=True))
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


def open_session_stream(mux: Mux, sid: int, line_head: bytes, limit: int) -> SessionStream | None:
    """A stream for the session line that starts with `line_head`, or None: wait for its end."""
    session = mux.sessions.get(sid)
    if len(line_head) < mux.fast_path_from or session is None or session.parked or session.modern:
        return None
    if not mux.backend.ready or mux.inbound is not None:  # one request streams to a backend at a time
        return None
    opened = envelope.open_string(line_head)
    if opened is None or opened.path[0] != "params" or len(opened.path) < 2 or "_meta" in opened.levels[1]:
        return None
    top = opened.levels[0]
    try:
        method = envelope.member_value(line_head, top, "method")
        request_id = envelope.member_value(line_head, top, "id")
    except ValueError:
        return None
    if not isinstance(method, str) or _answered_here(mux, method) or "result" in top or "error" in top:
        return None
    if "id" in top and not jsonrpc.valid_id(request_id):
        return None
    return SessionStream(mux, sid, method, opened, line_head, limit)


def _answered_here(mux: Mux, method: str) -> bool:
    """The router answers or rewrites this method itself: its requests never pass as written."""
    return method in mux.session_requests or method in mux.session_notifications


class SessionStream:
    """One request on its way to the backend while it arrives: its head under a fresh backend id, then the
    content of the one big string it was cut in (a text, a file, base64), up to that string's closing quote.

    What follows that quote waits for the line's end: the line is checked then as if the string were empty
    (`envelope.scan`: one request, the same method, no duplicate member, `_meta` holding at most a progress
    token), the id (when it comes last) and the token are spliced in, and the rest goes out. A line that
    fails the check never reaches the backend whole: its copy is cut off (a broken line, which servers
    drop) and the whole request takes the full path, like a line that stalls or whose backend is lost."""

    def __init__(self, mux: Mux, sid: int, method: str, opened: envelope.OpenString, head: bytes, limit: int) -> None:
        self.mux = mux
        self.sid = sid
        self.method = method
        self.backend_id = mux.requests.new_id()
        self.prefix = head[: opened.start]  # the line up to the big string's opening quote
        self.id_span = opened.levels[0].get("id")
        self.limit = limit
        self.size = 0
        self.kept: list[bytes] = []  # the whole line so far, for the full path should it be needed
        self.in_string = True
        self.escaped = False  # the piece so far ended inside an escape
        self.after: list[bytes] = []  # from the string's closing quote on: waits for the line's end
        self.waiting: str | None = None  # why nothing more passes: the full path takes the line at its end
        self.cut = True  # the backend has part of the line: it must be cut off before anything else goes
        self.failed = False  # ended, lost with its backend, or broken by an internal error
        mux.inbound = self
        mux.stats["fast_path"] += 1
        mux.stats["streamed"] += 1

    def close(self) -> None:
        """Nothing more of this line goes to the backend; another session's request may stream now."""
        self.failed = True
        self.kept, self.after = [], []  # the broker's stall timer may hold this stream a moment longer
        self._release()

    def _release(self) -> None:
        if self.mux.inbound is self:
            self.mux.inbound = None

    def backend_lost(self) -> None:
        """The backend that had the head is gone: at its end, the request goes to the next one in full."""
        self._stop_passing("its backend was lost while it arrived", cut=False)

    # ---- entry points: they never raise -----------------------------------------------------------

    def start(self, line_head: bytes) -> list[Action]:
        return self._safely(self._start, line_head)

    def more(self, data: Piece) -> list[Action]:
        return self._safely(self._more, bytes(data))  # kept: a view would be copied (the reader passes bytes)

    def end(self, last: Piece) -> list[Action]:
        actions = self._safely(self._end, bytes(last))
        self.close()
        return actions

    def stalled(self) -> list[Action]:
        """The session stopped writing in the middle of the line (the broker's timer says so): the backend,
        which every session shares, may not wait for it. Its copy is cut off; the line goes in full at its end."""
        if self.failed or self.waiting:
            return []
        actions = self._cut()
        self._stop_passing("its session stopped writing it mid-line", cut=False)
        return [*actions, Log(f"session {self.sid}: a streamed request stalled; the backend serves the others")]

    def abort(self) -> list[Action]:
        """The session is gone in the middle of the line: the backend's copy is cut off, nobody waits for it."""
        if self.failed:
            return []
        actions = self._cut()
        self.close()
        self._untrack()
        return [*actions, Log(f"session {self.sid} left in the middle of a request; dropped")]

    def _safely(self, step: Callable[[bytes], list[Action]], data: bytes) -> list[Action]:
        if self.failed:
            return []
        try:
            return step(data)
        except Exception as exc:
            actions = [*self._cut(), *self._answer_failed()]
            self.close()
            self.mux.stats["internal_errors"] += 1
            text = f"internal error while streaming a request of session {self.sid}: {failures.describe(exc)}"
            return [*actions, Log(text)]

    def _answer_failed(self) -> list[Action]:
        """-32603 for the request, when its id is known (it came first): it will never be answered otherwise."""
        session = self.mux.sessions.get(self.sid)
        pending = self.mux.requests.pending.get(self.backend_id)
        self._untrack()
        if session is None or pending is None or pending.original_id is None:
            return []
        text = "mcpsingleton: internal error"
        return self.mux.reply_error(session, pending.original_id, jsonrpc.INTERNAL_ERROR, text)

    def _cut(self) -> list[Action]:
        """End the backend's part of the line where it stands: never a whole request (the string is open)."""
        if not self.cut:
            return []
        self.cut = False
        return [BackendPart((b"\n",), done=True)]

    def _stop_passing(self, why: str, cut: bool) -> None:
        self.waiting = why
        self.cut = self.cut and cut
        self._untrack()
        self._release()

    # ---- the line -----------------------------------------------------------------------------

    def _start(self, line_head: bytes) -> list[Action]:
        self.kept.append(line_head)
        self.size = len(line_head)
        if self.id_span is not None:
            self._track(self._head_id(line_head))
            start, end = self.id_span
            parts: list[Piece] = [memoryview(line_head)[:start], encode_id(self.backend_id)]
            return self._string(line_head, len(self.prefix) + 1, parts, memoryview(line_head)[end:])
        return self._string(line_head, len(self.prefix) + 1, [], memoryview(line_head))

    def _more(self, data: bytes) -> list[Action]:
        self.size += len(data)
        if self.size > self.limit:
            return self._too_long()
        self.kept.append(data)
        if self.waiting or self.failed:
            return []
        if not self.in_string:
            self.after.append(data)
            return []
        return self._string(data, 0, [], memoryview(data))

    def _string(self, piece: bytes, offset: int, parts: list[Piece], rest: memoryview) -> list[Action]:
        """Pass `rest` (the tail of `piece` not yet passed, after `parts`) up to the string's closing quote."""
        found, self.escaped = envelope.closing_quote(piece[offset:], self.escaped)
        if found < 0:
            return [BackendPart((*parts, rest))]
        quote = offset + found
        self.in_string = False
        self.after.append(piece[quote:])
        passed = len(piece) - len(rest)  # where `rest` starts in `piece`
        return [BackendPart((*parts, rest[: quote - passed]))]

    def _end(self, last: bytes) -> list[Action]:
        actions = self._more(last)
        if self.failed:
            return actions
        if self.waiting:
            return actions + self._full_path(self.waiting)
        if self.in_string:
            return actions + self._cut() + self._full_path("it ends inside its big string")
        tail = b"".join(self.after)
        spliced = self._checked(tail)
        if spliced is None:
            return actions + self._cut() + self._full_path("its end does not match its head")
        self.mux.stats["requests"] += 1
        pending = self.mux.requests.pending.get(self.backend_id)
        if pending is not None and pending.original_id is not None:
            self.mux.accepted.append((self.sid, pending.original_id))
        return [*actions, BackendPart(spliced, done=True)]

    def _checked(self, tail: bytes) -> tuple[bytes, ...] | None:
        """The tail to send (from the closing quote on) with the id and progress token spliced in, when the
        line, its big string taken as empty, is one request the spliced path would pass; else None."""
        shown = self.prefix + b'"' + tail  # the line as if the big string were empty
        found = envelope.scan(shown.rstrip(b" \t\r\n"))
        if found is None or found.kind != "request" or found.method != self.method or found.id_span is None:
            return None
        offset = len(self.prefix) + 1  # where `tail` starts in `shown`
        splices: list[tuple[Span, bytes]] = []
        if self.id_span is None:
            self._track(found.id)
            splices.append(((found.id_span[0] - offset, found.id_span[1] - offset), encode_id(self.backend_id)))
        elif found.id_span != self.id_span:
            return None
        meta = found.body.get("_meta") if found.body is not None else None
        if meta is not None:
            token = self._progress_token(json.loads(shown[meta[0] : meta[1]]))
            if token is None:
                return None
            splices.append(((meta[0] - offset, meta[1] - offset), b'{"progressToken":%d}' % self.backend_id))
        parts: list[bytes] = []
        done = 0
        for (start, end), new in sorted(splices):
            parts += (tail[done:start], new)
            done = end
        return (*parts, tail[done:])

    def _progress_token(self, meta: object) -> Id | None:
        """A `_meta` holding only a progress token: that token, now owned by this request's backend id."""
        token = meta.get("progressToken") if isinstance(meta, dict) and list(meta) == ["progressToken"] else None
        if not jsonrpc.valid_id(token):
            return None
        pending = self.mux.requests.pending.get(self.backend_id)
        if pending is not None:
            pending.token = self.mux.progress.adopt(self.sid, token, self.backend_id)
        return token

    def _too_long(self) -> list[Action]:
        """Over the session's line limit: cut off, forgotten, and answered -32700 at its end (as when whole)."""
        self.kept = []
        if self.waiting != "too long":
            actions = self._cut()
            self._stop_passing("too long", cut=False)
            return actions
        return []

    def _full_path(self, why: str) -> list[Action]:
        """The whole line is routed anew, as any other (the backend never had it whole)."""
        self._untrack()
        if why == "too long":
            text = f"Parse error: line longer than {self.limit >> 20} MiB; skipped"
            refusal = ToSession(self.sid, jsonrpc.error(None, jsonrpc.PARSE_ERROR, text))
            return [Log(f"session {self.sid}: {text}"), refusal]
        line = b"".join(self.kept).rstrip(b"\r\n")
        self.kept = []
        log = Log(f"session {self.sid}: a {len(line) >> 10} KiB request was not passed on as it came ({why}); resent")
        return [log, *self.mux.from_session(self.sid, line)]

    def _head_id(self, line_head: bytes) -> Id:
        assert self.id_span is not None
        value = json.loads(line_head[self.id_span[0] : self.id_span[1]])
        assert isinstance(value, str | int)
        return value

    def _track(self, request_id: Id | None) -> None:
        session = self.mux.sessions.get(self.sid)
        if session is not None and request_id is not None:
            self.mux.requests.track(self.backend_id, Pending(self.sid, request_id, self.method), session)

    def _untrack(self) -> None:
        """Forget the request the backend will never see whole (it may have been tracked at the head)."""
        pending = self.mux.requests.pending.pop(self.backend_id, None)
        if pending is not None and pending.token is not None:
            self.mux.progress.release(pending.token)
        session = self.mux.sessions.get(self.sid)
        if pending is not None and session is not None and pending.original_id is not None:
            session.inflight.pop(id_key(pending.original_id), None)
