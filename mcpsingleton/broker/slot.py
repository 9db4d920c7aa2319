"""One backend slot of a broker: its multiplexer, its backend process, and that backend's lifecycle.

A slot spawns the backend, feeds it what the mux decides, reads its stdout and stderr, and replaces
it when it is lost: crashed, stopped reading its stdin, could not be spawned, or outgrew
--max-memory / --max-procs. Restarts follow lifecycle.py (backoff within a crash streak); only a
backend that never worked in this slot is fatal. The broker owns the sessions and the sockets; it
hands a slot the lines of the sessions mapped to it and performs the actions the slot gives back.
A broker holds one shared slot, plus one per isolated session or per distinct set of roots
(placement.py); each slot keeps every guarantee on its own: caps, restarts, status, its stderr in the log.
"""

from __future__ import annotations

import os
import time
from collections import deque

from .. import __version__
from ..common.logfile import LogFile
from ..common.wire import ISOLATED, BackendStatus
from ..mux import BackendPart, Mux, ToBackend
from ..mux.fast_path import FAST_PATH_ENV, fast_path_threshold
from ..mux.streaming import STREAM_FROM
from ..shim.keys import redacted_argv
from . import lifecycle
from .backend import Backend, Keeper, stop_ladder
from .discovery_cache import load as load_discovery
from .eventloop import Callback, EventLoop, Timer
from .lifecycle import Lifecycle
from .lineio import LineReader, Outbox, Relay
from .placement import may_reclaim

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any, Protocol

    class Host(Protocol):
        """What a slot needs from its broker."""

        def perform(self, slot: BackendSlot, actions: list[Any]) -> None: ...
        def pause_sessions(self, slot: BackendSlot, paused: bool) -> None: ...
        def slot_failed(self, slot: BackendSlot, reason: str) -> None: ...
        def has_sessions(self, slot: BackendSlot) -> bool: ...
        def reap(self) -> None: ...
        def slot_ready(self, slot: BackendSlot) -> None: ...
        def backend_stderr(self, slot: BackendSlot, lines: list[bytes]) -> None: ...
        def may_start(self, slot: BackendSlot) -> str | None:
            """None: spawn it; else why not (the budget), one line for the requests that needed it."""


PAUSE_AT = 4 * 1024 * 1024
"""Input the backend has not read yet beyond which its sessions are no longer read (backpressure)."""
SAMPLE_INTERVAL = 1.0
"""How often the backend tree is measured against --max-memory / --max-procs (only when one is set)."""
IDLE_WAIT = 30.0
"""How long a memory-capped restart waits for in-flight requests to finish."""
STDERR_TAIL = 8
"""Lines of the backend's stderr quoted when it cannot start."""
STDERR_BACKLOG = 64
"""Lines of stderr kept for a backend's session until it is known whether they may go to it."""
EXIT_STATUS_WAIT = 0.2
"""How long a backend whose stdout closed may take to become reapable before it is described anyway."""


