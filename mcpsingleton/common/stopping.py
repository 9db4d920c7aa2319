"""The stop ladder, shared by every process that stops one: the MCP spec's shutdown, one rung at a time.

The broker climbs it without blocking its loop (`broker/backend.py`), the operator commands block
(`stop_blocking`, used by `reap`)."""

from __future__ import annotations

import signal
import time

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: typing costs every broker ~3 ms and memory at import
if TYPE_CHECKING:
    from typing import Protocol

    class Stoppable(Protocol):
        """Something the stop ladder can stop."""

        def close_input(self) -> bool:
            """Close its stdin; False when it has none to close (then the first wait is skipped)."""
            ...

        def send(self, signum: int) -> None: ...

        def alive(self) -> bool: ...


class StopLadder:
    """The MCP spec's shutdown, one rung at a time: close stdin, wait; SIGTERM, wait; SIGKILL, wait.

    Every stop in mcpsingleton climbs it: the broker's (without blocking its loop: `stop_ladder`) and
    the CLI's (`stop_blocking`, used by `reap`). The keeper's script is the one exception: it runs when
    the broker is dead, in `sh`.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGKILL)

    def __init__(self, target: Stoppable, grace: float) -> None:
        self.target = target
        self.grace = grace
        self._rung = 0

    def climb(self) -> float | None:
        """Take the next rung: how long to give the target now, or None when no rung is left."""
        self._rung += 1
        if self._rung == 1:
            return self.grace if self.target.close_input() else 0.0
        if self._rung - 2 < len(self.SIGNALS):
            self.target.send(self.SIGNALS[self._rung - 2])
            return self.grace
        return None


def stop_blocking(target: Stoppable, grace: float = 3.0, poll: float = 0.02) -> bool:
    """Climb the ladder, sleeping between checks (CLI use); whether the target is gone at the end."""
    ladder = StopLadder(target, grace)
    while (wait := ladder.climb()) is not None:
        deadline = time.monotonic() + wait
        while target.alive():
            if time.monotonic() >= deadline:
                break
            time.sleep(poll)
        else:
            return True
    return not target.alive()


