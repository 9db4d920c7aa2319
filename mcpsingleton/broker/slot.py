"""One backend slot of a broker: its multiplexer, its backend process, and that backend's lifecycle.

A slot spawns the backend, feeds it what the mux decides, reads its stdout and stderr, and replaces
it when it is lost: crashed, stopped reading its stdin, could not be spawned, or outgrew
--max-memory / --max-procs. Restarts follow lifecycle.py (backoff within a crash streak); only a
backend that never worked in this slot is fatal. The broker owns the sessions and the sockets; it
hands a slot the lines of the sessions mapped to it and performs the actions the slot gives back.
Here: the backend's start and stop, status and sharing; its I/O is slot_relay.py's, losing and replacing it
slot_recovery.py's, idle reclaim and the caps slot_watch.py's (each a base class of `BackendSlot`).
A server holds one shared slot, plus one per isolated session or per distinct set of roots
(placement.py); each slot keeps every guarantee on its own: caps, restarts, status, its stderr in the log.
"""

from __future__ import annotations

import os
import time
from collections import deque

from .. import __version__
from ..common.logfile import LogFile
from ..common.wire import ISOLATED, BackendStatus
from ..mux import Mux, ToBackend
from ..mux.fast_path import FAST_PATH_ENV, fast_path_threshold
from ..shim.keys import redacted_argv
from . import lifecycle
from .backend import Backend, Keeper, stop_ladder
from .discovery_cache import load as load_discovery
from .eventloop import Callback, EventLoop, Timer
from .lifecycle import Lifecycle
from .lineio import LineReader, Outbox
from .placement import may_reclaim
from .slot_recovery import SlotRecovery
from .slot_relay import SlotRelay
from .slot_watch import SAMPLE_INTERVAL, SlotWatch

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any, Protocol

    class Host(Protocol):
        """What a slot needs from its broker. (`slot` is the BackendSlot asking: typed Any because its parts,
        slot_relay.py and the others, pass themselves.)"""

        def perform(self, slot: Any, actions: list[Any]) -> None: ...
        def pause_sessions(self, slot: Any, paused: bool) -> None: ...
        def slot_failed(self, slot: Any, reason: str) -> None: ...
        def has_sessions(self, slot: Any) -> bool: ...
        def reap(self) -> None: ...
        def slot_ready(self, slot: Any) -> None: ...
        def backend_stderr(self, slot: Any, lines: list[bytes]) -> None: ...
        def may_start(self, slot: Any) -> str | None:
            """None: spawn it; else why not (the budget), one line for the requests that needed it."""


STDERR_TAIL = 8
"""Lines of the backend's stderr quoted when it cannot start."""
STDERR_BACKLOG = 64
"""Lines of stderr kept for a backend's session until it is known whether they may go to it."""


