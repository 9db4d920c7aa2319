"""Cancellation by a session: its request is cancelled at the backend (or unqueued, if not yet sent),
gets no reply, and no longer holds up its batch; cancelling a stateless-era listen stream closes it."""

from __future__ import annotations

from . import jsonrpc
from .actions import Feature, Log
from .jsonrpc import Message, id_key

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from .actions import Action
    from .session import Session


class Cancellation(Feature):
    def cancelled(self, session: Session, message: Message) -> list[Action]:
        """notifications/cancelled from a session."""
        params = jsonrpc.params_of(message)
        request_id = params.get("requestId")
        if not jsonrpc.valid_id(request_id):
            return [Log(f"session {session.sid}: cancel for unknown request {request_id!r}; dropped")]
        key = id_key(request_id)
        ended = self.mux.subscriptions.end_listen(session, key)
        if ended is not None:
            return ended
        backend_id = session.inflight.get(key)
        if backend_id is not None:
            reason = params.get("reason")
            reason = reason if isinstance(reason, str) else "cancelled by the client"
            self.mux.released.append((session.sid, request_id))
            return self.mux.requests.abandon(session, backend_id, reason) + self.mux.batches.no_reply(session, key)
        if self.mux.queue.unqueue(session, key):
            self.mux.released.append((session.sid, request_id))
            return self.mux.batches.no_reply(session, key)
        return [Log(f"session {session.sid}: cancel for unknown request {request_id!r}; dropped")]
