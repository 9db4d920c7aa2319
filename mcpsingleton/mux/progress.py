"""Progress: each forwarded progress token is replaced by a broker-unique one (the request's backend
id), and the backend's progress notifications go to the token's owner only, under its own token."""

from __future__ import annotations

from .actions import Feature, Log, ToSession
from .jsonrpc import Message

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

    from .actions import Action
    from .router import Mux
    from .session import Session


class Progress(Feature):
    def __init__(self, mux: Mux) -> None:
        super().__init__(mux)
        self.owners: dict[int, tuple[int, Any]] = {}  # backend token → (session, its own token)

    def claim(self, session: Session, outgoing: Message, backend_id: int) -> int | None:
        """Rewrite `outgoing`'s progress token to `backend_id` and remember whose it was; the token, if any."""
        params = outgoing.get("params")
        if not isinstance(params, dict):
            return None
        meta = params.get("_meta")
        if not isinstance(meta, dict) or "progressToken" not in meta:
            return None
        outgoing["params"] = {**params, "_meta": {**meta, "progressToken": backend_id}}
        return self.adopt(session.sid, meta["progressToken"], backend_id)

    def adopt(self, sid: int, token: Any, backend_id: int) -> int:
        """Session `sid`'s token `token` travels as `backend_id`; that token, for its request's Pending."""
        self.owners[backend_id] = (sid, token)
        return backend_id

    def release(self, token: int) -> None:
        self.owners.pop(token, None)

    def route(self, message: Message) -> list[Action]:
        params = message.get("params")
        token = params.get("progressToken") if isinstance(params, dict) else None
        owner = self.owners.get(token) if type(token) is int else None
        if owner is None or not isinstance(params, dict):
            self.mux.stats["dropped"] += 1
            return [Log(f"backend progress for unknown token {token!r}; dropped")]
        sid, original = owner
        if sid not in self.mux.sessions:
            return []
        return [ToSession(sid, {**message, "params": {**params, "progressToken": original}})]

    def session_closed(self, session: Session) -> list[Action]:
        self.owners = {token: owner for token, owner in self.owners.items() if owner[0] != session.sid}
        return []

    def backend_lost(self, reason: str) -> list[Action]:
        self.owners.clear()
        return []
