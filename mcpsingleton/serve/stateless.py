"""`/mcp/NAME` for the 2026-07-28 era: a request with no session, answered by a session of its own.

A modern request carries everything its session would have said (protocol version, client info,
capabilities) in `params._meta`, and the broker's mux already serves such sessions (`mux/eras.py`:
`server/discover`, translation onto the shared handshake-era backend, `subscriptions/listen`). So each one
attaches a session for its own duration, exactly as an HTTP session does (`BrokerSession`), writes its one
line, and passes back what comes: as Server-Sent Events when the client takes them (notifications first,
e.g. progress or a listen stream's updates, then the response, which ends it), else the response alone as
JSON. A server→client request cannot be answered on this wire: it gets an error at once (the spec's
stateless era has no back channel here). The session ends with the response, or when the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ..common.errors import SetupError
from .http_sessions import BrokerSession, Target

INVALID_REQUEST = -32600
PARSE_ERROR = -32700
NO_BACK_CHANNEL = -32601
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache, no-transform")]


async def answer(target: Target | None, name: str, body: bytes, scope: Scope, receive: Receive, send: Send) -> None:
    message = _parse(body)
    if isinstance(message, Response):
        await message(scope, receive, send)
    elif "id" not in message:  # a notification: no session to tell
        await Response(status_code=HTTPStatus.ACCEPTED)(scope, receive, send)
    elif target is None:
        reason = f"mcpsingleton: no server named {name!r}; name it in config.toml or wrap a client config"
        await error_response(message["id"], reason, HTTPStatus.NOT_FOUND)(scope, receive, send)
    else:
        await _relay(target, message, _accepts_events(scope), receive, send, scope)


def _parse(body: bytes) -> dict[str, Any] | Response:
    try:
        message = json.loads(body)
    except ValueError:
        return error_response(None, "Parse error", HTTPStatus.BAD_REQUEST, PARSE_ERROR)
    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
        return error_response(None, "Invalid Request: one JSON-RPC request or notification", HTTPStatus.BAD_REQUEST)
    return message


async def _relay(
    target: Target, message: dict[str, Any], events: bool, receive: Receive, send: Send, scope: Scope
) -> None:
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()
    broker = BrokerSession(target, lines.put_nowait, lambda _why: lines.put_nowait(None))
    try:
        await broker.open()
    except SetupError as exc:
        await error_response(message["id"], f"mcpsingleton: {exc}", HTTPStatus.BAD_GATEWAY)(scope, receive, send)
        return
    try:
        broker.send(json.dumps(message, separators=(",", ":")).encode())
        if events:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        async with asyncio.TaskGroup() as tasks:
            relaying = tasks.create_task(_until_answered(broker, lines, events, send))
            watching = tasks.create_task(_until_gone(receive))
            relaying.add_done_callback(lambda _: watching.cancel())
            watching.add_done_callback(lambda _: relaying.cancel())
        if not events and relaying.done() and not relaying.cancelled():
            await JSONResponse(relaying.result())(scope, receive, send)
    finally:
        broker.end("the request was answered")


async def _until_answered(broker: BrokerSession, lines: asyncio.Queue[bytes | None], events: bool, send: Send) -> Any:
    """Pass on what the session receives until its response (the reply as JSON when not streaming)."""
    while (line := await lines.get()) is not None:
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if not isinstance(message, dict):
                continue
            if "method" in message and "id" in message:  # the server asks: nobody here can answer
                reason = "mcpsingleton: this stateless HTTP request cannot answer server requests"
                broker.send(json.dumps({"jsonrpc": "2.0", "id": message["id"], "error": _error_data(reason)}).encode())
                continue
            answered = "method" not in message
            if events:
                event = b"event: message\ndata: " + line + b"\n\n"
                await send({"type": "http.response.body", "body": event, "more_body": not answered})
            if answered:
                return message
    reason = "mcpsingleton: the server went away before answering"
    failed = {"jsonrpc": "2.0", "id": None, "error": _error_data(reason)}
    if events:
        await send({"type": "http.response.body", "body": b"event: message\ndata: " + json.dumps(failed).encode()})
    return failed


async def _until_gone(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _accepts_events(scope: Scope) -> bool:
    accept = next((value for key, value in scope["headers"] if key == b"accept"), b"").decode("latin-1")
    return "text/event-stream" in accept


def _error_data(message: str, code: int = NO_BACK_CHANNEL) -> dict[str, Any]:
    return {"code": code, "message": message}


def error_response(request_id: Any, message: str, status: HTTPStatus, code: int = INVALID_REQUEST) -> JSONResponse:
    """A JSON-RPC error as the transport answers a request it cannot take (`request_id` None: none read)."""
    return JSONResponse({"jsonrpc": "2.0", "id": request_id, "error": _error_data(message, code)}, status_code=status)
