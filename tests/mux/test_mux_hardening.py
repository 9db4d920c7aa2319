"""Hostile and non-conforming input never escapes the mux (issue 10 rows 1-3, 16): the offending line is
answered or dropped, logged with its source and counted, and every other session carries on."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest
from mux_harness import STATELESS, Harness, init_result

from mcpsingleton.mux import ToBackend, eras, jsonrpc
from mcpsingleton.mux.jsonrpc import Message

DEEP = b"[" * 5000 + b"]" * 5000 + b"\n"


def ready(*sids: int, **options: Any) -> Harness:
    h = Harness(**options)
    for sid in sids:
        h.open(sid)
    h.clear()
    return h


def still_served(h: Harness, sid: int) -> None:
    """`sid` gets its own answer through the backend, as if nothing had happened."""
    h.request(sid, "after", "tools/list")
    h.answer(h.last_request("tools/list"), {"tools": []})
    assert h.take(sid)[-1] == {"jsonrpc": "2.0", "id": "after", "result": {"tools": []}}


# ---- rows 1 and 2: nesting deeper than the parser (or the encoder) can take -----------------


def test_deeply_nested_line_from_a_session_is_a_parse_error_for_it_alone() -> None:
    h = ready(1, 2)
    h.send(1, DEEP)
    assert [m["error"]["code"] for m in h.take(1)] == [jsonrpc.PARSE_ERROR]
    assert h.take(2) == [] and h.backend == []
    assert any(line.startswith("session 1: Parse error") for line in h.logs)
    assert h.mux.stats["rejected"] == 1
    still_served(h, 1)
    still_served(h, 2)


def test_deeply_nested_line_from_the_backend_is_dropped_and_logged() -> None:
    h = ready(1, 2)
    h.request(1, 1, "tools/call")
    h.from_backend(DEEP)
    h.from_backend(b'{"jsonrpc":"2.0","method":"notifications/message","params":{"data":%s}}' % DEEP.strip())
    assert h.take(1) == [] and h.take(2) == []
    assert sum("backend wrote an unusable line" in line for line in h.logs) == 2
    assert h.mux.stats["dropped"] == 2
    h.answer(h.last_request("tools/call"), {"content": []})
    assert h.only_reply(1)["id"] == 1
    still_served(h, 2)


def deepest_forwarded(h: Harness) -> tuple[int, Message]:
    """The deepest `tools/call` params the mux still parses at this stack depth, and what it forwards."""
    found: tuple[int, Message] | None = None
    low, high = 100, sys.getrecursionlimit()
    while low <= high:
        depth = (low + high) // 2
        line = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"x":%s}}' % (b"[" * depth + b"]" * depth)
        forwarded = [a.message for a in h.mux.from_session(1, line) if isinstance(a, ToBackend)]
        if forwarded:
            found, low = (depth, forwarded[0]), depth + 1
        else:
            high = depth - 1
    assert found is not None
    return found


def at_stack_depth(frames: int, call: Callable[[], bytes]) -> bytes:
    return at_stack_depth(frames - 1, call) if frames else call()


def test_value_parsed_near_the_recursion_limit_can_be_written_from_a_deeper_stack() -> None:
    """json's parser and encoder both recurse: the broker writes what the mux parsed, from further down."""
    h = ready(1)
    depth, forwarded = deepest_forwarded(h)
    assert depth > 500
    limit = sys.getrecursionlimit()
    line = at_stack_depth(60, lambda: jsonrpc.encode(forwarded))
    assert line.endswith(b"\n") and line.count(b"[") == depth
    assert sys.getrecursionlimit() == limit, "the limit is restored"


# ---- row 3: a backend that does not conform -------------------------------------------------


def test_null_capabilities_then_set_level_is_forwarded() -> None:
    h = Harness(server_capabilities=None)
    h.init_result = {**init_result(), "capabilities": None}
    h.open(1)
    h.clear()
    h.request(1, 1, "logging/setLevel", {"level": "debug"})
    h.answer(h.last_request("logging/setLevel"), error=jsonrpc.METHOD_NOT_FOUND)
    assert h.only_reply(1)["error"]["code"] == jsonrpc.METHOD_NOT_FOUND


