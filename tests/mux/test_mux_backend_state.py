"""The mux's view of the backend is a transition table: every listed move works, every other one raises."""

from __future__ import annotations

import pytest
from mux_harness import Harness

from mcpsingleton.mux import IllegalTransition
from mcpsingleton.mux.backend_state import STATES, TRANSITIONS, BackendView

EVENTS = sorted({event for _, event in TRANSITIONS})


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("event", EVENTS)
def test_each_event_moves_as_the_table_says_or_raises(state: str, event: str) -> None:
    view = BackendView()
    view.state = state
    expected = TRANSITIONS.get((state, event))
    if expected is None:
        with pytest.raises(IllegalTransition, match=f"{event!r} is illegal in state {state!r}"):
            view.handle(event)
        assert view.state == state
    else:
        view.handle(event)
        assert view.state == expected


def test_a_second_backend_started_is_refused_by_the_mux() -> None:
    """The broker reports a start only for a backend the mux knows to be down or asked for."""
    h = Harness()
    h.open(1)
    assert h.mux.backend_ready()
    with pytest.raises(IllegalTransition, match="'started' is illegal in state 'ready'"):
        h.mux.backend_started()


def test_an_exit_is_legal_in_every_state_and_a_start_follows_it() -> None:
    h = Harness(auto_initialize=False)
    h.open(1)
    assert h.mux.backend.state == "initializing"
    h.crash()
    assert h.mux.backend.state == "down"
    h.start()
    assert h.mux.backend.state == "initializing", "a backend once wanted is initialized as soon as it runs"
