"""Idle reclaim and the budget's refusal, in-process: when the mux says its backend may be stopped (`quiet`),
how it comes back (re-initialized, the sessions keep their handshake, no list_changed unless the lists
changed), and how a refused start answers what waited for it (issue 21 points 5, 6)."""

from __future__ import annotations

from mux_harness import Harness
from test_discovery import ENTRY, TOOL_A, TOOL_B, TOOLS_CHANGED, answer_lists

from mcpsingleton.mux import StartBackend


def reclaimed(h: Harness) -> None:
    """What the slot does to a quiet backend: it is gone, nothing was owed."""
    assert h.mux.quiet()
    h.clear()
    h.perform(h.mux.backend_reclaimed("the backend was stopped: idle for 600s"))
    assert h.inbox == {} and h.backend == []  # nobody is told anything


def test_quiet_means_nothing_in_flight_waiting_or_subscribed() -> None:
    h = Harness(discovery={}, server_capabilities={"resources": {"subscribe": True}, "tools": {}})
    h.open(1)
    answer_lists(h, [TOOL_A])
    assert h.mux.quiet()
    h.request(1, 2, "tools/call", {"name": "a"})
    assert not h.mux.quiet()
    h.answer(h.last_request("tools/call"), {"content": []})
    assert h.mux.quiet()
    h.request(1, 3, "resources/subscribe", {"uri": "file:///x"})
    h.answer(h.last_request("resources/subscribe"))
    assert not h.mux.quiet()  # the backend holds a subscription: stopping it would lose its updates
    h.request(1, 4, "resources/unsubscribe", {"uri": "file:///x"})
    h.answer(h.last_request("resources/unsubscribe"))
    assert h.mux.quiet()


def test_a_reclaimed_backend_comes_back_on_the_next_call_and_sessions_keep_their_handshake() -> None:
    h = Harness(discovery={}, lazy=True)
    h.open(1)
    answer_lists(h, [TOOL_A])
    reclaimed(h)
    h.open(2)  # a new session meanwhile: initialized from what the backend said, without one
    h.request(2, 1, "tools/list")  # and listed from the entry it stored
    assert h.starts == 1 and [r["result"] for r in h.replies(2)][1] == {"tools": [TOOL_A]}
    h.request(1, 9, "tools/call", {"name": "a"})
    assert h.starts == 2
    init = h.backend_requests("initialize")
    assert len(init) == 1 and h.backend_notes("notifications/initialized")  # re-initialized by the broker itself
    answer_lists(h, [TOOL_A])
    h.answer(h.last_request("tools/call"), {"content": []})
    assert [r["id"] for r in h.replies(1)] == [9]
    assert h.notes_to(1) == [] and h.notes_to(2) == []  # the lists did not change: no list_changed storm


def test_lists_that_changed_while_it_was_stopped_are_announced_to_who_was_served_the_old_ones() -> None:
    h = Harness(discovery=ENTRY, lazy=True)
    h.open(1)
    h.request(1, 1, "tools/call", {"name": "a"})
    answer_lists(h, [TOOL_A])
    h.answer(h.last_request("tools/call"), {"content": []})
    reclaimed(h)
    h.request(1, 2, "tools/list")  # from the entry, while no backend runs
    h.request(1, 3, "tools/call", {"name": "a"})
    answer_lists(h, [TOOL_A, TOOL_B])
    assert [n["method"] for n in h.notes_to(1)] == [TOOLS_CHANGED]


def test_a_refused_start_answers_everything_that_waited_and_the_next_request_asks_again() -> None:
    h = Harness(auto_start=False, discovery=ENTRY, lazy=True)
    h.open(1)
    h.request(1, 1, "tools/call", {"name": "a"})
    h.request(1, 2, "resources/subscribe", {"uri": "file:///x"})
    assert h.starts == 1
    h.clear()
    reason = "budget: max_backends = 1 is reached (1 running: time); raise it in config.toml"
    h.perform(h.mux.backend_refused(reason))
    errors = h.replies(1)
    assert [e["id"] for e in errors] == [1, 2]
    assert {e["error"]["message"] for e in errors} == {f"mcpsingleton: {reason}"}
    h.request(1, 3, "tools/list")
    assert h.starts == 1  # the cache still answers without a backend
    assert StartBackend() in h.request(1, 4, "tools/call", {"name": "a"})  # not fatal: asked again
    h.start()
    answer_lists(h, [TOOL_A])
    h.answer(h.last_request("tools/call"), {"content": []})
    assert h.replies(1)[-1]["id"] == 4
