"""A backend slot watching its running backend: idle reclaim (--idle) and the --max-memory / --max-procs caps.

A part of `slot.BackendSlot` (a base class of it); `reclaimable`, which the budget asks too, stays there.
"""

from __future__ import annotations

import time

from . import lifecycle
from .backend import stop_ladder

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

    from ..common.logfile import LogFile
    from ..mux import Mux
    from .backend import Backend
    from .eventloop import Callback, EventLoop, Timer
    from .lifecycle import Lifecycle
    from .slot import Host

SAMPLE_INTERVAL = 1.0
"""How often the backend tree is measured against --max-memory / --max-procs (only when one is set)."""
IDLE_WAIT = 30.0
"""How long a memory-capped restart waits for in-flight requests to finish."""


class SlotWatch:
    """The timers that look at the running backend of `BackendSlot`."""

    spec: dict[str, Any]
    loop: EventLoop
    log: LogFile
    host: Host
    mux: Mux
    life: Lifecycle
    backend: Backend | None
    idle_after: float
    idle_timer: Timer | None
    last_active: float
    after_reclaim: list[Callback]
    counters: dict[str, int]

    if TYPE_CHECKING:  # the rest of `BackendSlot`

        @property
        def label(self) -> str: ...

        def reclaimable(self) -> bool: ...

        def _detach(self) -> Backend | None: ...

        def _replace(self, backend: Backend, reason: str) -> None: ...

    # ---- idle reclaim -------------------------------------------------------------------------

    def _arm_idle(self, backend: Backend, delay: float) -> None:
        """Look at `backend` again in `delay` seconds (one timer per slot: a new backend's replaces the last's)."""
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.idle_after > 0:
            self.idle_timer = self.loop.call_later(delay, lambda: self._idle_check(backend))

    def _idle_check(self, backend: Backend) -> None:
        """--idle: a backend untouched that long is reclaimed when that loses nothing; else looked at again."""
        self.idle_timer = None
        if backend is not self.backend or self.life.state != lifecycle.RUNNING:
            return
        quiet_for = time.monotonic() - self.last_active
        if quiet_for < self.idle_after:
            self._arm_idle(backend, self.idle_after - quiet_for)
        elif self.reclaimable():
            self.reclaim(f"idle for {quiet_for:.0f}s (--idle {self.idle_after:g}s)")
        else:
            self._arm_idle(backend, self.idle_after)

    def reclaim(self, why: str) -> None:
        """Stop a quiet backend (the ladder); the slot stays, and the next request that needs one starts it."""
        backend = self._detach()
        assert backend is not None
        self.life.fire(lifecycle.RECLAIM)
        self.log.write(f"{self.label} pid {backend.pid} stopped: {why}; it starts again when a request needs it")
        self.host.perform(self, self.mux.backend_reclaimed(f"the backend was stopped: {why}"))

        def stopped() -> None:
            backend.close_pipes()
            self.life.fire(lifecycle.DONE)
            waiting, self.after_reclaim = self.after_reclaim, []
            for callback in waiting:
                callback()

        stop_ladder(self.loop, backend, self.host.reap, stopped)

    # ---- resource caps ----------------------------------------------------------------------

    def _sample(self) -> None:
        """Check the backend tree against --max-memory / --max-procs; restart it when it grew past them."""
        from ..common.proctree import parent_map, tree_memory, tree_process_count

        backend = self.backend
        if backend is not None and self.life.state == lifecycle.RUNNING:
            parents = parent_map()
            count = tree_process_count(backend.pid, parents)
            max_procs, max_memory = self.spec.get("max_procs"), self.spec.get("max_memory")
            if max_procs and count > max_procs:
                self._recycle(backend, f"its process tree holds {count} processes (--max-procs {max_procs})")
            elif max_memory and (used := tree_memory(backend.pid, parents)) > max_memory:
                reason = f"its tree uses {used >> 20} MiB (--max-memory {max_memory >> 20} MiB)"
                self._recycle_when_idle(backend, reason, time.monotonic() + IDLE_WAIT)
        if self.life.live:
            self.loop.call_later(SAMPLE_INTERVAL, self._sample)

    def _recycle_when_idle(self, backend: Backend, reason: str, deadline: float) -> None:
        """A leaking backend is replaced between requests where possible, never in the middle of one."""
        if backend is not self.backend:
            return
        if self.mux.has_pending() and time.monotonic() < deadline:
            self.loop.call_later(0.05, lambda: self._recycle_when_idle(backend, reason, deadline))
            return
        self._recycle(backend, reason)

    def _recycle(self, backend: Backend, reason: str) -> None:
        self.counters["limit_restarts"] += 1
        self._replace(backend, reason)
