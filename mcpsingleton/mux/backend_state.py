"""The mux's view of the backend process, as a transition table.

The broker owns the process; the mux only tracks what it may send: nothing before the handshake,
one initialize at a time. Every change goes through `BackendView.handle`, so an impossible sequence
(an initialize answer for a backend that never started) fails loudly instead of corrupting state.
"""

from __future__ import annotations

DOWN = "down"  # no process; the next request asks the broker for one
SPAWNING = "spawning"  # asked for, not yet running
IDLE = "idle"  # running, not initialized (started for a notification, or its initialize was rejected)
INITIALIZING = "initializing"  # the broker's initialize is in flight
READY = "ready"  # initialized: requests go through

STATES = (DOWN, SPAWNING, IDLE, INITIALIZING, READY)

TRANSITIONS: dict[tuple[str, str], str] = {
    (DOWN, "spawn"): SPAWNING,
    (DOWN, "started"): IDLE,  # the broker may restart a backend on its own (sessions hold subscriptions)
    (SPAWNING, "started"): IDLE,
    (IDLE, "initialize"): INITIALIZING,
    (INITIALIZING, "initialized"): READY,
    (INITIALIZING, "rejected"): IDLE,
    **{(state, "exited"): DOWN for state in STATES},
}
"""(state, event) → next state; a pair missing here is an illegal event."""


class IllegalTransition(RuntimeError):
    """A backend event that cannot happen in the current state (a bug in the caller or in the mux)."""


class BackendView:
    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = DOWN

    def handle(self, event: str) -> None:
        following = TRANSITIONS.get((self.state, event))
        if following is None:
            raise IllegalTransition(f"mux: backend event {event!r} is illegal in state {self.state!r}")
        self.state = following

    @property
    def ready(self) -> bool:
        return self.state == READY
