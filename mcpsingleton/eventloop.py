"""A minimal event loop for the broker: fd readiness, timers and signals over `selectors`.

Why not asyncio: the broker needs nothing beyond these three, and importing asyncio costs about
10 MiB per broker (DESIGN §3) — one broker runs per server, so that would be most of its memory.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import signal
import time
from collections.abc import Callable

Callback = Callable[[], None]


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
        self._selector = selectors.DefaultSelector()
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._signal_handlers: dict[int, Callback] = {}
        self._running = False
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_read, selectors.EVENT_READ, (self._drain_signals, None))

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
            key = self._selector.get_key(fd)
            callbacks = list(key.data)
        except KeyError:
            key, callbacks = None, [None, None]
        callbacks[slot] = callback
        events = (selectors.EVENT_READ if callbacks[0] else 0) | (selectors.EVENT_WRITE if callbacks[1] else 0)
        if key is None:
            if events:
                self._selector.register(fd, events, tuple(callbacks))
        elif events:
            self._selector.modify(fd, events, tuple(callbacks))
        else:
            self._selector.unregister(fd)

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
            for key, events in self._selector.select(timeout):
                reader, writer = key.data
                if events & selectors.EVENT_READ and reader is not None and self._current(key.fd, 0, reader):
                    reader()
                if events & selectors.EVENT_WRITE and writer is not None and self._current(key.fd, 1, writer):
                    writer()

    def _current(self, fd: int, slot: int, callback: Callback) -> bool:
        """An earlier callback of this round may have unregistered (and closed) the fd: skip stale ones."""
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
        os.close(self._wake_read)
        os.close(self._wake_write)
