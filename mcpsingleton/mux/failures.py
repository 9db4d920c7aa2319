"""Recovery when handling one input raised: the input's sender is answered (or the line dropped), whatever
it started is abandoned, and the failure is logged and counted. The entry points call these (inputs.py, fast_path.py);
nothing raised while handling one session's or the backend's line reaches the broker."""

from __future__ import annotations

from . import jsonrpc
from .actions import Log, ToBackend, ToSession
from .jsonrpc import Invalid, Message, id_key

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

    from .actions import Action
    from .router import Mux
    from .session import Session


def session_line_failed(mux: Mux, session: Session, data: Message | list[Any], exc: Exception) -> list[Action]:
    """Handling a session's line raised. None of its actions were performed, so each request in it
    is answered now, once: -32603 (a batch: one array), and whatever it started is abandoned."""
    mux.stats["internal_errors"] += 1
    mux.stats["rejected"] += 1
    text = f"mcpsingleton: internal error handling this message: {describe(exc)}"
    actions: list[Action] = [Log(f"session {session.sid}: {text}; answered with -32603")]
    try:
        if isinstance(data, dict):
            return actions + _give_up(mux, session, data, text)
        mux.batches.abort(session)
        replies: list[Message] = []
        for item in data:
            actions += _give_up(mux, session, item, text, replies)
        return actions + ([ToSession(session.sid, replies)] if replies else [])
    except Exception as again:
        mux.stats["internal_errors"] += 1
        return [*actions, Log(f"session {session.sid}: internal error answering it: {describe(again)}")]


def _give_up(mux: Mux, session: Session, item: object, text: str, batch: list[Message] | None = None) -> list[Action]:
    """The answer `item` is owed (into `batch` when it came in one); what it started is abandoned."""
    actions: list[Action] = []
    try:
        jsonrpc.check(item)
    except Invalid as bad:
        reply = bad.reply
    else:
        assert isinstance(item, dict)
        if not jsonrpc.is_request(item):
            return []
        key = id_key(item["id"])
        backend_id = session.inflight.get(key)
        actions = mux.requests.abandon(session, backend_id, text) if backend_id is not None else []
        mux.queue.unqueue(session, key)
        mux.handshake.forget(session, item["id"])
        reply = jsonrpc.error(item["id"], jsonrpc.INTERNAL_ERROR, text)
    mux.stats["errors"] += 1
    if batch is None:
        return [*actions, ToSession(session.sid, reply)]
    batch.append(reply)
    return actions


def backend_line_failed(mux: Mux, message: Message, exc: Exception) -> list[Action]:
    """Handling a backend line raised: it is dropped; whoever waited on it gets an error instead."""
    mux.stats["internal_errors"] += 1
    mux.stats["dropped"] += 1
    text = f"mcpsingleton: internal error handling the backend's message: {describe(exc)}"
    actions: list[Action] = [Log(f"backend: {text}; dropped")]
    request_id = message.get("id")
    try:
        if "method" in message and jsonrpc.valid_id(request_id):
            actions.append(ToBackend(jsonrpc.error(request_id, jsonrpc.INTERNAL_ERROR, text)))
        elif "method" not in message and type(request_id) is int:
            actions += mux.requests.fail(request_id, text)
    except Exception as again:
        mux.stats["internal_errors"] += 1
        actions.append(Log(f"backend: internal error failing request {request_id!r}: {describe(again)}"))
    return actions


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
