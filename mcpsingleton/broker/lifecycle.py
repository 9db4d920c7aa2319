"""The lifecycle of one backend, as data: states, events, the allowed transitions, the restart backoff.

The broker drives it (slot.py), and `ls` and `metrics` read the state it publishes (`shown()`, one of SHOWN_STATES), so
the three always agree. An event that the table does not allow raises: a bug shows up where it
happens instead of as a wedged backend later.

    state        event      next         when
    idle         spawned    starting     the first backend process of this slot is running
    idle         lost       failed       the first backend could not even be spawned
    starting     ready      running      it answered initialize
    starting     lost       failed       it died, or stopped reading, before ever answering
    running      lost       restarting   it died, stopped reading, or outgrew its caps
    restarting   spawned    restarting   a replacement process is running (not yet initialized)
    restarting   lost       restarting   the replacement died too, or could not be spawned
    restarting   ready      running      the replacement answered initialize
    running      reclaim    reclaiming   idle long enough, and nothing it holds can be lost (--idle, the budget)
    reclaiming   stopped    reclaimed    the stop ladder is done: no process, the sessions stay
    reclaimed    spawned    waking       a request needs it again
    reclaimed    lost       restarting   it could not be spawned again (it has worked: backoff, on demand)
    waking       ready      running      it answered initialize again
    waking       lost       restarting   it died before that (it has worked: a crash, not a failure)
    idle, starting, running, restarting, failed, reclaiming, reclaimed, waking:
                 stop       stopping     the broker retires the slot
    stopping     stopped    stopped      the process tree is gone
"""

from __future__ import annotations

IDLE = "idle"
STARTING = "starting"
RUNNING = "running"
RESTARTING = "restarting"
FAILED = "failed"
STOPPING = "stopping"
STOPPED = "stopped"
RECLAIMING = "reclaiming"
RECLAIMED = "reclaimed"
WAKING = "waking"

SPAWNED = "spawned"
READY = "ready"
LOST = "lost"
STOP = "stop"
DONE = "stopped"
RECLAIM = "reclaim"

TRANSITIONS: dict[tuple[str, str], str] = {
    (IDLE, SPAWNED): STARTING,
    (IDLE, LOST): FAILED,
    (STARTING, READY): RUNNING,
    (STARTING, LOST): FAILED,
    (RUNNING, LOST): RESTARTING,
    (RESTARTING, SPAWNED): RESTARTING,
    (RESTARTING, LOST): RESTARTING,
    (RESTARTING, READY): RUNNING,
    (RUNNING, RECLAIM): RECLAIMING,
    (RECLAIMING, DONE): RECLAIMED,
    (RECLAIMED, SPAWNED): WAKING,
    (RECLAIMED, LOST): RESTARTING,
    (WAKING, READY): RUNNING,
    (WAKING, LOST): RESTARTING,
    **{(state, STOP): STOPPING for state in (IDLE, STARTING, RUNNING, RESTARTING, FAILED)},
    **{(state, STOP): STOPPING for state in (RECLAIMING, RECLAIMED, WAKING)},
    (STOPPING, DONE): STOPPED,
}

SHOWN_STATES = ("idle", "starting", "running", "lingering", "restarting", "stopping")
"""What `ls` and `--json` show (a fixed contract); `lingering` is `running` with no session attached."""
SHOWN = {RECLAIMING: IDLE, RECLAIMED: IDLE, WAKING: STARTING}
"""A reclaimed backend is shown as one that has not started yet: no process, back on the next request."""
UP_STATES = ("running", "lingering")
"""Shown states in which the backend serves requests (the `mcpsingleton_backend_up` metric)."""

FIRST_DELAY = 0.25
"""Seconds before the first restart in a crash streak; each further crash doubles it…"""
MAX_DELAY = 30.0
"""…up to this."""
STREAK_RESET = 60.0
"""A backend that lived this long before it was lost starts a fresh streak (restarts at once)."""


class IllegalTransition(RuntimeError):
    pass


class Lifecycle:
    """One backend slot's state and crash streak."""

    __slots__ = ("restarts", "state", "streak")

    def __init__(self) -> None:
        self.state = IDLE
        self.streak = 0
        self.restarts = 0

    def fire(self, event: str) -> str:
        """Apply `event`; the new state. Raises IllegalTransition for an event the table does not allow."""
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(f"backend lifecycle: {event!r} is not allowed in state {self.state!r}") from None
        return self.state

    def lost(self, lived: float) -> str:
        """The backend is gone after `lived` seconds (0 when it could not even be spawned)."""
        if self.state in (RUNNING, RESTARTING, RECLAIMED, WAKING):
            self.restarts += 1
            self.streak = 0 if lived > STREAK_RESET else self.streak + 1
        return self.fire(LOST)

    def restart_delay(self) -> float:
        """How long to wait before the next spawn: 0 at first, then exponential within a crash streak."""
        return 0.0 if self.streak == 0 else min(FIRST_DELAY * 2 ** (self.streak - 1), MAX_DELAY)

    @property
    def live(self) -> bool:
        """Not failed, stopping or stopped: the slot may still spawn a backend."""
        return self.state in (IDLE, STARTING, RUNNING, RESTARTING, RECLAIMING, RECLAIMED, WAKING)

    @property
    def initializing(self) -> bool:
        """A backend process runs that has not answered initialize yet."""
        return self.state in (STARTING, RESTARTING, WAKING)

    def shown(self, has_sessions: bool) -> str:
        """The state as `ls` shows it (one of SHOWN_STATES)."""
        if self.state == RUNNING:
            return RUNNING if has_sessions else "lingering"
        if self.state in (FAILED, STOPPED):
            return STOPPING  # a failed slot is on its way out: its sessions were told why
        return SHOWN.get(self.state, self.state)
