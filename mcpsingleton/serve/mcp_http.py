"""`/mcp/NAME`: the known servers over MCP Streamable HTTP, each HTTP session a session of the shared backend.

The official SDK's server transport (`StreamableHTTPServerTransport`) speaks HTTP: `Mcp-Session-Id`, the
POST/GET/DELETE rules, SSE streams, resumability (`Last-Event-ID`, from `RecentEvents`), the idle timeout.
We put no MCP server behind it: `Relay` passes each client message, re-encoded as one line, to the session's
broker (`http_sessions.BrokerSession`), and each line the broker writes back to the transport, which sends a
reply on the POST that carried its request. Server→client messages go where they belong: progress to the
stream of the request that asked for it; others to the newest request still open on this session (a sampling
or elicitation request, a log line, during a tool call), else to the session's GET stream.

No leak: a session with no request in flight and no open stream for the TTL is ended (the transport's
idle timeout), and ending it detaches it from its broker; every map here forgets it then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import deque
from http import HTTPStatus
from typing import Any

import anyio
from mcp.server.streamable_http import (
    MCP_SESSION_ID_HEADER,
    EventCallback,
    EventId,
    EventMessage,
    EventStore,
    StreamableHTTPServerTransport,
    StreamId,
)
from mcp.server.transport_security import RequestBodyLimitMiddleware
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import (
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    jsonrpc_message_adapter,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from ..common.errors import SetupError
from . import stateless
from .http_sessions import BrokerSession, Target
from .servers import Servers

log = logging.getLogger("mcpsingleton.serve")

DEFAULT_TTL = 30 * 60.0
MAX_SESSIONS = 10_000
EVENTS_KEPT = 128
"""Server→client events a session keeps for a client that reconnects with Last-Event-ID."""
MAX_BODY = 64 * 1024 * 1024
"""A larger request body is refused (413): the most a stdio session may write in one line, too."""
MAX_QUEUED = 1024
"""Lines from the broker waiting for the transport; above it the broker's output is not read (backpressure)."""


class RecentEvents(EventStore):
    """The last EVENTS_KEPT events of one session: what a client that lost a stream may ask for again."""

    def __init__(self) -> None:
        self.events: deque[tuple[EventId, StreamId, JSONRPCMessage | None]] = deque(maxlen=EVENTS_KEPT)
        self.count = 0

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        self.count += 1
        event_id = str(self.count)
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        stream = next((stream for event, stream, _ in self.events if event == last_event_id), None)
        if stream is None:
            return None
        later = False
        for event, on_stream, message in list(self.events):
            if later and on_stream == stream and message is not None:
                await send_callback(EventMessage(message, event))
            later = later or event == last_event_id
        return stream


class Relay:
    """One HTTP session: the SDK's transport on the client's side, a BrokerSession on the backend's."""

    def __init__(self, server: str, target: Target, ttl: float) -> None:
        self.server = server
        self.transport = StreamableHTTPServerTransport(uuid.uuid4().hex, event_store=RecentEvents(), idle_timeout=ttl)
        self.broker = BrokerSession(target, self._from_broker, self._broker_ended)
        self.open_requests: dict[Any, None] = {}  # ids of the client's requests not answered yet, oldest first
        self.progress_of: dict[Any, Any] = {}  # progress token → the request that set it
        self.queued: deque[bytes] = deque()
        self.arrived = asyncio.Event()
        self.scope = anyio.CancelScope()

    @property
    def session_id(self) -> str:
        assert self.transport.mcp_session_id is not None
        return self.transport.mcp_session_id

    async def run(self, started: asyncio.Event) -> None:
        """Relay until DELETE, the TTL, or the broker ending the session; then forget it everywhere."""
        try:
            async with self.transport.connect() as (from_client, to_client):
                started.set()
                idle = self.transport.idle_scope or anyio.CancelScope()
                try:
                    with self.scope, idle:
                        async with anyio.create_task_group() as tasks:
                            tasks.start_soon(self._to_client, to_client)
                            with contextlib.suppress(anyio.ClosedResourceError):  # DELETE closes it
                                async for item in from_client:
                                    if isinstance(item, SessionMessage):
                                        self._to_broker(item.message)
                            tasks.cancel_scope.cancel()
                    if idle.cancelled_caught:
                        log.info("%s: HTTP session %s idle for its TTL; ended", self.server, self.session_id)
                finally:
                    with anyio.CancelScope(shield=True):
                        self.broker.end("the HTTP session ended")
                        if not self.transport.is_terminated:
                            await self.transport.terminate()
        finally:
            started.set()

    def _to_broker(self, message: JSONRPCMessage) -> None:
        if isinstance(message, JSONRPCRequest):
            self.open_requests[message.id] = None
            token = _progress_token(message.params)
            if token is not None:
                self.progress_of[token] = message.id
        elif isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
            self._forget((message.params or {}).get("requestId"))  # no reply will come for it
        self.broker.send(message.model_dump_json(by_alias=True, exclude_unset=True).encode())

    def _from_broker(self, line: bytes) -> None:
        self.queued.append(line)
        self.arrived.set()
        if len(self.queued) >= MAX_QUEUED:
            self.broker.pause(True)

    async def _to_client(self, to_client: Any) -> None:
        while True:
            await self.arrived.wait()
            self.arrived.clear()
            while self.queued:
                line = self.queued.popleft()
                if len(self.queued) < MAX_QUEUED // 2:
                    self.broker.pause(False)
                try:
                    message = jsonrpc_message_adapter.validate_json(line, by_name=False)
                except ValidationError:
                    log.warning("%s: a line from the server is not JSON-RPC; dropped", self.server)
                    continue
                metadata = ServerMessageMetadata(related_request_id=self._related_request(message))
                await to_client.send(SessionMessage(message, metadata=metadata))

    def _related_request(self, message: JSONRPCMessage) -> Any:
        """Which open request's stream a server→client message goes on (None: the GET stream)."""
        if isinstance(message, JSONRPCResponse | JSONRPCError):
            self._forget(message.id)
            return None  # the transport sends a reply on its request's own stream
        if isinstance(message, JSONRPCNotification) and message.method == "notifications/progress":
            owner = self.progress_of.get(_progress_token(message.params, under_meta=False))
            if owner is not None:
                return owner
        return next(reversed(self.open_requests), None)

    def _forget(self, request_id: Any) -> None:
        """A request answered or cancelled: nothing more goes on its stream."""
        if isinstance(request_id, str | int) and request_id in self.open_requests:  # (a client's value: any JSON)
            del self.open_requests[request_id]
            self.progress_of = {t: r for t, r in self.progress_of.items() if r != request_id}

    def _broker_ended(self, why: str) -> None:
        if not self.scope.cancel_called:
            log.info("%s: HTTP session %s: %s", self.server, self.session_id, why)
            self.scope.cancel()


