"""Where each input to the mux goes: one routing table per direction, a line from either side, a lifecycle event.

Every method of the protocol is routed from one of four tables (session requests, session
notifications, backend requests, backend notifications) to the feature module that owns it; a method
in no table takes the default (forward, forward, refuse, broadcast). Lifecycle events (a session
closed, the backend lost, the backend ready) go to every feature in `mux.features` order.

Big lines that need nothing but a new id pass on as written (fast_path.py). Nothing raised while handling
one line escapes: its recovery is failures.py's.
"""

from __future__ import annotations

from . import eras, failures, fast_path, jsonrpc
from .actions import Log, ToBackend, ToSession
from .discovery import LISTS
from .envelope import id_at_end, reply_id
from .handshake import LOCAL_METHODS
from .jsonrpc import Invalid

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .actions import Action, BackendHandler, Feature, SessionHandler
    from .jsonrpc import Message
    from .router import Mux
    from .session import Session

    Tables = tuple[
        dict[str, SessionHandler], dict[str, SessionHandler], dict[str, BackendHandler], dict[str, BackendHandler]
    ]


def counters() -> dict[str, int]:
    """What the mux counts of its inputs: its `stats`, which the broker reports."""
    return {
        "requests": 0,  # requests from sessions
        "errors": 0,  # error replies to sessions (the backend's and the broker's own)
        "dropped": 0,  # messages not passed on: unusable backend lines, unknown ids, malformed replies
        "rejected": 0,  # session lines refused: unparseable, not JSON-RPC, or failing inside the mux
        "internal_errors": 0,  # exceptions caught while handling one input: each one is a bug
        "fast_path": 0,  # lines passed on as written with only their id replaced (big ones only)
        "streamed": 0,  # of those, backend replies passed on as they arrived (streaming.py)
    }


# ---- the routing table of each direction -------------------------------------------------------


def tables(mux: Mux) -> Tables:
    """The four routing tables: session requests, session notifications, backend requests, backend notifications."""
    session_requests: dict[str, SessionHandler] = {
        "initialize": mux.handshake.initialize,
        "ping": mux.handshake.ping,
        "server/discover": mux.handshake.discover,
        "logging/setLevel": mux.log_levels.set_level,
        "resources/subscribe": mux.subscriptions.subscribe,
        "resources/unsubscribe": mux.subscriptions.unsubscribe,
        "tasks/get": mux.tasks.guard,
        "tasks/result": mux.tasks.guard,
        "tasks/cancel": mux.tasks.guard,
        **dict.fromkeys(LISTS, mux.discovery.forward),
    }  # any other method: forwarded to the backend
    session_notifications: dict[str, SessionHandler] = {
        "notifications/initialized": mux.roots.ask,
        "notifications/roots/list_changed": mux.roots.ask,
        "notifications/cancelled": mux.cancellation.cancelled,
    }  # any other: forwarded to the backend
    backend_requests: dict[str, BackendHandler] = {
        "ping": mux.server_requests.pong,
        "roots/list": mux.roots.answer,
        "sampling/createMessage": mux.server_requests.route,
        "elicitation/create": mux.server_requests.route,
    }  # any other: refused with -32601
    backend_notifications: dict[str, BackendHandler] = {
        "notifications/progress": mux.progress.route,
        "notifications/message": mux.log_levels.route,
        "notifications/resources/updated": mux.subscriptions.updated,
        "notifications/cancelled": mux.server_requests.cancelled,
        "notifications/tasks/status": mux.tasks.route_status,
        "notifications/elicitation/complete": mux.server_requests.elicitation_complete,
    }  # any other: to every session that may hear it
    return session_requests, session_notifications, backend_requests, backend_notifications


# ---- a line from a session -----------------------------------------------------------------------


def from_session(mux: Mux, sid: int, line: bytes) -> list[Action]:
    """One line of a session's stdin."""
    session = mux.sessions.get(sid)
    if session is None:
        mux.stats["rejected"] += 1
        return [Log(f"session {sid}: a line from a session that is not open; dropped")]
    spliced = fast_path.from_session(mux, session, line)
    if spliced is not None:
        return spliced
    try:
        data = jsonrpc.parse(line)
    except Invalid as bad:
        mux.stats["errors"] += 1
        mux.stats["rejected"] += 1
        named = id_at_end(line) if bad.reply["error"]["code"] == jsonrpc.PARSE_ERROR else None
        reply = {**bad.reply, "id": named} if jsonrpc.valid_id(named) else bad.reply
        return [ToSession(sid, reply), Log(f"session {sid}: {bad}")]
    try:
        if isinstance(data, list):
            return mux.batches.split(session, data)
        if "id" in data and "method" in data:
            mux.stats["requests"] += 1
            mux.accepted.append((sid, data["id"]))
        return dispatch(mux, session, data)
    except Exception as exc:
        return failures.session_line_failed(mux, session, data, exc)


