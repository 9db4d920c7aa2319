"""How a server ends inside the broker: it lingers after its last session, then stops, or hands its sessions
over (`restart`, SIGTERM: they re-attach, to a fresh server or broker), without leaving anything behind.
The broker process ends when every server has (process.py).
"""

from __future__ import annotations

import json
import os
import time

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any, Protocol

    from ..common.logfile import LogFile
    from .eventloop import Callback, EventLoop, Timer
    from .sessions import Session, Sessions
    from .slot import BackendSlot
    from .slots import Slots

    class Owner(Protocol):
        """What a server's lifetime needs from it (server.py)."""

        loop: EventLoop
        log: LogFile
        sessions: Sessions
        slots: Slots
        restarts_before: int

        @property
        def linger(self) -> float: ...
        def perform(self, slot: BackendSlot, actions: list[Any]) -> None: ...
        def finished(self) -> None: ...

FIRST_SESSION_WINDOW = 5.0
"""A new server waits at least this long for its first session, even with --linger 0 (and the broker this long
for its first server, or after its last)."""
HANDOVER_DRAIN = 5.0
"""A handover (restart, SIGTERM) waits this long for the requests in flight before it stops the backends."""
DRAIN_POLL = 0.02
EXIT_POLL = 0.05
HANDED_OVER = "restarts_handed_over"
"""In the state file a broker leaves after a handover: per key, the restarts the next server goes on counting from
(a server restarted alone is followed within the same broker: `Broker.handed_over`)."""
HANDED_OVER_WINDOW = 60.0
"""A handover's sessions re-attach within seconds; an older note was left by a broker none followed (its
sessions had all ended), and a broker started later for the key is a fresh start, not a restart."""


def restarts_handed_over(state_path: str) -> dict[str, int]:
    """What the previous broker handed over, per key (read before our own state file replaces its)."""
    try:
        with open(state_path) as handle:
            age = time.time() - os.fstat(handle.fileno()).st_mtime
            restarts = json.load(handle).get(HANDED_OVER, {})
    except (OSError, ValueError, AttributeError):
        return {}
    if age > HANDED_OVER_WINDOW or not isinstance(restarts, dict):
        return {}
    return {key: count for key, count in restarts.items() if isinstance(count, int) and count >= 0}


class Lifetime:
    """A server's linger timer, its shutdown (a stop or a handover) and its end."""

    def __init__(self, server: Owner) -> None:
        self.server = server
        self.loop = server.loop
        self.log = server.log
        self.linger_timer: Timer | None = None
        self.stopping = False
        self.restarts_handed_over: int | None = None  # set by a handover

    # ---- linger -------------------------------------------------------------------------------

    def arm_linger(self) -> None:
        """No session left: stay `linger` seconds to keep the backend warm; not at all when there is none to keep
        (it is broken, or ended with its session: isolated or holding roots)."""
        server = self.server
        if server.sessions or self.stopping or self.linger_timer is not None:
            return
        if not server.sessions.next_sid:
            delay = max(server.linger, FIRST_SESSION_WINDOW)  # the shim that asked for us is on its way
        elif all(slot.fatal is not None or slot.retiring for slot in server.slots):
            delay = 0.0
        else:
            delay = server.linger
        self.linger_timer = self.loop.call_later(delay, lambda: self.shutdown("no sessions left"))

    def cancel_linger(self) -> None:
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None

    # ---- shutdown -----------------------------------------------------------------------------

    def shutdown(self, why: str, handover: bool = False, crashed: bool = False) -> None:
        """Stop taking sessions, retire every slot (ladder), then exit.

        The sessions end (`stop`), or with `handover` (`restart`, SIGTERM) are told to re-attach to the next
        broker: their input is read no further than the end of a line begun (the rest is the next broker's),
        the requests in flight get up to HANDOVER_DRAIN to finish, and what is still owed then is answered
        with an error here (the next broker never saw those requests); only once the backends are gone are
        the waiters told, so the next broker never runs next to this one's backends. `crashed` (an internal
        error ended the server): they are not told `reattach` but see end of file, a crash to their guard.

        The socket stays until the exit: `status` is answered meanwhile (`ls` shows the broker stopping, and
        `reap` does not take a broker that drains for a hung one); attaching shims are turned away and retry."""
        if self.stopping:
            return
        self.stopping = True
        if handover:  # counted now: the slots are gone by the time the state file is left
            self.restarts_handed_over = self.server.restarts_before + 1 + max(
                (slot.life.restarts for slot in self.server.slots), default=0
            )
        self.cancel_linger()
        self.log.write(f"shutting down: {why}" + (" (handing the sessions over)" if handover else ""))
        if not handover:
            self.server.sessions.end_all()
            self._retire_all()
            return
        self.server.sessions.hand_over(orderly=not crashed)
        self._drain(why, time.monotonic() + HANDOVER_DRAIN)

    def _drain(self, why: str, deadline: float) -> None:
        sessions = self.server.sessions
        waiting = [s for s in sessions if s.slot.mux.busy(s.sid) or s.reader.mid_line]
        if waiting and time.monotonic() < deadline:
            self.loop.call_later(DRAIN_POLL, lambda: self._drain(why, deadline))
            return
        if waiting:
            self._answer_the_rest(why, waiting)
        self._retire_all(before_exit=sessions.end_all)

    def _answer_the_rest(self, why: str, waiting: list[Session]) -> None:
        """The drain is over: what the sessions still wait for, or were still writing, is answered with an error."""
        reason = f"the broker restarted ({why}) before this request was answered; send it again"
        writing = [s for s in waiting if s.reader.mid_line]
        for session in writing:
            self.server.sessions.cut_short(session, f"mcpsingleton: {reason}")
        for slot in self.server.slots:
            self.server.perform(slot, slot.mux.hand_over(reason))
        self.log.write(
            f"handover: after {HANDOVER_DRAIN:g}s, {len(waiting)} session(s) still waited for replies "
            f"({len(writing)} in the middle of a request line); what they waited for was answered with an error"
        )

    def _retire_all(self, before_exit: Callback | None = None) -> None:
        slots = list(self.server.slots)
        remaining = {slot.number for slot in slots}

        def finish() -> None:
            if before_exit is not None:
                before_exit()
            self._exit()

        if not remaining:
            finish()
        for slot in slots:

            def retired(number: int = slot.number) -> None:
                remaining.discard(number)
                if not remaining:
                    finish()

            self.server.slots.retire(slot, retired, strays=True)

    def _exit(self) -> None:
        if self.server.sessions or self.server.sessions.telling:  # ending sessions flush (END_GRACE at most)
            self.loop.call_later(EXIT_POLL, self._exit)
            return
        self.server.finished()
