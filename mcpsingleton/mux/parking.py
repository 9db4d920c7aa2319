"""Parking: a session whose backend is not chosen yet gets its handshake here, its requests wait.

The broker attaches a new session to a backend parked, and places it once its handshake says what it
needs (its roots): it stays here (`unpark`), or moves to another backend's mux (`export` here, `adopt`
there). Nothing of a parked session reaches a backend, so moving it is safe; once a request of its was
forwarded it never moves again. Only handshake-level state moves (`SessionState`), and what a session
re-attached from a dead broker carries (its log level and subscriptions, applied once it is placed).

No request of a parked session waits on a backend that nothing starts: a list the key's cached discovery
answers is answered from it (that reaches no backend), and any other request wants the backend the session
is parked on, whose answers (its sharing, whether it asks for roots) are what placing it may wait for.
"""

from __future__ import annotations

from .actions import Feature
from .jsonrpc import INTERNAL_ERROR, Message, is_request
from .roots import ASKING, NO_ROOTS, settled

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

    from .actions import Action
    from .router import Mux
    from .session import RootsSignature, Session

PASSES = frozenset(
    {"initialize", "ping", "server/discover", "notifications/initialized", "notifications/roots/list_changed"}
)
"""What a parked session may do before it is placed: its handshake, answered by the broker alone."""


class Carried:
    """What a re-attached session held in its previous broker, applied where it is placed."""

    __slots__ = ("level", "subscriptions")

    def __init__(self, level: str | None, subscriptions: list[str]) -> None:
        self.level = level
        self.subscriptions = subscriptions


class SessionState:
    """A parked session on its way to another mux: who it is, its roots, what it sent meanwhile and carries."""

    __slots__ = ("carried", "held", "roots", "served", "session")

    def __init__(
        self,
        session: Session,
        roots: list[dict[str, Any]] | None,
        held: list[Message],
        carried: Carried | None,
        served: dict[str, Any] | None,
    ) -> None:
        self.session = session
        self.roots = roots
        self.held = held
        self.carried = carried
        self.served = served  # what it was answered from the cached discovery entry (discovery.py)


class Parking(Feature):
    def __init__(self, mux: Mux) -> None:
        super().__init__(mux)
        self.held: dict[int, list[Message]] = {}
        self.carried: dict[int, Carried] = {}

    def holds(self, session: Session, message: Message) -> bool:
        return session.parked and message["method"] not in PASSES

    def hold(self, session: Session, message: Message) -> list[Action]:
        if "id" in message and not self.mux.backend.ready:
            cached = self.mux.discovery.answer(session, message)
            if cached is not None:
                return cached
        self.held.setdefault(session.sid, []).append(message)
        return self.mux.handshake.want_backend() if is_request(message) else []

    def holding_requests(self, sid: int | None = None) -> bool:
        """Whether a request of `sid` (of anyone when None) waits here for placement, which may need the backend."""
        held = [self.held.get(sid, [])] if sid is not None else self.held.values()
        return any(is_request(message) for messages in held for message in messages)

    def placeable(self, sid: int) -> RootsSignature | None:
        """The signature to place a parked session by, once its handshake has said it; else None.

        A session that sends a request without having finished the handshake (no notifications/initialized)
        is placed as one without roots: it never declared any."""
        session = self.mux.sessions.get(sid)
        if session is None or not session.parked or self.mux.handshake.waiting(sid):
            return None
        if settled(session.roots_signature):
            return session.roots_signature
        if session.roots_signature != ASKING and self.held.get(sid):
            session.roots_signature = NO_ROOTS
            return NO_ROOTS
        return None

    def export(self, sid: int) -> SessionState:
        """Take a parked session out of this mux, with its roots and held messages."""
        session = self.mux.sessions[sid]
        held = self.held.pop(sid, [])
        served = self.mux.discovery.served.pop(sid, None)
        return SessionState(session, self.mux.roots.declared.get(sid), held, self.carried.pop(sid, None), served)

    def adopt(self, state: SessionState) -> list[Action]:
        """Take in a session exported by another mux, placed: its held messages go on at once."""
        session = state.session
        self.mux.sessions[session.sid] = session
        if state.roots is not None:
            self.mux.roots.declared[session.sid] = state.roots
        self.held[session.sid] = state.held
        if state.carried is not None:
            self.carried[session.sid] = state.carried
        self.mux.handshake.adopted(session)
        return self.mux.discovery.adopt(session, state.served) + self.unpark(session.sid)

    def unpark(self, sid: int) -> list[Action]:
        """The session stays on this backend: its roots count from now on, its held messages are sent."""
        session = self.mux.sessions[sid]
        session.parked = False
        actions = self.mux.roots.refresh()
        carried = self.carried.pop(sid, None)
        if carried is not None:
            actions += self.mux.log_levels.resume(session, carried.level)
            actions += self.mux.subscriptions.resume(session, carried.subscriptions)
        for message in self.held.pop(sid, []):
            actions += self.mux.dispatch(session, message)
        return actions

    def fail(self, reason: str) -> list[Action]:
        """Held requests get `reason` instead (they will never be placed here); held notifications go."""
        held, self.held = self.held, {}
        actions: list[Action] = []
        for sid, messages in held.items():
            session = self.mux.sessions.get(sid)
            if session is None:
                continue
            for message in filter(is_request, messages):
                actions += self.mux.reply_error(session, message["id"], INTERNAL_ERROR, reason)
        return actions

    def session_closed(self, session: Session) -> list[Action]:
        self.held.pop(session.sid, None)
        self.carried.pop(session.sid, None)
        return []
