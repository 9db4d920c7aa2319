"""Logging levels: each session sets its own; the backend is set to the most verbose any session wants,
and each log message reaches only the sessions whose level admits it. A stateless-era session opts in per
request (`_meta` logLevel) and hears logs only while such a request is in flight."""

from __future__ import annotations

from . import jsonrpc
from .actions import Feature, ToSession
from .jsonrpc import Message

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from .actions import Action
    from .requests import Pending
    from .router import Mux
    from .session import Session

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


class LogLevels(Feature):
    def __init__(self, mux: Mux) -> None:
        super().__init__(mux)
        self.levels: dict[int, str] = {}  # session → the level it set
        self.backend_level: str | None = None

    def set_level(self, session: Session, message: Message) -> list[Action]:
        params = jsonrpc.params_of(message)
        level = params.get("level")
        if level not in LOG_LEVELS:
            return self.mux.reply_error(session, message["id"], jsonrpc.INVALID_PARAMS, f"Unknown log level {level!r}")
        if "logging" not in self.mux.handshake.capabilities():
            return self.mux.requests.forward(session, message)  # the backend's own error is the right answer
        self.levels[session.sid] = level
        wanted = self._most_verbose()
        if wanted == self.backend_level:
            return self.mux.batches.deliver(session, jsonrpc.result(message["id"], {}))
        self.backend_level = wanted
        return self.mux.requests.forward(session, {**message, "params": {**params, "level": wanted}})

    def resume(self, session: Session, level: str | None) -> list[Action]:
        """A re-attached session's level from its previous broker (sent to the backend when it is ready)."""
        if level not in LOG_LEVELS:
            return []
        self.levels[session.sid] = level
        return self._apply()

    def opt_in(self, pending: Pending, level: object) -> list[Action]:
        """A stateless-era request asked for logs at `level` while it runs."""
        if level not in LOG_LEVELS:
            return []
        pending.log_level = level
        return self._apply()

    def route(self, message: Message) -> list[Action]:
        """notifications/message: to each session whose level admits it."""
        level = jsonrpc.params_of(message).get("level")
        rank = LOG_LEVELS.index(level) if level in LOG_LEVELS else len(LOG_LEVELS)
        return [ToSession(s.sid, message) for s in self.mux.sessions.values() if self._wants(s, rank)]

    def _wants(self, session: Session, rank: int) -> bool:
        """Handshake-era sessions: their own level (none set: all). Stateless-era: an opted-in request in flight."""
        if not session.stateless:
            own = self.levels.get(session.sid)
            return session.initialized and (own is None or rank >= LOG_LEVELS.index(own))
        pending = self.mux.requests.pending
        opted = [pending[b].log_level for b in session.inflight.values() if b in pending]
        return any(level is not None and rank >= LOG_LEVELS.index(level) for level in opted)

    def _most_verbose(self) -> str | None:
        levels = [LOG_LEVELS.index(level) for level in self.levels.values()]
        levels += [LOG_LEVELS.index(p.log_level) for p in self.mux.requests.pending.values() if p.log_level is not None]
        return LOG_LEVELS[min(levels)] if levels else None

    def _apply(self) -> list[Action]:
        wanted = self._most_verbose()
        if wanted is None or wanted == self.backend_level:
            return []
        self.backend_level = wanted
        if not self.mux.backend.ready:
            return []
        return [self.mux.requests.own("logging/setLevel", {"level": wanted})]

    def session_closed(self, session: Session) -> list[Action]:
        return self._apply() if self.levels.pop(session.sid, None) is not None else []

    def backend_ready(self, restarted: bool) -> list[Action]:
        """After a restart, or when a level was wanted before the backend was ready (a re-attached session's)."""
        if self.backend_level is None or "logging" not in self.mux.handshake.capabilities():
            return []
        return [self.mux.requests.own("logging/setLevel", {"level": self.backend_level})]
