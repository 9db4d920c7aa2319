"""The `Mux` facade: entry points for the broker, one routing table per direction, lifecycle fan-out.

Every method of the protocol is routed from one of four tables (session requests, session
notifications, backend requests, backend notifications) to the feature module that owns it; a method
in no table takes the default (forward, forward, refuse, broadcast). Lifecycle events (a session
closed, the backend lost, the backend ready) go to every feature in `self.features` order.

Big lines that need nothing but a new id pass on as written (fast_path.py); lines too long to wait
for may stream instead (`stream_from_session`, `stream_from_backend`; streaming.py).

The entry points enforce the one rule that keeps a shared broker alive: nothing raised while handling
one session's or the backend's input escapes to the broker. The offending line is answered (-32603 to
its session) or dropped, logged with its source, and counted in `stats`.
"""

from __future__ import annotations

from . import eras, failures, fast_path, jsonrpc, resume
from .actions import Log, ToBackend, ToSession
from .backend_state import BackendView
from .backend_stream import BackendStream, open_backend_stream
from .batches import Batches
from .cancellation import Cancellation
from .discovery import LISTS, Discovery
from .envelope import id_at_end, reply_id
from .fast_path import FAST_PATH_FROM
from .handshake import LOCAL_METHODS, Handshake
from .jsonrpc import Id, Invalid, Message
from .log_levels import LogLevels
from .parking import Parking, SessionState
from .progress import Progress
from .queue import Queue
from .requests import Requests
from .roots import Roots
from .server_requests import ServerRequests
from .session import Session
from .session_stream import SessionStream, open_session_stream
from .subscriptions import Subscriptions
from .tasks import Tasks

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Callable, Hashable
    from typing import Any, TypeVar

    from .actions import Action, BackendHandler, Feature, SessionHandler
    from .session import RootsSignature

    Opened = TypeVar("Opened", BackendStream, SessionStream)

