"""Unit tests for the sans-IO multiplexer: one small test per protocol rule (docs/ARCHITECTURE.md, the multiplexer)."""

from __future__ import annotations

from typing import Any

import pytest
from mux_harness import Harness

from mcpsingleton.mux import StartBackend, jsonrpc
from mcpsingleton.mux.jsonrpc import Id, Message

SAMPLING = {"sampling": {}}
FORM = {"elicitation": {}}
URL = {"elicitation": {"form": {}, "url": {}}}
ROOTS = {"roots": {"listChanged": True}}
SAMPLE_PARAMS = {"messages": [], "maxTokens": 10}


def ready(*sids: int, capabilities: dict[str, Any] | None = None, **options: Any) -> Harness:
    """A harness with these sessions through their handshake, the recording cleared."""
    h = Harness(**options)
    for sid in sids:
        h.open(sid, capabilities=capabilities)
    h.clear()
    return h


def error_code(message: Message) -> int:
    return message["error"]["code"]


def progress(token: object, value: int = 1) -> Message:
    return jsonrpc.notification("notifications/progress", {"progressToken": token, "progress": value})


def with_token(token: Id) -> dict[str, Any]:
    return {"name": "slow", "_meta": {"progressToken": token}}


def cancel(request_id: object) -> dict[str, Any]:
    return {"requestId": request_id, "reason": "user"}


def log_message(level: str) -> Message:
    return jsonrpc.notification("notifications/message", {"level": level, "data": level})


# ---- ids ------------------------------------------------------------------------------------


def test_colliding_ids_reach_backend_distinct_and_return_exact() -> None:
    h = ready(1, 2, 3)
    sent: list[tuple[int, Id]] = [(1, 1), (2, 1), (3, "1")]
    for sid, rid in sent:
        h.request(sid, rid, "tools/list")
    forwarded = h.backend_requests("tools/list")
    assert len({m["id"] for m in forwarded}) == 3
    assert all(type(m["id"]) is int for m in forwarded)
    for request in reversed(forwarded):
        h.answer(request, {"tools": [], "n": request["id"]})
    for (sid, rid), request in zip(sent, forwarded, strict=True):
        reply = h.only_reply(sid)
        assert reply["id"] == rid and type(reply["id"]) is type(rid)
        assert reply["result"]["n"] == request["id"]


def test_backend_ids_monotonic_and_never_reused() -> None:
    h = ready(1, 2)
    for n in range(6):
        h.request(1 + n % 2, n, "tools/list")
        h.answer(h.last_request())
    h.request(1, 99, "tools/call")
    h.notify(1, "notifications/cancelled", cancel(99))
    h.request(2, 99, "tools/call")
    ids = [m["id"] for m in h.backend_requests()]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


@pytest.mark.parametrize("bad_id", [True, 1.5, None])
def test_bool_float_null_ids_rejected(bad_id: object) -> None:
    h = ready(1)
    h.request(1, bad_id, "tools/list")  # type: ignore[arg-type]
    reply = h.only_reply(1)
    assert error_code(reply) == jsonrpc.INVALID_REQUEST and reply["id"] is None
    assert h.backend == []


# ---- initialize -----------------------------------------------------------------------------


def test_backend_initialized_once_with_broker_capabilities() -> None:
    h = Harness()
    h.open(1, capabilities={"tasks": {"list": {}}, "sampling": {}}, version="2025-06-18", client="first")
    h.open(2, version="2025-11-25", client="second")
    [init] = h.backend_requests("initialize")
    params = init["params"]
    assert params["protocolVersion"] == "2025-06-18"
    assert params["clientInfo"]["name"] == "first"
    assert set(params["capabilities"]) == {"roots", "sampling", "elicitation"}
    assert params["capabilities"]["roots"] == {"listChanged": True}


def test_later_session_gets_cached_result_under_own_id() -> None:
    h = ready(1)
    h.open(2, init_id="init-b")
    assert h.backend_requests() == []
    reply = h.only_reply(2)
    assert reply["id"] == "init-b" and reply["result"] == h.init_result


def test_sessions_initialized_notifications_swallowed() -> None:
    h = Harness()
    for sid in (1, 2, 3):
        h.open(sid)
    assert len(h.backend_notes("notifications/initialized")) == 1
    assert h.backend.index(h.backend_notes()[0]) > h.backend.index(h.last_request("initialize"))


def test_initialize_before_backend_ready_waits() -> None:
    h = Harness(auto_start=False)
    h.open(1, init_id=10)
    h.open(2, init_id="x")
    assert h.starts == 1 and h.replies(1) == h.replies(2) == []
    h.start()
    assert len(h.backend_requests("initialize")) == 1
    assert h.only_reply(1)["id"] == 10 and h.only_reply(2)["id"] == "x"