@pytest.mark.parametrize("error", ["text", 42, ["a"]])
def test_initialize_answered_with_a_malformed_error_fails_the_waiting_session(error: object) -> None:
    h = Harness(auto_initialize=False)
    h.open(1)
    h.from_backend({"jsonrpc": "2.0", "id": h.last_request("initialize")["id"], "error": error})
    reply = h.only_reply(1)
    assert reply["id"] == 0 and reply["error"]["code"] == jsonrpc.INTERNAL_ERROR
    assert "backend rejected initialize" in reply["error"]["message"]
    assert any("backend rejected initialize" in line for line in h.logs)


def test_listen_with_resources_true_grants_what_can_be_served() -> None:
    h = Harness(server_capabilities={"resources": True, "tools": {"listChanged": True}})
    h.open(1)
    h.perform(h.mux.open_session(2))
    h.clear()
    params = {"notifications": {"toolsListChanged": True, "resourceSubscriptions": ["file:///a"]}, "_meta": STATELESS}
    h.request(2, "L", "subscriptions/listen", params)
    (ack,) = h.notes_to(2, "notifications/subscriptions/acknowledged")
    assert ack["params"]["notifications"] == {"toolsListChanged": True}
    assert h.backend_requests("resources/subscribe") == []


@pytest.mark.parametrize("meta", ["x", 3, ["y"]])
def test_result_with_malformed_meta_reaches_a_stateless_era_session(meta: object) -> None:
    h = ready(1)
    h.perform(h.mux.open_session(2))
    h.request(2, "m", "tools/list", {"_meta": STATELESS})
    h.answer(h.last_request("tools/list"), {"tools": [], "_meta": meta})
    reply = h.only_reply(2)
    assert reply["result"]["resultType"] == "complete"
    assert reply["result"]["_meta"] == {eras.SERVER_INFO: {"name": "fake", "version": "1"}}


@pytest.mark.parametrize("params", [[1, 2], [None]])
def test_notification_with_list_params_is_tolerated(params: list[Any]) -> None:
    h = ready(1)
    h.perform(h.mux.open_session(2))
    h.request(2, "L", "subscriptions/listen", {"notifications": {"toolsListChanged": True}, "_meta": STATELESS})
    h.clear()
    h.from_backend({"jsonrpc": "2.0", "method": "notifications/tools/list_changed", "params": params})
    assert [n["params"] for n in h.notes_to(1)] == [params], "a handshake session gets it as it came"
    assert [n["params"] for n in h.notes_to(2)] == [{"_meta": {eras.SUBSCRIPTION_ID: "L"}}]
    for method in (
        "notifications/progress",
        "notifications/message",
        "notifications/resources/updated",
        "notifications/cancelled",
        "notifications/tasks/status",
        "notifications/elicitation/complete",
    ):
        h.from_backend({"jsonrpc": "2.0", "method": method, "params": params})
    still_served(h, 1)


@pytest.mark.parametrize(
    "body",
    [{"error": "text"}, {"error": {"code": "x", "message": "m"}}, {"error": None}, {"result": 5}, {"result": ["a"]}],
)
def test_malformed_reply_reaches_its_session_as_an_internal_error(body: dict[str, Any]) -> None:
    h = ready(1)
    h.request(1, "q", "tools/call")
    h.from_backend({"jsonrpc": "2.0", "id": h.last_request("tools/call")["id"], **body})
    reply = h.only_reply(1)
    assert reply["id"] == "q" and reply["error"]["code"] == jsonrpc.INTERNAL_ERROR
    assert reply["error"]["message"].startswith("mcpsingleton: the backend answered with a")
    assert any("session 1 gets -32603" in line for line in h.logs)


def test_subscription_answered_with_a_malformed_reply_is_not_held() -> None:
    h = ready(1)
    h.request(1, 1, "resources/subscribe", {"uri": "file:///x"})
    h.from_backend({"jsonrpc": "2.0", "id": h.last_request("resources/subscribe")["id"], "result": "ok"})
    assert h.only_reply(1)["error"]["code"] == jsonrpc.INTERNAL_ERROR
    assert not h.mux.needs_backend()


