"""Roots: the broker asks each roots-capable session for its roots, and answers the backend's
`roots/list` with the union of the connected sessions' roots; a leaving session's roots go with it."""

from __future__ import annotations

from .. import jsonrpc
from ..jsonrpc import Message
from .actions import Feature, Log, ToBackend

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

    from .actions import Action
    from .router import Mux
    from .session import Session


class Roots(Feature):
    def __init__(self, mux: Mux) -> None:
        super().__init__(mux)
        self.declared: dict[int, list[dict[str, Any]]] = {}
        self.union: list[dict[str, Any]] = []

    def ask(self, session: Session, message: Message) -> list[Action]:
        """notifications/initialized, notifications/roots/list_changed: (re)read the session's roots."""
        if not session.can("roots"):
            return []

        def remember(reply: Message) -> list[Action]:
            result = reply.get("result")
            roots = result.get("roots") if isinstance(result, dict) else None
            if not isinstance(roots, list):
                return [Log(f"session {session.sid}: roots/list failed; keeping its previous roots")]
            if session.sid in self.mux.sessions:
                self.declared[session.sid] = [r for r in roots if isinstance(r, dict) and isinstance(r.get("uri"), str)]
            return self._update()

        return self.mux.server_requests.ask(session, "roots/list", remember)

    def answer(self, message: Message) -> list[Action]:
        """The backend's roots/list."""
        return [ToBackend(jsonrpc.result(message["id"], {"roots": list(self.union)}))]

    def _update(self) -> list[Action]:
        union: list[dict[str, Any]] = []
        seen: set[str] = set()
        for sid in self.mux.sessions:
            for root in self.declared.get(sid, ()):
                if root["uri"] not in seen:
                    seen.add(root["uri"])
                    union.append(root)
        if union == self.union:
            return []
        self.union = union
        if not self.mux.backend.ready:
            return []
        return [ToBackend(jsonrpc.notification("notifications/roots/list_changed"))]

    def session_closed(self, session: Session) -> list[Action]:
        return self._update() if self.declared.pop(session.sid, None) else []

    def backend_ready(self, restarted: bool) -> list[Action]:
        if not restarted or not self.union:
            return []
        return [ToBackend(jsonrpc.notification("notifications/roots/list_changed"))]