def test_requests_before_backend_ready_are_queued_then_flushed() -> None:
    h = Harness(auto_initialize=False)
    h.open(1)
    h.request(1, 5, "tools/list")
    assert h.backend_requests("tools/list") == []
    h.answer(h.last_request("initialize"), h.init_result)
    forwarded = h.last_request("tools/list")
    h.answer(forwarded, {"tools": []})
    assert [r["id"] for r in h.replies(1)] == [0, 5]


def test_session_notification_before_ready_is_queued() -> None:
    h = Harness(auto_initialize=False)
    h.open(1)
    h.notify(1, "notifications/custom")
    assert h.backend_notes("notifications/custom") == []
    h.answer(h.last_request("initialize"), h.init_result)
    assert h.backend_notes("notifications/custom")


def test_initialize_retried_after_backend_rejected_it() -> None:
    h = Harness(auto_initialize=False)
    h.open(1)
    h.answer(h.last_request("initialize"), error=-32000)
    h.request(1, "again", "initialize", {"protocolVersion": "2025-11-25", "capabilities": {}})
    assert len(h.backend_requests("initialize")) == 2 and h.starts == 1
    h.answer(h.last_request("initialize"), h.init_result)
    assert h.replies(1)[-1] == jsonrpc.result("again", h.init_result)


def test_backend_initialize_error_reaches_every_waiter() -> None:
    h = Harness(auto_initialize=False)
    h.open(1)
    h.open(2, init_id="b")
    h.request(1, 7, "tools/list")
    h.answer(h.last_request("initialize"), error=-32000)
    for sid, rids in ((1, [0, 7]), (2, ["b"])):
        replies = h.replies(sid)
        assert [r["id"] for r in replies] == rids
        assert all(error_code(r) == jsonrpc.INTERNAL_ERROR and "initialize" in r["error"]["message"] for r in replies)


# ---- local requests -------------------------------------------------------------------------


def test_session_ping_answered_locally() -> None:
    h = ready(1)
    h.request(1, "p", "ping")
    assert h.only_reply(1) == jsonrpc.result("p", {})
    assert h.backend == []


def test_backend_ping_answered_locally() -> None:
    h = ready(1)
    h.from_backend(jsonrpc.request("srv-1", "ping"))
    assert h.backend == [jsonrpc.result("srv-1", {})]
    assert h.inbox[1] == []


def test_server_discover_is_method_not_found() -> None:
    h = ready(1)
    h.request(1, 1, "server/discover", {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}})
    assert error_code(h.only_reply(1)) == jsonrpc.METHOD_NOT_FOUND
    assert h.backend == []


# ---- progress -------------------------------------------------------------------------------


def test_colliding_progress_tokens_made_unique_and_restored() -> None:
    h = ready(1, 2, 3)
    owners: list[tuple[int, Id]] = [(1, 1), (2, 1), (3, "1")]
    for sid, token in owners:
        h.request(sid, token, "tools/call", with_token(token))
    tokens = [m["params"]["_meta"]["progressToken"] for m in h.backend_requests("tools/call")]
    assert len(set(tokens)) == 3
    for (sid, token), backend_token in zip(owners, tokens, strict=True):
        h.from_backend(progress(backend_token, 7))
        assert [sid] == [s for s in (1, 2, 3) if h.inbox[s]], "progress reached the wrong sessions"
        [note] = h.take(sid)
        assert note["params"] == {"progressToken": token, "progress": 7}
        assert type(note["params"]["progressToken"]) is type(token)


def test_progress_for_unknown_token_dropped() -> None:
    h = ready(1, 2)
    h.request(1, 1, "tools/call", with_token(1))
    h.from_backend(progress(12345))
    h.from_backend(progress("1"))
    assert h.inbox[1] == h.inbox[2] == []
    assert len(h.logs) == 2


def test_progress_after_cancel_dropped() -> None:
    h = ready(1)
    h.request(1, 1, "tools/call", with_token("t"))
    token = h.last_request()["params"]["_meta"]["progressToken"]
    h.notify(1, "notifications/cancelled", cancel(1))
    h.from_backend(progress(token))
    assert h.inbox[1] == []


def test_progress_after_final_reply_dropped() -> None:
    h = ready(1)
    h.request(1, 1, "tools/call", with_token("t"))
    request = h.last_request()
    h.answer(request)
    h.take(1)
    h.from_backend(progress(request["params"]["_meta"]["progressToken"]))
    assert h.inbox[1] == []


# ---- cancellation ---------------------------------------------------------------------------


def test_cancel_request_id_rewritten() -> None:
    h = ready(1, 2)
    h.request(2, "a", "tools/call")
    h.request(1, "a", "tools/call")
    h.notify(1, "notifications/cancelled", cancel("a"))
    [note] = h.backend_notes("notifications/cancelled")
    assert note["params"] == {"requestId": h.last_request()["id"], "reason": "user"}


