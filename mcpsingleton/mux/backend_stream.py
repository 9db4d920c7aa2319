"""A backend's reply too long to wait for, passed to its session as it arrives (streaming.py).

Only a `result` whose asker is certain before its end, with nothing for the router to do but the id:
- the head holds the id (Python servers write it first): the pending request it names; or
- the id comes last (TypeScript servers write `result` first): the backend owes exactly one request,
  and no request abandoned by another session may still be answered (its late reply must never reach
  this one). The id is read from the end of the line (`linetail.tail`); the last `HOLD` bytes wait.
The request must be one whose reply may pass as written (`Requests.as_written`, as on the spliced
path), and the head must show no task created. A progress token is released at the end.

A reply whose end does not carry the id it was routed by: its request gets -32603. A backend lost in
the middle of a reply: the line is ended before the held bytes (the client's parser drops it) and the
request fails as every request of a lost backend does.
"""

from __future__ import annotations

from . import linehead, linetail
from .actions import Log, StreamPart
from .envelope import encode_id
from .streaming import Piece, Stream

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from .actions import Action
    from .jsonwalk import Span
    from .linehead import Head
    from .requests import Pending
    from .router import Mux

HOLD = 1024
"""Bytes held back from the end of a reply whose id comes last, until its end shows that id."""


def open_backend_stream(mux: Mux, line_head: bytes) -> BackendStream | None:
    """A stream for the backend line that starts with `line_head`, or None: wait for its end."""
    if len(line_head) < mux.fast_path_from:
        return None
    opened = linehead.head(line_head)
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
    if pending is None or requests.as_written(pending) is None:
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


class BackendStream(Stream):
    """One reply on its way to its session: the head with the asker's id spliced in, then the rest as it
    arrives. The request stays pending (and its session busy) until `end`: should the backend be lost
    before, the request fails as every other does."""

    def __init__(self, mux: Mux, backend_id: int, pending: Pending, id_span: Span | None) -> None:
        assert pending.session is not None and pending.original_id is not None
        super().__init__(mux)
        self.backend_id = backend_id
        self.session = pending.session
        self.new_id = encode_id(pending.original_id)
        self.request_id = self.new_id.decode("utf-8", "replace")
        self.id_span = id_span  # None: the id comes last
        self.held = b""
        self.ended = False  # the line ended (or broke): what still comes is dropped

    @property
    def finished(self) -> bool:
        return self.ended

    def describe(self) -> str:
        return f"a reply to session {self.session}"

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
        self.ended = True
        return actions

    def abort(self) -> list[Action]:
        """The backend is gone in the middle of the line: end it where it stopped, without the held bytes (they
        may complete an object still carrying the backend's id), so the client drops it; the request stays owed."""
        if self.ended:
            return []
        self.ended = True
        self.mux.stats["dropped"] += 1
        return [self._part((b"\n",), done=True)]

    def _broken(self) -> list[Action]:
        self.ended = True
        ended = self._part((b"\n",), done=True)
        return [ended, *self.mux.requests.fail(self.backend_id, "mcpsingleton: internal error")]

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
        if self.id_span is not None:
            return [self._part((data,))]
        if len(data) >= HOLD:
            parts: tuple[Piece, ...] = (self.held, memoryview(data)[:-HOLD])
            self.held = bytes(data[-HOLD:])
        else:
            joined = self.held + data
            parts, self.held = (joined[:-HOLD],), joined[-HOLD:]
        return [self._part(parts)]

    def _end(self, last: Piece) -> list[Action]:
        if self.id_span is not None:
            self.mux.requests.passed(self.backend_id)
            return [self._part((last,), done=True)]
        actions = self._more(last)
        line_tail, self.held = self.held, b""
        span = self._id_at_end(line_tail)
        if span is None:
            actions.append(self._part((line_tail,), done=True))
            return actions + self._lost_id()
        start, end = span
        actions.append(self._part((line_tail[:start], self.new_id, line_tail[end:]), done=True))
        self.mux.requests.passed(self.backend_id)
        return actions

    def _id_at_end(self, line_tail: bytes) -> Span | None:
        """Where the id this reply was routed by sits in its last bytes, or None when it is not there."""
        members = linetail.tail(line_tail)
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
