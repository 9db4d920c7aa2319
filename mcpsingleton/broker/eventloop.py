"""A minimal event loop for the broker: fd readiness, timers and signals over `selectors`.

Any fd may be watched: those no selector reports truthfully (regular files, /dev/null; see
`platform.watchable`) never block, so they are treated as always ready, as poll(2) does on Linux. Those a
selector refuses although they may block (a tty kqueue refuses on macOS) are tried every POLL_INTERVAL:
treated as always ready, they would keep the loop spinning at 100% CPU.

Why not asyncio: the broker needs nothing beyond these three, and importing asyncio costs about
10 MiB per broker (docs/ARCHITECTURE.md, "Budgets") — one broker runs per server, so that would be most of its memory.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import signal
import time
from collections.abc import Callable

from ..common import platform

Callback = Callable[[], None]
Callbacks = list[Callback | None]  # [reader, writer]

POLL_INTERVAL = 0.05
"""How often fds that may block but that the selector refused are tried (their callbacks meet EAGAIN)."""


class Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    def __init__(self) -> None:
        self._selector = platform.new_selector()
        self._always_ready: dict[int, Callbacks] = {}
        self._polled: dict[int, Callbacks] = {}
        self._next_poll = 0.0
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._signal_handlers: dict[int, Callback] = {}
        self._running = False
        self._wake_read, self._wake_write = platform.nonblocking_pipe()
        self._selector.register(self._wake_read, selectors.EVENT_READ, (self._drain_signals, None))

    @property
    def selector(self) -> selectors.BaseSelector:
        return self._selector

    # ---- fds --------------------------------------------------------------------------------

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._set(fd, 0, callback)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._set(fd, 1, callback)

    def remove_reader(self, fd: int) -> None:
        self._set(fd, 0, None)

    def remove_writer(self, fd: int) -> None:
        self._set(fd, 1, None)

    def _set(self, fd: int, slot: int, callback: Callback | None) -> None:
        try:
            key: selectors.SelectorKey | None = self._selector.get_key(fd)
        except KeyError:
            key = None
        unselected = self._unselected_table(fd, callback) if key is None else None
        if unselected is not None:
            self._set_unselected(unselected, fd, slot, callback)
            return
        callbacks = list(key.data) if key is not None else [None, None]
        callbacks[slot] = callback
        events = (selectors.EVENT_READ if callbacks[0] else 0) | (selectors.EVENT_WRITE if callbacks[1] else 0)
        if key is None:
            if events:
                self._register(fd, events, callbacks)
        elif events:
            self._selector.modify(fd, events, tuple(callbacks))
        else:
            self._selector.unregister(fd)

    def _register(self, fd: int, events: int, callbacks: Callbacks) -> None:
        """A selector may refuse an fd that can block (kqueue and some ttys): that one is polled on a timer."""
        try:
            self._selector.register(fd, events, tuple(callbacks))
        except OSError:
            self._polled[fd] = callbacks

    def _unselected_table(self, fd: int, callback: Callback | None) -> dict[int, Callbacks] | None:
        """Where an fd the selector does not watch is kept, or None for one the selector is to be given."""
        for table in (self._always_ready, self._polled):
            if fd in table:
                return table
        return self._always_ready if callback is not None and not platform.watchable(fd) else None

    def _set_unselected(self, table: dict[int, Callbacks], fd: int, slot: int, callback: Callback | None) -> None:
        callbacks = table.setdefault(fd, [None, None])
        callbacks[slot] = callback
        if callbacks == [None, None]:
            del table[fd]

    # ---- timers -----------------------------------------------------------------------------

    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    # ---- signals ----------------------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callback) -> None:
        self._signal_handlers[signum] = callback
        signal.signal(signum, lambda *_: None)
        signal.siginterrupt(signum, False)
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)

    def _drain_signals(self) -> None:
        try:
            data = os.read(self._wake_read, 512)
        except BlockingIOError:
            return
        for signum in dict.fromkeys(data):
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                handler()

    # ---- running ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._running = True
        while self._running:
            timeout = self._run_due_timers()
            if not self._running:
                break
            ready = self._unselected_ready()
            for key, events in self._selector.select(0 if ready else self._until_poll(timeout)):
                reader, writer = key.data
                reading, writing = events & selectors.EVENT_READ, events & selectors.EVENT_WRITE
                ready.append((key.fd, reader if reading else None, writer if writing else None))
            for fd, reader, writer in ready:
                if reader is not None and self._current(fd, 0, reader):
                    reader()
                if writer is not None and self._current(fd, 1, writer):
                    writer()

    def _unselected_ready(self) -> list[tuple[int, Callback | None, Callback | None]]:
        """The always-ready fds, every round; the polled ones, once per POLL_INTERVAL."""
        ready = [(fd, reader, writer) for fd, (reader, writer) in self._always_ready.items()]
        if self._polled and (now := time.monotonic()) >= self._next_poll:
            self._next_poll = now + POLL_INTERVAL
            ready += [(fd, reader, writer) for fd, (reader, writer) in self._polled.items()]
        return ready

    def _until_poll(self, timeout: float | None) -> float | None:
        """The select timeout, cut short where a polled fd is due sooner."""
        if not self._polled:
            return timeout
        wait = max(0.0, self._next_poll - time.monotonic())
        return wait if timeout is None else min(timeout, wait)

    def _current(self, fd: int, slot: int, callback: Callback) -> bool:
        """An earlier callback of this round may have unregistered (and closed) the fd: skip stale ones."""
        for table in (self._always_ready, self._polled):
            if fd in table:
                return table[fd][slot] is callback
        try:
            return self._selector.get_key(fd).data[slot] is callback
        except KeyError:
            return False

    def _run_due_timers(self) -> float | None:
        while self._timers:
            when, _, timer = self._timers[0]
            if timer.cancelled:
                heapq.heappop(self._timers)
                continue
            delay = when - time.monotonic()
            if delay > 0:
                return delay
            heapq.heappop(self._timers)
            timer.callback()
            if not self._running:
                return 0
        return None

    def close(self) -> None:
        self._selector.close()
        self._always_ready.clear()
        self._polled.clear()
        os.close(self._wake_read)
        os.close(self._wake_write)
