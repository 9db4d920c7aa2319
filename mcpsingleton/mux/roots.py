"""Roots: the broker asks each roots-capable session for its roots, and answers the backend's `roots/list`
with only the roots that EVERY placed session of this backend declared (never a union: a backend must
not learn a root that one of its sessions did not declare). A session without the roots capability
declares none, so it never inherits anyone's.

Each session's roots signature (`NO_ROOTS`, or its sorted root URIs) is what the broker places by
(placement.py, docs/ARCHITECTURE.md "Placement"): a backend that has asked `roots/list` (`used`) only takes
sessions whose signature equals its own, and one that may still ask (not `quiet` yet) takes other roots
only once it has been ready for QUIET_TICKS without asking.

The mux has no clock: the broker calls `tick` about once a second while `ticking()`. A session that
declared roots but has not answered the broker's roots/list after ROOTS_WAIT_TICKS is taken as declaring
none, so neither its placement nor the backend's own roots/list waits on it forever."""

from __future__ import annotations

from . import jsonrpc
from .actions import Feature, Log, ToBackend
from .jsonrpc import Message

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
TICK = 1.0
"""Seconds between the broker's calls to `tick` (the only clock the roots rules have)."""
ROOTS_WAIT_TICKS = 5
"""Ticks a session may take to answer the broker's roots/list before it counts as declaring none."""
QUIET_TICKS = 2
"""Ticks a ready backend must go without asking roots/list before sessions with other roots may join it
(server-everything asks 0.35 s after initialized, server-filesystem at once)."""


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
        self.asking: dict[int, int] = {}  # session → ticks since the broker asked it for its first roots
        self.quiet = False  # ready for QUIET_TICKS without asking roots/list: taken as a server that never asks
        self.ready_ticks = 0

    def ask(self, session: Session, message: Message) -> list[Action]:
        """notifications/initialized, notifications/roots/list_changed: (re)read the session's roots."""
        if not session.can("roots"):
            session.roots_signature = NO_ROOTS
            return self._update()
        if session.roots_signature is None:
            session.roots_signature = ASKING
            self.asking[session.sid] = 0

        def remember(reply: Message) -> list[Action]:
            result = reply.get("result")
            roots = result.get("roots") if isinstance(result, dict) else None
            self.asking.pop(session.sid, None)
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

    def placed_signatures(self) -> set[RootsSignature | None]:
        """The roots signatures of every placed session, None or ASKING for those that have not said yet."""
        return {session.roots_signature for session in self.mux.sessions.values() if not session.parked}

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

    def tick(self) -> list[Action]:
        """About a second passed (the broker's clock): sessions slow to say their roots, a quiet backend."""
        actions: list[Action] = []
        for session in self._silent():
            self.asking.setdefault(session.sid, 0)
        for sid in list(self.asking):
            self.asking[sid] += 1
            if self.asking[sid] >= ROOTS_WAIT_TICKS:
                actions += self._gave_up(sid)
        if self.mux.backend.ready and not self.used and not self.quiet:
            self.ready_ticks += 1
            self.quiet = self.ready_ticks >= QUIET_TICKS
        return actions

    def ticking(self) -> bool:
        """Whether `tick` has anything to count."""
        return (
            bool(self.asking)
            or bool(self._silent())
            or (self.mux.backend.ready and not self.used and not self.quiet)
        )

    def _silent(self) -> list[Session]:
        """Placed sessions whose handshake has not been read yet (a waiter slow to say it is ready): until it
        is, or ROOTS_WAIT_TICKS pass, nobody knows their roots, and sessions with other roots wait for them."""
        return [s for s in self.mux.sessions.values() if not s.parked and s.roots_signature is None]

    def _gave_up(self, sid: int) -> list[Action]:
        """A session never answered roots/list: it declares none (a late answer still counts, as a change)."""
        del self.asking[sid]
        session = self.mux.sessions.get(sid)
        if session is None or session.roots_signature not in (ASKING, None):
            return []
        what = "roots/list" if session.roots_signature == ASKING else "its handshake"
        session.roots_signature = NO_ROOTS
        text = f"session {sid}: no answer to {what} in {ROOTS_WAIT_TICKS * TICK:.0f}s; taken as declaring no roots"
        return [Log(text), *self._update()]

    def session_closed(self, session: Session) -> list[Action]:
        self.declared.pop(session.sid, None)
        self.asking.pop(session.sid, None)
        return self._update()

    def backend_lost(self, reason: str) -> list[Action]:
        self.deferred = []
        return []

    def backend_ready(self, restarted: bool) -> list[Action]:
        self.ready_ticks = 0
        if not restarted or not self.answer_now:
            return []
        return [ToBackend(jsonrpc.notification("notifications/roots/list_changed"))]