# ---- the rule: a failure while handling one input stays with that input ------------------------


def failing(h: Harness, table: dict[str, Any], method: str, after: Callable[..., Any] | None = None) -> None:
    """Make the handler of `method` fail (after doing its usual work, when `after` is given)."""

    def boom(*args: Any) -> Any:
        if after is not None:
            after(*args)
        raise ValueError("injected")

    table[method] = boom


def test_a_request_whose_handling_raises_gets_one_internal_error_and_is_abandoned() -> None:
    h = ready(1, 2)
    failing(h, h.mux.session_requests, "tools/call", after=h.mux.requests.forward)
    h.request(1, 5, "tools/call", {"name": "x"})
    reply = h.only_reply(1)
    assert reply["id"] == 5 and reply["error"]["code"] == jsonrpc.INTERNAL_ERROR
    assert "ValueError: injected" in reply["error"]["message"]
    assert h.backend_requests("tools/call") == [], "actions of a failed call are never performed"
    (cancel,) = h.backend_notes("notifications/cancelled")  # what it registered is abandoned
    h.from_backend(jsonrpc.result(cancel["params"]["requestId"], {"late": True}))
    assert len(h.replies(1)) == 1, "a reply under that id must not answer the request a second time"
    assert h.mux.stats["internal_errors"] == 1 and h.mux.stats["rejected"] == 1
    assert any(line.startswith("session 1: mcpsingleton: internal error") for line in h.logs)
    assert not h.mux.busy(1)
    still_served(h, 2)


def test_a_batch_whose_handling_raises_gets_an_error_for_each_request_as_one_array() -> None:
    h = ready(1)
    failing(h, h.mux.session_requests, "tools/call")
    h.send(1, [jsonrpc.request(1, "ping"), jsonrpc.request(2, "tools/call")])
    (array,) = h.take(1)
    assert sorted((m["id"], m["error"]["code"]) for m in array) == [(1, -32603), (2, -32603)]


def test_a_backend_reply_whose_handling_raises_answers_its_asker_with_an_error() -> None:
    h = ready(1, 2)
    h.request(1, "r", "tasks/list")
    failing(h, h.mux.backend_notifications, "notifications/message")

    def raising_filter(*args: Any) -> Message:
        raise KeyError("tasks")

    h.mux.tasks.own_only = raising_filter  # type: ignore[method-assign]
    h.answer(h.last_request("tasks/list"), {"tasks": []})
    reply = h.only_reply(1)
    assert reply["id"] == "r" and reply["error"]["code"] == jsonrpc.INTERNAL_ERROR
    h.from_backend(jsonrpc.notification("notifications/message", {"level": "info"}))
    assert h.mux.stats["internal_errors"] == 2 and h.mux.stats["dropped"] == 2
    assert sum(line.startswith("backend: mcpsingleton: internal error") for line in h.logs) == 2
    assert not h.mux.busy(1)
    still_served(h, 2)


def test_a_backend_request_whose_handling_raises_is_answered_with_an_error() -> None:
    h = ready(1)
    failing(h, h.mux.backend_requests, "roots/list")
    h.from_backend(jsonrpc.request(9, "roots/list"))
    (answer,) = h.backend_responses()
    assert answer["id"] == 9 and answer["error"]["code"] == jsonrpc.INTERNAL_ERROR


# ---- row 16: batch replies found in constant time --------------------------------------------


def lines_run(count: int) -> int:
    """Lines of mux code executed while `count` single-item batches are answered in reverse order."""
    h = ready(1)
    for n in range(count):
        h.send(1, [jsonrpc.request(n, "tools/call")])
    forwarded = h.backend_requests("tools/call")
    executed = 0

    def local(frame: Any, event: str, arg: Any) -> Any:
        nonlocal executed
        executed += event == "line"
        return local

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        return local if "mcpsingleton" in frame.f_code.co_filename and "mux" in frame.f_code.co_filename else None

    sys.settrace(tracer)
    try:
        for request in reversed(forwarded):
            h.mux.from_backend(jsonrpc.encode(jsonrpc.result(request["id"], {})))
    finally:
        sys.settrace(None)
    return executed


