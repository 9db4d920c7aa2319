"""The `Mux` facade: the features it is made of, entry points for the broker, the queries it may make.

Where each input goes — one routing table per direction, a line from either side, a lifecycle event fanned
out to every feature — is inputs.py's. Big lines that need nothing but a new id pass on as written
(fast_path.py); lines too long to wait for may stream instead (`stream_from_session`,
`stream_from_backend`; streaming.py).

The entry points enforce the one rule that keeps a shared broker alive: nothing raised while handling
one session's or the backend's input escapes to the broker. The offending line is answered (-32603 to
its session) or dropped, logged with its source, and counted in `stats`.
"""

from __future__ import annotations

from . import failures, inputs, jsonrpc, resume, streaming
from .actions import Log
from .backend_state import BackendView
from .backend_stream import open_backend_stream
from .batches import Batches
from .cancellation import Cancellation
from .discovery import Discovery
from .fast_path import FAST_PATH_FROM
from .handshake import Handshake
from .log_levels import LogLevels
from .parking import Parking, SessionState
from .progress import Progress
from .queue import Queue
from .requests import Requests
from .roots import Roots
from .server_requests import ServerRequests
from .session import Session
from .session_stream import open_session_stream
from .subscriptions import Subscriptions
from .tasks import Tasks

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Callable, Hashable
    from typing import Any

    from .actions import Action, Feature
    from .backend_stream import BackendStream
    from .jsonrpc import Id, Message
    from .session import RootsSignature
    from .session_stream import SessionStream


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
        self.stats = inputs.counters()  # what the mux counted of its inputs (shown by `ls`, metrics)
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
        self.session_requests, self.session_notifications, self.backend_requests, self.backend_notifications = (
            inputs.tables(self)
        )

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
        return inputs.fan_out(self, "tick", lambda feature: feature.tick())

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
        return inputs.from_session(self, sid, line)

    def close_session(self, sid: int) -> list[Action]:
        """The session left: cancel what it started, release what it held, forget it."""
        session = self.sessions.pop(sid, None)
        if session is None:
            return []
        return inputs.fan_out(self, f"session {sid} closing", lambda feature: feature.session_closed(session))

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
        return inputs.fan_out(self, "backend exit", lambda feature: feature.backend_lost(text))

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
        return streaming.open_safely(self, open_backend_stream, line_head)

    def stream_from_session(self, sid: int, line_head: bytes, limit: int) -> SessionStream | None:
        """A session is writing a line too long to wait for: a stream for it, or None (wait for its end).
        `limit`: the session's line limit (beyond it the line is refused with -32700, as when whole)."""
        return streaming.open_safely(self, open_session_stream, sid, line_head, limit)

    def from_backend(self, line: bytes) -> list[Action]:
        """One line of the backend's stdout."""
        return inputs.from_backend(self, line)

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
        return inputs.dispatch(self, session, message)

    def fan_out_ready(self, restarted: bool) -> list[Action]:
        return inputs.fan_out(self, "backend ready", lambda feature: feature.backend_ready(restarted))

    def reply_error(self, session: Session, request_id: Id, code: int, text: str) -> list[Action]:
        self.stats["errors"] += 1
        return self.batches.deliver(session, jsonrpc.error(request_id, code, text))
