"""How a broker ends: it lingers after its last session, then stops, or hands its sessions over to a fresh
broker (`restart`, SIGTERM), and exits without leaving anything behind.
"""

from __future__ import annotations

import json
import os
import time

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from .broker import Broker
    from .eventloop import Callback, Timer

FIRST_SESSION_WINDOW = 5.0
"""A new broker waits at least this long for its first session, even with --linger 0."""
HANDOVER_DRAIN = 5.0
"""A handover (restart, SIGTERM) waits this long for the requests in flight before it stops the backends."""
DRAIN_POLL = 0.02
EXIT_POLL = 0.05


class Lifetime:
    """The broker's linger timer, its shutdown (a stop or a handover) and its exit."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.loop = broker.loop
        self.log = broker.log
        self.linger_timer: Timer | None = None
        self.stopping = False

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

    def shutdown(self, why: str, handover: bool = False) -> None:
        """Stop taking sessions, retire every slot (ladder), then exit.

        The sessions end (`stop`), or with `handover` (`restart`, SIGTERM) are told to re-attach to the next
        broker: their input is no longer read, the requests in flight get up to HANDOVER_DRAIN to finish
        (the rest are answered with an error when the backend stops), and only once the backends are gone
        are the waiters told, so the next broker never runs next to this one's backends."""
        if self.stopping:
            return
        self.stopping = True
        self.cancel_linger()
        self.log.write(f"shutting down: {why}" + (" (handing the sessions over)" if handover else ""))
        self.broker.listener.close()
        if not handover:
            self.broker.sessions.end_all()
            self._retire_all()
            return
        self.broker.sessions.hand_over()
        self._drain(time.monotonic() + HANDOVER_DRAIN)

    def _drain(self, deadline: float) -> None:
        busy = [s for s in self.broker.sessions if s.slot.mux.busy(s.sid)]
        if busy and time.monotonic() < deadline:
            self.loop.call_later(DRAIN_POLL, lambda: self._drain(deadline))
            return
        if busy:
            self.log.write(f"handover: {len(busy)} session(s) still had requests in flight; they get errors")
        self._retire_all(before_exit=self.broker.sessions.end_all)

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
        try:
            with open(broker.paths.state) as handle:
                if json.load(handle).get("broker_pid") == os.getpid():
                    os.unlink(broker.paths.state)
        except (OSError, ValueError):
            pass
        self.log.write(f"broker {os.getpid()} exited")
        os.close(broker.lock_fd)  # last: a new broker may start from here on
        self.loop.stop()
