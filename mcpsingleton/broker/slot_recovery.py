"""A backend slot losing its backend: it crashed, closed its stdout, stopped reading its stdin, or is replaced;
what it owed is errored, and a backend that never worked in the slot is fatal to it.

A part of `slot.BackendSlot` (a base class of it), kept apart from the backend's start and the I/O relay.
"""

from __future__ import annotations

import time

from ..shim.keys import redacted_argv
from . import lifecycle
from .backend import stop_ladder

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections import deque

    from ..common.logfile import LogFile
    from ..mux import Mux, ToBackend
    from .backend import Backend
    from .eventloop import EventLoop
    from .lifecycle import Lifecycle
    from .lineio import LineReader, Outbox
    from .slot import Host

EXIT_STATUS_WAIT = 0.2
"""How long a backend whose stdout closed may take to become reapable before it is described anyway."""


class SlotRecovery:
    """Losing and replacing the backend of `BackendSlot`."""

    loop: EventLoop
    log: LogFile
    host: Host
    mux: Mux
    life: Lifecycle
    backend: Backend | None
    retired: list[Backend]
    outbox: Outbox | None
    streaming: bool
    held: list[ToBackend]
    stdout: LineReader | None
    stderr_tail: deque[str]
    fatal: str | None
    last_error: str | None
    counters: dict[str, int]

    if TYPE_CHECKING:  # the rest of `BackendSlot`

        @property
        def command_text(self) -> str: ...

        def start(self) -> None: ...

        def _resume(self) -> None: ...

        def _drain_stderr(self, backend: Backend) -> None: ...

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
