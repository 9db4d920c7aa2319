"""Test harness for the sans-IO multiplexer: sessions, a scripted backend, and every action recorded."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from mcpsingleton.mux import Action, Log, Mux, StartBackend, StoreDiscovery, ToBackend, ToSession, eras, jsonrpc
from mcpsingleton.mux.fast_path import FAST_PATH_FROM
from mcpsingleton.mux.jsonrpc import Id, Message

STATELESS = {eras.PROTOCOL_VERSION: "2026-07-28", eras.CLIENT_INFO: {"name": "stateless", "version": "1"}}
"""The `_meta` of a request in the stateless era (2026-07-28): no handshake, the era named in each request."""

SERVER_CAPABILITIES: dict[str, Any] = {
    "logging": {},
    "resources": {"subscribe": True, "listChanged": True},
    "tools": {"listChanged": True},
    "tasks": {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}},
}
VERSION = "2025-11-25"


def init_result(capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the fake backend answers to `initialize`."""
    caps = SERVER_CAPABILITIES if capabilities is None else capabilities
    return {"protocolVersion": VERSION, "capabilities": caps, "serverInfo": {"name": "fake", "version": "1"}}


def encode(message: object) -> bytes:
    """One line as a peer would write it and the broker's reader hands it on, without its newline
    (`json.dumps` keeps non-dict payloads possible)."""
    return json.dumps(message).encode()


def wire(message: Any) -> Any:
    """What the receiving end decodes, after the broker encoded `message` with `jsonrpc.encode`."""
    return json.loads(jsonrpc.encode(message))


def is_request(message: object) -> bool:
    return isinstance(message, dict) and "method" in message and "id" in message


def is_notification(message: object) -> bool:
    return isinstance(message, dict) and "method" in message and "id" not in message


def is_response(message: object) -> bool:
    return isinstance(message, dict) and "method" not in message


