"""No request waits on a backend that nothing starts, nor on a client that never says its roots (issue 19
rows 1 and 9; issue 21 point 4), sans-IO.

A parked session's list is answered from the cached discovery, any other request of it wants the backend
it is parked on, a crash restarts that backend while parked requests wait, a refused initialize fails them;
and a property test drives random sessions, lazy or not, cached or not, some never answering roots/list,
against a backend that starts only when asked and a broker that ticks, checking after every step that
whatever waits has a backend on its way, and that in the end every request was answered exactly once.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mux_harness import Harness, init_result, parked

from mcpsingleton.mux import jsonrpc
from mcpsingleton.mux.backend_state import DOWN
from mcpsingleton.mux.roots import ASKING

TOOL = {"name": "echo", "inputSchema": {"type": "object"}}
ENTRY: dict[str, Any] = {"initialize": init_result(), "tools/list": {"tools": [TOOL]}}
ROOTS = {"roots": {"listChanged": True}}


def lazy_with_two_sessions() -> Harness:
    h = Harness(auto_start=False, discovery=ENTRY, lazy=True)
    h.open(1)
    parked(h, 2, version="2025-06-18")
    h.take(1), h.take(2)
    return h


def test_a_parked_session_s_list_is_answered_from_the_cache_without_a_backend() -> None:
    h = lazy_with_two_sessions()
    h.request(2, "list", "tools/list")
    assert h.only_reply(2) == {"jsonrpc": "2.0", "id": "list", "result": ENTRY["tools/list"]}
    assert h.starts == 0 and h.backend == []


def test_any_other_request_of_a_parked_session_starts_the_backend_but_stays_held() -> None:
    h = lazy_with_two_sessions()
    h.request(2, "call", "tools/call", {"name": "echo"})
    assert h.starts == 1, "placing it needs the backend's word (its sharing, its roots)"
    h.start()
    h.answer(h.last_request("initialize"), h.init_result)
    assert h.backend_requests("tools/call") == [], "held until the broker places it"
    h.perform(h.mux.unpark(2))
    h.answer(h.last_request("tools/call"), {"content": []})
    assert h.only_reply(2)["id"] == "call"


def test_a_crash_while_a_parked_request_waits_asks_for_the_backend_again() -> None:
    h = Harness()
    h.open(1)
    parked(h, 2, ROOTS, version="2025-06-18")
    h.request(2, "call", "tools/call", {"name": "echo"})
    h.crash()
    assert h.mux.needs_backend(), "the broker restarts it at once (slot.py), as for subscribers"


def test_a_refused_initialize_fails_what_parked_sessions_hold() -> None:
    h = Harness(auto_initialize=False)
    h.open(1)
    parked(h, 2, version="2025-06-18")
    h.request(2, "call", "tools/call", {"name": "echo"})
    h.notify(2, "notifications/other")
    h.answer(h.last_request("initialize"), error=-32600)
    (reply,) = [m for m in h.replies(2) if m["id"] == "call"]
    assert reply["error"]["code"] == jsonrpc.INTERNAL_ERROR and "rejected initialize" in reply["error"]["message"]
    assert not h.mux.busy(2)


def test_a_session_moved_after_a_cached_list_hears_when_its_new_backend_lists_otherwise() -> None:
    shared, own = Harness(auto_start=False, discovery=ENTRY, lazy=True), Harness(discovery=None)
    shared.open(1)
    parked(shared, 2, version="2025-06-18")
    shared.request(2, "list", "tools/list")
    state, actions = shared.mux.export_session(2)
    shared.perform(actions)
    own.perform(own.mux.adopt_session(state))
    assert [n["method"] for n in own.notes_to(2)] == ["notifications/tools/list_changed"]


# ---- the property ---------------------------------------------------------------------------

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.integers(1, 4), st.booleans(), st.booleans(), st.booleans()),
        st.tuples(st.just("request"), st.integers(1, 4), st.sampled_from(["tools/list", "tools/call", "ping"])),
        st.tuples(st.just("spawn")),
        st.tuples(st.just("initialize"), st.booleans()),
        st.tuples(st.just("answer")),
        st.tuples(st.just("crash")),
        st.tuples(st.just("roots"), st.integers(1, 4)),
        st.tuples(st.just("close"), st.integers(1, 4)),
        st.tuples(st.just("tick")),
    ),
    max_size=40,
)


class Broker:
    """What the broker does around one mux: spawns when asked (one step later), restarts when the mux
    needs the backend after a crash, places every placeable parked session once the sharing is known
    (static, or after the first backend was initialized); the backend answers when a step says so."""

    def __init__(self, entry: dict[str, Any] | None, lazy: bool, decided: bool) -> None:
        self.h = Harness(auto_start=False, auto_initialize=False, discovery=entry, lazy=lazy)
        self.decided = decided  # the sharing is static (catalog, --scope); else learnt from the first backend
        self.asked: dict[tuple[int, int], int] = {}  # (session, request id) → replies seen
        self.next_id = 0
        self.running = False
        self.done: set[int] = set()  # backend ids answered (or lost with their backend)
        self.silent: set[int] = set()  # sessions that never answer roots/list

    def waiting(self) -> bool:
        return any(self.h.mux.busy(sid) for sid in self.h.mux.sessions)

    def spawn(self) -> None:
        if self.h.starts and self.h.mux.backend.state != DOWN and not self.running:
            self.running = True
            self.h.start()

    def initialize(self, accept: bool) -> None:
        pending = [m for m in self.h.backend_requests("initialize") if not self.answered(m)]
        if pending:
            self.h.answer(pending[-1], self.h.init_result if accept else None, None if accept else -32600)
            self.mark(pending[-1])

    def answer_all(self) -> None:
        for request in self.h.backend_requests():
            if request["method"] != "initialize" and not self.answered(request):
                self.mark(request)
                self.h.answer(request, {"tools": [TOOL]} if request["method"] == "tools/list" else {})

    def answered(self, request: dict[str, Any]) -> bool:
        return request["id"] in self.done

    def mark(self, request: dict[str, Any]) -> None:
        self.done.add(request["id"])

    def crash(self) -> None:
        if self.running:
            self.running = False
            self.h.crash()
            self.done |= {m["id"] for m in self.h.backend_requests()}
            if self.h.mux.needs_backend():
                self.running = True
                self.h.start()

    def place(self) -> None:
        if not (self.decided or self.h.mux.ever_initialized()):
            return  # slots.py: placing waits for the first backend's word on sharing
        for sid in list(self.h.mux.sessions):
            if self.h.mux.placeable(sid) is not None:
                self.h.perform(self.h.mux.unpark(sid))

    def settle_roots(self, sid: int) -> None:
        if sid in self.silent:
            return
        for request in self.h.requests_to(sid, "roots/list"):
            self.h.reply(sid, request, {"roots": [{"uri": f"file:///{sid}"}]})
        self.h.inbox[sid] = [m for m in self.h.inbox[sid] if m.get("method") != "roots/list"]

    def step(self, step: tuple[Any, ...]) -> None:
        h, kind = self.h, step[0]
        if kind == "open" and step[1] not in h.mux.sessions:
            sid, is_parked, roots, silent = step[1], step[2], step[3], step[4]
            self.silent.discard(sid)
            if silent:
                self.silent.add(sid)  # declares roots, never answers the broker's roots/list
            h.perform(h.mux.open_session(sid, parked=is_parked and bool(h.mux.sessions)))
            params = {"protocolVersion": "2025-06-18", "capabilities": ROOTS if roots else {}, "clientInfo": {}}
            self.send(sid, "initialize", params)
            h.notify(sid, "notifications/initialized")
        elif kind == "request" and step[1] in h.mux.sessions:
            self.send(step[1], step[2], {"name": "echo"} if step[2] == "tools/call" else None)
        elif kind == "spawn":
            self.spawn()
        elif kind == "initialize" and self.running:
            self.initialize(step[1])
        elif kind == "answer":
            self.answer_all()
        elif kind == "crash":
            self.crash()
        elif kind == "roots" and step[1] in h.mux.sessions:
            self.settle_roots(step[1])
        elif kind == "tick":
            h.perform(h.mux.tick())
        elif kind == "close" and step[1] in h.mux.sessions:
            h.close(step[1])
            self.asked = {key: n for key, n in self.asked.items() if key[0] != step[1]}
        self.place()
        self.collect()

    def send(self, sid: int, method: str, params: dict[str, Any] | None) -> None:
        self.next_id += 1
        self.asked[(sid, self.next_id)] = 0
        self.h.request(sid, self.next_id, method, params)

    def collect(self) -> None:
        for sid in list(self.h.inbox):
            for message in self.h.replies(sid):
                key = (sid, message["id"])
                if key in self.asked:
                    self.asked[key] += 1
            self.h.inbox[sid] = [m for m in self.h.inbox[sid] if "method" in m]

    def nothing_waits_on_nothing(self) -> None:
        """Whatever waits has a backend running or on its way, or waits on its own client's roots (for
        a few ticks at most: `drain` lets silent clients time out)."""
        mux = self.h.mux
        for sid, session in mux.sessions.items():
            if mux.busy(sid) and session.roots_signature != ASKING:
                assert mux.backend.state != DOWN, f"session {sid} waits on a backend nothing starts"

    def drain(self) -> None:
        """Let the broker, the backend and every client do their part until nothing moves."""
        for _ in range(12):
            self.spawn()
            self.initialize(True)
            self.answer_all()
            for sid in list(self.h.mux.sessions):
                self.settle_roots(sid)
            self.h.perform(self.h.mux.tick())
            self.place()
            self.collect()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entry=st.sampled_from([None, {}, ENTRY]), lazy=st.booleans(), decided=st.booleans(), steps=STEPS)
@example(
    ENTRY,
    True,
    False,
    [("open", 1, False, False, False), ("open", 2, True, False, False), ("request", 2, "tools/call")],
)
@example(
    {},
    False,
    False,
    [
        ("open", 1, False, False, False),
        ("spawn",),
        ("open", 2, True, False, False),
        ("request", 2, "tools/call"),
        ("crash",),
    ],
)
def test_no_request_waits_on_a_backend_that_nothing_starts(
    entry: dict[str, Any] | None, lazy: bool, decided: bool, steps: list[tuple[Any, ...]]
) -> None:
    broker = Broker(entry, lazy, decided)
    for step in steps:
        broker.step(step)
        broker.nothing_waits_on_nothing()
    broker.drain()
    assert {key: n for key, n in broker.asked.items() if n != 1} == {}, "each request answered exactly once"