@pytest.mark.parametrize("request_id", ["nope", 1, True])
def test_cancel_for_unknown_request_dropped(request_id: object) -> None:
    h = ready(1, 2)
    h.request(2, "nope", "tools/call")  # another session's id must not be cancellable
    h.request(1, "1", "tools/call")  # the string "1" is not the integer 1
    h.clear()
    h.notify(1, "notifications/cancelled", cancel(request_id))
    assert h.backend == []
    assert h.inbox[1] == []


def test_late_reply_after_cancel_dropped_silently() -> None:
    h = ready(1)
    h.request(1, 1, "tools/call")
    h.notify(1, "notifications/cancelled", cancel(1))
    h.answer(h.last_request())
    assert h.inbox[1] == [] and h.logs == []


def test_cancel_of_queued_request_keeps_it_from_backend() -> None:
    h = ready(1)
    h.auto_initialize = False
    h.crash()
    h.request(1, 1, "tools/call")
    h.notify(1, "notifications/cancelled", cancel(1))
    h.answer(h.last_request("initialize"), h.init_result)
    assert h.backend_requests("tools/call") == []
    assert h.replies(1) == []
    assert not h.mux.busy(1)


def test_cancel_inside_batch_releases_the_other_replies() -> None:
    h = ready(1)
    h.send(1, [jsonrpc.request(1, "tools/call"), jsonrpc.request(2, "tools/list")])
    _, listing = h.backend_requests()
    h.notify(1, "notifications/cancelled", cancel(1))
    h.answer(listing, {"tools": []})
    assert h.inbox[1] == [[jsonrpc.result(2, {"tools": []})]]


# ---- broadcast notifications ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tools", "resources", "prompts"])
def test_list_changed_to_every_initialized_session(kind: str) -> None:
    h = ready(1, 2)
    h.perform(h.mux.open_session(3))  # attached, not initialized
    h.from_backend(jsonrpc.notification(f"notifications/{kind}/list_changed"))
    assert h.inbox[1] == h.inbox[2] == [jsonrpc.notification(f"notifications/{kind}/list_changed")]
    assert h.inbox[3] == []


def test_other_backend_notification_broadcast() -> None:
    h = ready(1, 2)
    note = jsonrpc.notification("notifications/custom", {"x": 1})
    h.from_backend(note)
    assert h.inbox[1] == h.inbox[2] == [note]


def test_other_session_notification_forwarded() -> None:
    h = ready(1)
    note = jsonrpc.notification("notifications/custom", {"x": 1})
    h.send(1, note)
    assert h.backend == [note]


# ---- a session leaves -----------------------------------------------------------------------


def test_leaving_session_requests_cancelled_and_late_replies_dropped() -> None:
    h = ready(1, 2)
    h.request(1, 1, "tools/call")
    h.request(1, 2, "tools/call")
    h.request(2, 1, "tools/call")
    mine = h.backend_requests()[:2]
    h.close(1)
    cancelled = [n["params"]["requestId"] for n in h.backend_notes("notifications/cancelled")]
    assert sorted(cancelled) == [m["id"] for m in mine]
    h.logs.clear()
    for request in mine:
        h.answer(request)
    assert h.inbox[2] == [] and h.logs == []


def test_leaving_session_server_requests_answered_with_error() -> None:
    h = ready(1, capabilities=SAMPLING)
    h.request(1, 1, "tools/call")
    h.from_backend(jsonrpc.request("s-9", "sampling/createMessage", SAMPLE_PARAMS))
    assert h.requests_to(1, "sampling/createMessage")
    h.close(1)
    [answer] = h.backend_responses()
    assert answer["id"] == "s-9" and error_code(answer) == jsonrpc.INTERNAL_ERROR


def test_leaving_session_drops_subscriptions() -> None:
    h = ready(1, 2)
    for uri in ("file:///shared", "file:///mine"):
        h.request(1, uri, "resources/subscribe", {"uri": uri})
        h.answer(h.last_request())
    h.request(2, 1, "resources/subscribe", {"uri": "file:///shared"})
    h.clear()
    h.close(1)
    assert [m["params"] for m in h.backend_requests()] == [{"uri": "file:///mine"}]
    assert h.last_request()["method"] == "resources/unsubscribe"
    assert h.mux.subscriptions.subscribers == {"file:///shared": {2}}


def test_leaving_session_log_level_removed() -> None:
    h = ready(1, 2)
    h.request(1, 1, "logging/setLevel", {"level": "debug"})
    h.answer(h.last_request())
    h.request(2, 1, "logging/setLevel", {"level": "error"})
    h.clear()
    h.close(1)
    assert h.last_request("logging/setLevel")["params"] == {"level": "error"}


