"""Handshake and eras: one backend `initialize` for all sessions, its result cached and served to each.

The broker's own initialize asks for the first session's protocol version with the union of what any
session may answer (roots, sampling, elicitation; never client tasks). Later sessions get the cached
result at their own version when that is an older handshake one. `server/discover` (stateless era) is
refused: the backend speaks the handshake era, and stateless-era sessions are served by translation (eras.py).
"""

from __future__ import annotations

from . import jsonrpc
from .actions import Feature, Log, StartBackend, ToBackend
from .backend_state import DOWN, IDLE
from .jsonrpc import Id, Message

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

    from .actions import Action
    from .router import Mux
    from .session import Session

HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
NEWEST_HANDSHAKE_VERSION = HANDSHAKE_VERSIONS[-1]
"""Protocol version the broker asks for when no session has said which one it wants."""
LOCAL_METHODS = frozenset({"initialize", "ping", "server/discover"})
"""Session requests answered without the backend, so they never wait for it."""


class Handshake(Feature):
    def __init__(self, mux: Mux, own_info: dict[str, str]) -> None:
        super().__init__(mux)
        self.own_info = own_info
        self.init_params: dict[str, Any] | None = None
        self.init_result: dict[str, Any] | None = None
        self.waiters: list[tuple[int, Id]] = []  # sessions whose initialize waits for the backend's
        self.generation = 0  # how many times the backend has been initialized

    # ---- what other features read ----------------------------------------------------------

    def capabilities(self) -> dict[str, Any]:
        """The backend's declared capabilities (an object whatever the backend wrote)."""
        declared = (self.init_result or {}).get("capabilities")
        return declared if isinstance(declared, dict) else {}

    def server_info(self) -> object:
        return (self.init_result or {}).get("serverInfo")

    def waiting(self, sid: int) -> bool:
        return any(s == sid for s, _ in self.waiters)

    # ---- session requests answered here ----------------------------------------------------

    def initialize(self, session: Session, message: Message) -> list[Action]:
        params = jsonrpc.params_of(message)
        info = params.get("clientInfo")
        if isinstance(info, dict) and isinstance(info.get("name"), str):
            session.client_name = info["name"]
        if isinstance(params.get("capabilities"), dict):
            session.capabilities = params["capabilities"]
        if isinstance(params.get("protocolVersion"), str):
            session.protocol_version = params["protocolVersion"]
        if self.init_params is None:
            self.init_params = self._params_for_backend(session.protocol_version, info)
        if self.mux.backend.ready and self.init_result is not None:
            session.initialized = True
            return self.mux.batches.deliver(session, jsonrpc.result(message["id"], self._result_for(session)))
        # a backend that answered before (now reclaimed, or restarting) said it already; else the cached entry
        known = self.init_result if self.init_result is not None else self.mux.discovery.answer_initialize(session)
        if known is not None:
            session.initialized = True
            reply = self.mux.batches.deliver(session, jsonrpc.result(message["id"], self._result_for(session, known)))
            return reply if self.mux.discovery.lazy else reply + self.want_backend()
        self.waiters.append((session.sid, message["id"]))
        return self.want_backend()

    def ping(self, session: Session, message: Message) -> list[Action]:
        return self.mux.batches.deliver(session, jsonrpc.result(message["id"], {}))

    def discover(self, session: Session, message: Message) -> list[Action]:
        text = "Method not found: the backend speaks the handshake era"
        return self.mux.reply_error(session, message["id"], jsonrpc.METHOD_NOT_FOUND, text)

    def adopted(self, session: Session) -> None:
        """A session moved here after its handshake elsewhere: this backend's initialize follows its version."""
        if self.init_params is None:
            self.init_params = self._params_for_backend(session.protocol_version, None)

    def forget(self, session: Session, request_id: Id) -> None:
        """A session's initialize is answered elsewhere (it failed): stop waiting for it."""
        self.waiters = [(s, i) for s, i in self.waiters if (s, i) != (session.sid, request_id)]

    # ---- the backend's handshake -----------------------------------------------------------

    def want_backend(self) -> list[Action]:
        """Something waits for the backend: start it, or initialize it, unless that is under way."""
        state = self.mux.backend.state
        if state == DOWN:
            self.mux.backend.handle("spawn")
            return [StartBackend()]
        if state == IDLE:
            return self.initialize_backend()
        return []

    def started(self) -> list[Action]:
        """The process runs; initialize it now if anyone ever wanted it."""
        self.mux.backend.handle("started")
        if self.init_params is not None or self.waiters or self.mux.queue.holding():
            return self.initialize_backend()
        return []

    def initialize_backend(self) -> list[Action]:
        if self.init_params is None:
            self.init_params = self._params_for_backend(None, None)
        self.mux.backend.handle("initialize")
        return [self.mux.requests.own("initialize", self.init_params, self._initialized)]

    def _initialized(self, reply: Message) -> list[Action]:
        result = reply.get("result")
        if "error" in reply or not isinstance(result, dict):
            self.mux.backend.handle("rejected")
            error = reply.get("error")
            why = error.get("message", "no result") if isinstance(error, dict) else error or "no result"
            reason = f"mcpsingleton: backend rejected initialize: {why}"
            return [
                Log(reason),
                *self._fail_waiters(reason),
                *self.mux.queue.fail(reason),
                *self.mux.parking.fail(reason),
            ]
        restarted = self.generation > 0
        self.generation += 1
        self.init_result = self.init_result or result
        self.mux.backend.handle("initialized")
        return self.mux.fan_out_ready(restarted)

    def _params_for_backend(self, version: str | None, info: object) -> dict[str, Any]:
        """The broker's own initialize: the union of what any session may answer, never client tasks."""
        version = version or NEWEST_HANDSHAKE_VERSION
        elicitation: dict[str, Any] = {"form": {}, "url": {}} if version >= "2025-11-25" else {}
        return {
            "protocolVersion": version,
            "capabilities": {"roots": {"listChanged": True}, "sampling": {}, "elicitation": elicitation},
            "clientInfo": info if isinstance(info, dict) else dict(self.own_info),
        }

    def _result_for(self, session: Session, result: dict[str, Any] | None = None) -> dict[str, Any]:
        """The cached InitializeResult, at the session's own version when that is an older handshake one.

        A server that supports the requested version must answer with it; ours negotiated the first
        session's. Revisions only add optional fields, so an older client is served correctly by the
        same backend, while answering it with a newer version could make it hang up.
        """
        result = result or self.init_result  # `result`: the cached one, before the backend answered
        assert result is not None
        asked, negotiated = session.protocol_version, result.get("protocolVersion")
        if asked in HANDSHAKE_VERSIONS and negotiated in HANDSHAKE_VERSIONS and asked < negotiated:
            return {**result, "protocolVersion": asked}
        return result

    def _fail_waiters(self, reason: str) -> list[Action]:
        actions: list[Action] = []
        for sid, request_id in self.waiters:
            session = self.mux.sessions.get(sid)
            if session is not None:
                actions += self.mux.reply_error(session, request_id, jsonrpc.INTERNAL_ERROR, reason)
        self.waiters = []
        return actions

    # ---- lifecycle -------------------------------------------------------------------------

    def session_closed(self, session: Session) -> list[Action]:
        self.waiters = [(s, i) for s, i in self.waiters if s != session.sid]
        return []

    def backend_lost(self, reason: str) -> list[Action]:
        return self._fail_waiters(reason)

    def backend_ready(self, restarted: bool) -> list[Action]:
        actions: list[Action] = [ToBackend(jsonrpc.notification("notifications/initialized"))]
        for sid, request_id in self.waiters:
            session = self.mux.sessions.get(sid)
            if session is not None:
                session.initialized = True
                actions += self.mux.batches.deliver(session, jsonrpc.result(request_id, self._result_for(session)))
        self.waiters = []
        if restarted:
            actions.append(Log(f"backend restarted (generation {self.generation}); replaying state"))
        return actions