class BackendSlot:
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

    def send(self, action: ToBackend) -> None:
        """A message for the backend; pauses the slot's sessions while the backend leaves too much unread."""
        if self.outbox is None:
            return
        if self.streaming:
            self.held.append(action)  # a session's request is half written: this one follows it
            return
        self._write(action.parts())

    def send_part(self, part: BackendPart) -> None:
        """Part of a session's request streamed to the backend (mux/streaming.py); at its end, what waited follows."""
        if self.outbox is None:
            return
        self._write(part.parts)
        self.streaming = not part.done
        if part.done:
            held, self.held = self.held, []
            for action in held:
                self.send(action)

    def _write(self, parts: tuple[bytes | memoryview, ...]) -> None:
        assert self.outbox is not None
        self.last_active = time.monotonic()
        self.outbox.send(*parts)
        if len(self.outbox.pending) > PAUSE_AT and not self.paused:
            self.paused = True
            self.counters["backpressure_pauses"] += 1
            unread = len(self.outbox.pending) >> 20
            self.log.write(f"the backend has {unread} MiB of input unread; pausing its sessions until it reads")
            self.host.pause_sessions(self, True)

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

    def _readable(self, backend: Backend) -> None:
        assert self.stdout is not None
        self.last_active = time.monotonic()
        lines, _, at_eof = self.stdout.read()
        for line in lines:
            self.host.perform(self, self.mux.from_backend(line))
        if at_eof:
            self._gone(backend)
        elif self.life.initializing and self.mux.backend_ready():
            self.life.fire(lifecycle.READY)
            self._arm_idle(backend, self.idle_after)
            self.host.slot_ready(self)
        elif self.life.state == lifecycle.RUNNING:
            self.stdout.stream(STREAM_FROM, self._open_stream)

    def _open_stream(self, line_head: bytes) -> Relay | None:
        """A reply too long to wait for: passed to its session as it arrives, when the mux says it may."""
        stream = self.mux.stream_from_backend(line_head)
        if stream is None:
            return None
        self.host.perform(self, stream.start(line_head))
        return Relay(stream, lambda actions: self.host.perform(self, actions))

    def _stderr_readable(self) -> None:
        assert self.stderr is not None
        lines, _, at_eof = self.stderr.read()
        if at_eof:
            self.loop.remove_reader(self.stderr.fd)
        self._log_stderr(lines)

    def _log_stderr(self, lines: list[bytes]) -> None:
        for line in lines:
            text = line.decode("utf-8", "replace")
            self.stderr_tail.append(text)
            self.log.write(f"{self.label}: {text}")
        if lines:
            self.host.backend_stderr(self, lines)

    def _drain_stderr(self, backend: Backend) -> None:
        if self.stderr is not None and self.stderr.fd == backend.stderr:
            self._log_stderr(self.stderr.drain())

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            self.log.write("the backend has read its input; resuming its sessions")
            self.host.pause_sessions(self, False)

    # ---- losing a backend ---------------------------------------------------------------------

    def _detach(self) -> Backend | None:
        """Stop reading and writing the current backend; it is retired until the ladder has reaped it."""
        backend, self.backend = self.backend, None
        if backend is None:
            return None
        self.loop.remove_reader(backend.stdout)
        self.loop.remove_reader(backend.stderr)
        if self.stdout is not None:
            self.stdout.abort_stream()
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        self.streaming = False
        self.held = []  # what they were is failed with everything the backend owed
        self._resume()
        self.retired.append(backend)
        return backend

    def _gone(self, backend: Backend, waited: float = 0.0) -> None:
        """The backend closed its stdout: it is dead to us. Error its requests, stop what is left of it.

        Its stdout can close a moment before its exit status can be collected; wait for that (briefly), so
        that sessions are told what really happened ("killed by signal 9", not "closed its stdout")."""
        if waited == 0.0:
            self._detach()
            self._drain_stderr(backend)
        self.host.reap()
        if backend.exit_status is None and waited < EXIT_STATUS_WAIT:
            self.loop.call_later(0.01, lambda: self._gone(backend, waited + 0.01))
            return
        status = backend.exit_status
        described = f"exited with status {status}" if status is not None else "closed its stdout"
        if status is not None and status < 0:
            described = f"was killed by signal {-status}"
        stop_ladder(self.loop, backend, self.host.reap, backend.close_pipes, grace=0.5)
        if self.life.state == lifecycle.STARTING:
            tail = " | ".join(self.stderr_tail) or "(no stderr output)"
            self._fail(f"backend `{self.command_text}` {described} before answering initialize; last stderr: {tail}")
            return
        lived = time.monotonic() - backend.started
        self.life.lost(lived)
        self.log.write(f"backend pid {backend.pid} {described} after {lived:.1f}s")
        self._backend_gone(f"the backend {described}")
        if self.mux.needs_backend():
            self.start()  # subscribers expect updates without asking again; parked requests wait for placement

    def _write_failed(self, backend: Backend, exc: OSError) -> None:
        """The backend closed its stdin (EPIPE) yet may run on: it can never answer again, so replace it.

        Deferred to the next loop turn: this runs inside a send, in the middle of performing actions."""
        self.counters["backend_write_failures"] += 1
        reason = f"it stopped reading its input ({exc.strerror or exc})"
        self.loop.call_later(0, lambda: self._replace(backend, reason))

    def _replace(self, backend: Backend, reason: str) -> None:
        """Stop a backend that still runs (ladder), error what it owed, start a fresh one once it is gone."""
        if backend is not self.backend:
            return
        self._detach()
        self.log.write(f"restarting backend pid {backend.pid}: {reason}")
        if self.life.state == lifecycle.STARTING:
            stop_ladder(self.loop, backend, self.host.reap, backend.close_pipes)
            self._fail(f"backend `{self.command_text}` was stopped before answering initialize: {reason}")
            return
        self.life.lost(time.monotonic() - backend.started)
        self._backend_gone(f"the backend was restarted because {reason}")

        def stopped() -> None:
            backend.close_pipes()
            if self.host.has_sessions(self) or self.mux.needs_backend():
                self.start()

        stop_ladder(self.loop, backend, self.host.reap, stopped)

    def _backend_gone(self, reason: str) -> None:
        """The mux errors what the lost backend owed; `ls` and the dashboard show why (`last_error`, when, in UTC;
        words masked as a command's: a server's stderr quoted in the reason may name a secret)."""
        shown = " ".join(redacted_argv(reason.split()))
        self.last_error = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {shown}"
        self.host.perform(self, self.mux.backend_exited(reason))

    def _fail(self, reason: str) -> None:
        """The backend never worked in this slot: every session of the slot is told why."""
        self.life.fire(lifecycle.LOST)
        self.fatal = reason
        self.log.write(reason)
        self._backend_gone(reason)
        self.host.slot_failed(self, reason)

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
