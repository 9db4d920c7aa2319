"""Requests and ids: every request reaches the backend under a broker-unique integer id, and its reply
goes back to the one session that asked, under that session's own id (1 and "1" kept apart).

A request the session cancels or abandons by leaving is cancelled at the backend and remembered for a
while, so its late reply is dropped quietly.
"""

from __future__ import annotations

import json

from . import eras, jsonrpc
from .actions import Feature, Log, Spliced, ToBackend, ToSession
from .envelope import Envelope, encode_id
from .jsonrpc import Id, Message, id_key

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

    from .actions import Action, Reply
    from .router import Mux
    from .session import Session

ABANDONED_MEMORY = 4096
"""How many cancelled request ids to remember, so their late replies are dropped without noise."""


class Pending:
    """A request the backend owes an answer to."""

    __slots__ = ("log_level", "method", "on_reply", "original_id", "session", "stateless", "token")

    def __init__(
        self,
        session: int | None,  # None: the broker's own request
        original_id: Id | None,
        method: str,
        token: int | None = None,
        on_reply: Reply | None = None,
    ) -> None:
        self.session = session
        self.original_id = original_id
        self.method = method
        self.token = token
        self.on_reply = on_reply
        self.stateless = False  # a stateless-era request: its result gets resultType and serverInfo
        self.log_level: str | None = None  # the stateless-era per-request log opt-in