def test_leaving_session_roots_leave_the_answer() -> None:
    h = roots_harness({1: ["file:///a", "file:///b"], 2: ["file:///b"]})
    assert backend_roots(h) == ["file:///b"]
    h.clear()
    h.close(1)
    assert backend_roots(h) == ["file:///b"]
    h.close(2)
    assert h.backend_notes() == [jsonrpc.notification("notifications/roots/list_changed")]
    assert backend_roots(h) == [], "no root outlives the sessions that declared it"


def test_leaving_session_tasks_cancelled_at_backend() -> None:
    h = ready(1, 2)
    create_task(h, 1, "T1")
    h.clear()
    h.close(1)
    assert [(m["method"], m["params"]) for m in h.backend_requests()] == [("tasks/cancel", {"taskId": "T1"})]
    h.request(2, 1, "tasks/get", {"taskId": "T1"})
    assert error_code(h.only_reply(2)) == jsonrpc.INVALID_PARAMS


def test_leaving_session_stops_initialize_wait_and_routes() -> None:
    h = Harness(auto_start=False)
    h.open(1)
    h.close(1)
    h.open(2, init_id="b")
    h.start()
    assert h.inbox[1] == [] and h.only_reply(2)["id"] == "b"


# ---- subscriptions --------------------------------------------------------------------------


def subscribe(h: Harness, sid: int, uri: str, request_id: Id = "sub", method: str = "resources/subscribe") -> None:
    h.request(sid, request_id, method, {"uri": uri})


def test_first_subscribe_forwarded_second_answered_locally() -> None:
    h = ready(1, 2)
    subscribe(h, 1, "file:///x")
    h.answer(h.last_request())
    subscribe(h, 2, "file:///x")
    assert len(h.backend_requests("resources/subscribe")) == 1
    assert h.only_reply(2) == jsonrpc.result("sub", {})


def test_unsubscribe_by_one_keeps_the_others() -> None:
    h = ready(1, 2)
    subscribe(h, 1, "file:///x")
    subscribe(h, 2, "file:///x")
    subscribe(h, 1, "file:///x", "un", "resources/unsubscribe")
    assert h.backend_requests("resources/unsubscribe") == []
    assert h.replies(1)[-1] == jsonrpc.result("un", {})
    h.from_backend(jsonrpc.notification("notifications/resources/updated", {"uri": "file:///x"}))
    assert h.notes_to(1) == [] and len(h.notes_to(2)) == 1
    subscribe(h, 2, "file:///x", "un", "resources/unsubscribe")
    assert len(h.backend_requests("resources/unsubscribe")) == 1


@pytest.mark.parametrize(
    ("uri", "receivers"),
    [
        ("file:///dir", [1]),
        ("file:///dir/a.txt", [1]),
        ("file:///dir2", []),
        ("file:///other", [2]),
    ],
)
def test_updates_only_to_subscribers(uri: str, receivers: list[int]) -> None:
    h = ready(1, 2, 3)
    subscribe(h, 1, "file:///dir")
    subscribe(h, 2, "file:///other")
    h.clear()
    h.from_backend(jsonrpc.notification("notifications/resources/updated", {"uri": uri}))
    assert [sid for sid in (1, 2, 3) if h.inbox[sid]] == receivers


def test_subscribe_error_undone() -> None:
    h = ready(1)
    subscribe(h, 1, "file:///x")
    h.answer(h.last_request(), error=-32002)
    assert error_code(h.only_reply(1)) == -32002
    assert h.mux.subscriptions.subscribers == {}
    subscribe(h, 1, "file:///x", "again")
    assert len(h.backend_requests("resources/subscribe")) == 2


# ---- logging --------------------------------------------------------------------------------


def set_level(h: Harness, sid: int, level: str) -> None:
    h.request(sid, f"lvl-{level}", "logging/setLevel", {"level": level})


def test_backend_level_is_most_verbose() -> None:
    h = ready(1, 2)
    set_level(h, 1, "warning")
    set_level(h, 2, "error")
    set_level(h, 2, "info")
    assert [m["params"]["level"] for m in h.backend_requests("logging/setLevel")] == ["warning", "info"]
    assert [r["id"] for r in h.replies(2)] == ["lvl-error"]  # answered locally: no change at the backend


def test_log_messages_filtered_per_session() -> None:
    h = ready(1, 2, 3)
    set_level(h, 1, "debug")
    set_level(h, 2, "error")
    h.clear()
    for level in ("debug", "warning", "error", "emergency"):
        h.from_backend(log_message(level))
    received = {sid: [m["params"]["level"] for m in h.notes_to(sid)] for sid in (1, 2, 3)}
    assert received == {
        1: ["debug", "warning", "error", "emergency"],
        2: ["error", "emergency"],
        3: ["debug", "warning", "error", "emergency"],
    }