class McpEndpoint:
    """The ASGI app behind `/mcp/{name}`: finds or opens the HTTP session and lets its transport answer."""

    def __init__(self, servers: Servers | None = None, ttl: float = DEFAULT_TTL, max_sessions: int = MAX_SESSIONS):
        self.servers = servers or Servers()
        self.ttl = ttl
        self.max_sessions = max_sessions
        self.sessions: dict[str, Relay] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def routes(self) -> list[Route]:
        endpoint = RequestBodyLimitMiddleware(self, MAX_BODY)
        return [Route("/mcp/{name}", endpoint=endpoint, methods=["GET", "POST", "DELETE"])]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope["path_params"]["name"]
        session_id = _header(scope, MCP_SESSION_ID_HEADER)
        if session_id is not None:
            relay = self.sessions.get(session_id)
            if relay is None or relay.server != name:
                await stateless.error_response(None, "Session not found", HTTPStatus.NOT_FOUND)(scope, receive, send)
                return
            await relay.transport.handle_request(scope, receive, send)
            if relay.transport.is_terminated:  # DELETE: its id answers 404 from now on
                self.sessions.pop(session_id, None)
            return
        if scope["method"] != "POST":
            refusal = stateless.error_response(None, "Bad Request: Missing session ID", HTTPStatus.BAD_REQUEST)
            await refusal(scope, receive, send)
            return
        body = await _body(receive)
        version = _header(scope, MCP_PROTOCOL_VERSION_HEADER)
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            await stateless.answer(self.servers.get(name), name, body, scope, receive, send)
        elif _method(body) == "initialize":
            await self._open(name, scope, _replaying(body, receive), send)
        else:
            refusal = stateless.error_response(None, "Bad Request: Missing session ID", HTTPStatus.BAD_REQUEST)
            await refusal(scope, receive, send)

    async def _open(self, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        """A POST without a session: a new session of server `name`, attached before its initialize is read."""
        target = self.servers.get(name)
        if target is None:
            reason = f"mcpsingleton: no server named {name!r}; name it in config.toml or wrap a client config"
            await stateless.error_response(None, reason, HTTPStatus.NOT_FOUND)(scope, receive, send)
            return
        if len(self.sessions) >= self.max_sessions:
            refusal = stateless.error_response(None, "Too many open sessions", HTTPStatus.SERVICE_UNAVAILABLE)
            await refusal(scope, receive, send)
            return
        relay = Relay(name, target, self.ttl)
        try:
            await relay.broker.open()
        except SetupError as exc:
            await stateless.error_response(None, f"mcpsingleton: {exc}", HTTPStatus.BAD_GATEWAY)(scope, receive, send)
            return
        self.sessions[relay.session_id] = relay
        started = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._serve(relay, started))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        await started.wait()
        status = await _status_of(relay.transport.handle_request, scope, receive, send)
        if status is None or status >= 400:
            relay.scope.cancel()  # no session was established: detach at once

    async def _serve(self, relay: Relay, started: asyncio.Event) -> None:
        try:
            await relay.run(started)
        except Exception:
            log.exception("%s: HTTP session %s failed", relay.server, relay.session_id)
        finally:
            self.sessions.pop(relay.session_id, None)

    async def close(self) -> None:
        """serve is stopping: end every session (each detaches from its broker)."""
        for relay in list(self.sessions.values()):
            relay.scope.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=5)


def _progress_token(params: Any, under_meta: bool = True) -> str | int | None:
    """A request's `_meta.progressToken` (a notification's `progressToken`), when it is one: a string or an integer."""
    found: Any = params if isinstance(params, dict) else {}
    if under_meta:
        found = found.get("_meta")
    token = found.get("progressToken") if isinstance(found, dict) else None
    return token if isinstance(token, str | int) and not isinstance(token, bool) else None


async def _body(receive: Receive) -> bytes:
    """The request's body (serve's Guard lets only token holders this far; the SDK caps what it parses)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """`receive` for the transport, which reads the body again: the body first, then what the client does."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _method(body: bytes) -> str | None:
    try:
        message = json.loads(body)
    except ValueError:
        return None
    return message.get("method") if isinstance(message, dict) else None


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.lower().encode("latin-1")
    return next((value.decode("latin-1") for key, value in scope["headers"] if key == wanted), None)


async def _status_of(app: Any, scope: Scope, receive: Receive, send: Send) -> int | None:
    """Run `app` and return the HTTP status it answered with (None when it answered nothing)."""
    status: list[int] = []

    async def watching(message: Message) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        await send(message)

    await app(scope, receive, watching)
    return status[0] if status else None