class Requests(Feature):
    def __init__(self, mux: Mux) -> None:
        super().__init__(mux)
        self.pending: dict[int, Pending] = {}
        self.abandoned: dict[int, int | None] = {}  # cancelled backend id → the session that asked, in order
        self._next_id = 0

    def new_id(self) -> int:
        """Ids for the backend and for server→client requests come from one counter: never reused."""
        self._next_id += 1
        return self._next_id

    def forward(self, session: Session, message: Message, on_reply: Reply | None = None) -> list[Action]:
        """Send a session's request to the backend under a fresh id (and a fresh progress token)."""
        backend_id = self.new_id()
        outgoing = dict(message)
        outgoing["id"] = backend_id
        token = self.mux.progress.claim(session, outgoing, backend_id)
        self.track(backend_id, Pending(session.sid, message["id"], message["method"], token, on_reply), session)
        return [ToBackend(outgoing)]

    def forward_spliced(self, session: Session, line: bytes, envelope: Envelope) -> list[Action]:
        """`forward` for a request that needs no rewriting but its id (no `_meta`): its bytes pass as written."""
        assert envelope.id is not None and envelope.method is not None and envelope.id_span is not None
        backend_id = self.new_id()
        self.track(backend_id, Pending(session.sid, envelope.id, envelope.method), session)
        return [ToBackend(None, Spliced(line, envelope.id_span, encode_id(backend_id)))]

    def track(self, backend_id: int, pending: Pending, session: Session) -> None:
        """The backend owes `pending` an answer under `backend_id`."""
        assert pending.original_id is not None
        self.pending[backend_id] = pending
        session.inflight[id_key(pending.original_id)] = backend_id

    def own(self, method: str, params: dict[str, Any], on_reply: Reply | None = None) -> ToBackend:
        """A request the broker sends on its own behalf (its answer goes to `on_reply`, or nowhere)."""
        backend_id = self.new_id()
        self.pending[backend_id] = Pending(None, None, method, None, on_reply)
        return ToBackend(jsonrpc.request(backend_id, method, params))

    def of(self, session: Session, request_id: Id) -> Pending | None:
        backend_id = session.inflight.get(id_key(request_id))
        return self.pending.get(backend_id) if backend_id is not None else None

    def abandon(self, session: Session, backend_id: int, reason: str) -> list[Action]:
        """Cancel a request at the backend and forget it: its late reply and progress are dropped quietly."""
        pending = self.pending.pop(backend_id, None)
        if pending is None:
            return []
        if pending.original_id is not None:
            session.inflight.pop(id_key(pending.original_id), None)
        if pending.token is not None:
            self.mux.progress.release(pending.token)
        self.abandoned[backend_id] = pending.session
        if len(self.abandoned) > ABANDONED_MEMORY:
            del self.abandoned[next(iter(self.abandoned))]
        return [ToBackend(cancel(backend_id, reason))]

    def answer(self, message: Message) -> list[Action]:
        """The backend's reply: restored to the asker's id, translated for its era, delivered."""
        backend_id = message.get("id")
        if not isinstance(backend_id, int) or backend_id not in self.pending:
            return self._unexpected(backend_id)
        pending = self.pending[backend_id]
        mux = self.mux
        actions: list[Action] = pending.on_reply(message) if pending.on_reply is not None else []
        task_id = mux.tasks.created(message)
        if pending.token is not None and task_id is None:
            mux.progress.release(pending.token)
        session = mux.sessions.get(pending.session) if pending.session is not None else None
        if session is not None and pending.original_id is not None:
            session.inflight.pop(id_key(pending.original_id), None)
            if task_id is not None:
                actions += mux.tasks.adopt(session, task_id, pending.token)
            reply = self._as_asked(pending, pending.original_id, session, message, actions)
            actions += mux.batches.deliver(session, reply)
        del self.pending[backend_id]  # only now: should anything above fail, `fail` still finds the asker
        return actions

    def answer_spliced(self, line: bytes, envelope: Envelope) -> list[Action] | None:
        """`answer` for a reply that needs nothing but its asker's id: the backend's bytes pass as written.

        None (nothing done) when the reply needs more (`as_written`), or creates a task or is malformed.
        """
        backend_id = envelope.id
        pending = self.pending.get(backend_id) if type(backend_id) is int else None
        session = self.as_written(pending) if pending is not None else None
        if session is None or pending is None or pending.original_id is None or not _well_formed(line, envelope):
            return None
        assert type(backend_id) is int and envelope.id_span is not None
        self.passed(backend_id)
        if "error" in envelope.members:
            self.mux.stats["errors"] += 1
        return [ToSession(session.sid, None, Spliced(line, envelope.id_span, encode_id(pending.original_id)))]

    def as_written(self, pending: Pending) -> Session | None:
        """The asker's session, when its reply may pass as the backend wrote it with only the id changed
        (spliced or streamed), else None: no reply hook, not a stateless-era request (no completion to
        add), not tasks/list (filtered per owner), the session attached and no batch of it waiting for
        that reply. A progress token does not matter: `passed` releases it, as `answer` does for a reply
        that creates no task. The reply itself must create no task: each path checks what it sees of it."""
        if pending.session is None or pending.original_id is None or pending.on_reply is not None:
            return None
        if pending.stateless or pending.method == "tasks/list":
            return None
        session = self.mux.sessions.get(pending.session)
        if session is None or self.mux.batches.expects(session, pending.original_id):
            return None
        return session

    def passed(self, backend_id: int) -> None:
        """A reply passed as written (spliced, or streamed to its end): `answer`'s bookkeeping without the
        reply. Nothing to do when it was cancelled while it streamed, or its session left."""
        pending = self.pending.pop(backend_id, None)
        if pending is None:
            return
        session = self.mux.sessions.get(pending.session) if pending.session is not None else None
        if session is not None and pending.original_id is not None:
            session.inflight.pop(id_key(pending.original_id), None)
        if pending.token is not None:
            self.mux.progress.release(pending.token)

    def _as_asked(
        self, pending: Pending, original_id: Id, session: Session, message: Message, log: list[Action]
    ) -> Message:
        """The reply as its asker must see it: under its own id, in its era's shape, never malformed."""
        problem = malformed(message)
        if problem is not None:
            self.mux.stats["dropped"] += 1
            self.mux.stats["errors"] += 1
            log.append(
                Log(f"backend answered request {message['id']} with {problem}; session {session.sid} gets -32603")
            )
            return jsonrpc.error(
                original_id, jsonrpc.INTERNAL_ERROR, f"mcpsingleton: the backend answered with {problem}"
            )
        reply = dict(message)
        reply["id"] = original_id
        if pending.stateless:
            reply = eras.complete(reply, pending.method, self.mux.handshake.server_info())
        if pending.method == "tasks/list":
            reply = self.mux.tasks.own_only(session, reply)
        if "error" in reply:
            self.mux.stats["errors"] += 1
        return reply

    def _unexpected(self, backend_id: object) -> list[Action]:
        if isinstance(backend_id, int) and backend_id in self.abandoned:
            del self.abandoned[backend_id]
            return []  # a reply to a cancelled request: the requester must ignore it, and does
        self.mux.stats["dropped"] += 1
        return [Log(f"backend answered unknown request id {backend_id!r}; dropped")]

    def fail(self, backend_id: int, reason: str) -> list[Action]:
        """The backend's reply to `backend_id` could not be handled: its asker gets `reason` instead."""
        pending = self.pending.pop(backend_id, None)
        if pending is None or pending.session is None or pending.original_id is None:
            return []
        session = self.mux.sessions.get(pending.session)
        if session is None:
            return []
        session.inflight.pop(id_key(pending.original_id), None)
        return self.mux.reply_error(session, pending.original_id, jsonrpc.INTERNAL_ERROR, reason)

    def session_closed(self, session: Session) -> list[Action]:
        actions: list[Action] = []
        for backend_id in list(session.inflight.values()):
            actions += self.abandon(session, backend_id, "client session closed")
        return actions

    def backend_lost(self, reason: str) -> list[Action]:
        actions: list[Action] = []
        for pending in self.pending.values():
            session = self.mux.sessions.get(pending.session) if pending.session is not None else None
            if session is None or pending.original_id is None:
                continue
            session.inflight.pop(id_key(pending.original_id), None)
            actions += self.mux.reply_error(session, pending.original_id, jsonrpc.INTERNAL_ERROR, reason)
        self.pending.clear()
        return actions


def malformed(reply: Message) -> str | None:
    """What makes a backend's reply unfit for a client (an error that is not a JSON-RPC error object, a
    result that is not an object), or None."""
    if "error" in reply:
        error = reply["error"]
        if isinstance(error, dict) and type(error.get("code")) is int and isinstance(error.get("message"), str):
            return None
        return f"a malformed error ({str(error)[:100]})"
    if not isinstance(reply.get("result"), dict):
        return "a result that is not an object"
    return None


def _well_formed(line: bytes, envelope: Envelope) -> bool:
    """`malformed` would pass this reply, and it creates no task (its error, always small, is decoded)."""
    body, error = envelope.body, envelope.members.get("error")
    if body is not None and "task" in body:
        return False
    if error is None:
        return body is not None  # a result that is an object
    try:
        return malformed({"error": json.loads(line[error[0] : error[1]])}) is None
    except ValueError:
        return False


def cancel(request_id: int, reason: str) -> Message:
    return jsonrpc.notification("notifications/cancelled", {"requestId": request_id, "reason": reason})
