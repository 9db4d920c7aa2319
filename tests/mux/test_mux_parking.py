"""Parking (sans-IO): a parked session's handshake is served, nothing of it reaches the backend until it is
placed, and export/adopt moves it between two muxes with its roots and what it sent meanwhile; a session that
never answers the broker's roots/list is taken as declaring none after a few of the broker's ticks."""

from __future__ import annotations

from mux_harness import Harness, parked

from mcpsingleton.mux import jsonrpc
from mcpsingleton.mux.roots import NO_ROOTS, QUIET_TICKS, ROOTS_WAIT_TICKS

ROOTS_CAPABILITY = {"roots": {"listChanged": True}}


def answer_roots(h: Harness, sid: int, uris: list[str]) -> None:
    request = h.requests_to(sid, "roots/list")[-1]
    h.reply(sid, request, {"roots": [{"uri": uri} for uri in uris]})


def test_a_parked_session_is_initialized_but_its_requests_wait() -> None:
    h = Harness()
    h.open(1)
    parked(h, 2)
    h.clear()
    h.request(2, "call", "tools/call", {"name": "echo"})
    h.notify(2, "notifications/other")
    assert h.backend_requests("tools/call") == [] and h.backend_notes("notifications/other") == []
    assert h.mux.busy(2)
    h.perform(h.mux.unpark(2))
    assert [m["method"] for m in h.backend if "method" in m] == ["tools/call", "notifications/other"]


def test_placeable_once_roots_are_known() -> None:
    h = Harness()
    h.open(1)
    parked(h, 2, ROOTS_CAPABILITY)
    assert h.mux.placeable(2) is None, "its roots/list answer is still awaited"
    answer_roots(h, 2, ["file:///b", "file:///a"])
    assert h.mux.placeable(2) == ("file:///a", "file:///b")
    parked(h, 3)
    assert h.mux.placeable(3) == NO_ROOTS


def test_a_request_before_the_handshake_ends_places_the_session_as_rootless() -> None:
    h = Harness()
    h.open(1)
    parked(h, 2, initialized=False)
    assert h.mux.placeable(2) is None
    h.request(2, "call", "tools/list")
    assert h.mux.placeable(2) == NO_ROOTS


def test_export_and_adopt_move_a_session_with_its_roots_and_held_requests() -> None:
    shared, own = Harness(), Harness()
    shared.open(1, capabilities=ROOTS_CAPABILITY)
    answer_roots(shared, 1, ["file:///one"])
    parked(shared, 2, ROOTS_CAPABILITY)
    answer_roots(shared, 2, ["file:///two"])
    shared.request(2, "call", "tools/call", {"name": "echo"})
    shared.clear()
    state, actions = shared.mux.export_session(2)
    shared.perform(actions)
    assert 2 not in shared.mux.sessions and shared.backend == []
    own.perform(own.mux.adopt_session(state))
    initialize = own.backend_requests("initialize")[0]
    assert initialize["params"]["protocolVersion"] == "2025-03-26", "the moved session's version"
    call = own.backend_requests("tools/call")[0]
    own.answer(call, {"content": []})
    assert own.only_reply(2)["id"] == "call"
    own.from_backend(jsonrpc.request("q", "roots/list"))
    assert own.backend_responses()[-1]["result"] == {"roots": [{"uri": "file:///two"}]}
    shared.from_backend(jsonrpc.request("q", "roots/list"))
    assert shared.backend_responses()[-1]["result"] == {"roots": [{"uri": "file:///one"}]}


def test_a_parked_session_s_roots_do_not_count_until_it_is_placed() -> None:
    h = Harness()
    h.open(1, capabilities=ROOTS_CAPABILITY)
    answer_roots(h, 1, ["file:///one"])
    parked(h, 2)
    h.from_backend(jsonrpc.request("q", "roots/list"))
    assert h.backend_responses()[-1]["result"] == {"roots": [{"uri": "file:///one"}]}
    assert h.mux.roots.placed_signatures() == {("file:///one",)}
    h.perform(h.mux.unpark(2))
    h.from_backend(jsonrpc.request("q2", "roots/list"))
    assert h.backend_responses()[-1]["result"] == {"roots": []}


def test_a_big_request_of_a_parked_session_waits_too() -> None:
    """Big lines may take a shortcut past the full parser; not around parking."""
    h = Harness()
    h.open(1)
    parked(h, 2)
    h.clear()
    h.request(2, "big", "tools/call", {"name": "echo", "arguments": {"text": "x" * 100_000}})
    assert h.backend_requests("tools/call") == []
    h.perform(h.mux.unpark(2))
    assert len(h.backend_requests("tools/call")) == 1


# ---- issue 19 row 9: a client that never answers the broker's roots/list -------------------


def tick(h: Harness, times: int) -> None:
    for _ in range(times):
        h.perform(h.mux.tick())


def test_a_session_that_never_says_its_roots_is_taken_as_declaring_none() -> None:
    h = Harness()
    h.open(1, capabilities=ROOTS_CAPABILITY)  # asked for its roots; it never answers
    h.from_backend(jsonrpc.request("q", "roots/list"))
    assert h.backend_responses() == [], "the backend's roots/list waits for the session's roots"
    assert h.mux.ticking()
    tick(h, ROOTS_WAIT_TICKS - 1)
    assert h.backend_responses() == []
    tick(h, 1)
    assert h.backend_responses()[-1] == {"jsonrpc": "2.0", "id": "q", "result": {"roots": []}}
    assert h.mux.sessions[1].roots_signature == NO_ROOTS
    assert any("no answer to roots/list" in line for line in h.logs)


def test_a_parked_session_that_never_says_its_roots_is_placed_after_the_wait() -> None:
    h = Harness()
    h.open(1)
    parked(h, 2, ROOTS_CAPABILITY)
    h.request(2, "call", "tools/call", {"name": "echo"})
    assert h.mux.placeable(2) is None
    tick(h, ROOTS_WAIT_TICKS)
    assert h.mux.placeable(2) == NO_ROOTS


def test_a_late_roots_answer_still_counts_as_a_change() -> None:
    h = Harness()
    h.open(1, capabilities=ROOTS_CAPABILITY)
    asked = h.requests_to(1, "roots/list")[-1]
    tick(h, ROOTS_WAIT_TICKS)
    h.clear()
    h.reply(1, asked, {"roots": [{"uri": "file:///late"}]})
    assert h.mux.sessions[1].roots_signature == ("file:///late",)
    assert h.backend_notes("notifications/roots/list_changed")


def test_ticks_stop_once_nothing_waits_on_time() -> None:
    h = Harness()
    h.open(1)
    assert h.mux.ticking(), "a ready backend that has not asked for roots yet may still ask"
    tick(h, QUIET_TICKS)
    assert h.mux.roots.quiet and not h.mux.ticking()
