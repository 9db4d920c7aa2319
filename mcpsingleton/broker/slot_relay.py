"""A backend slot's I/O relay: what the backend is sent (held while a session's request streams in; pausing the
slot's sessions while the backend leaves too much unread), and what it writes: stdout to the mux, stderr to the log.

A part of `slot.BackendSlot` (a base class of it), kept apart from the backend's start and stop.
"""

from __future__ import annotations

import time

from ..mux.streaming import STREAM_FROM
from . import lifecycle
from .lineio import Relay

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections import deque

    from ..common.logfile import LogFile
    from ..mux import BackendPart, Mux, ToBackend
    from .backend import Backend
    from .eventloop import EventLoop
    from .lifecycle import Lifecycle
    from .lineio import LineReader, Outbox
    from .slot import Host

PAUSE_AT = 4 * 1024 * 1024
"""Input the backend has not read yet beyond which its sessions are no longer read (backpressure)."""


class SlotRelay:
    """The backend's stdin, stdout and stderr, for `BackendSlot`."""

    loop: EventLoop
    log: LogFile
    host: Host
    mux: Mux
    life: Lifecycle
    outbox: Outbox | None
    streaming: bool
    held: list[ToBackend]
    stdout: LineReader | None
    stderr: LineReader | None
    stderr_tail: deque[str]
    paused: bool
    last_active: float
    idle_after: float
    counters: dict[str, int]

    if TYPE_CHECKING:  # the rest of `BackendSlot`

        @property
        def label(self) -> str: ...

        def _gone(self, backend: Backend, waited: float = 0.0) -> None: ...

        def _arm_idle(self, backend: Backend, delay: float) -> None: ...

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