@pytest.mark.parametrize("level", ["verbose", None, 3])
def test_invalid_log_level_rejected(level: object) -> None:
    h = ready(1)
    h.request(1, 1, "logging/setLevel", {"level": level})
    assert error_code(h.only_reply(1)) == jsonrpc.INVALID_PARAMS
    assert h.backend == []


def test_set_level_forwarded_as_is_without_logging_capability() -> None:
    h = ready(1, 2, server_capabilities={"tools": {}})
    set_level(h, 1, "debug")
    set_level(h, 2, "error")
    assert [m["params"] for m in h.backend_requests("logging/setLevel")] == [{"level": "debug"}, {"level": "error"}]


# ---- sampling and elicitation ---------------------------------------------------------------


def server_request(h: Harness, backend_id: Id, method: str = "sampling/createMessage", **params: Any) -> None:
    h.from_backend(jsonrpc.request(backend_id, method, params or SAMPLE_PARAMS))


def test_sampling_routed_to_the_one_busy_capable_session() -> None:
    h = Harness()
    h.open(1, capabilities=SAMPLING)
    h.open(2, capabilities=SAMPLING)
    h.open(3)
    h.request(1, 1, "tools/call")
    h.request(3, 1, "tools/call")  # busy but not capable
    h.clear()
    server_request(h, "s-1")
    [routed] = h.requests_to(1)
    assert h.inbox[2] == h.inbox[3] == []
    h.reply(1, routed, {"role": "assistant", "content": {"type": "text", "text": "hi"}})
    [answer] = h.backend_responses()
    assert answer["id"] == "s-1" and answer["result"]["role"] == "assistant"


def test_server_request_id_rewritten_toward_the_session() -> None:
    h = ready(1, 2, capabilities=SAMPLING)
    h.request(1, 0, "tools/call")
    server_request(h, 0)
    [first] = h.requests_to(1)
    h.reply(1, first)
    h.answer(h.last_request("tools/call"))
    h.request(2, 0, "tools/call")
    server_request(h, 0)  # the backend may reuse an answered id; the session-side id is fresh
    [second] = h.requests_to(2)
    assert second["id"] != first["id"]
    h.reply(2, second)
    assert [a["id"] for a in h.backend_responses()] == [0, 0]


def test_sampling_refused_when_ambiguous() -> None:
    h = ready(1, 2, capabilities=SAMPLING)
    h.request(1, 1, "tools/call")
    h.request(2, 1, "tools/call")
    h.clear()
    server_request(h, 5)
    assert h.inbox[1] == h.inbox[2] == []
    [answer] = h.backend_responses()
    assert answer["id"] == 5 and "error" in answer


@pytest.mark.parametrize(("capabilities", "busy"), [({}, True), (SAMPLING, False)])
def test_sampling_refused_without_a_candidate(capabilities: dict[str, Any], busy: bool) -> None:
    h = ready(1, capabilities=capabilities)
    if busy:
        h.request(1, 1, "tools/call")
    h.clear()
    server_request(h, 5)
    assert h.inbox[1] == []
    assert h.backend_responses()[0]["id"] == 5 and "error" in h.backend_responses()[0]


def test_url_elicitation_needs_url_capability() -> None:
    h = ready(1, capabilities=FORM)
    h.request(1, 1, "tools/call")
    server_request(h, 5, "elicitation/create", mode="url", url="https://x", elicitationId="e1", message="m")
    assert h.requests_to(1) == [] and "error" in h.backend_responses()[0]
    server_request(h, 6, "elicitation/create", message="form", requestedSchema={})
    assert len(h.requests_to(1, "elicitation/create")) == 1


def test_form_elicitation_needs_form_capability() -> None:
    h = ready(1, capabilities={"elicitation": {"url": {}}})
    h.request(1, 1, "tools/call")
    server_request(h, 5, "elicitation/create", message="form", requestedSchema={})
    assert h.requests_to(1) == [] and "error" in h.backend_responses()[0]


def test_url_elicitation_and_its_completion_go_to_that_session() -> None:
    h = Harness()
    h.open(1, capabilities=URL)
    h.open(2, capabilities=URL)
    h.request(1, 1, "tools/call")
    h.clear()
    server_request(h, "e-req", "elicitation/create", mode="url", url="https://x", elicitationId="e1", message="m")
    [routed] = h.requests_to(1)
    assert routed["params"]["elicitationId"] == "e1"
    h.reply(1, routed, {"action": "accept"})
    assert h.backend_responses() == [jsonrpc.result("e-req", {"action": "accept"})]
    h.clear()
    h.from_backend(jsonrpc.notification("notifications/elicitation/complete", {"elicitationId": "e1"}))
    assert len(h.notes_to(1)) == 1 and h.inbox[2] == []


