"""How a broker ends: it lingers after its last session, then stops, or hands its sessions over to a fresh
broker (`restart`, SIGTERM), and exits without leaving anything behind.
"""

from __future__ import annotations

import json
import os
import time

from .atomic import write_atomically

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from .broker import Broker
    from .eventloop import Callback, Timer
    from .sessions import Session

FIRST_SESSION_WINDOW = 5.0
"""A new broker waits at least this long for its first session, even with --linger 0."""
HANDOVER_DRAIN = 5.0
"""A handover (restart, SIGTERM) waits this long for the requests in flight before it stops the backends."""
DRAIN_POLL = 0.02
EXIT_POLL = 0.05
HANDED_OVER = "restarts_handed_over"
"""In the state file a broker leaves after a handover: the restarts the next broker goes on counting from."""
HANDED_OVER_WINDOW = 60.0
"""A handover's sessions re-attach within seconds; an older note was left by a broker none followed (its
sessions had all ended), and a broker started later for the key is a fresh start, not a restart."""


def restarts_handed_over(state_path: str) -> int:
    """What the previous broker for this key handed over (read before our own state file replaces its)."""
    try:
        with open(state_path) as handle:
            age = time.time() - os.fstat(handle.fileno()).st_mtime
            restarts = json.load(handle).get(HANDED_OVER, 0)
    except (OSError, ValueError, AttributeError):
        return 0
    fresh = age <= HANDED_OVER_WINDOW
    return restarts if fresh and isinstance(restarts, int) and restarts >= 0 else 0


class Lifetime:
    """The broker's linger timer, its shutdown (a stop or a handover) and its exit."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.loop = broker.loop
        self.log = broker.log
        self.linger_timer: Timer | None = None
        self.stopping = False
        self.restarts_handed_over: int | None = None  # set by a handover

    # ---- linger -------------------------------------------------------------------------------

    def arm_linger(self) -> None:
        """No session left: stay `linger` seconds to keep the backend warm; not at all when there is none to keep
        (it is broken, or ended with its session: isolated or holding roots)."""
        broker = self.broker
        if broker.sessions or self.stopping or self.linger_timer is not None:
            return
        if not broker.sessions.next_sid:
            delay = max(broker.linger, FIRST_SESSION_WINDOW)  # the shim that started us is on its way
        elif all(slot.fatal is not None or slot.retiring for slot in broker.slots):
            delay = 0.0
        else:
            delay = broker.linger
        self.linger_timer = self.loop.call_later(delay, lambda: self.shutdown("no sessions left"))

    def cancel_linger(self) -> None:
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None

    # ---- shutdown -----------------------------------------------------------------------------

    def _leave_state(self) -> None:
        """Remove our state file; after a handover, leave in it the restarts so far, this one counted, for
        the next broker (`restarts_handed_over`): to the user a `restart` is a restart of the backend."""
        path = self.broker.paths.state
        try:
            with open(path) as handle:
                state = json.load(handle)
            if state.get("broker_pid") != os.getpid():
                return
            if self.restarts_handed_over is None:
                os.unlink(path)
                return
            write_atomically(path, json.dumps({**state, HANDED_OVER: self.restarts_handed_over}).encode())
        except (OSError, ValueError):
            pass

    def shutdown(self, why: str, handover: bool = False) -> None:
        """Stop taking sessions, retire every slot (ladder), then exit.

        The sessions end (`stop`), or with `handover` (`restart`, SIGTERM) are told to re-attach to the next
        broker: their input is read no further than the end of a line begun (the rest is the next broker's),
        the requests in flight get up to HANDOVER_DRAIN to finish, and what is still owed then is answered
        with an error here (the next broker never saw those requests); only once the backends are gone are
        the waiters told, so the next broker never runs next to this one's backends.

        The socket stays until the exit: `status` is answered meanwhile (`ls` shows the broker stopping, and
        `reap` does not take a broker that drains for a hung one); attaching shims are turned away and retry."""
        if self.stopping:
            return
        self.stopping = True
        if handover:  # counted now: the slots are gone by the time the state file is left
            self.restarts_handed_over = self.broker.restarts_before + 1 + max(
                (slot.life.restarts for slot in self.broker.slots), default=0
            )
        self.cancel_linger()
        self.log.write(f"shutting down: {why}" + (" (handing the sessions over)" if handover else ""))
        if not handover:
            self.broker.sessions.end_all()
            self._retire_all()
            return
        self.broker.sessions.hand_over()
        self._drain(why, time.monotonic() + HANDOVER_DRAIN)

    def _drain(self, why: str, deadline: float) -> None:
        sessions = self.broker.sessions
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
            self.broker.sessions.cut_short(session, f"mcpsingleton: {reason}")
        for slot in self.broker.slots:
            self.broker.perform(slot, slot.mux.hand_over(reason))
        self.log.write(
            f"handover: after {HANDOVER_DRAIN:g}s, {len(waiting)} session(s) still waited for replies "
            f"({len(writing)} in the middle of a request line); what they waited for was answered with an error"
        )

    def _retire_all(self, before_exit: Callback | None = None) -> None:
        slots = list(self.broker.slots)
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

            self.broker.slots.retire(slot, retired, strays=True)

    def _exit(self) -> None:
        broker = self.broker
        if broker.sessions or broker.sessions.telling:  # wait for ending sessions to flush (bounded by END_GRACE)
            self.loop.call_later(EXIT_POLL, self._exit)
            return
        if broker.keeper is not None:
            broker.keeper.close()
            broker.reap()
        self._leave_state()
        broker.listener.close()
        self.log.write(f"broker {os.getpid()} exited")
        os.close(broker.lock_fd)  # last: a new broker may start from here on
        self.loop.stop()
