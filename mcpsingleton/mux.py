"""The multiplexer: many client sessions onto one backend MCP server, as a pure state machine.

Sans-IO in the manner of h11: the broker feeds it events (a line from a session, a line from the
backend, a session leaving, the backend starting or exiting) and performs the actions it returns.
Nothing here touches a socket, a process or a clock, so every protocol rule is tested in-process.

The rules are those of DESIGN.md §6: ids rewritten to broker-unique integers and restored exactly,
one backend `initialize` whose result is served to every later session, progress tokens made unique
and routed to their owner, subscriptions refcounted, log levels per session, server→client requests
routed only where the answer is certain, tasks confined to their owner, state dropped cleanly when a
session leaves and replayed when the backend restarts.
"""

from __future__ import annotations

from collections.abc import Callable

from . import eras, jsonrpc
from .jsonrpc import Id, Invalid, Message, id_key

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LEGACY_VERSION = HANDSHAKE_VERSIONS[-1]
"""Protocol version the broker asks for when no session has said which one it wants."""

TERMINAL_TASK_STATES = frozenset({"completed", "failed", "cancelled"})
EARLY_STATUS_TASKS = 64
"""How many not-yet-created task ids may have statuses held for them."""
ABANDONED_MEMORY = 4096
"""How many cancelled request ids to remember, so their late replies are dropped without noise."""
LOCAL_METHODS = frozenset({"initialize", "ping", "server/discover"})
"""Session requests answered without the backend, so they never wait for it."""


# Plain classes with __slots__ rather than dataclasses: importing `dataclasses` (and `inspect` with it)
# costs each broker ~1.8 MiB and ~15 ms of cold start, and one broker runs per server.


class ToBackend:
    __slots__ = ("message",)

    def __init__(self, message: Message) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"ToBackend({self.message!r})"


class ToSession:
    __slots__ = ("message", "session")

    def __init__(self, session: int, message: Message | list[Message]) -> None:
        self.session = session
        self.message = message

    def __repr__(self) -> str:
        return f"ToSession({self.session}, {self.message!r})"


class StartBackend:
    """The mux needs a backend process and none is running."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StartBackend)

    def __hash__(self) -> int:
        return hash(StartBackend)


class Log:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Log({self.text!r})"


Action = ToBackend | ToSession | StartBackend | Log
Reply = Callable[[Message], "list[Action]"]


class Pending:
    """A request the backend owes an answer to."""

    __slots__ = ("log_level", "method", "modern", "on_reply", "original_id", "session", "token")

    def __init__(
        self,
        session: int | None,  # None: the broker's own request, or its session has left
        original_id: Id | None,
        method: str,
        token: int | None = None,
        on_reply: Reply | None = None,
    ) -> None:
        self.session = session
        self.original_id = original_id
        self.method = method
        self.token = token
        self.on_reply = on_reply
        self.modern = False  # the session speaks 2026-07-28: its result gets resultType and serverInfo
        self.log_level: str | None = None  # the 2026-07-28 per-request log opt-in


class Outstanding:
    """A server→client request a session owes an answer to."""

    __slots__ = ("backend_id", "method", "on_reply", "session")

    def __init__(self, session: int, backend_id: Id | None, method: str, on_reply: Reply | None = None) -> None:
        self.session = session
        self.backend_id = backend_id  # None: the broker's own request (roots/list)
        self.method = method
        self.on_reply = on_reply


class Batch:
    """A 2025-03-26 JSON-RPC batch whose replies are collected into one array."""

    __slots__ = ("expected", "replies")

    def __init__(self, expected: set[tuple[bool, Id]]) -> None:
        self.expected = expected
        self.replies: list[Message] = []


class Listen:
    """A 2026-07-28 `subscriptions/listen` stream, served from the backend's shared subscriptions."""

    __slots__ = ("kinds", "request_id", "uris")

    def __init__(self, request_id: Id, kinds: set[str], uris: set[str]) -> None:
        self.request_id = request_id
        self.kinds = kinds  # "tools" | "prompts" | "resources": which list_changed notifications it asked for
        self.uris = uris


class SessionState:
    """What the mux knows of one session: who it is, what it asked for, what it waits on."""

    __slots__ = (
        "batches",
        "capabilities",
        "client_name",
        "inflight",
        "initialized",
        "listens",
        "log_level",
        "modern",
        "protocol_version",
        "roots",
        "sid",
        "subscriptions",
        "tasks",
        "waiting",
    )

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.client_name: str | None = None
        self.capabilities: dict[str, Any] = {}
        self.protocol_version: str | None = None
        self.initialized = False
        self.waiting: list[Message] = []
        self.inflight: dict[tuple[bool, Id], int] = {}
        self.log_level: str | None = None
        self.subscriptions: set[str] = set()
        self.roots: list[dict[str, Any]] = []
        self.tasks: set[str] = set()
        self.batches: list[Batch] = []
        self.modern = False
        self.listens: dict[tuple[bool, Id], Listen] = {}

    def can(self, capability: str, mode: str | None = None) -> bool:
        """Whether the backend's server→client requests may be sent to this session."""
        if self.modern:
            return False  # on stdio a 2026-07-28 client takes no server requests
        declared = self.capabilities.get(capability)
        if not isinstance(declared, dict):
            return False
        if capability == "elicitation" and mode == "url":
            return isinstance(declared.get("url"), dict)
        if capability == "elicitation":  # `{}` is the pre-2025-11-25 form-only declaration; `{"url": {}}` is url only
            return not declared or isinstance(declared.get("form"), dict)
        return True