class Harness:
    """Drives a `Mux` like the broker does and records what each destination receives.

    By default the backend starts as soon as the mux asks (`auto_start`) and answers the broker's
    `initialize` at once (`auto_initialize`); switch either off to hold the backend in that state.
    """

    def __init__(
        self,
        *,
        auto_start: bool = True,
        auto_initialize: bool = True,
        server_capabilities: dict[str, Any] | None = None,
        fast_path_from: float = FAST_PATH_FROM,
        discovery: dict[str, Any] | None = None,
        lazy: bool = False,
    ) -> None:
        self.mux = Mux("mcpsingleton", "test", fast_path_from, discovery=discovery, lazy=lazy)
        self.auto_start = auto_start
        self.auto_initialize = auto_initialize
        self.init_result = init_result(server_capabilities)
        self.backend: list[Message] = []
        self.inbox: defaultdict[int, list[Any]] = defaultdict(list)
        self.logs: list[str] = []
        self.starts = 0
        self.stored: list[dict[str, Any] | None] = []  # each StoreDiscovery's entry
        self.last: list[Action] = []

    # ---- driving the mux --------------------------------------------------------------------

    def perform(self, actions: list[Action]) -> list[Action]:
        """Record `actions` (and whatever the automatic backend answers); return them."""
        self.last = list(actions)
        for action in actions:
            if isinstance(action, ToBackend):
                self.backend.append(wire(action.message))
                if self.auto_initialize and action.message.get("method") == "initialize":
                    self.answer(action.message, self.init_result)
            elif isinstance(action, ToSession):
                self.inbox[action.session].append(wire(action.message))
            elif isinstance(action, Log):
                self.logs.append(action.text)
            elif isinstance(action, StoreDiscovery):
                self.stored.append(action.entry)
            elif isinstance(action, StartBackend):
                self.starts += 1
                if self.auto_start:
                    self.start()
        return actions

    def start(self) -> list[Action]:
        return self.perform(self.mux.backend_started())

    def crash(self, reason: str = "the backend exited with status 1") -> list[Action]:
        return self.perform(self.mux.backend_exited(reason))

    def send(self, sid: int, message: object) -> list[Action]:
        """A session writes one line: a dict/list is JSON-encoded, bytes are sent raw."""
        line = message if isinstance(message, bytes) else encode(message)
        return self.perform(self.mux.from_session(sid, line))

    def request(self, sid: int, request_id: Id, method: str, params: dict[str, Any] | None = None) -> list[Action]:
        return self.send(sid, jsonrpc.request(request_id, method, params))

    def notify(self, sid: int, method: str, params: dict[str, Any] | None = None) -> list[Action]:
        return self.send(sid, jsonrpc.notification(method, params))

    def from_backend(self, message: object) -> list[Action]:
        line = message if isinstance(message, bytes) else encode(message)
        return self.perform(self.mux.from_backend(line))

    def answer(self, request: Message, result: dict[str, Any] | None = None, error: int | None = None) -> list[Action]:
        """The backend answers one request it received (a result, or an error with code `error`)."""
        reply = (
            jsonrpc.error(request["id"], error, "backend failed")
            if error is not None
            else jsonrpc.result(request["id"], {} if result is None else result)
        )
        return self.from_backend(reply)

    def reply(self, sid: int, request: Message, result: dict[str, Any] | None = None) -> list[Action]:
        """A session answers a server→client request it received."""
        return self.send(sid, jsonrpc.result(request["id"], {} if result is None else result))

    # ---- sessions ---------------------------------------------------------------------------

    def open(
        self,
        sid: int,
        *,
        capabilities: dict[str, Any] | None = None,
        version: str = VERSION,
        client: str | None = None,
        init_id: Id = 0,
        initialized: bool = True,
    ) -> None:
        """Open a session and run its handshake (initialize + notifications/initialized)."""
        self.perform(self.mux.open_session(sid))
        params = {
            "protocolVersion": version,
            "capabilities": capabilities or {},
            "clientInfo": {"name": client or f"client-{sid}", "version": "1"},
        }
        self.request(sid, init_id, "initialize", params)
        if initialized:
            self.notify(sid, "notifications/initialized")

    def close(self, sid: int) -> list[Action]:
        return self.perform(self.mux.close_session(sid))

    def clear(self) -> None:
        """Forget everything recorded so far (the mux state stays)."""
        self.backend.clear()
        self.inbox.clear()
        self.logs.clear()

    # ---- reading what was recorded ----------------------------------------------------------

    def take(self, sid: int) -> list[Any]:
        """Everything session `sid` received since the last take, then forget it."""
        return self.inbox.pop(sid, [])

    def replies(self, sid: int) -> list[Message]:
        return [m for m in self.inbox[sid] if is_response(m)]

    def only_reply(self, sid: int) -> Message:
        """The one response session `sid` received (asserted)."""
        found = self.replies(sid)
        assert len(found) == 1, found
        return found[0]

    def requests_to(self, sid: int, method: str | None = None) -> list[Message]:
        return [m for m in self.inbox[sid] if is_request(m) and method in (None, m["method"])]

    def notes_to(self, sid: int, method: str | None = None) -> list[Message]:
        return [m for m in self.inbox[sid] if is_notification(m) and method in (None, m["method"])]

    def backend_requests(self, method: str | None = None) -> list[Message]:
        return [m for m in self.backend if is_request(m) and method in (None, m["method"])]

    def backend_notes(self, method: str | None = None) -> list[Message]:
        return [m for m in self.backend if is_notification(m) and method in (None, m["method"])]

    def backend_responses(self) -> list[Message]:
        return [m for m in self.backend if is_response(m)]

    def last_request(self, method: str | None = None) -> Message:
        """The newest request the backend received (with `method`)."""
        found = self.backend_requests(method)
        assert found, f"the backend received no {method or 'request'}"
        return found[-1]


def parked(
    h: Harness, sid: int, capabilities: dict | None = None, initialized: bool = True, version: str = "2025-03-26"
) -> None:
    """Session `sid` opened parked (placement not decided yet), its handshake sent."""
    h.perform(h.mux.open_session(sid, parked=True))
    params = {"protocolVersion": version, "capabilities": capabilities or {}, "clientInfo": {"name": "c"}}
    h.request(sid, 0, "initialize", params)
    if initialized:
        h.notify(sid, "notifications/initialized")


# A key's cached discovery entry (tests of discovery and of idle reclaim), and the backend answering the lists
# the mux asks for on its own.
TOOL_A = {"name": "a", "inputSchema": {"type": "object"}}
TOOL_B = {"name": "b", "inputSchema": {"type": "object"}}
CACHED_INIT = {**init_result(), "serverInfo": {"name": "fake", "version": "1"}, "instructions": "from the cache"}
ENTRY: dict[str, Any] = {
    "initialize": CACHED_INIT,
    "tools/list": {"tools": [TOOL_A]},
    "resources/list": {"resources": []},
}
TOOLS_CHANGED = "notifications/tools/list_changed"


def answer_lists(h: Harness, tools: list[dict[str, Any]], *, next_cursor: str | None = None) -> None:
    """The backend answers the lists the mux asked for on its own: `tools`, and no resources or templates."""
    for request in h.backend_requests():
        method = request["method"]
        if method == "tools/list":
            result: dict[str, Any] = {"tools": tools}
            if next_cursor is not None:
                result["nextCursor"] = next_cursor
            h.answer(request, result)
        elif method == "resources/list":
            h.answer(request, {"resources": []})
        elif method == "resources/templates/list":
            h.answer(request, error=-32601)
