"""Fuzz: arbitrary JSON from sessions and from the backend, across eras, interleaved with sessions
opening and closing and the backend exiting and starting, never raises out of the mux, never needs
its safety net, and leaves every session request answered exactly once by the time the backend has
answered what it was sent and exited."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mux_world import World, capabilities, ops, replies


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    st.lists(ops, min_size=5, max_size=40),
    st.lists(capabilities, min_size=1, max_size=3),
    st.booleans(),
    st.lists(replies, min_size=1, max_size=4),
)
def test_arbitrary_input_never_escapes_and_every_request_is_answered_once(
    steps: list[tuple[str, int, Any]], sessions: list[Any], ready_first: bool, answers: list[dict[str, Any]]
) -> None:
    world = World(answers)
    for declared in sessions:
        world.open_session(declared)
    if ready_first:
        world.drain_once()
    for step in steps:
        world.run(step)
    world.drain()
    assert world.h.mux.stats["internal_errors"] == 0, [line for line in world.h.logs if "internal error" in line]
    for sid in world.open:
        owed, got, exempt = world.owed[sid], world.got[sid], world.exempt[sid]
        for key in owed.keys() | got.keys():
            if key in exempt:
                assert got[key] <= owed[key], f"session {sid}: {key} answered {got[key]} times, sent {owed[key]}"
            else:
                assert got[key] == owed[key], f"session {sid}: {key} answered {got[key]} times, sent {owed[key]}"
        assert not world.h.mux.busy(sid)
