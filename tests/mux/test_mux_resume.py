"""A session's state as its waiter keeps it (sans-IO): a new broker's mux goes on from the snapshot the old
one gave, with no initialize from the client; its log level and subscriptions reach the new backend."""

from __future__ import annotations

from mux_harness import Harness

from mcpsingleton.common import wire

ROOTS = {"roots": {"listChanged": True}}


def session_with_state(h: Harness) -> None:
    h.open(1, capabilities=ROOTS, version="2025-06-18", client="claude")
    h.reply(1, h.requests_to(1, "roots/list")[-1], {"roots": [{"uri": "file:///work", "name": "work"}]})
    h.request(1, "lvl", "logging/setLevel", {"level": "warning"})
    h.request(1, "sub", "resources/subscribe", {"uri": "file:///watched"})
    h.answer(h.last_request("resources/subscribe"))


def carried(h: Harness) -> dict:
    """The snapshot as it travels: through the waiter's `state` line and back in the hello."""
    line = wire.state_line(h.mux.session_state(1))
    assert line.startswith(b"state ") and line.endswith(b"\n")
    state = wire.decode_state(line[len(b"state ") : -1].decode())
    assert state is not None
    return state


def test_a_new_mux_goes_on_from_the_snapshot_without_an_initialize() -> None:
    old = Harness()
    session_with_state(old)
    state = carried(old)
    new = Harness()
    new.perform(new.mux.open_session(1, parked=True))
    new.perform(new.mux.resume_session(1, state))
    assert new.backend_requests("initialize")[0]["params"]["protocolVersion"] == "2025-06-18"
    assert new.mux.placeable(1) == ("file:///work",), "placed by the roots it declared before"
    new.perform(new.mux.unpark(1))
    assert [m["params"] for m in new.backend_requests("resources/subscribe")] == [{"uri": "file:///watched"}]
    assert [m["params"] for m in new.backend_requests("logging/setLevel")] == [{"level": "warning"}]
    new.request(1, 7, "tools/call", {"name": "echo"})
    assert new.backend_requests("tools/call"), "its requests go on at once"
    assert new.mux.client_name(1) == "claude"
    assert new.mux.session_state(1) == old.mux.session_state(1), "the next broker is told the same"


def test_log_level_and_subscriptions_wait_for_the_backend() -> None:
    old = Harness()
    session_with_state(old)
    new = Harness(auto_initialize=False)
    new.perform(new.mux.open_session(1))
    new.perform(new.mux.resume_session(1, carried(old)))
    assert new.backend_requests("resources/subscribe") == [] and new.backend_requests("logging/setLevel") == []
    new.answer(new.last_request("initialize"), new.init_result)
    assert [m["params"]["uri"] for m in new.backend_requests("resources/subscribe")] == ["file:///watched"]
    assert [m["params"]["level"] for m in new.backend_requests("logging/setLevel")] == ["warning"]


def test_a_resumed_session_moved_to_another_mux_keeps_what_it_carries() -> None:
    old = Harness()
    session_with_state(old)
    first, second = Harness(), Harness()
    first.perform(first.mux.open_session(1, parked=True))
    first.perform(first.mux.resume_session(1, carried(old)))
    moved, actions = first.mux.export_session(1)
    first.perform(actions)
    second.perform(second.mux.adopt_session(moved))
    second.start()  # as the broker starts a slot it creates
    assert [m["params"]["uri"] for m in second.backend_requests("resources/subscribe")] == ["file:///watched"]
    assert first.backend_requests("resources/subscribe") == [], "nothing of it reached the first backend"


def test_a_poisoned_snapshot_is_served_as_far_as_it_is_sound() -> None:
    h = Harness()
    h.perform(h.mux.open_session(1))
    poison = {"version": 3, "capabilities": "all", "level": "loud", "subscriptions": [1, "file:///a"], "roots": "x"}
    h.perform(h.mux.resume_session(1, {**poison, "initialized": True}))
    h.request(1, 2, "tools/call", {"name": "echo"})
    assert h.backend_requests("tools/call")
    assert [m["params"]["uri"] for m in h.backend_requests("resources/subscribe")] == ["file:///a"]
    assert h.backend_requests("logging/setLevel") == []


def test_state_beyond_the_limit_is_not_carried_and_garbage_is_no_state() -> None:
    huge = {"roots": [{"uri": f"file:///{index:06}"} for index in range(2000)]}
    assert wire.state_line(huge) == b"state -\n"
    assert wire.decode_state("-") is None
    assert wire.decode_state("bm90IGpzb24=") is None  # "not json"
    assert wire.decode_state("WzFd") is None  # [1]: not an object