def dispatch(mux: Mux, session: Session, message: Message) -> list[Action]:
    """Route one message from a session (also each message of a batch, and each held one once ready)."""
    if "method" not in message:
        return mux.server_requests.answer(session, message)
    method = message["method"]
    if mux.parking.holds(session, message):
        return mux.parking.hold(session, message)
    if "id" not in message:
        notified = mux.session_notifications.get(method)
        if notified is not None:
            return notified(session, message)
        return [ToBackend(message)] if mux.backend.ready else mux.queue.hold(session, message)
    if method in LOCAL_METHODS:
        return mux.session_requests[method](session, message)
    if not mux.backend.ready:
        cached = mux.discovery.answer(session, message)
        return cached if cached is not None else mux.queue.hold(session, message)
    fields = eras.era_fields(message)
    if fields is not None:
        return _stateless_request(mux, session, message, fields)
    return _request(mux, session, message)


def _request(mux: Mux, session: Session, message: Message) -> list[Action]:
    handler = mux.session_requests.get(message["method"])
    return handler(session, message) if handler is not None else mux.requests.forward(session, message)


def _stateless_request(mux: Mux, session: Session, message: Message, fields: dict[str, Any]) -> list[Action]:
    """A stateless-era request: served on the shared backend with its era fields translated away."""
    eras.adopt(session, fields)
    if message["method"] == "subscriptions/listen":
        return mux.subscriptions.listen(session, message)
    actions = _request(mux, session, eras.strip(message))
    pending = mux.requests.of(session, message["id"])
    if pending is None:
        return actions
    pending.stateless = True
    return mux.log_levels.opt_in(pending, fields.get(eras.LOG_LEVEL)) + actions


# ---- a line from the backend ---------------------------------------------------------------------


def from_backend(mux: Mux, line: bytes) -> list[Action]:
    """One line of the backend's stdout."""
    spliced = fast_path.from_backend(mux, line)
    if spliced is not None:
        return spliced
    try:
        data, repaired = jsonrpc.parse_lenient(line)
    except Invalid as bad:
        return _unusable_backend_line(mux, line, bad)
    if repaired:
        note = Log("backend wrote bytes that are not UTF-8; passed on with U+FFFD in their place")
        return [note, *_from_backend_parsed(mux, data)]
    return _from_backend_parsed(mux, data)


def _unusable_backend_line(mux: Mux, line: bytes, bad: Invalid) -> list[Action]:
    """Dropped; but when it is certainly a reply (read from its head or tail), its asker gets an error."""
    mux.stats["dropped"] += 1
    actions: list[Action] = [Log(f"backend wrote an unusable line ({bad}); dropped")]
    backend_id = reply_id(line)
    if type(backend_id) is int and backend_id in mux.requests.pending:
        text = f"mcpsingleton: the server's reply could not be read ({bad})"
        actions += _from_backend_parsed(mux, jsonrpc.error(backend_id, jsonrpc.INTERNAL_ERROR, text))
    return actions


def _from_backend_parsed(mux: Mux, data: Message | list[Any]) -> list[Action]:
    """A decoded backend line, routed by its kind (a reply, a request, a notification)."""
    if isinstance(data, list):
        mux.stats["dropped"] += 1
        return [Log("backend wrote a JSON-RPC batch, which no session can be sent; dropped")]
    try:
        if "method" not in data:
            return mux.requests.answer(data)
        if "id" in data:
            return mux.backend_requests.get(data["method"], mux.server_requests.unknown)(data)
        return mux.backend_notifications.get(data["method"], mux.subscriptions.broadcast)(data)
    except Exception as exc:
        return failures.backend_line_failed(mux, data, exc)


# ---- a lifecycle event ---------------------------------------------------------------------------


def fan_out(mux: Mux, event: str, handler: Callable[[Feature], list[Action]]) -> list[Action]:
    """Run a lifecycle event through every feature; one feature's failure does not stop the others."""
    actions: list[Action] = []
    for feature in mux.features:
        try:
            actions += handler(feature)
        except Exception as exc:
            mux.stats["internal_errors"] += 1
            actions.append(Log(f"internal error in {type(feature).__name__} on {event}: {failures.describe(exc)}"))
    return actions
