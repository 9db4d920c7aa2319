"""Sans-IO rules for 2026-07-28 sessions on the shared backend, and task statuses that overtake their task."""

from __future__ import annotations

from mux_harness import Harness

from mcpsingleton.mux import ABANDONED_MEMORY, eras

ERA_FIELDS = {
    eras.PROTOCOL_VERSION: "2026-07-28",
    eras.CLIENT_CAPABILITIES: {"sampling": {}},
    eras.CLIENT_INFO: {"name": "stateless", "version": "1"},
}


def stateless(
    h: Harness, sid: int, request_id: object, method: str, params: dict | None = None, **meta: object
) -> None:
    body = dict(params or {})
    body["_meta"] = {**ERA_FIELDS, **meta, **body.get("_meta", {})}
    h.request(sid, request_id, method, body)


def started() -> Harness:
    h = Harness()
    h.open(1, client="handshake")
    h.perform(h.mux.open_session(2))
    h.clear()
    return h


def test_era_fields_are_stripped_and_result_completed() -> None:
    h = started()
    stateless(h, 2, "m1", "tools/list", {"_meta": {"progressToken": "p"}})
    (forwarded,) = h.backend_requests("tools/list")
    assert forwarded["params"]["_meta"] == {"progressToken": forwarded["id"]}, "era fields gone, token rewritten"
    h.answer(forwarded, {"tools": []})
    reply = h.only_reply(2)
    assert reply["id"] == "m1"
    assert reply["result"]["resultType"] == "complete" and reply["result"]["cacheScope"] == "private"
    assert reply["result"]["_meta"][eras.SERVER_INFO] == {"name": "fake", "version": "1"}
    assert h.mux.sessions[2].client_name == "stateless" and h.mux.sessions[2].stateless


def test_stateless_era_session_never_gets_server_requests_even_if_it_declares_sampling() -> None:
    h = started()
    stateless(h, 2, 1, "tools/call", {"name": "x"})
    h.from_backend({"jsonrpc": "2.0", "id": "s", "method": "sampling/createMessage", "params": {}})
    assert h.requests_to(2) == []
    (error,) = h.backend_responses()
    assert error["id"] == "s" and error["error"]["code"] == -32601


def test_listen_is_acknowledged_with_what_the_backend_serves_and_tagged() -> None:
    h = started()
    stateless(
        h,
        2,
        "L",
        "subscriptions/listen",
        {
            "notifications": {
                "toolsListChanged": True,
                "promptsListChanged": True,
                "resourceSubscriptions": ["file:///a"],
            }
        },
    )
    (ack,) = h.notes_to(2, "notifications/subscriptions/acknowledged")
    assert ack["params"]["notifications"] == {"toolsListChanged": True, "resourceSubscriptions": ["file:///a"]}
    assert ack["params"]["_meta"][eras.SUBSCRIPTION_ID] == "L"
    (subscribe,) = h.backend_requests("resources/subscribe")
    assert subscribe["params"] == {"uri": "file:///a"}
    h.answer(subscribe, {})
    assert h.replies(2) == [], "the broker's own subscribe reply is not the listen's reply"
    h.clear()
    h.from_backend({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    h.from_backend({"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"})
    h.from_backend({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "file:///a/b"}})
    assert [(n["method"], n["params"]["_meta"][eras.SUBSCRIPTION_ID]) for n in h.notes_to(2)] == [
        ("notifications/tools/list_changed", "L"),
        ("notifications/resources/updated", "L"),
    ]
    assert [n["method"] for n in h.notes_to(1)] == [
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
    ]


def test_cancelling_a_listen_releases_its_uris_unless_another_session_holds_them() -> None:
    h = started()
    h.request(1, 9, "resources/subscribe", {"uri": "file:///shared"})
    h.answer(h.backend_requests("resources/subscribe")[0], {})
    stateless(
        h,
        2,
        "L",
        "subscriptions/listen",
        {"notifications": {"resourceSubscriptions": ["file:///shared", "file:///own"]}},
    )
    assert [r["params"]["uri"] for r in h.backend_requests("resources/subscribe")][1:] == ["file:///own"]
    h.clear()
    h.notify(2, "notifications/cancelled", {"requestId": "L"})
    assert [r["params"]["uri"] for r in h.backend_requests("resources/unsubscribe")] == ["file:///own"]
    assert h.replies(2) == [] and h.mux.subscriptions.listens[2] == {}


def test_log_opt_in_lowers_the_backend_level_and_filters_per_request() -> None:
    h = started()
    stateless(h, 2, 1, "tools/call", {"name": "x"}, **{eras.LOG_LEVEL: "warning"})
    (set_level,) = h.backend_requests("logging/setLevel")
    assert set_level["params"] == {"level": "warning"}
    for level in ("info", "error"):
        h.from_backend({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": level, "data": level}})
    assert [n["params"]["data"] for n in h.notes_to(2, "notifications/message")] == ["error"]
    h.answer(h.backend_requests("tools/call")[0], {"content": []})
    h.clear()
    h.from_backend({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "error", "data": "late"}})
    assert h.notes_to(2, "notifications/message") == [], "no opted-in request in flight any more"
    assert [n["params"]["data"] for n in h.notes_to(1, "notifications/message")] == ["late"]


def test_task_status_that_overtakes_its_task_reaches_the_owner_first() -> None:
    h = started()
    h.request(1, 5, "tools/call", {"name": "slow", "task": {"ttl": 1000}})
    (call,) = h.backend_requests("tools/call")
    h.from_backend(
        {"jsonrpc": "2.0", "method": "notifications/tasks/status", "params": {"taskId": "t1", "status": "working"}}
    )
    assert h.notes_to(1) == []
    h.answer(call, {"task": {"taskId": "t1", "status": "working"}})
    received = h.take(1)
    assert [m.get("method", "reply") for m in received] == ["notifications/tasks/status", "reply"]
    assert h.take(2) == []


def test_early_statuses_are_bounded() -> None:
    h = started()
    for index in range(ABANDONED_MEMORY // 8):
        h.from_backend(
            {
                "jsonrpc": "2.0",
                "method": "notifications/tasks/status",
                "params": {"taskId": f"t{index}", "status": "working"},
            }
        )
    assert len(h.mux.tasks.early_status) <= 64


def test_requests_are_counted_once_even_when_queued() -> None:
    h = Harness(auto_start=False)
    h.open(1)
    h.request(1, 2, "tools/list")
    h.start()
    assert h.mux.stats["requests"] == 2


def test_later_session_asking_an_older_version_gets_it() -> None:
    h = Harness()
    h.open(1, version="2025-11-25")
    h.open(2, version="2025-03-26")
    h.open(3, version="2099-01-01")
    assert h.replies(1)[0]["result"]["protocolVersion"] == "2025-11-25"
    assert h.replies(2)[0]["result"]["protocolVersion"] == "2025-03-26"
    assert h.replies(3)[0]["result"]["protocolVersion"] == "2025-11-25", "unknown/newer: the backend's own"
    assert len(h.backend_requests("initialize")) == 1
