"""Random worlds for the sans-IO mux (hypothesis): JSON values, messages and steps from sessions and the
backend across eras, and `World`, which drives a `Harness` with them and counts what each session is owed and
what it received. Used by the fuzz suite and the fast path's differential test."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import strategies as st
from mux_harness import Harness, init_result, is_request

from mcpsingleton.mux import Action, ToSession, eras, jsonrpc
from mcpsingleton.mux.backend_state import DOWN, SPAWNING
from mcpsingleton.mux.jsonrpc import Invalid, Message, id_key

Key = tuple[bool, Any]

SESSION_METHODS = [
    "initialize",
    "ping",
    "server/discover",
    "tools/call",
    "tools/list",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
    "subscriptions/listen",
    "tasks/get",
    "tasks/result",
    "tasks/cancel",
    "tasks/list",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/roots/list_changed",
    "x/y",
]
BACKEND_METHODS = [
    "ping",
    "roots/list",
    "sampling/createMessage",
    "elicitation/create",
    "notifications/progress",
    "notifications/message",
    "notifications/resources/updated",
    "notifications/cancelled",
    "notifications/tasks/status",
    "notifications/elicitation/complete",
    "notifications/tools/list_changed",
    "notifications/resources/list_changed",
    "x/y",
]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2, 40), st.floats(allow_nan=False), st.text(max_size=4))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
ids = st.one_of(st.integers(0, 6), st.sampled_from(["1", "a", ""]), values)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, values)


envelope = st.fixed_dictionaries(
    {eras.PROTOCOL_VERSION: maybe(st.just("2026-07-28"))},
    optional={
        eras.CLIENT_INFO: maybe(st.fixed_dictionaries({"name": maybe(st.just("m"))})),
        eras.CLIENT_CAPABILITIES: values,
        eras.LOG_LEVEL: maybe(st.sampled_from(["debug", "error"])),
        "progressToken": ids,
    },
)
capabilities = maybe(
    st.fixed_dictionaries(
        {},
        optional={
            "roots": maybe(st.just({})),
            "sampling": maybe(st.just({})),
            "elicitation": maybe(st.just({"form": {}, "url": {}})),
            "logging": values,
            "resources": maybe(st.fixed_dictionaries({}, optional={"subscribe": values, "listChanged": values})),
            "tools": maybe(st.just({"listChanged": True})),
        },
    )
)
params = st.one_of(
    values,
    st.fixed_dictionaries(
        {"_meta": envelope},
        optional={"name": values, "level": maybe(st.sampled_from(["debug", "error"])), "notifications": values},
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "_meta": maybe(envelope),
            "uri": maybe(st.sampled_from(["file:///a", "file:///a/b"])),
            "level": maybe(st.sampled_from(["debug", "warning", "error"])),
            "taskId": maybe(st.just("t1")),
            "requestId": ids,
            "progressToken": ids,
            "notifications": maybe(
                st.fixed_dictionaries(
                    {}, optional={"toolsListChanged": values, "resourceSubscriptions": maybe(st.just(["file:///a"]))}
                )
            ),
            "protocolVersion": maybe(st.sampled_from(["2025-03-26", "2025-11-25"])),
            "capabilities": capabilities,
            "clientInfo": maybe(st.just({"name": "c", "version": "1"})),
            "mode": maybe(st.just("url")),
            "elicitationId": maybe(st.just("e1")),
            "status": maybe(st.just("completed")),
        },
    ),
)


RESULT_FIELDS = {
    "_meta": values,
    "task": maybe(st.fixed_dictionaries({"taskId": maybe(st.just("t1"))})),
    "tasks": maybe(st.just([{"taskId": "t1"}, 5])),
    "roots": maybe(st.just([{"uri": "file:///r"}, None])),
    "resultType": values,
    "capabilities": capabilities,
}
results = st.one_of(
    st.fixed_dictionaries({}, optional=RESULT_FIELDS),
    *(
        st.fixed_dictionaries({name: field}, optional={k: v for k, v in RESULT_FIELDS.items() if k != name})
        for name, field in RESULT_FIELDS.items()
    ),
)

V2 = st.just("2.0")


def messages(methods: list[str]) -> st.SearchStrategy[Any]:
    """Mostly well-formed envelopes (requests, notifications, responses) with anything inside; some garbage."""
    method = st.one_of(st.sampled_from(methods), st.sampled_from(methods), values)
    valid_id = st.one_of(st.integers(0, 6), st.sampled_from(["1", "a"]))
    result = maybe(results)
    return st.one_of(
        st.fixed_dictionaries({"jsonrpc": V2, "id": valid_id, "method": method}, optional={"params": params}),
        st.fixed_dictionaries({"jsonrpc": V2, "id": valid_id, "method": method, "params": params}),
        st.fixed_dictionaries({"jsonrpc": V2, "method": method}, optional={"params": params}),
        st.fixed_dictionaries({"jsonrpc": V2, "id": valid_id}, optional={"result": result, "error": values}),
        st.fixed_dictionaries(
            {"jsonrpc": st.sampled_from(["2.0", "1.0"])},
            optional={"id": ids, "method": method, "params": params, "result": result, "error": values},
        ),
    )


session_lines = st.one_of(messages(SESSION_METHODS), st.lists(messages(SESSION_METHODS), max_size=3), values)
backend_lines = st.one_of(messages(BACKEND_METHODS), values)
replies = st.one_of(
    st.fixed_dictionaries({"result": maybe(results)}),
    st.fixed_dictionaries({"result": results}),
    st.fixed_dictionaries({"error": values}),
    st.fixed_dictionaries({"result": st.just(init_result({"resources": True, "logging": None}))}),
    st.fixed_dictionaries({"result": st.just({**init_result(), "capabilities": None})}),
)
sends = st.tuples(st.just("send"), st.integers(0, 3), session_lines)
requests = st.tuples(
    st.just("request"),
    st.integers(0, 3),
    st.tuples(st.sampled_from(SESSION_METHODS[:13]), st.one_of(params, st.just({})), st.booleans(), maybe(envelope)),
)
answers = st.tuples(st.just("answer"), st.integers(0, 9), replies)
WEIGHTED_OPS = (
    (requests, 30),
    (sends, 15),
    (answers, 20),
    (st.tuples(st.just("backend"), st.integers(0, 9), backend_lines), 10),
    (st.tuples(st.just("open"), st.integers(0, 3), capabilities), 4),
    (st.tuples(st.just("close"), st.integers(0, 3), st.none()), 4),
    (st.tuples(st.just("start"), st.integers(0, 0), st.none()), 6),
    (st.tuples(st.just("exit"), st.integers(0, 0), st.none()), 4),
    (st.tuples(st.just("raw"), st.integers(0, 3), st.sampled_from([b"[" * 3000, b"\xff\xfe", b"{", b"[]"])), 3),
)
ops = st.sampled_from([strategy for strategy, weight in WEIGHTED_OPS for _ in range(weight)]).flatmap(lambda op: op)


def line_of(value: Any) -> bytes:
    """`value` as the broker's reader hands a peer's line to the mux: compact JSON, without its newline."""
    return jsonrpc.encode(value)[:-1]


class World:
    """Drives the mux, counting what each session is owed and what it received."""

    def __init__(self, answers: list[dict[str, Any]], fast_path_from: float = float("inf")) -> None:
        self.h = Harness(auto_start=False, auto_initialize=False, fast_path_from=fast_path_from)
        self.answers = answers  # how the backend answers, in turn, what it is sent (initialize: properly)
        self.open: list[int] = []
        self.next_sid = 1
        self.owed: dict[int, Counter[Key]] = {}
        self.got: dict[int, Counter[Key]] = {}
        self.exempt: dict[int, set[Key]] = {}  # cancelled or listen-stream requests: answered at most once
        self.answered: set[int] = set()  # backend ids the fake backend has answered
        self.serial = 100

    def perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ToSession) and action.session in self.got:
                for reply in action.message if isinstance(action.message, list) else [action.message]:
                    if "method" not in reply and jsonrpc.valid_id(reply.get("id")):
                        self.got[action.session][id_key(reply["id"])] += 1
        self.h.perform(actions)

    def sid(self, index: int) -> int | None:
        return self.open[index % len(self.open)] if self.open else None

    def owe(self, sid: int, item: object) -> None:
        """What a session is owed for one message it sent (a dict), or for one item of a batch."""
        try:
            jsonrpc.check(item)
        except Invalid as bad:
            if bad.reply["id"] is not None:
                self.owed[sid][id_key(bad.reply["id"])] += 1
            return
        assert isinstance(item, dict)
        message_params = jsonrpc.params_of(item)
        if jsonrpc.is_request(item):
            self.owed[sid][id_key(item["id"])] += 1
            if item["method"] == "subscriptions/listen":
                self.exempt[sid].add(id_key(item["id"]))
        elif item.get("method") == "notifications/cancelled" and jsonrpc.valid_id(message_params.get("requestId")):
            self.exempt[sid].add(id_key(message_params["requestId"]))

    def send(self, index: int, value: Any) -> None:
        sid = self.sid(index)
        if sid is None:
            return
        if isinstance(value, list):
            for item in value:
                self.owe(sid, item)
        elif isinstance(value, dict):
            self.owe(sid, value)
        self.perform(self.h.mux.from_session(sid, line_of(value)))

    def request(self, index: int, method: str, body: Any, stateless: bool, meta: Any) -> None:
        """A well-formed request under a fresh id, with anything in its params (stateless-era fields when stateless)."""
        self.serial += 1
        if stateless:
            body = {**(body if isinstance(body, dict) else {}), "_meta": meta}
            if isinstance(meta, dict):
                body["_meta"] = {**meta, eras.PROTOCOL_VERSION: "2026-07-28"}
        request_id = self.serial if self.serial % 2 else str(self.serial)
        self.send(index, {"jsonrpc": "2.0", "id": request_id, "method": method, "params": body})

    def open_session(self, capabilities: Any) -> None:
        sid, self.next_sid = self.next_sid, self.next_sid + 1
        self.open.append(sid)
        self.owed[sid], self.got[sid], self.exempt[sid] = Counter(), Counter(), set()
        self.perform(self.h.mux.open_session(sid))
        handshake = {"capabilities": capabilities, "clientInfo": {"name": f"c{sid}", "version": "1"}}
        self.send(len(self.open) - 1, jsonrpc.request(0, "initialize", handshake))
        self.send(len(self.open) - 1, jsonrpc.notification("notifications/initialized"))

    def close(self, index: int) -> None:
        sid = self.sid(index)
        if sid is not None:
            self.open.remove(sid)
            del self.owed[sid], self.got[sid], self.exempt[sid]
            self.perform(self.h.mux.close_session(sid))

    def unanswered(self) -> list[Message]:
        return [m for m in self.h.backend if is_request(m) and type(m["id"]) is int and m["id"] not in self.answered]

    def answer(self, index: int, reply: dict[str, Any]) -> None:
        waiting = self.unanswered()
        if waiting:
            request = waiting[index % len(waiting)]
            self.answered.add(request["id"])
            self.perform(self.h.mux.from_backend(line_of({"jsonrpc": "2.0", "id": request["id"], **reply})))

    def start(self) -> None:
        if self.h.mux.backend.state in (DOWN, SPAWNING):
            self.perform(self.h.mux.backend_started())

    def run(self, op: tuple[str, int, Any]) -> None:
        name, index, value = op
        if name == "send":
            self.send(index, value)
        elif name == "request":
            self.request(index, *value)
        elif name == "backend":
            self.perform(self.h.mux.from_backend(line_of(value)))
        elif name == "answer":
            self.answer(index, value)
        elif name == "open":
            self.open_session(value)
        elif name == "close":
            self.close(index)
        elif name == "start":
            self.start()
        elif name == "exit":
            self.perform(self.h.mux.backend_exited("the backend exited"))
        elif name == "raw" and self.open:
            self.perform(self.h.mux.from_session(self.open[index % len(self.open)], value))

    def drain(self) -> None:
        """The backend starts if asked, answers everything it was sent (initialize properly), then exits."""
        for _ in range(20):
            if not self.drain_once():
                break
        self.perform(self.h.mux.backend_exited("the backend exited"))

    def drain_once(self) -> bool:
        """Start the backend if asked; answer what it was sent (initialize properly); whether there was any."""
        if self.h.mux.backend.state == SPAWNING:
            self.start()
        waiting = self.unanswered()
        for n, request in enumerate(waiting):
            proper = request["method"] == "initialize"
            reply = {"result": init_result()} if proper else self.answers[n % len(self.answers)]
            self.answered.add(request["id"])
            self.perform(self.h.mux.from_backend(line_of({"jsonrpc": "2.0", "id": request["id"], **reply})))
        return bool(waiting)