class Mux:
    """State of one backend and the sessions sharing it."""

    def __init__(self, client_name: str = "mcpsingleton", version: str = "0") -> None:
        self.sessions: dict[int, SessionState] = {}
        self.pending: dict[int, Pending] = {}
        self.outstanding: dict[int, Outstanding] = {}
        self.outstanding_by_backend: dict[tuple[bool, Id], int] = {}
        self.progress: dict[int, tuple[int, Any]] = {}
        self.abandoned: dict[int, None] = {}  # insertion-ordered set of cancelled backend ids
        self.subscribers: dict[str, set[int]] = {}
        self.task_owner: dict[str, int] = {}
        self.task_token: dict[str, int] = {}
        self.early_status: dict[str, list[Message]] = {}  # statuses that arrived before their task's reply
        self.elicitation_owner: dict[str, int] = {}
        self.roots_union: list[dict[str, Any]] = []
        self.backend_level: str | None = None
        self.backend = "down"  # down | spawning | idle | initializing | ready
        self.init_params: dict[str, Any] | None = None
        self.init_result: dict[str, Any] | None = None
        self.init_waiters: list[tuple[int, Id]] = []
        self.generation = 0  # how many times the backend has been initialized
        self.stats = {"requests": 0, "errors": 0, "dropped": 0}
        self._next_id = 0
        self._own_info = {"name": client_name, "version": version}

    # ---- events from the broker -------------------------------------------------------------

    def open_session(self, sid: int) -> list[Action]:
        self.sessions[sid] = SessionState(sid)
        return []

    def from_session(self, sid: int, line: bytes) -> list[Action]:
        """One line of a session's stdin."""
        session = self.sessions[sid]
        try:
            data = jsonrpc.parse(line)
        except Invalid as bad:
            self.stats["errors"] += 1
            return [ToSession(sid, bad.reply), Log(f"session {sid}: {bad}")]
        if isinstance(data, list):
            return self._batch(session, data)
        if jsonrpc.is_request(data):
            self.stats["requests"] += 1
        return self._session_message(session, data)

    def close_session(self, sid: int) -> list[Action]:
        """The session left: cancel what it started, release what it held, forget it."""
        session = self.sessions.pop(sid, None)
        if session is None:
            return []
        actions: list[Action] = []
        for backend_id in list(session.inflight.values()):
            actions += self._abandon(session, backend_id, "client session closed")
        actions += self._release_outstanding(sid)
        self.init_waiters = [(s, i) for s, i in self.init_waiters if s != sid]
        for task_id in session.tasks:
            self.task_owner.pop(task_id, None)
            self.task_token.pop(task_id, None)
            if self.backend == "ready":
                actions.append(self._own_request("tasks/cancel", {"taskId": task_id}))
        self.progress = {t: owner for t, owner in self.progress.items() if owner[0] != sid}
        self.elicitation_owner = {e: s for e, s in self.elicitation_owner.items() if s != sid}
        for uri in list(session.subscriptions):
            actions += self._release(session, uri)
        if session.log_level is not None:
            actions += self._apply_level()
        if session.roots:
            actions += self._update_roots()
        return actions

    def backend_started(self) -> list[Action]:
        """The backend process is running and its stdin/stdout are connected."""
        self.backend = "idle"
        if self.init_params is not None or self.init_waiters or any(s.waiting for s in self.sessions.values()):
            return self._initialize_backend()
        return []

    def backend_exited(self, reason: str) -> list[Action]:
        """The backend died or could not start: everything it owed or that waits for it gets an error.

        The sessions stay attached; the next request starts a new backend.
        """
        self.backend = "down"
        text = f"mcpsingleton: {reason}"
        return self._fail_everything(text) + self._fail_waiting(text)

    def from_backend(self, line: bytes) -> list[Action]:
        """One line of the backend's stdout."""
        try:
            data = jsonrpc.parse(line)
        except Invalid as bad:
            self.stats["dropped"] += 1
            return [Log(f"backend wrote an unusable line ({bad}); dropped")]
        if isinstance(data, list):
            self.stats["dropped"] += 1
            return [Log("backend wrote a JSON-RPC batch, which no session can be sent; dropped")]
        if "method" not in data:
            return self._backend_response(data)
        if "id" in data:
            return self._backend_request(data)
        return self._backend_notification(data)

    def busy(self, sid: int) -> bool:
        """Whether a session still waits for something from the backend (a reply, or its initialize)."""
        session = self.sessions.get(sid)
        if session is None:
            return False
        return bool(session.inflight or session.waiting) or any(s == sid for s, _ in self.init_waiters)

    # ---- queries the broker may make (its only view of the mux's state) ----------------------

    def has_pending(self) -> bool:
        """Whether the backend owes any answer (a restart now would cut a request short)."""
        return bool(self.pending)

    def has_subscribers(self) -> bool:
        """Whether a session expects resource updates without asking again (restart the backend at once)."""
        return bool(self.subscribers)

    def ever_initialized(self) -> bool:
        """Whether a backend ever answered initialize in this broker (else a crash means it cannot start)."""
        return self.generation > 0 or self.init_result is not None

    def backend_ready(self) -> bool:
        return self.backend == "ready"

    def client_name(self, sid: int) -> str | None:
        session = self.sessions.get(sid)
        return session.client_name if session is not None else None

    # ---- session → backend ------------------------------------------------------------------

    def _session_message(self, session: SessionState, message: Message) -> list[Action]:
        if "method" not in message:
            return self._session_response(session, message)
        if "id" not in message:
            return self._session_notification(session, message)
        method = message["method"]
        if method in LOCAL_METHODS:
            return self._local_request(session, message)
        if self.backend != "ready":
            session.waiting.append(message)
            return self._want_backend()
        envelope = eras.envelope(message)
        if envelope is not None:
            return self._modern_request(session, message, envelope)
        return self._session_request(session, message)

    def _modern_request(self, session: SessionState, message: Message, envelope: dict[str, Any]) -> list[Action]:
        """A 2026-07-28 request: served on the shared backend with its envelope translated away."""
        session.modern = session.initialized = True
        info = envelope.get(eras.CLIENT_INFO)
        if isinstance(info, dict) and isinstance(info.get("name"), str):
            session.client_name = info["name"]
        if message["method"] == "subscriptions/listen":
            return self._listen(session, message)
        level = envelope.get(eras.LOG_LEVEL)
        level = level if level in LOG_LEVELS else None
        actions = self._session_request(session, eras.strip(message))
        backend_id = session.inflight.get(id_key(message["id"]))
        pending = self.pending.get(backend_id) if backend_id is not None else None
        if pending is not None:
            pending.modern, pending.log_level = True, level
            if level is not None:
                actions = self._apply_level() + actions
        return actions

    def _listen(self, session: SessionState, message: Message) -> list[Action]:
        """Acknowledge what the backend can serve; hold the stream open until the session cancels it."""
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        wanted = params.get("notifications") if isinstance(params.get("notifications"), dict) else {}
        capabilities = (self.init_result or {}).get("capabilities") or {}
        subscribe_ok = bool((capabilities.get("resources") or {}).get("subscribe"))
        granted = eras.honoured(wanted, capabilities, subscribe_ok)
        kinds = {kind for flag, kind in eras.LIST_KINDS.items() if granted.get(flag)}
        listen = Listen(message["id"], kinds, set(granted.get("resourceSubscriptions", [])))
        session.listens[id_key(message["id"])] = listen
        ack = jsonrpc.notification(
            "notifications/subscriptions/acknowledged",
            {"_meta": {eras.SUBSCRIPTION_ID: message["id"]}, "notifications": granted},
        )
        actions: list[Action] = [ToSession(session.sid, ack)]
        for uri in sorted(listen.uris):
            actions += self._hold(session, uri)
        return actions

    def _end_listen(self, session: SessionState, listen: Listen) -> list[Action]:
        actions: list[Action] = []
        for uri in listen.uris:
            if not any(uri in other.uris for other in session.listens.values()):
                actions += self._release(session, uri)
        return actions

    def _hold(self, session: SessionState, uri: str) -> list[Action]:
        """Count a session in on a URI; the backend is subscribed once, by the broker, for everyone."""
        if uri in session.subscriptions or not self._count_in(session, uri):
            return []
        return [self._own_request("resources/subscribe", {"uri": uri})]

    def _local_request(self, session: SessionState, message: Message) -> list[Action]:
        method, request_id = message["method"], message["id"]
        if method == "ping":
            return self._to_session(session, jsonrpc.result(request_id, {}))
        if method == "server/discover":
            return self._reply_error(
                session, request_id, jsonrpc.METHOD_NOT_FOUND, "Method not found: the backend speaks the handshake era"
            )
        return self._session_initialize(session, message)

    def _session_request(self, session: SessionState, message: Message) -> list[Action]:
        method = message["method"]
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        if method == "logging/setLevel":
            return self._set_level(session, message, params)
        if method == "resources/subscribe":
            return self._subscribe(session, message, params)
        if method == "resources/unsubscribe":
            return self._unsubscribe(session, message, params)
        if method in ("tasks/get", "tasks/result", "tasks/cancel") and (
            self.task_owner.get(str(params.get("taskId"))) != session.sid
        ):
            return self._reply_error(session, message["id"], jsonrpc.INVALID_PARAMS, "Unknown task id")
        return self._forward(session, message)

    def _forward(self, session: SessionState, message: Message, on_reply: Reply | None = None) -> list[Action]:
        """Send a session's request to the backend under a fresh id (and a fresh progress token)."""
        backend_id = self._new_id()
        outgoing = dict(message)
        outgoing["id"] = backend_id
        token = None
        params = message.get("params")
        if isinstance(params, dict):
            meta = params.get("_meta")
            if isinstance(meta, dict) and "progressToken" in meta:
                token = backend_id
                self.progress[token] = (session.sid, meta["progressToken"])
                outgoing["params"] = {**params, "_meta": {**meta, "progressToken": token}}
        self.pending[backend_id] = Pending(session.sid, message["id"], message["method"], token, on_reply)
        session.inflight[id_key(message["id"])] = backend_id
        return [ToBackend(outgoing)]

    def _session_notification(self, session: SessionState, message: Message) -> list[Action]:
        method = message["method"]
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        if method == "notifications/initialized":
            return self._ask_roots(session) if session.can("roots") else []
        if method == "notifications/roots/list_changed":
            return self._ask_roots(session) if session.can("roots") else []
        if method == "notifications/cancelled":
            request_id = params.get("requestId")
            key = id_key(request_id) if jsonrpc.valid_id(request_id) else None
            listen = session.listens.pop(key, None) if key is not None else None
            if listen is not None:
                return self._end_listen(session, listen)
            backend_id = session.inflight.get(key) if key is not None else None
            if backend_id is None:
                if key is not None and self._unqueue(session, key):
                    return self._no_reply(session, key)
                return [Log(f"session {session.sid}: cancel for unknown request {request_id!r}; dropped")]
            reason = params.get("reason") if isinstance(params.get("reason"), str) else "cancelled by the client"
            return self._abandon(session, backend_id, reason) + self._no_reply(session, key)  # type: ignore[arg-type]
        if self.backend != "ready":
            session.waiting.append(message)
            return self._want_backend()
        return [ToBackend(message)]

    def _session_response(self, session: SessionState, message: Message) -> list[Action]:
        """A session's answer to a server→client request."""
        our_id = message.get("id")
        outstanding = self.outstanding.get(our_id) if isinstance(our_id, int) else None
        if outstanding is None or outstanding.session != session.sid:
            self.stats["dropped"] += 1
            return [Log(f"session {session.sid}: response to unknown request {our_id!r}; dropped")]
        del self.outstanding[our_id]
        if outstanding.on_reply is not None:
            return outstanding.on_reply(message)
        assert outstanding.backend_id is not None
        self.outstanding_by_backend.pop(id_key(outstanding.backend_id), None)
        return [ToBackend({**message, "id": outstanding.backend_id})]

    def _batch(self, session: SessionState, items: list[Any]) -> list[Action]:
        """Split a batch; its replies go back as one array once all are in."""
        if not items:
            empty = jsonrpc.error(None, jsonrpc.INVALID_REQUEST, "Invalid Request: empty batch")
            return [ToSession(session.sid, empty)]
        batch = Batch(expected=set())
        valid: list[Message] = []
        for item in items:
            try:
                jsonrpc.check(item)
            except Invalid as bad:
                batch.replies.append(bad.reply)
                continue
            if jsonrpc.is_request(item):
                self.stats["requests"] += 1
                batch.expected.add(id_key(item["id"]))
            valid.append(item)
        session.batches.append(batch)
        actions: list[Action] = []
        for item in valid:
            actions += self._session_message(session, item)
        if not batch.expected and batch in session.batches:
            session.batches.remove(batch)
            if batch.replies:
                actions.append(ToSession(session.sid, batch.replies))
        return actions

    # ---- initialize -------------------------------------------------------------------------

    def _session_initialize(self, session: SessionState, message: Message) -> list[Action]:
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        info = params.get("clientInfo")
        if isinstance(info, dict) and isinstance(info.get("name"), str):
            session.client_name = info["name"]
        if isinstance(params.get("capabilities"), dict):
            session.capabilities = params["capabilities"]
        if isinstance(params.get("protocolVersion"), str):
            session.protocol_version = params["protocolVersion"]
        if self.init_params is None:
            self.init_params = self._backend_init_params(session, info)
        if self.backend == "ready" and self.init_result is not None:
            session.initialized = True
            return self._to_session(session, jsonrpc.result(message["id"], self._result_for(session)))
        self.init_waiters.append((session.sid, message["id"]))
        return self._want_backend()

    def _backend_init_params(self, session: SessionState, info: object) -> dict[str, Any]:
        """The broker's own initialize: the union of what any session may answer, never client tasks."""
        version = session.protocol_version or LEGACY_VERSION
        elicitation: dict[str, Any] = {"form": {}, "url": {}} if version >= "2025-11-25" else {}
        return {
            "protocolVersion": version,
            "capabilities": {"roots": {"listChanged": True}, "sampling": {}, "elicitation": elicitation},
            "clientInfo": info if isinstance(info, dict) else dict(self._own_info),
        }

    def _result_for(self, session: SessionState) -> dict[str, Any]:
        """The cached InitializeResult, at the session's own version when that is an older handshake one.

        A server that supports the requested version must answer with it; ours negotiated the first
        session's. Revisions only add optional fields, so an older client is served correctly by the
        same backend, while answering it with a newer version could make it hang up.
        """
        assert self.init_result is not None
        asked, negotiated = session.protocol_version, self.init_result.get("protocolVersion")
        if asked in HANDSHAKE_VERSIONS and negotiated in HANDSHAKE_VERSIONS and asked < negotiated:
            return {**self.init_result, "protocolVersion": asked}
        return self.init_result

    def _want_backend(self) -> list[Action]:
        if self.backend == "down":
            self.backend = "spawning"
            return [StartBackend()]
        if self.backend == "idle":
            return self._initialize_backend()
        return []

    def _initialize_backend(self) -> list[Action]:
        if self.init_params is None:
            self.init_params = self._backend_init_params(SessionState(-1), None)
        self.backend = "initializing"
        return [self._own_request("initialize", self.init_params, self._initialized)]

    def _initialized(self, reply: Message) -> list[Action]:
        if "error" in reply or not isinstance(reply.get("result"), dict):
            self.backend = "idle"
            reason = "mcpsingleton: backend rejected initialize: " + str(
                (reply.get("error") or {}).get("message", "no result")
            )
            return [Log(reason), *self._fail_waiters(reason), *self._fail_waiting(reason)]
        restarted = self.generation > 0
        self.generation += 1
        self.init_result = self.init_result or reply["result"]
        self.backend = "ready"
        actions: list[Action] = [ToBackend(jsonrpc.notification("notifications/initialized"))]
        for sid, request_id in self.init_waiters:
            session = self.sessions[sid]
            session.initialized = True
            actions += self._to_session(session, jsonrpc.result(request_id, self._result_for(session)))
        self.init_waiters = []
        if restarted:
            actions += self._replay_state()
        for session in list(self.sessions.values()):
            queued, session.waiting = session.waiting, []
            for message in queued:
                actions += self._session_message(session, message)
        return actions

    def _replay_state(self) -> list[Action]:
        """After a restart: the new backend learns what sessions hold; sessions learn lists may differ."""
        actions: list[Action] = [Log(f"backend restarted (generation {self.generation}); replaying state")]
        for uri in self.subscribers:
            actions.append(self._own_request("resources/subscribe", {"uri": uri}))
        if self.backend_level is not None:
            actions.append(self._own_request("logging/setLevel", {"level": self.backend_level}))
        if self.roots_union:
            actions.append(ToBackend(jsonrpc.notification("notifications/roots/list_changed")))
        for kind in ("tools", "resources", "prompts"):
            actions += self._broadcast(jsonrpc.notification(f"notifications/{kind}/list_changed"))
        return actions

    # ---- logging, subscriptions, roots ------------------------------------------------------

    def _set_level(self, session: SessionState, message: Message, params: dict[str, Any]) -> list[Action]:
        level = params.get("level")
        if level not in LOG_LEVELS:
            return self._reply_error(session, message["id"], jsonrpc.INVALID_PARAMS, f"Unknown log level {level!r}")
        if "logging" not in (self.init_result or {}).get("capabilities", {}):
            return self._forward(session, message)
        session.log_level = level
        wanted = self._most_verbose()
        if wanted == self.backend_level:
            return self._to_session(session, jsonrpc.result(message["id"], {}))
        self.backend_level = wanted
        return self._forward(session, {**message, "params": {**params, "level": wanted}})

    def _most_verbose(self) -> str | None:
        levels = [LOG_LEVELS.index(s.log_level) for s in self.sessions.values() if s.log_level is not None]
        levels += [LOG_LEVELS.index(p.log_level) for p in self.pending.values() if p.log_level is not None]
        return LOG_LEVELS[min(levels)] if levels else None

    def _apply_level(self) -> list[Action]:
        wanted = self._most_verbose()
        if wanted is None or wanted == self.backend_level:
            return []
        self.backend_level = wanted
        if self.backend != "ready":
            return []
        return [self._own_request("logging/setLevel", {"level": wanted})]

    def _subscribe(self, session: SessionState, message: Message, params: dict[str, Any]) -> list[Action]:
        uri = params.get("uri")
        if not isinstance(uri, str):
            return self._reply_error(session, message["id"], jsonrpc.INVALID_PARAMS, "resources/subscribe needs a uri")
        if uri in session.subscriptions:
            return self._to_session(session, jsonrpc.result(message["id"], {}))
        if not self._count_in(session, uri):
            return self._to_session(session, jsonrpc.result(message["id"], {}))

        def undo_on_error(reply: Message) -> list[Action]:
            if "error" in reply:
                self._count_out(session, uri)
            return []

        return self._forward(session, message, undo_on_error)

    def _unsubscribe(self, session: SessionState, message: Message, params: dict[str, Any]) -> list[Action]:
        uri = params.get("uri")
        if not isinstance(uri, str) or uri not in session.subscriptions:
            return self._to_session(session, jsonrpc.result(message["id"], {}))
        if not self._count_out(session, uri):
            return self._to_session(session, jsonrpc.result(message["id"], {}))
        return self._forward(session, message)

    def _count_in(self, session: SessionState, uri: str) -> bool:
        """Count a session in on a URI; True when it is the first holder, so the backend must subscribe."""
        session.subscriptions.add(uri)
        holders = self.subscribers.setdefault(uri, set())
        holders.add(session.sid)
        return len(holders) == 1

    def _count_out(self, session: SessionState, uri: str) -> bool:
        """Count a session out of a URI; True when it was the last holder, so the backend must unsubscribe."""
        session.subscriptions.discard(uri)
        holders = self.subscribers.get(uri)
        if holders is None:
            return False
        holders.discard(session.sid)
        if holders:
            return False
        del self.subscribers[uri]
        return True

    def _release(self, session: SessionState, uri: str) -> list[Action]:
        """The broker's own unsubscribe when a session's hold on a URI ends without a request of its own."""
        if not self._count_out(session, uri) or self.backend != "ready":
            return []
        return [self._own_request("resources/unsubscribe", {"uri": uri})]

    def _ask_roots(self, session: SessionState) -> list[Action]:
        our_id = self._new_id()

        def remember(reply: Message) -> list[Action]:
            roots = (reply.get("result") or {}).get("roots") if isinstance(reply.get("result"), dict) else None
            if not isinstance(roots, list):
                return [Log(f"session {session.sid}: roots/list failed; keeping its previous roots")]
            session.roots = [r for r in roots if isinstance(r, dict) and isinstance(r.get("uri"), str)]
            return self._update_roots()

        self.outstanding[our_id] = Outstanding(session.sid, None, "roots/list", remember)
        return [ToSession(session.sid, jsonrpc.request(our_id, "roots/list"))]

    def _update_roots(self) -> list[Action]:
        union: list[dict[str, Any]] = []
        seen: set[str] = set()
        for session in self.sessions.values():
            for root in session.roots:
                if root["uri"] not in seen:
                    seen.add(root["uri"])
                    union.append(root)
        if union == self.roots_union:
            return []
        self.roots_union = union
        if self.backend != "ready":
            return []
        return [ToBackend(jsonrpc.notification("notifications/roots/list_changed"))]

    # ---- backend → sessions -----------------------------------------------------------------

    def _backend_response(self, message: Message) -> list[Action]:
        backend_id = message.get("id")
        pending = self.pending.pop(backend_id, None) if isinstance(backend_id, int) else None
        if pending is None:
            if backend_id in self.abandoned:  # the values are None: test membership, not pop()'s result
                del self.abandoned[backend_id]  # type: ignore[arg-type]
                return []  # a reply to a cancelled request: the requester must ignore it, and does
            self.stats["dropped"] += 1
            return [Log(f"backend answered unknown request id {backend_id!r}; dropped")]
        actions: list[Action] = pending.on_reply(message) if pending.on_reply is not None else []
        session = self.sessions.get(pending.session) if pending.session is not None else None
        task_id = _created_task(message)
        if pending.token is not None and task_id is None:
            self.progress.pop(pending.token, None)
        if session is None:
            return actions
        session.inflight.pop(id_key(pending.original_id), None)  # type: ignore[arg-type]
        if task_id is not None:
            self.task_owner[task_id] = session.sid
            session.tasks.add(task_id)
            if pending.token is not None:
                self.task_token[task_id] = pending.token
            actions += [ToSession(session.sid, status) for status in self.early_status.pop(task_id, [])]
        reply = dict(message)
        reply["id"] = pending.original_id
        if pending.modern:
            reply = eras.complete(reply, pending.method, (self.init_result or {}).get("serverInfo"))
        if pending.method == "tasks/list":
            reply = self._own_tasks_only(session, reply)
        if "error" in reply:
            self.stats["errors"] += 1
        return actions + self._to_session(session, reply)

    def _own_tasks_only(self, session: SessionState, reply: Message) -> Message:
        result = reply.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("tasks"), list):
            return reply
        mine = [t for t in result["tasks"] if isinstance(t, dict) and t.get("taskId") in session.tasks]
        return {**reply, "result": {**result, "tasks": mine}}

    def _backend_request(self, message: Message) -> list[Action]:
        method, backend_id = message["method"], message["id"]
        if method == "ping":
            return [ToBackend(jsonrpc.result(backend_id, {}))]
        if method == "roots/list":
            return [ToBackend(jsonrpc.result(backend_id, {"roots": list(self.roots_union)}))]
        if method in ("sampling/createMessage", "elicitation/create"):
            return self._route_server_request(message)
        return [ToBackend(jsonrpc.error(backend_id, jsonrpc.METHOD_NOT_FOUND, f"Method not found: {method}"))]

    def _route_server_request(self, message: Message) -> list[Action]:
        """Only to the one session that is waiting on the backend and can answer; never a guess."""
        method, backend_id = message["method"], message["id"]
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        capability, mode = method.split("/")[0], params.get("mode")
        able = [s for s in self.sessions.values() if s.initialized and s.can(capability, mode)]
        candidates = [s for s in able if s.inflight]
        if len(candidates) != 1:
            why = (
                f"no connected session supports {capability}"
                if not able
                else f"{len(candidates)} sessions could have caused this {method}; refusing to guess"
            )
            code = jsonrpc.METHOD_NOT_FOUND if not able else jsonrpc.INTERNAL_ERROR
            return [Log(f"backend {method}: {why}"), ToBackend(jsonrpc.error(backend_id, code, f"mcpsingleton: {why}"))]
        session = candidates[0]
        our_id = self._new_id()
        self.outstanding[our_id] = Outstanding(session.sid, backend_id, method)
        self.outstanding_by_backend[id_key(backend_id)] = our_id
        if mode == "url" and isinstance(params.get("elicitationId"), str):
            self.elicitation_owner[params["elicitationId"]] = session.sid
        return [ToSession(session.sid, {**message, "id": our_id})]

    def _backend_notification(self, message: Message) -> list[Action]:
        method = message["method"]
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        if method == "notifications/progress":
            return self._route_progress(message, params)
        if method == "notifications/message":
            return self._route_log(message, params)
        if method == "notifications/resources/updated":
            return self._route_update(message, params)
        if method == "notifications/cancelled":
            return self._route_server_cancel(message, params)
        if method == "notifications/tasks/status":
            return self._route_task_status(message, params)
        if method == "notifications/elicitation/complete":
            owner = self.elicitation_owner.pop(str(params.get("elicitationId")), None)
            return self._to_owner(owner, message)
        return self._broadcast(message)

    def _route_progress(self, message: Message, params: dict[str, Any]) -> list[Action]:
        token = params.get("progressToken")
        owner = self.progress.get(token) if isinstance(token, int) and not isinstance(token, bool) else None
        if owner is None:
            self.stats["dropped"] += 1
            return [Log(f"backend progress for unknown token {token!r}; dropped")]
        sid, original = owner
        return self._to_owner(sid, {**message, "params": {**params, "progressToken": original}})

    def _route_log(self, message: Message, params: dict[str, Any]) -> list[Action]:
        level = params.get("level")
        rank = LOG_LEVELS.index(level) if level in LOG_LEVELS else len(LOG_LEVELS)
        return [ToSession(s.sid, message) for s in self.sessions.values() if self._wants_log(s, rank)]

    def _wants_log(self, session: SessionState, rank: int) -> bool:
        """Handshake sessions: their own level (none set: all). 2026-07-28 sessions: an opted-in request in flight."""
        if not session.modern:
            return session.initialized and (session.log_level is None or rank >= LOG_LEVELS.index(session.log_level))
        opted = [self.pending[b].log_level for b in session.inflight.values() if b in self.pending]
        return any(level is not None and rank >= LOG_LEVELS.index(level) for level in opted)

    def _route_update(self, message: Message, params: dict[str, Any]) -> list[Action]:
        uri = params.get("uri")
        if not isinstance(uri, str):
            return []
        receivers: set[int] = set()
        for subscribed, holders in self.subscribers.items():
            if uri == subscribed or uri.startswith(subscribed.rstrip("/") + "/"):
                receivers |= holders
        actions: list[Action] = []
        for sid in sorted(receivers):
            session = self.sessions[sid]
            if not session.modern:
                actions.append(ToSession(sid, message))
                continue
            for listen in session.listens.values():
                if any(uri == held or uri.startswith(held.rstrip("/") + "/") for held in listen.uris):
                    actions.append(ToSession(sid, eras.tagged(message, listen.request_id)))
        return actions

    def _route_server_cancel(self, message: Message, params: dict[str, Any]) -> list[Action]:
        request_id = params.get("requestId")
        our_id = self.outstanding_by_backend.pop(id_key(request_id), None) if jsonrpc.valid_id(request_id) else None
        outstanding = self.outstanding.pop(our_id, None) if our_id is not None else None
        if outstanding is None:
            return []
        return self._to_owner(outstanding.session, {**message, "params": {**params, "requestId": our_id}})

    def _route_task_status(self, message: Message, params: dict[str, Any]) -> list[Action]:
        task_id = str(params.get("taskId"))
        owner = self.task_owner.get(task_id)
        if owner is None:
            return self._hold_early_status(task_id, message)
        if params.get("status") in TERMINAL_TASK_STATES:
            token = self.task_token.pop(task_id, None)
            if token is not None:
                self.progress.pop(token, None)
        return self._to_owner(owner, message)

    def _hold_early_status(self, task_id: str, message: Message) -> list[Action]:
        """A status can overtake the reply that creates its task: keep it (bounded) for the owner-to-be."""
        held = self.early_status.setdefault(task_id, [])
        held.append(message)
        while len(self.early_status) > EARLY_STATUS_TASKS:
            del self.early_status[next(iter(self.early_status))]
        return []

    # ---- plumbing ---------------------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _own_request(self, method: str, params: dict[str, Any], on_reply: Reply | None = None) -> ToBackend:
        backend_id = self._new_id()
        self.pending[backend_id] = Pending(None, None, method, None, on_reply)
        return ToBackend(jsonrpc.request(backend_id, method, params))

    def _abandon(self, session: SessionState, backend_id: int, reason: str) -> list[Action]:
        """Cancel a request at the backend and forget it: its late reply and progress are dropped quietly."""
        pending = self.pending.pop(backend_id, None)
        if pending is None:
            return []
        session.inflight.pop(id_key(pending.original_id), None)  # type: ignore[arg-type]
        if pending.token is not None:
            self.progress.pop(pending.token, None)
        self.abandoned[backend_id] = None
        if len(self.abandoned) > ABANDONED_MEMORY:
            del self.abandoned[next(iter(self.abandoned))]
        return [ToBackend(self._cancel(backend_id, reason))]

    def _cancel(self, backend_id: int, reason: str) -> Message:
        return jsonrpc.notification("notifications/cancelled", {"requestId": backend_id, "reason": reason})

    def _to_owner(self, sid: int | None, message: Message) -> list[Action]:
        session = self.sessions.get(sid) if sid is not None else None
        return [ToSession(session.sid, message)] if session is not None else []

    def _broadcast(self, message: Message) -> list[Action]:
        """To every handshake session; to 2026-07-28 sessions only on listen streams that asked for it."""
        method = message["method"]
        kind = method.split("/")[1] if method.endswith("/list_changed") and method.count("/") == 2 else None
        actions: list[Action] = []
        for session in self.sessions.values():
            if not session.modern:
                if session.initialized:
                    actions.append(ToSession(session.sid, message))
                continue
            for listen in session.listens.values():
                if kind in listen.kinds:
                    actions.append(ToSession(session.sid, eras.tagged(message, listen.request_id)))
        return actions

    def _to_session(self, session: SessionState, reply: Message) -> list[Action]:
        """Deliver a reply, holding it back while it belongs to an unfinished batch."""
        key = id_key(reply["id"]) if jsonrpc.valid_id(reply.get("id")) else None
        for batch in session.batches:
            if key in batch.expected:
                batch.expected.discard(key)
                batch.replies.append(reply)
                if batch.expected:
                    return []
                session.batches.remove(batch)
                return [ToSession(session.sid, batch.replies)]
        return [ToSession(session.sid, reply)]

    @staticmethod
    def _unqueue(session: SessionState, key: tuple[bool, Id]) -> bool:
        """Drop a request still queued for the backend (cancelled before it was sent); whether one was."""
        for message in session.waiting:
            if jsonrpc.is_request(message) and id_key(message["id"]) == key:
                session.waiting.remove(message)
                return True
        return False

    def _no_reply(self, session: SessionState, key: tuple[bool, Id]) -> list[Action]:
        """A cancelled request gets no reply: the batch holding it must not wait for one."""
        for batch in session.batches:
            if key in batch.expected:
                batch.expected.discard(key)
                if batch.expected:
                    return []
                session.batches.remove(batch)
                return [ToSession(session.sid, batch.replies)] if batch.replies else []
        return []

    def _reply_error(self, session: SessionState, request_id: Id, code: int, text: str) -> list[Action]:
        self.stats["errors"] += 1
        return self._to_session(session, jsonrpc.error(request_id, code, text))

    def _fail_waiters(self, reason: str) -> list[Action]:
        actions: list[Action] = []
        for sid, request_id in self.init_waiters:
            session = self.sessions.get(sid)
            if session is not None:
                actions += self._reply_error(session, request_id, jsonrpc.INTERNAL_ERROR, reason)
        self.init_waiters = []
        return actions

    def _fail_waiting(self, reason: str) -> list[Action]:
        """Requests queued until the backend is ready get `reason` instead (it will not be ready)."""
        actions: list[Action] = []
        for session in self.sessions.values():
            queued, session.waiting = session.waiting, []
            for message in queued:
                if jsonrpc.is_request(message):
                    actions += self._reply_error(session, message["id"], jsonrpc.INTERNAL_ERROR, reason)
        return actions

    def _fail_everything(self, reason: str) -> list[Action]:
        """Error every request the backend owed; the sessions stay, the backend's state goes."""
        actions = self._fail_waiters(reason)
        for pending in self.pending.values():
            session = self.sessions.get(pending.session) if pending.session is not None else None
            if session is None:
                continue
            session.inflight.pop(id_key(pending.original_id), None)  # type: ignore[arg-type]
            actions += self._reply_error(session, pending.original_id, jsonrpc.INTERNAL_ERROR, reason)  # type: ignore[arg-type]
        self.pending.clear()
        self.progress.clear()
        self.task_owner.clear()
        self.task_token.clear()
        self.early_status.clear()
        self.elicitation_owner.clear()
        for session in self.sessions.values():
            session.tasks.clear()
        for our_id, outstanding in list(self.outstanding.items()):
            if outstanding.backend_id is not None:
                del self.outstanding[our_id]
                actions += self._to_owner(outstanding.session, self._cancel(our_id, "backend exited"))
        self.outstanding_by_backend.clear()
        return actions

    def _release_outstanding(self, sid: int) -> list[Action]:
        """Server→client requests the leaving session will never answer get an error now."""
        actions: list[Action] = []
        for our_id, outstanding in list(self.outstanding.items()):
            if outstanding.session != sid:
                continue
            del self.outstanding[our_id]
            if outstanding.backend_id is not None:
                self.outstanding_by_backend.pop(id_key(outstanding.backend_id), None)
                actions.append(
                    ToBackend(
                        jsonrpc.error(
                            outstanding.backend_id,
                            jsonrpc.INTERNAL_ERROR,
                            "mcpsingleton: the client session left before answering",
                        )
                    )
                )
        return actions


def _created_task(reply: Message) -> str | None:
    """The task id when a reply creates a task (2025-11-25 task-augmented request)."""
    result = reply.get("result")
    task = result.get("task") if isinstance(result, dict) else None
    task_id = task.get("taskId") if isinstance(task, dict) else None
    return task_id if isinstance(task_id, str) else None