def test_backend_cancel_of_server_request_reaches_session_with_its_id() -> None:
    h = ready(1, capabilities=SAMPLING)
    h.request(1, 1, "tools/call")
    server_request(h, "s-1")
    [routed] = h.requests_to(1)
    h.clear()
    h.from_backend(jsonrpc.notification("notifications/cancelled", {"requestId": "s-1", "reason": "timeout"}))
    expected = {"requestId": routed["id"], "reason": "timeout"}
    assert h.notes_to(1) == [jsonrpc.notification("notifications/cancelled", expected)]
    h.reply(1, routed)  # too late: the backend no longer waits for it
    assert h.backend_responses() == []


# ---- roots ----------------------------------------------------------------------------------


def answer_roots(h: Harness, sid: int, uris: list[str]) -> None:
    """Session `sid` answers the newest roots/list the broker sent it."""
    request = h.requests_to(sid, "roots/list")[-1]
    h.reply(sid, request, {"roots": [{"uri": uri} for uri in uris]})


def backend_roots(h: Harness) -> list[str]:
    """Ask as the backend does; return the uris the broker answers with."""
    h.from_backend(jsonrpc.request("roots-q", "roots/list"))
    reply = h.backend_responses()[-1]
    assert reply["id"] == "roots-q"
    return [root["uri"] for root in reply["result"]["roots"]]


def roots_harness(roots: dict[int, list[str]]) -> Harness:
    """Sessions with roots, each having answered the broker's roots/list; recording cleared."""
    h = Harness()
    for sid, uris in roots.items():
        h.open(sid, capabilities=ROOTS)
        answer_roots(h, sid, uris)
    h.clear()
    return h


def test_roots_asked_after_initialized_and_on_list_changed() -> None:
    h = Harness()
    h.open(1, capabilities=ROOTS, initialized=False)
    assert h.requests_to(1, "roots/list") == []
    h.notify(1, "notifications/initialized")
    assert len(h.requests_to(1, "roots/list")) == 1
    h.notify(1, "notifications/roots/list_changed")
    assert len(h.requests_to(1, "roots/list")) == 2
    assert h.backend_notes("notifications/roots/list_changed") == []


def test_roots_not_asked_of_sessions_without_roots() -> None:
    h = Harness()
    h.open(1)
    h.notify(1, "notifications/roots/list_changed")
    assert h.requests_to(1) == []


def test_backend_roots_list_answered_with_only_the_roots_every_session_declared() -> None:
    h = roots_harness({1: ["file:///a", "file:///b"], 2: ["file:///b", "file:///c"]})
    assert backend_roots(h) == ["file:///b"]
    assert h.inbox[1] == h.inbox[2] == []
    assert any("different roots share this backend" in line for line in h.logs)


def test_a_session_without_roots_never_lets_the_backend_see_anyone_s_roots() -> None:
    h = roots_harness({1: ["file:///a"]})
    assert backend_roots(h) == ["file:///a"]
    h.open(2)
    assert backend_roots(h) == []
    assert h.requests_to(2, "roots/list") == []


def test_backend_roots_list_waits_for_the_roots_of_a_session_that_has_them() -> None:
    h = Harness()
    h.open(1, capabilities=ROOTS, initialized=False)
    h.clear()
    h.from_backend(jsonrpc.request("early", "roots/list"))
    assert h.backend_responses() == [], "session 1 has not said its roots yet"
    h.notify(1, "notifications/initialized")
    answer_roots(h, 1, ["file:///a"])
    assert h.backend_responses() == [jsonrpc.result("early", {"roots": [{"uri": "file:///a"}]})]
    assert h.backend_notes() == []


def test_roots_union_change_notifies_backend_once() -> None:
    h = roots_harness({1: ["file:///a"]})
    h.notify(1, "notifications/roots/list_changed")
    answer_roots(h, 1, ["file:///a"])
    assert h.backend_notes() == []
    h.notify(1, "notifications/roots/list_changed")
    answer_roots(h, 1, ["file:///a", "file:///z"])
    assert h.backend_notes() == [jsonrpc.notification("notifications/roots/list_changed")]
    assert backend_roots(h) == ["file:///a", "file:///z"]


# ---- tasks ----------------------------------------------------------------------------------


def create_task(h: Harness, sid: int, task_id: str) -> None:
    h.request(sid, f"create-{task_id}", "tools/call", {"name": "research", "task": {"ttl": 1000}})
    h.answer(h.last_request(), {"task": {"taskId": task_id, "status": "working"}})


