"""A session's request too long to wait for, passed to the backend as it arrives (streaming.py).

Only a request cut inside one big string nested only in objects under `params` (a text, a file,
base64), a method the router neither answers nor rewrites, the backend ready, the session placed and
not stateless-era, no `_meta` in the head, and no other request streaming to that backend. The
string's content passes as it arrives; what follows its closing quote waits for the line's end and is
checked with the string taken as empty (`envelope.scan`): one request, the same method, no duplicate
member, `_meta` holding at most a progress token (a TypeScript client's, which ends the params:
rewritten in place). The id is replaced at the head, or in that held end.

A line that fails the check, stalls (broker timer) or loses its backend never reaches a backend whole:
the copy is cut off (a broken line, which servers drop) and the request takes the full path at its end.
Until the backend has the whole line, every other message to it waits: a stalled writer is cut off
after 0.5 s (sessions.py), so it cannot hold the others up for longer.
"""

from __future__ import annotations

import json

from . import envelope, jsonrpc, linehead, quotes
from .actions import BackendPart, Log, ToSession
from .envelope import encode_id
from .fast_path import forwarded_as_written
from .jsonrpc import Id
from .jsonwalk import member_value
from .requests import Pending
from .streaming import Piece, Stream

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from .actions import Action
    from .jsonwalk import Span
    from .router import Mux

# A streamed request's states. The backend has part of the line (and must be cut off before anything
# else goes to it) exactly while PASSING or HOLDING; only then is the stream the mux's `inbound`.
PASSING = "passing"  # the big string's content passes to the backend as it arrives
HOLDING = "holding"  # past the string's closing quote: the rest waits for the line's end
DIVERTED = "diverted"  # nothing more passes (`why`: stalled, backend lost): the full path takes it at its end
TOO_LONG = "too long"  # over the session's line limit: forgotten, refused with -32700 at its end
ENDED = "ended"  # ended, aborted or broken: what still comes is dropped

MOVES: dict[str, tuple[str, ...]] = {
    PASSING: (HOLDING, DIVERTED, TOO_LONG, ENDED),
    HOLDING: (DIVERTED, TOO_LONG, ENDED),
    DIVERTED: (TOO_LONG, ENDED),
    TOO_LONG: (ENDED,),
    ENDED: (),
}
"""state → the states it may move to; any other move is a bug, and raises."""


def open_session_stream(mux: Mux, sid: int, line_head: bytes, limit: int) -> SessionStream | None:
    """A stream for the session line that starts with `line_head`, or None: wait for its end."""
    session = mux.sessions.get(sid)
    if len(line_head) < mux.fast_path_from or session is None or session.stateless:
        return None
    if mux.inbound is not None:  # one request streams to a backend at a time
        return None
    opened = linehead.open_string(line_head)
    if opened is None or opened.path[0] != "params" or len(opened.path) < 2 or "_meta" in opened.levels[1]:
        return None
    top = opened.levels[0]
    try:
        method = member_value(line_head, top, "method")
        request_id = member_value(line_head, top, "id")
    except ValueError:
        return None
    if not isinstance(method, str) or "result" in top or "error" in top:
        return None
    if not forwarded_as_written(mux, session, method):
        return None
    if "id" in top and not jsonrpc.valid_id(request_id):
        return None
    head_id = request_id if isinstance(request_id, str | int) else None  # valid when present (checked above)
    return SessionStream(mux, sid, method, head_id, opened, line_head, limit)


