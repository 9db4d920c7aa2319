"""Streaming: a backend reply too long to wait for is passed to its session as it arrives.

Store-and-forward costs a big reply one more full pipe transfer and a copy of the whole line in the
broker; a reply streamed through costs neither (bench/bench_big.py). The broker offers the head of a
line once `STREAM_FROM` bytes of it have arrived without its end (`Mux.stream_from_backend`); the
head decides. It streams only a `result` whose asker is certain before its end, with nothing for the
router to do but the id:
- the head holds the id (Python servers write it first): the pending request it names; or
- the id comes last (TypeScript servers write `result` first): the backend owes exactly one request,
  and no request abandoned by another session may still be answered (its late reply must never reach
  this one). The id is then read from the end of the line (`envelope.tail`), the last `HOLD` bytes
  held back until it arrives.
The request must meet the conditions of the spliced path (envelope.py): no reply hook, not a 2026-07-28
request, not tasks/list, no batch waiting for it, its session attached, and the reply creates no task.
A progress token is released at the end. Everything else waits for its end as before.

What streaming gives up, stated: the bytes after the head are not checked (control bytes, UTF-8,
structure). A malformed reply reaches its session as the backend wrote it, as on a direct connection;
when its end does not carry the id it was routed by, the session also gets -32603 for its request. A
backend lost in the middle of a line: the line is ended there (the client's parser drops it) and the
request fails as every request of a lost backend does.
"""

from __future__ import annotations

from .. import envelope
from ..envelope import encode_id
from . import failures
from .actions import Log, StreamPart

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..envelope import Head
    from .actions import Action
    from .requests import Pending
    from .router import Mux

STREAM_FROM = 64 * 1024
"""A line is offered for streaming once this much of it arrived without its end."""
HOLD = 1024
"""Bytes held back from the end of a reply whose id comes last, until its end shows that id."""


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

    def more(self, data: bytes) -> list[Action]:
        """More of the line (without its end)."""
        return self._safely(self._more, data)

    def end(self, last: bytes) -> list[Action]:
        """The rest of the line, up to its end: the line is finished and the request answered."""
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

    def _safely(self, step: Callable[[bytes], list[Action]], data: bytes) -> list[Action]:
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

    def _start(self, line_head: bytes) -> list[Action]:
        if self.id_span is None:
            return self._more(line_head)
        start, end = self.id_span
        view = memoryview(line_head)
        return [StreamPart(self.session, (view[:start], self.new_id, view[end:]))]

    def _more(self, data: bytes) -> list[Action]:
        if not self.id_at_end:
            return [StreamPart(self.session, (data,))]
        if len(data) >= HOLD:
            parts: tuple[bytes | memoryview, ...] = (self.held, memoryview(data)[:-HOLD])
            self.held = data[-HOLD:]
        else:
            joined = self.held + data
            parts, self.held = (joined[:-HOLD],), joined[-HOLD:]
        return [StreamPart(self.session, parts)]

    def _end(self, last: bytes) -> list[Action]:
        if not self.id_at_end:
            return [StreamPart(self.session, (last, b"\n"), done=True), *self.mux.requests.streamed(self.backend_id)]
        actions = self._more(last)
        line_tail, self.held = self.held, b""
        span = self._id_at_end(line_tail)
        if span is None:
            actions.append(StreamPart(self.session, (line_tail, b"\n"), done=True))
            return actions + self._lost_id()
        start, end = span
        actions.append(StreamPart(self.session, (line_tail[:start], self.new_id, line_tail[end:], b"\n"), done=True))
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