@pytest.mark.parametrize("method", ["tasks/get", "tasks/result", "tasks/cancel"])
def test_foreign_task_access_refused(method: str) -> None:
    h = ready(1, 2)
    create_task(h, 1, "T1")
    h.clear()
    h.request(2, 9, method, {"taskId": "T1"})
    assert error_code(h.only_reply(2)) == jsonrpc.INVALID_PARAMS
    h.request(1, 9, method, {"taskId": "T1"})
    assert h.backend_requests(method)[0]["params"] == {"taskId": "T1"}


def test_tasks_list_filtered_to_own_tasks() -> None:
    h = ready(1, 2)
    create_task(h, 1, "T1")
    create_task(h, 2, "T2")
    h.clear()
    h.request(1, "ls", "tasks/list")
    h.answer(h.last_request(), {"tasks": [{"taskId": "T1"}, {"taskId": "T2"}, {"taskId": "T3"}]})
    assert h.only_reply(1)["result"]["tasks"] == [{"taskId": "T1"}]


def test_task_status_only_to_owner() -> None:
    h = ready(1, 2)
    create_task(h, 2, "T2")
    h.clear()
    h.from_backend(jsonrpc.notification("notifications/tasks/status", {"taskId": "T2", "status": "completed"}))
    assert h.inbox[1] == [] and len(h.notes_to(2)) == 1
    h.from_backend(jsonrpc.notification("notifications/tasks/status", {"taskId": "T9", "status": "working"}))
    assert h.inbox[1] == [] and len(h.notes_to(2)) == 1


# ---- batches --------------------------------------------------------------------------------


def test_batch_split_and_replies_collected() -> None:
    h = ready(1)
    h.send(1, [jsonrpc.request(1, "tools/list"), jsonrpc.request("2", "ping"), jsonrpc.notification("n/x")])
    assert all(isinstance(m, dict) for m in h.backend)
    assert [m.get("method") for m in h.backend] == ["tools/list", "n/x"]
    assert h.inbox[1] == []
    h.answer(h.last_request(), {"tools": []})
    [batch] = h.take(1)
    assert sorted(batch, key=str) == sorted([jsonrpc.result(1, {"tools": []}), jsonrpc.result("2", {})], key=str)


def test_notification_only_batch_gets_no_reply() -> None:
    h = ready(1)
    h.send(1, [jsonrpc.notification("n/a"), jsonrpc.notification("n/b")])
    assert len(h.backend) == 2 and h.inbox[1] == []


def test_empty_batch_single_error() -> None:
    h = ready(1)
    h.send(1, [])
    assert [error_code(m) for m in h.take(1)] == [jsonrpc.INVALID_REQUEST]


def test_batch_of_invalid_items_only_gets_array_of_errors() -> None:
    h = ready(1)
    h.send(1, [1, "x"])
    [batch] = h.take(1)
    assert [(m["id"], error_code(m)) for m in batch] == [(None, jsonrpc.INVALID_REQUEST)] * 2


def test_batch_invalid_items_get_error_entries() -> None:
    h = ready(1)
    h.send(1, [1, {"jsonrpc": "1.0", "id": 4, "method": "x"}, jsonrpc.request(5, "ping")])
    [batch] = h.take(1)
    codes = {(m["id"], error_code(m) if "error" in m else None) for m in batch}
    assert len(batch) == 3 and codes == {(None, jsonrpc.INVALID_REQUEST), (4, jsonrpc.INVALID_REQUEST), (5, None)}
    assert h.backend == []


# ---- malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"{not json\n", jsonrpc.PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"\xff\xfe"}\n', jsonrpc.PARSE_ERROR),
        (b'{"jsonrpc":"1.0","id":1,"method":"tools/list"}\n', jsonrpc.INVALID_REQUEST),
        (b'{"id":1,"method":"tools/list"}\n', jsonrpc.INVALID_REQUEST),
        (b"42\n", jsonrpc.INVALID_REQUEST),
        (b'"text"\n', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1}\n', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":7}\n', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":3}\n', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1.5,"result":{}}\n', jsonrpc.INVALID_REQUEST),
    ],
)
def test_malformed_input_errors_that_session_only(line: bytes, code: int) -> None:
    h = ready(1, 2)
    h.send(1, line)
    assert [error_code(m) for m in h.take(1)] == [code]
    assert h.inbox[2] == [] and h.backend == []


def test_non_ascii_and_lone_surrogates_pass_through_unchanged() -> None:
    h = ready(1)
    arguments = {"text": "héllo → 世界", "broken": "\ud800"}
    h.request(1, 1, "tools/call", {"name": "echo", "arguments": arguments})
    assert h.last_request()["params"]["arguments"] == arguments
    h.answer(h.last_request(), {"content": [{"type": "text", "text": "\udfff ok"}]})
    assert h.only_reply(1)["result"]["content"][0]["text"] == "\udfff ok"