class SessionStream(Stream):
    """One request on its way to the backend while it arrives: its head under a fresh backend id, then the
    content of the one big string it was cut in (a text, a file, base64), up to that string's closing quote.

    What follows that quote waits for the line's end: the line is checked then as if the string were empty
    (`envelope.scan`: one request, the same method, no duplicate member, `_meta` holding at most a progress
    token), the id (when it comes last) and the token are spliced in, and the rest goes out. A line that
    fails the check never reaches the backend whole: its copy is cut off (a broken line, which servers
    drop) and the whole request takes the full path, like a line that stalls or whose backend is lost."""

    def __init__(
        self, mux: Mux, sid: int, method: str, head_id: Id | None, opened: linehead.OpenString, head: bytes, limit: int
    ) -> None:
        super().__init__(mux)
        self.sid = sid
        self.method = method
        self.head_id = head_id  # the id when the head holds it (read and checked by open_session_stream)
        self.backend_id = mux.requests.new_id()
        self.prefix = head[: opened.start]  # the line up to the big string's opening quote
        self.id_span = opened.levels[0].get("id")
        self.limit = limit
        self.size = 0
        self.kept: list[bytes] = []  # the whole line so far, for the full path should it be needed
        self.escaped = False  # the string's content so far ends inside an escape
        self.after: list[bytes] = []  # from the string's closing quote on: waits for the line's end
        self.state = PASSING
        self.why = ""  # DIVERTED: why nothing more passes
        mux.inbound = self

    @property
    def finished(self) -> bool:
        return self.state == ENDED

    def describe(self) -> str:
        return f"a request of session {self.sid}"

    def _move(self, state: str) -> None:
        if state not in MOVES[self.state]:
            raise RuntimeError(f"mux: a streamed request cannot go from {self.state!r} to {state!r}")
        self.state = state
        if state not in (PASSING, HOLDING) and self.mux.inbound is self:
            self.mux.inbound = None  # another session's request may stream now

    def close(self) -> None:
        """Nothing more of this line goes to the backend; another session's request may stream now."""
        if self.state != ENDED:
            self._move(ENDED)
        self.kept, self.after = [], []  # the broker's stall timer may hold this stream a moment longer

    def backend_lost(self) -> None:
        """The backend that had the head is gone: at its end, the request goes to the next one in full."""
        self._divert("its backend was lost while it arrived")

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
        if self.state not in (PASSING, HOLDING):
            return []
        actions = self._cut()
        self._divert("its session stopped writing it mid-line")
        return [*actions, Log(f"session {self.sid}: a streamed request stalled; the backend serves the others")]

    def abort(self) -> list[Action]:
        """The session is gone in the middle of the line: the backend's copy is cut off, nobody waits for it."""
        if self.state == ENDED:
            return []
        actions = self._cut()
        self.close()
        self._untrack()
        return [*actions, Log(f"session {self.sid} left in the middle of a request; dropped")]

    def _broken(self) -> list[Action]:
        actions = [*self._cut(), *self._answer_failed()]
        self.close()
        return actions

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
        if self.state not in (PASSING, HOLDING):
            return []  # the backend has nothing of it (any more)
        return [BackendPart((b"\n",), done=True)]

    def _divert(self, why: str) -> None:
        """Nothing more passes (the backend's copy is cut off or gone): the full path takes the line at its end."""
        self._move(DIVERTED)
        self.why = why
        self._untrack()

    # ---- the line -----------------------------------------------------------------------------

    def _start(self, line_head: bytes) -> list[Action]:
        self.kept.append(line_head)
        self.size = len(line_head)
        if self.id_span is not None:
            self._track(self.head_id)
            start, end = self.id_span
            parts: list[Piece] = [memoryview(line_head)[:start], encode_id(self.backend_id)]
            return self._string(line_head, len(self.prefix) + 1, parts, memoryview(line_head)[end:])
        return self._string(line_head, len(self.prefix) + 1, [], memoryview(line_head))

    def _more(self, data: bytes) -> list[Action]:
        self.size += len(data)
        if self.size > self.limit:
            return self._too_long()
        self.kept.append(data)
        if self.state == HOLDING:
            self.after.append(data)
        if self.state != PASSING:
            return []
        return self._string(data, 0, [], memoryview(data))

    def _string(self, piece: bytes, offset: int, parts: list[Piece], rest: memoryview) -> list[Action]:
        """Pass `rest` (the tail of `piece` not yet passed, after `parts`) up to the string's closing quote."""
        found, self.escaped = quotes.closing_quote(piece, offset, self.escaped)
        if found < 0:
            return [BackendPart((*parts, rest))]
        self._move(HOLDING)
        self.after.append(piece[found:])
        passed = len(piece) - len(rest)  # where `rest` starts in `piece`
        return [BackendPart((*parts, rest[: found - passed]))]

    def _end(self, last: bytes) -> list[Action]:
        actions = self._more(last)
        if self.state == TOO_LONG:
            return actions + self._refused()
        if self.state == DIVERTED:
            return actions + self._full_path(self.why)
        if self.state == PASSING:
            return actions + self._cut() + self._full_path("it ends inside its big string")
        spliced = self._checked(b"".join(self.after))
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
        if self.state == TOO_LONG:
            return []
        actions = self._cut()
        self._move(TOO_LONG)
        self._untrack()
        return actions

    def _refused(self) -> list[Action]:
        """The end of a line over the limit: -32700, as the reader answers a whole line over it."""
        text = f"Parse error: line longer than {self.limit >> 20} MiB; skipped"
        refusal = ToSession(self.sid, jsonrpc.error(None, jsonrpc.PARSE_ERROR, text))
        return [Log(f"session {self.sid}: {text}"), refusal]

    def _full_path(self, why: str) -> list[Action]:
        """The whole line is routed anew, as any other (the backend never had it whole)."""
        self._untrack()
        line = b"".join(self.kept).rstrip(b"\r\n")
        self.kept = []
        log = Log(f"session {self.sid}: a {len(line) >> 10} KiB request was not passed on as it came ({why}); resent")
        return [log, *self.mux.from_session(self.sid, line)]

    def _track(self, request_id: Id | None) -> None:
        session = self.mux.sessions.get(self.sid)
        if session is not None and request_id is not None:
            self.mux.requests.track(self.backend_id, Pending(self.sid, request_id, self.method), session)

    def _untrack(self) -> None:
        """Forget the request the backend will never see whole (it may have been tracked at the head): the
        bookkeeping of a passed reply, without one."""
        self.mux.requests.passed(self.backend_id)