def test_batch_reply_lookup_is_linear_in_open_batches() -> None:
    """Counted, not timed: twice the batches must cost (about) twice the mux lines, not four times."""
    small, large = lines_run(300), lines_run(600)
    assert large < 2.2 * small, (small, large)


def test_a_batch_holding_a_listen_stream_still_answers_its_other_requests() -> None:
    """Found by the fuzz test: a listen stream never replies while open, so a batch that held one kept
    the other replies back forever (here: initialize "1")."""
    h = Harness()
    h.mux.open_session(1)
    listen = {"jsonrpc": "2.0", "id": "L", "method": "subscriptions/listen",
              "params": {"notifications": {"toolsListChanged": True}, "_meta": STATELESS}}
    initialize = {"jsonrpc": "2.0", "id": "1", "method": "initialize",
                  "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "c"}}}
    h.send(1, [listen, initialize])
    for request in h.backend_requests("initialize"):
        h.answer(request, init_result())
    batches = [item for item in h.take(1) if isinstance(item, list)]
    assert [[reply["id"] for reply in batch] for batch in batches] == [["1"]]


# ---- issue 19 row 11: a backend reply that is not UTF-8 -------------------------------------


@pytest.mark.parametrize("size", [10, 40_000], ids=["small", "fast-path-sized"])
def test_a_reply_with_a_byte_that_is_not_utf8_is_delivered_with_the_byte_replaced(size: int) -> None:
    h = ready(1)
    h.request(1, "latin", "tools/call")
    backend_id = h.last_request("tools/call")["id"]
    filler = b"x" * size
    h.from_backend(b'{"jsonrpc":"2.0","id":%d,"result":{"text":"%s caf\xe9"}}' % (backend_id, filler))
    reply = h.only_reply(1)
    assert reply["id"] == "latin" and reply["result"]["text"] == f"{filler.decode()} caf\N{REPLACEMENT CHARACTER}"
    assert any("not UTF-8" in line for line in h.logs)
    still_served(h, 1)


@pytest.mark.parametrize("id_last", [False, True], ids=["id-first", "id-last"])
def test_a_reply_nested_too_deeply_to_read_is_answered_with_an_error(id_last: bool) -> None:
    """Issue 19 row 10: a reply the parser cannot take is dropped, but its asker is told, never left waiting."""
    h = ready(1, 2)
    h.request(1, "deep", "tools/list")
    backend_id = h.last_request("tools/list")["id"]
    members = [b'"jsonrpc":"2.0","id":%d' % backend_id, b'"result":{"tools":%s}' % DEEP.strip()]
    h.from_backend(b"{" + b",".join(reversed(members) if id_last else members) + b"}")
    reply = h.only_reply(1)
    assert reply["id"] == "deep" and reply["error"]["code"] == jsonrpc.INTERNAL_ERROR
    assert "could not be read" in reply["error"]["message"]
    assert h.take(2) == []
    still_served(h, 1)


@pytest.mark.parametrize(
    ("rest", "named"),
    [
        (b'yyyy"}},"id":"x"}', "x"),  # the rest of a request whose id comes last (TypeScript clients)
        (b'yyyy"}},"jsonrpc":"2.0","id":7 }', 7),
        (b'yyyy"}}}', None),  # its id came first: the dead broker's journal answers it, not this
        (b'yy\\"id\\":\\"z\\"}"}}}', None),  # an "id" inside the string is not the request's
        (b'{"id": 7, garbage}', None),
        (b'yyyy"}},"id":true}', None),  # not an id MCP allows
    ],
)
def test_a_parse_error_names_the_id_the_line_ends_with(rest: bytes, named: object) -> None:
    """The rest of a request line whose head a dead broker had read is answered under its id, not in silence."""
    h = ready(1)
    h.take(1)
    h.send(1, rest)
    (reply,) = h.take(1)
    assert reply["error"]["code"] == jsonrpc.PARSE_ERROR and reply["id"] == named
