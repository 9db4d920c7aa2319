"""Idle reclaim and the budget's refusal, in-process: when the mux says its backend may be stopped (`quiet`),
how it comes back (re-initialized, the sessions keep their handshake, no list_changed unless the lists
changed), and how a refused start answers what waited for it (issue 21 points 5, 6)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from mux_harness import ENTRY, STATELESS, TOOL_A, TOOL_B, TOOLS_CHANGED, Harness, answer_lists

from mcpsingleton.mux import StartBackend
from mcpsingleton.mux.actions import Action


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


def test_lazy_starts_the_backend_for_anything_stateful() -> None:
    for method, params in [
        ("logging/setLevel", {"level": "info"}),
        ("resources/subscribe", {"uri": "file:///x"}),
        ("subscriptions/listen", {"notifications": {"toolsListChanged": True}, "_meta": STATELESS}),
        ("tools/call", {"name": "a"}),
    ]:
        h = Harness(auto_start=False, discovery=ENTRY, lazy=True)
        h.open(1)
        h.request(1, 1, "tools/list")
        assert h.starts == 0, "the cache answers the handshake and the lists"
        assert StartBackend() in h.request(1, 2, method, params), method


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


# ---- property: with lazy on, no request waits on a backend that nothing starts --------------------------

METHODS = ("tools/list", "tools/call", "ping", "prompts/list", "resources/subscribe", "logging/setLevel")
PARAMS = {
    "tools/call": {"name": "a"},
    "resources/subscribe": {"uri": "file:///x"},
    "logging/setLevel": {"level": "info"},
}
STEPS = st.one_of(
    st.tuples(st.just("open"), st.integers(1, 3)),
    st.tuples(st.just("request"), st.integers(1, 3), st.sampled_from(METHODS)),
    st.tuples(st.just("close"), st.integers(1, 3)),
    st.tuples(st.sampled_from(("start", "refuse", "answer", "reclaim", "crash")), st.just(0)),
)


class Driven:
    """A lazy mux whose backend starts only when asked and some time after, is refused, crashes or is
    reclaimed when quiet; what each session still waits for is tracked by id."""

    def __init__(self) -> None:
        self.h = Harness(auto_start=False, discovery=ENTRY, lazy=True, server_capabilities={"tools": {}})
        self.asked = False  # a StartBackend not yet acted on
        self.waiting: dict[int, set[int]] = {}
        self.next_id = 100

    def perform(self, actions: list[Action]) -> None:
        """Note what the harness performed: a start asked for, the requests answered."""
        self.asked = self.asked or StartBackend() in actions
        for sid, ids in self.waiting.items():
            ids -= {r["id"] for r in self.h.replies(sid)}
        self.h.inbox.clear()

    def step(self, kind: str, sid: int, method: str | None = None) -> None:
        h = self.h
        if kind == "open" and sid not in self.waiting:
            self.waiting[sid] = set()
            h.perform(h.mux.open_session(sid))
            self.send(sid, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {}})
            self.perform(h.notify(sid, "notifications/initialized"))
        elif kind == "request" and sid in self.waiting and method is not None:
            self.send(sid, method, PARAMS.get(method))
        elif kind == "close" and sid in self.waiting:
            del self.waiting[sid]
            self.perform(h.close(sid))
        elif kind == "start" and self.asked:
            self.asked = False
            self.perform(h.start())
        elif kind == "refuse" and self.asked:
            self.asked = False
            self.perform(h.perform(h.mux.backend_refused("budget: full")))
        elif kind == "answer":
            for request in [r for r in h.backend_requests() if r["method"] != "initialize"]:
                h.backend.remove(request)
                self.perform(h.answer(request, {"tools": []} if request["method"] == "tools/list" else {}))
        elif kind == "reclaim" and h.mux.backend.ready and h.mux.quiet():
            self.perform(h.perform(h.mux.backend_reclaimed("idle")))
        elif kind == "crash" and h.mux.backend.state != "down":
            self.perform(h.crash())

    def send(self, sid: int, method: str, params: dict[str, Any] | None) -> None:
        self.next_id += 1
        self.waiting[sid].add(self.next_id)
        self.perform(self.h.request(sid, self.next_id, method, params))

    def nothing_waits_in_vain(self) -> bool:
        """Every request still unanswered waits on a backend that runs or that the broker was asked for."""
        return not any(self.waiting.values()) or self.h.mux.backend.state != "down" or self.asked


@settings(max_examples=300, deadline=None)
@given(st.lists(STEPS, max_size=40))
def test_with_lazy_on_every_request_is_answered_or_a_backend_start_was_asked_for(steps: list[Any]) -> None:
    driven = Driven()
    for step in steps:
        driven.step(*step)
        assert driven.nothing_waits_in_vain(), step
    for _ in range(4):  # let it run: every start asked for happens, the backend answers everything
        driven.step("start", 0)
        driven.step("answer", 0)
    assert not any(driven.waiting.values()), driven.waiting
