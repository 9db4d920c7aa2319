"""Messages held until the backend is ready: sent in order once it is, failed if it cannot become so."""

from __future__ import annotations

from . import jsonrpc
from .actions import Feature
from .jsonrpc import Id, Message, id_key

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from .actions import Action
    from .router import Mux
    from .session import Session


class Queue(Feature):
    def __init__(self, mux: Mux) -> None:
        super().__init__(mux)
        self.held: dict[int, list[Message]] = {}

    def hold(self, session: Session, message: Message) -> list[Action]:
        self.held.setdefault(session.sid, []).append(message)
        return self.mux.handshake.want_backend()

    def holding(self, sid: int | None = None) -> bool:
        """Whether `sid` (any session when None) has messages waiting for the backend."""
        return bool(self.held.get(sid)) if sid is not None else any(self.held.values())

    def unqueue(self, session: Session, key: tuple[bool, Id]) -> bool:
        """Drop a request still held (cancelled before it was sent); whether one was."""
        for message in self.held.get(session.sid, []):
            if jsonrpc.is_request(message) and id_key(message["id"]) == key:
                self.held[session.sid].remove(message)
                return True
        return False

    def fail(self, reason: str) -> list[Action]:
        """Held requests get `reason` instead (the backend will not be ready); held notifications go."""
        actions: list[Action] = []
        for session, message in self._take_held():
            if jsonrpc.is_request(message):
                actions += self.mux.reply_error(session, message["id"], jsonrpc.INTERNAL_ERROR, reason)
        return actions

    def _take_held(self) -> list[tuple[Session, Message]]:
        """Everything held for sessions still attached, in order; the queue is empty afterwards."""
        held, self.held = self.held, {}
        return [
            (session, message)
            for sid, messages in held.items()
            if (session := self.mux.sessions.get(sid)) is not None
            for message in messages
        ]

    def session_closed(self, session: Session) -> list[Action]:
        self.held.pop(session.sid, None)
        return []

    def backend_lost(self, reason: str) -> list[Action]:
        return self.fail(reason)

    def backend_ready(self, restarted: bool) -> list[Action]:
        actions: list[Action] = []
        for session, message in self._take_held():
            actions += self.mux.dispatch(session, message)
        return actions