def test_wrong_jsonrpc_reply_keeps_request_id() -> None:
    h = ready(1)
    h.send(1, {"jsonrpc": "1.0", "id": "k", "method": "tools/list"})
    assert h.only_reply(1)["id"] == "k"


@pytest.mark.parametrize("unknown", [12345, "1", None])
def test_session_response_to_unknown_request_dropped(unknown: object) -> None:
    h = ready(1)
    h.send(1, {"jsonrpc": "2.0", "id": unknown, "result": {}})
    assert h.backend == [] and h.inbox[1] == [] and len(h.logs) == 1


def test_session_cannot_answer_another_sessions_server_request() -> None:
    h = ready(1, 2, capabilities=SAMPLING)
    h.request(1, 1, "tools/call")
    server_request(h, "s")
    [routed] = h.requests_to(1)
    h.reply(2, routed)
    assert h.backend_responses() == [] and len(h.logs) == 1


@pytest.mark.parametrize("unknown", [12345, "1", None])
def test_backend_response_to_unknown_request_dropped(unknown: object) -> None:
    h = ready(1)
    h.request(1, 1, "tools/list")
    h.clear()
    h.from_backend({"jsonrpc": "2.0", "id": unknown, "result": {}})
    assert h.inbox[1] == [] and len(h.logs) == 1


@pytest.mark.parametrize("line", [b"Starting server...\n", b"\xff\n", b"[1,2]\n", b'{"jsonrpc":"2.0"}\n'])
def test_backend_unusable_line_dropped_with_log(line: bytes) -> None:
    h = ready(1)
    h.from_backend(line)
    assert h.inbox[1] == [] and h.backend == [] and len(h.logs) == 1


# ---- backend crash and restart --------------------------------------------------------------


def test_crash_errors_every_inflight_request() -> None:
    h = ready(1, 2)
    h.request(1, 1, "tools/call")
    h.request(2, "x", "tools/call")
    h.crash("the backend was killed by signal 9")
    for sid, rid in ((1, 1), (2, "x")):
        reply = h.only_reply(sid)
        assert reply["id"] == rid and error_code(reply) == jsonrpc.INTERNAL_ERROR
        assert "killed by signal 9" in reply["error"]["message"]
    assert not h.mux.busy(1) and not h.mux.busy(2)


def test_crash_cancels_server_requests_at_the_session() -> None:
    h = ready(1, capabilities=SAMPLING)
    h.request(1, 1, "tools/call")
    server_request(h, "s")
    [routed] = h.requests_to(1)
    h.crash()
    [note] = h.notes_to(1, "notifications/cancelled")
    assert note["params"]["requestId"] == routed["id"]


def test_restart_on_next_request_with_same_initialize() -> None:
    h = Harness(auto_start=False)
    h.open(1, capabilities=SAMPLING, client="first")
    h.start()
    first = h.last_request("initialize")["params"]
    h.open(2, client="second")
    h.crash()
    assert h.last == []  # nothing restarts until something needs the backend
    h.clear()
    h.request(2, 1, "tools/list")
    assert h.last == [StartBackend()] and h.backend == []
    h.start()
    assert [m["method"] for m in h.backend_requests()] == ["initialize", "tools/list"]
    assert h.last_request("initialize")["params"] == first
    assert h.mux.handshake.generation == 2


def test_restart_replays_subscriptions_and_level() -> None:
    h = ready(1, 2)
    subscribe(h, 1, "file:///x")
    set_level(h, 2, "notice")
    for request in h.backend_requests():
        h.answer(request)
    h.crash()
    h.clear()
    h.request(1, 1, "tools/list")
    replayed = [(m["method"], m.get("params")) for m in h.backend_requests()]
    assert ("resources/subscribe", {"uri": "file:///x"}) in replayed
    assert ("logging/setLevel", {"level": "notice"}) in replayed


def test_restart_tells_sessions_lists_changed() -> None:
    h = ready(1, 2)
    h.crash()
    h.request(1, 1, "tools/list")
    for sid in (1, 2):
        kinds = {m["method"] for m in h.notes_to(sid)}
        assert {f"notifications/{k}/list_changed" for k in ("tools", "resources", "prompts")} <= kinds


def test_restart_replays_roots_change() -> None:
    h = roots_harness({1: ["file:///a"]})
    h.crash()
    h.request(1, 1, "tools/list")
    assert h.backend_notes("notifications/roots/list_changed")


def test_crash_during_initialize_fails_waiters() -> None:
    h = Harness(auto_initialize=False)
    h.open(1, init_id="i")
    h.crash("the backend exited with status 2")
    reply = h.only_reply(1)
    assert reply["id"] == "i" and "status 2" in reply["error"]["message"]
    h.open(2, init_id="j")
    assert h.starts == 2
