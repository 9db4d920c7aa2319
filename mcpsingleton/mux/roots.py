"""Roots: the broker asks each roots-capable session for its roots, and answers the backend's `roots/list`
with only the roots that EVERY placed session of this backend declared (never a union: a backend must
not learn a root that one of its sessions did not declare). A session without the roots capability
declares none, so it never inherits anyone's.

Each session's roots signature (`NO_ROOTS`, or its sorted root URIs) is what the broker places by:
a backend that has asked `roots/list` (`used`) only takes sessions whose signature equals its own
(docs/ARCHITECTURE.md, "Placement")."""

from __future__ import annotations

from .. import jsonrpc
from ..jsonrpc import Message
from .actions import Feature, Log, ToBackend

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

    from .actions import Action
    from .router import Mux
    from .session import RootsSignature, Session

NO_ROOTS = "none"
"""The signature of a session that declared no roots (no capability, or its roots/list failed)."""
ASKING = "asking"
"""The broker asked the session for its roots and waits for the answer."""


def settled(signature: RootsSignature | None) -> bool:
    return signature is not None and signature != ASKING


class Roots(Feature):
    def __init__(self, mux: Mux) -> None:
        super().__init__(mux)
        self.declared: dict[int, list[dict[str, Any]]] = {}
        self.answer_now: list[dict[str, Any]] = []
        self.used = False  # the backend has asked roots/list: it acts on roots, so placement must match them
        self.learnt = False  # the backend was ever answered a root: it must end with its sessions (no linger)
        self.deferred: list[Message] = []  # the backend's roots/list, waiting for a placed session's roots

    def ask(self, session: Session, message: Message) -> list[Action]:
        """notifications/initialized, notifications/roots/list_changed: (re)read the session's roots."""
        if not session.can("roots"):
            session.roots_signature = NO_ROOTS
            return self._update()
        if session.roots_signature is None:
            session.roots_signature = ASKING

        def remember(reply: Message) -> list[Action]:
            result = reply.get("result")
            roots = result.get("roots") if isinstance(result, dict) else None
            if session.sid not in self.mux.sessions:
                return []
            if not isinstance(roots, list):
                if session.roots_signature == ASKING:
                    session.roots_signature = NO_ROOTS
                return [Log(f"session {session.sid}: roots/list failed; keeping its previous roots"), *self._update()]
            kept = [r for r in roots if isinstance(r, dict) and isinstance(r.get("uri"), str)]
            self.declared[session.sid] = kept
            session.roots_signature = tuple(sorted({root["uri"] for root in kept}))
            return self._update()

        return self.mux.server_requests.ask(session, "roots/list", remember)

    def answer(self, message: Message) -> list[Action]:
        """The backend's roots/list: what every placed session declared, once each of them has said.

        A server asks as soon as it is initialized, before the first session has answered the broker's own
        roots/list; answered at once it would start without that session's roots (as no direct client does)."""
        self.used = True
        if any(s.can("roots") and not settled(s.roots_signature) for s in self.mux.sessions.values() if not s.parked):
            self.deferred.append(message)
            return []
        self.learnt = self.learnt or bool(self.answer_now)
        actions: list[Action] = [ToBackend(jsonrpc.result(message["id"], {"roots": list(self.answer_now)}))]
        signatures = {session.roots_signature for session in self._placed()}
        if len(signatures) > 1:
            text = f"sessions with different roots share this backend; answered only the {len(self.answer_now)} "
            actions.append(Log(f"backend asked roots/list: {text}root(s) all of them declared"))
        return actions

    def signatures(self) -> set[RootsSignature | None]:
        """The distinct roots signatures of this backend's placed sessions."""
        return {session.roots_signature for session in self._placed()}

    def _placed(self) -> list[Session]:
        return [s for s in self.mux.sessions.values() if not s.parked and settled(s.roots_signature)]

    def _common(self) -> list[dict[str, Any]]:
        placed = self._placed()
        if not placed:
            return []
        others = [{root["uri"] for root in self.declared.get(s.sid, ())} for s in placed[1:]]
        common: dict[str, dict[str, Any]] = {}
        for root in self.declared.get(placed[0].sid, ()):
            if all(root["uri"] in uris for uris in others):
                common.setdefault(root["uri"], root)
        return list(common.values())

    def _update(self) -> list[Action]:
        common = self._common()
        changed, self.answer_now = common != self.answer_now, common
        deferred, self.deferred = self.deferred, []
        actions = [action for message in deferred for action in self.answer(message)]
        if changed and not deferred and self.mux.backend.ready:
            actions.append(ToBackend(jsonrpc.notification("notifications/roots/list_changed")))
        return actions

    def refresh(self) -> list[Action]:
        """A session was placed here (or left): the answer may change."""
        return self._update()

    def session_closed(self, session: Session) -> list[Action]:
        self.declared.pop(session.sid, None)
        return self._update()

    def backend_lost(self, reason: str) -> list[Action]:
        self.deferred = []
        return []

    def backend_ready(self, restarted: bool) -> list[Action]:
        if not restarted or not self.answer_now:
            return []
        return [ToBackend(jsonrpc.notification("notifications/roots/list_changed"))]