class Mux:
    """State of one backend and the sessions sharing it."""

    def __init__(
        self,
        client_name: str = "mcpsingleton",
        version: str = "0",
        fast_path_from: float = FAST_PATH_FROM,
        *,
        discovery: dict[str, Any] | None = None,
        lazy: bool = False,
    ) -> None:
        """`fast_path_from`: lines this long or longer may be spliced (see envelope.py); `discovery`: the
        key's cached discovery entry (`{}` when none yet; None: this slot never caches); `lazy`: with an
        entry, do not start the backend for what the entry answers."""
        self.sessions: dict[int, Session] = {}
        self.fast_path_from = fast_path_from
        self.inbound: SessionStream | None = None  # the session request being streamed in
        self.accepted: list[tuple[int, Id]] = []  # session requests taken in, until the broker asks (`owed_changes`)
        self.released: list[tuple[int, Id]] = []  # session requests their session cancelled: no reply will come
        self.stats = {
            "requests": 0,  # requests from sessions
            "errors": 0,  # error replies to sessions (the backend's and the broker's own)
            "dropped": 0,  # messages not passed on: unusable backend lines, unknown ids, malformed replies
            "rejected": 0,  # session lines refused: unparseable, not JSON-RPC, or failing inside the mux
            "internal_errors": 0,  # exceptions caught while handling one input: each one is a bug
            "fast_path": 0,  # lines passed on as written with only their id replaced (big ones only)
            "streamed": 0,  # of those, backend replies passed on as they arrived (streaming.py)
        }
        self.backend = BackendView()
        self.handshake = Handshake(self, {"name": client_name, "version": version})
        self.requests = Requests(self)
        self.progress = Progress(self)
        self.tasks = Tasks(self)
        self.server_requests = ServerRequests(self)
        self.subscriptions = Subscriptions(self)
        self.log_levels = LogLevels(self)
        self.roots = Roots(self)
        self.cancellation = Cancellation(self)
        self.batches = Batches(self)
        self.queue = Queue(self)
        self.parking = Parking(self)
        self.discovery = Discovery(self, discovery, lazy)
        self.features: tuple[Feature, ...] = (
            self.handshake,
            self.requests,
            self.progress,
            self.tasks,
            self.server_requests,
            self.subscriptions,
            self.log_levels,
            self.roots,
            self.batches,
            self.parking,
            self.discovery,
            self.queue,  # last: what it releases on `backend_ready` meets every other feature ready
        )  # (cancellation keeps no state: it acts on the others' and has no lifecycle of its own)
        self.session_requests: dict[str, SessionHandler] = {
            "initialize": self.handshake.initialize,
            "ping": self.handshake.ping,
            "server/discover": self.handshake.discover,
            "logging/setLevel": self.log_levels.set_level,
            "resources/subscribe": self.subscriptions.subscribe,
            "resources/unsubscribe": self.subscriptions.unsubscribe,
            "tasks/get": self.tasks.guard,
            "tasks/result": self.tasks.guard,
            "tasks/cancel": self.tasks.guard,
            **dict.fromkeys(LISTS, self.discovery.forward),
        }  # any other method: forwarded to the backend
        self.session_notifications: dict[str, SessionHandler] = {
            "notifications/initialized": self.roots.ask,
            "notifications/roots/list_changed": self.roots.ask,
            "notifications/cancelled": self.cancellation.cancelled,
        }  # any other: forwarded to the backend
        self.backend_requests: dict[str, BackendHandler] = {
            "ping": self.server_requests.pong,
            "roots/list": self.roots.answer,
            "sampling/createMessage": self.server_requests.route,
            "elicitation/create": self.server_requests.route,
        }  # any other: refused with -32601
        self.backend_notifications: dict[str, BackendHandler] = {
            "notifications/progress": self.progress.route,
            "notifications/message": self.log_levels.route,
            "notifications/resources/updated": self.subscriptions.updated,
            "notifications/cancelled": self.server_requests.cancelled,
            "notifications/tasks/status": self.tasks.route_status,
            "notifications/elicitation/complete": self.server_requests.elicitation_complete,
        }  # any other: to every session that may hear it

    # ---- events from the broker -------------------------------------------------------------

    def open_session(self, sid: int, parked: bool = False) -> list[Action]:
        """A new session; `parked`: its requests wait until the broker places it (parking.py)."""
        self.sessions[sid] = Session(sid)
        self.sessions[sid].parked = parked
        return []

    def placeable(self, sid: int) -> RootsSignature | None:
        """A parked session's roots signature once its handshake has said it (the broker places it then)."""
        return self.parking.placeable(sid)

    def unpark(self, sid: int) -> list[Action]:
        """The parked session stays on this backend: what it holds goes on."""
        return self.parking.unpark(sid)

    def export_session(self, sid: int) -> tuple[SessionState, list[Action]]:
        """Move a parked session out (nothing of it reached this backend): its state, for `adopt_session`."""
        state = self.parking.export(sid)
        return state, self.close_session(sid)

    def adopt_session(self, state: SessionState) -> list[Action]:
        """Take in a session exported by another mux, placed here."""
        return self.parking.adopt(state)

    def tick(self) -> list[Action]:
        """About a second passed (the broker's timer: the mux has no clock), while `ticking()` says so."""
        return self._fan_out("tick", lambda feature: feature.tick())

    def ticking(self) -> bool:
        """Whether the mux counts time now: a session slow to say its roots, a backend not yet quiet on roots."""
        return self.roots.ticking()

    def resume_session(self, sid: int, state: dict[str, Any]) -> list[Action]:
        """The just-opened session `sid` re-attached from a dead broker with its last snapshot: go on from it."""
        return resume.restore(self, sid, state)

    def session_state(self, sid: int) -> dict[str, Any] | None:
        """What the session's waiter keeps so the session outlives this broker (resume.py)."""
        return resume.snapshot(self, sid)

    def session_state_mark(self, sid: int) -> Hashable:
        """Changes whenever `session_state` would; cheap enough to ask after every read."""
        return resume.mark(self, sid)

    def ask_tools(self, on_tools: Callable[[list[Any] | None], list[Action]]) -> list[Action]:
        """The broker's own tools/list (to learn the server's tool shapes); `on_tools(None)` when it fails."""

        def listed(reply: Message) -> list[Action]:
            result = reply.get("result")
            tools = result.get("tools") if isinstance(result, dict) else None
            return on_tools(tools if isinstance(tools, list) else None)

        return [self.requests.own("tools/list", {}, listed)]

    def from_session(self, sid: int, line: bytes) -> list[Action]:
        """One line of a session's stdin."""
        session = self.sessions.get(sid)
        if session is None:
            self.stats["rejected"] += 1
            return [Log(f"session {sid}: a line from a session that is not open; dropped")]
        spliced = fast_path.from_session(self, session, line)
        if spliced is not None:
            return spliced
        try:
            data = jsonrpc.parse(line)
        except Invalid as bad:
            self.stats["errors"] += 1
            self.stats["rejected"] += 1
            named = id_at_end(line) if bad.reply["error"]["code"] == jsonrpc.PARSE_ERROR else None
            reply = {**bad.reply, "id": named} if jsonrpc.valid_id(named) else bad.reply
            return [ToSession(sid, reply), Log(f"session {sid}: {bad}")]
        try:
            if isinstance(data, list):
                return self.batches.split(session, data)
            if "id" in data and "method" in data:
                self.stats["requests"] += 1
                self.accepted.append((sid, data["id"]))
            return self.dispatch(session, data)
        except Exception as exc:
            return failures.session_line_failed(self, session, data, exc)

    def close_session(self, sid: int) -> list[Action]:
        """The session left: cancel what it started, release what it held, forget it."""
        session = self.sessions.pop(sid, None)
        if session is None:
            return []
        return self._fan_out(f"session {sid} closing", lambda feature: feature.session_closed(session))

    def backend_started(self) -> list[Action]:
        """The backend process is running and its stdin/stdout are connected."""
        return self.handshake.started()

    def backend_exited(self, reason: str) -> list[Action]:
        """The backend died or could not start: everything it owed or that waits for it gets an error.

        The sessions stay attached; the next request starts a new backend.
        """
        self.backend.handle("exited")
        if self.inbound is not None:
            self.inbound.backend_lost()
        text = f"mcpsingleton: {reason}"
        return self._fan_out("backend exit", lambda feature: feature.backend_lost(text))

    def backend_reclaimed(self, reason: str) -> list[Action]:
        """The broker stopped the backend while it was `quiet` (idle reclaim, the budget): an exit that owed
        nothing; when one is back, sessions hear list_changed only for the lists that changed (discovery.py)."""
        self.discovery.reclaimed()
        return self.backend_exited(reason)

    def backend_refused(self, reason: str) -> list[Action]:
        """The broker may not start the backend the mux asked for (the budget): whatever waits for it (a held
        request, a parked one, an initialize) is answered with `reason`. Not fatal: the next request that
        needs the backend asks again."""
        return self.hand_over(reason)

    def hand_over(self, reason: str) -> list[Action]:
        """The broker hands its sessions over to the next one, which never sees what this one read: whatever a
        session still waits for (a reply, a held request, one parked with it) is answered with an error now."""
        actions = self.backend_exited(reason)
        try:
            return actions + self.parking.fail(f"mcpsingleton: {reason}")
        except Exception as exc:
            self.stats["internal_errors"] += 1
            return [*actions, Log(f"internal error failing parked requests: {failures.describe(exc)}")]

    def stream_from_backend(self, line_head: bytes) -> BackendStream | None:
        """The backend is writing a line too long to wait for: a stream for it, or None (wait for its end).

        The stream's `start(line_head)` gives the first actions; like every entry point, nothing raises."""
        return self._stream(open_backend_stream, self, line_head)

    def stream_from_session(self, sid: int, line_head: bytes, limit: int) -> SessionStream | None:
        """A session is writing a line too long to wait for: a stream for it, or None (wait for its end).
        `limit`: the session's line limit (beyond it the line is refused with -32700, as when whole)."""
        return self._stream(open_session_stream, self, sid, line_head, limit)

    def _stream(self, opener: Callable[..., Opened | None], *args: Any) -> Opened | None:
        try:
            return opener(*args)
        except Exception:  # the line then takes the full path at its end, which reports what is wrong
            self.stats["internal_errors"] += 1
            return None

    def from_backend(self, line: bytes) -> list[Action]:
        """One line of the backend's stdout."""
        spliced = fast_path.from_backend(self, line)
        if spliced is not None:
            return spliced
        try:
            data, repaired = jsonrpc.parse_lenient(line)
        except Invalid as bad:
            return self._unusable_backend_line(line, bad)
        if repaired:
            note = Log("backend wrote bytes that are not UTF-8; passed on with U+FFFD in their place")
            return [note, *self._from_backend_parsed(data)]
        return self._from_backend_parsed(data)

    def _unusable_backend_line(self, line: bytes, bad: Invalid) -> list[Action]:
        """Dropped; but when it is certainly a reply (read from its head or tail), its asker gets an error."""
        self.stats["dropped"] += 1
        actions: list[Action] = [Log(f"backend wrote an unusable line ({bad}); dropped")]
        backend_id = reply_id(line)
        if type(backend_id) is int and backend_id in self.requests.pending:
            text = f"mcpsingleton: the server's reply could not be read ({bad})"
            actions += self._from_backend_parsed(jsonrpc.error(backend_id, jsonrpc.INTERNAL_ERROR, text))
        return actions

    def _from_backend_parsed(self, data: Message | list[Any]) -> list[Action]:
        """A decoded backend line, routed by its kind (a reply, a request, a notification)."""
        if isinstance(data, list):
            self.stats["dropped"] += 1
            return [Log("backend wrote a JSON-RPC batch, which no session can be sent; dropped")]
        try:
            if "method" not in data:
                return self.requests.answer(data)
            if "id" in data:
                return self.backend_requests.get(data["method"], self.server_requests.unknown)(data)
            return self.backend_notifications.get(data["method"], self.subscriptions.broadcast)(data)
        except Exception as exc:
            return failures.backend_line_failed(self, data, exc)

    # ---- queries the broker may make (its only view of the mux's state) ----------------------

    def busy(self, sid: int) -> bool:
        """Whether a session still waits for something from the backend (a reply, or its initialize)."""
        session = self.sessions.get(sid)
        if session is None:
            return False
        return (
            bool(session.inflight)
            or self.queue.holding(sid)
            or self.handshake.waiting(sid)
            or self.parking.holding_requests(sid)
        )

    def owed_changes(self) -> tuple[list[tuple[int, Id]], list[tuple[int, Id]]]:
        """(session, id) of the requests accepted from sessions since the last call, and of those their session
        cancelled (no reply comes): what the broker's in-flight journal records (journal.py)."""
        changes = self.accepted, self.released
        self.accepted, self.released = [], []
        return changes

    def has_pending(self) -> bool:
        """Whether the backend owes any answer (a restart now would cut a request short)."""
        return bool(self.requests.pending)

    def quiet(self) -> bool:
        """Whether stopping the backend now would lose nothing (idle reclaim): nothing in flight or waiting for
        it either way, no subscription or listen stream, no task it runs for a session."""
        return not (
            self.requests.pending
            or self.inbound is not None
            or self.queue.holding()
            or self.handshake.waiters
            or any(self.parking.held.values())
            or self.subscriptions.subscribers
            or any(self.subscriptions.listens.values())
            or self.tasks.owner
            or self.server_requests.elicitation_owner
            or any(o.backend_id is not None for o in self.server_requests.outstanding.values())
        )

    def needs_backend(self) -> bool:
        """Whether something waits on the backend without asking again (restart it at once): a session
        expecting resource updates, or a parked request whose placement may need the backend's word."""
        return self.subscriptions.has_subscribers() or self.parking.holding_requests()

    def ever_initialized(self) -> bool:
        """Whether a backend ever answered initialize in this broker (else a crash means it cannot start)."""
        return self.handshake.generation > 0

    def backend_ready(self) -> bool:
        return self.backend.ready

    def client_name(self, sid: int) -> str | None:
        session = self.sessions.get(sid)
        return session.client_name if session is not None else None

    # ---- routing (features call back in here) -----------------------------------------------

    def dispatch(self, session: Session, message: Message) -> list[Action]:
        """Route one message from a session (also each message of a batch, and each held one once ready)."""
        if "method" not in message:
            return self.server_requests.answer(session, message)
        method = message["method"]
        if self.parking.holds(session, message):
            return self.parking.hold(session, message)
        if "id" not in message:
            notified = self.session_notifications.get(method)
            if notified is not None:
                return notified(session, message)
            return [ToBackend(message)] if self.backend.ready else self.queue.hold(session, message)
        if method in LOCAL_METHODS:
            return self.session_requests[method](session, message)
        if not self.backend.ready:
            cached = self.discovery.answer(session, message)
            return cached if cached is not None else self.queue.hold(session, message)
        fields = eras.era_fields(message)
        if fields is not None:
            return self._stateless_request(session, message, fields)
        return self._request(session, message)

    def _request(self, session: Session, message: Message) -> list[Action]:
        handler = self.session_requests.get(message["method"])
        return handler(session, message) if handler is not None else self.requests.forward(session, message)

    def _stateless_request(self, session: Session, message: Message, fields: dict[str, Any]) -> list[Action]:
        """A stateless-era request: served on the shared backend with its era fields translated away."""
        eras.adopt(session, fields)
        if message["method"] == "subscriptions/listen":
            return self.subscriptions.listen(session, message)
        actions = self._request(session, eras.strip(message))
        pending = self.requests.of(session, message["id"])
        if pending is None:
            return actions
        pending.stateless = True
        return self.log_levels.opt_in(pending, fields.get(eras.LOG_LEVEL)) + actions

    def fan_out_ready(self, restarted: bool) -> list[Action]:
        return self._fan_out("backend ready", lambda feature: feature.backend_ready(restarted))

    def reply_error(self, session: Session, request_id: Id, code: int, text: str) -> list[Action]:
        self.stats["errors"] += 1
        return self.batches.deliver(session, jsonrpc.error(request_id, code, text))

    # ---- the rule: one input's failure stays with that input (recovery: failures.py) ----------

    def _fan_out(self, event: str, handler: Callable[[Feature], list[Action]]) -> list[Action]:
        """Run a lifecycle event through every feature; one feature's failure does not stop the others."""
        actions: list[Action] = []
        for feature in self.features:
            try:
                actions += handler(feature)
            except Exception as exc:
                self.stats["internal_errors"] += 1
                actions.append(Log(f"internal error in {type(feature).__name__} on {event}: {failures.describe(exc)}"))
        return actions