class BackendSlot(SlotRelay, SlotRecovery, SlotWatch):
    def __init__(
        self,
        number: int,
        spec: dict[str, Any],
        loop: EventLoop,
        log: LogFile,
        keeper: Keeper | None,
        host: Host,
        sharing: str | None = None,
    ) -> None:
        self.number = number
        self.policy = ""
        self.stateless = False  # the server is known to keep nothing between requests (placement.may_reclaim)
        self.retiring = False
        self.used = False  # a session was ever placed here (an isolated slot serves exactly one)
        self.stderr_unsent: deque[bytes] = deque(maxlen=STDERR_BACKLOG)
        self.spec = spec
        self.loop = loop
        self.log = log
        self.keeper = keeper
        self.host = host
        self.mux = Mux(
            "mcpsingleton",
            __version__,
            fast_path_threshold(os.environ.get(FAST_PATH_ENV)),
            # the key's first backend and isolated ones read and write its discovery entry; roots-bound
            # slots do not: their answers may depend on the roots, and must not replace the shared entry
            discovery=load_discovery(spec) if number == 1 or sharing == ISOLATED else None,
            lazy=bool(spec.get("lazy")),
        )
        self.sharing = sharing  # shared|isolated, None while the broker has not decided (placement.py)
        self.life = Lifecycle()
        self.backend: Backend | None = None
        self.retired: list[Backend] = []
        self.outbox: Outbox | None = None
        self.streaming = False  # a session's request is being streamed in: other messages wait in `held`
        self.held: list[ToBackend] = []
        self.stdout: LineReader | None = None
        self.stderr: LineReader | None = None
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self.spawn_timer: Timer | None = None
        self.fatal: str | None = None
        self.last_error: str | None = None  # why a backend of this slot was last lost, for `ls` (_backend_gone)
        self.paused = False
        self.idle_after = float(spec.get("idle") or 0)  # --idle: seconds; 0 = never reclaimed
        self.last_active = time.monotonic()  # the last time the backend was written to or read from
        self.idle_timer: Timer | None = None
        self.after_reclaim: list[Callback] = []  # what waits for a reclaimed backend's process to be gone
        self.counters = dict.fromkeys(
            (
                "limit_restarts",
                "backend_write_failures",
                "spawn_failures",
                "backpressure_pauses",
                "stderr_dropped",
                "budget_refusals",
            ),
            0,
        )
        if spec.get("max_memory") or spec.get("max_procs"):
            loop.call_later(SAMPLE_INTERVAL, self._sample)

    @property
    def sharing(self) -> str | None:
        return self._sharing

    @sharing.setter
    def sharing(self, sharing: str | None) -> None:
        self._sharing = sharing
        self.mux.discovery.own_lists_only = sharing == ISOLATED

    # ---- what the broker asks -----------------------------------------------------------------

    def start_unless_lazy(self) -> None:
        """Start the backend now, unless the cached discovery lets it wait for a request that needs it."""
        if not self.mux.discovery.serves_without_backend():
            self.start()

    def start(self) -> None:
        """Make sure a backend runs (or is about to): at once, or after the crash streak's backoff."""
        if self.backend is not None or self.spawn_timer is not None:
            return
        if self.life.state == lifecycle.RECLAIMING:
            self.after_reclaim.append(self.start)  # the idle one must be gone first (one tree per slot)
            return
        if self.fatal is not None:
            self._backend_gone(self.fatal)
            return
        if not self.life.live:
            return
        delay = self.life.restart_delay()
        if delay:
            self.log.write(f"backend lost {self.life.streak} time(s) in a row; restarting in {delay:.2f}s")
        self.spawn_timer = self.loop.call_later(delay, self._spawn)

    def stop(self, done: Callback, strays: bool = False) -> None:
        """Retire the slot: stop the backend with the ladder (and, with `strays`, what left its group), then `done`."""
        if self.life.state == lifecycle.RECLAIMING:
            self.after_reclaim.append(lambda: self.stop(done, strays))
            return
        self.life.fire(lifecycle.STOP)
        if self.spawn_timer is not None:
            self.spawn_timer.cancel()
            self.spawn_timer = None
        backend = self._detach()

        def stopped() -> None:
            if backend is not None:
                self._drain_stderr(backend)
                backend.close_pipes()
            self.life.fire(lifecycle.DONE)
            done()

        if backend is None:
            stopped()
        else:
            stop_ladder(self.loop, backend, self.host.reap, stopped, strays=strays)

    def mark_exited(self, pid: int, code: int) -> None:
        """A child was reaped: if it was one of our backends, remember its status."""
        for backend in ([self.backend] if self.backend is not None else []) + self.retired:
            if backend.pid == pid:
                backend.mark_exited(code)
            backend.group_alive()  # a group is confirmed gone the moment its last member is reaped
        self.retired = [b for b in self.retired if b.exit_status is None]

    def status(self, has_sessions: bool) -> BackendStatus:
        """This slot's part of the status record (the broker adds who it is and the sessions)."""
        return BackendStatus(
            backend_pid=self.backend.pid if self.backend is not None else None,
            state=self.life.shown(has_sessions),
            restarts=self.life.restarts,
            requests=self.mux.stats.get("requests", 0),
            errors=self.mux.stats.get("errors", 0),
            dropped=self.mux.stats.get("dropped", 0),
            rejected=self.mux.stats.get("rejected", 0),
            internal_errors=self.mux.stats.get("internal_errors", 0),
            max_memory=self.spec.get("max_memory"),
            max_procs=self.spec.get("max_procs"),
            last_error=self.last_error,
            **self.counters,
        )

    def reclaimable(self) -> bool:
        """Whether the running backend may be stopped now without any session losing anything (placement.py):
        the mux is quiet, and no byte is on its way either (a line half read or half written, input unsent)."""
        return (
            self.backend is not None
            and self.life.state == lifecycle.RUNNING
            and not self.streaming
            and not (self.stdout is not None and self.stdout.mid_line)
            and not (self.outbox is not None and self.outbox.pending)
            and self.mux.quiet()
            and may_reclaim(self, self.host.has_sessions(self))
        )

    # ---- spawning and reading -----------------------------------------------------------------

    @property
    def label(self) -> str:
        """How the log names this backend: plain for a broker's first, numbered for the others (`ls` slot)."""
        return "backend" if self.number == 1 else f"backend #{self.number}"

    @property
    def command_text(self) -> str:
        """The backend's command for log lines and errors, secret values masked."""
        return " ".join(redacted_argv(self.spec["argv"]))

    def _spawn(self) -> None:
        self.spawn_timer = None
        if self.backend is not None or not self.life.live:
            return
        refusal = self.host.may_start(self)
        if refusal is not None:
            self.counters["budget_refusals"] += 1
            self.log.write(f"{self.label} not started: {refusal}")
            self.host.perform(self, self.mux.backend_refused(refusal))
            return
        argv = self.spec["argv"]
        try:
            backend = Backend(argv, self.spec["cwd"], self.spec["env"], self.spec["key"], self.keeper)
        except OSError as exc:
            self._spawn_failed(self._why_not_spawned(exc))
            return
        self.life.fire(lifecycle.SPAWNED)
        self.backend = backend
        self.outbox = Outbox(self.loop, backend.stdin, lambda exc: self._write_failed(backend, exc))
        self.outbox.on_drained = self._resume
        self.stdout = LineReader(backend.stdout, 1 << 31, reuse=True)
        self.stderr = LineReader(backend.stderr, 1 << 20)
        self.loop.add_reader(backend.stdout, lambda: self._readable(backend))
        self.loop.add_reader(backend.stderr, self._stderr_readable)
        self.log.write(f"{self.label} started: pid {backend.pid} `{self.command_text}`")
        self.host.perform(self, self.mux.backend_started())

    def _why_not_spawned(self, exc: OSError) -> str:
        """The spawn error says "No such file or directory" alike for a missing program and a deleted directory."""
        program, cwd = self.spec["argv"][0], self.spec["cwd"]
        if not os.path.isdir(cwd):
            return (
                f"cannot start backend {program!r}: its directory {cwd} no longer exists; "
                "restart the server in your client from an existing directory"
            )
        return f"cannot start backend {program!r}: {exc.strerror or exc}"

    def _spawn_failed(self, reason: str) -> None:
        """Like a crash once the backend has worked here (backoff, retry on demand); fatal before that."""
        self.counters["spawn_failures"] += 1
        if self.life.state in (lifecycle.IDLE, lifecycle.STARTING):
            self._fail(reason)
            return
        self.life.lost(0.0)
        self.log.write(reason)
        self._backend_gone(reason)
        if self.mux.needs_backend():
            self.start()
