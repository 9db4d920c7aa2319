"""Line I/O for the broker: one line reader, one buffered writer, over non-blocking fds.

Every stream the broker reads (a session's stdin, the backend's stdout and stderr) goes through
`LineReader`; every stream it writes (a session's stdout, the backend's stdin) through `Outbox`.
"""

from __future__ import annotations

import fcntl
import os

from ..common import platform
from .eventloop import Callback, EventLoop

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    import select
    from collections.abc import Callable
    from typing import Any, Protocol

    class Sink(Protocol):
        """Where the rest of a line being streamed goes (the broker's side of mux/streaming.py)."""

        def more(self, data: bytes | memoryview) -> None: ...
        def end(self, data: bytes | memoryview) -> None: ...  # the line's last bytes, its newline included
        def abort(self) -> None: ...

    class Stream(Protocol):
        """A line being streamed as the mux sees it: each piece answered with actions."""

        def more(self, data: bytes | memoryview) -> list[Any]: ...
        def end(self, last: bytes | memoryview) -> list[Any]: ...
        def abort(self) -> list[Any]: ...


READ_CHUNK = 64 * 1024
"""Below glibc's mmap threshold: a larger read buffer costs an mmap/munmap pair per message (~100 µs)."""
NEWLINE = ord("\n")
WIDE = 1 << 20
"""Pipe size and read size once a pipe has carried a big line (Linux's default limit for a user's pipe)."""


def widen(fd: int) -> None:
    """Let a pipe hold WIDE bytes: a big message then crosses it in 1 MiB steps, not 64 KiB ones (each
    step wakes both ends). Only pipes that carry big lines are widened: the kernel counts every pipe's
    size against its user. Not a pipe (a client may hand us a socket), not Linux, or refused: unchanged."""
    setting = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setting is not None:
        try:
            fcntl.fcntl(fd, setting, WIDE)
        except OSError:
            pass


class LineReader:
    """Reads what a readable fd has and splits it into lines; lines over `limit` are skipped to their end.

    `read()` answers (lines, overflowed, at_eof): `overflowed` is True once per skipped line, and a
    read error counts as end of file (the other end is gone either way). A line being read may be
    handed to a sink instead (`stream`): its bytes then go there as they arrive, up to its end.
    """

    __slots__ = ("buf", "fd", "limit", "offered", "reuse", "scratch", "sink", "skipping", "wide")

    def __init__(self, fd: int, limit: int, reuse: bool = False) -> None:
        """`reuse`: big reads go into one buffer kept for the purpose, and a sink gets views of it, valid
        only during the call (it copies what it keeps). A fresh 1 MiB read costs its pages' faults: ~0.5 ms."""
        self.fd = fd
        self.limit = limit
        self.reuse = reuse
        self.scratch: bytearray | None = None
        self.buf = bytearray()
        self.skipping = False
        self.wide = False
        self.sink: Sink | None = None
        self.offered = False  # the line being read was offered to `stream` already

    @property
    def mid_line(self) -> bool:
        """Part of a line was read and its end was not: to stop reading here would cut the line in two."""
        return bool(self.buf) or self.sink is not None or self.skipping

    def read(self) -> tuple[list[bytes], bool, bool]:
        data = self._chunk()
        if data is None:
            return [], False, False
        if not data:
            self.abort_stream()
            return [], False, True
        lines, overflowed = self.feed(data)
        return lines, overflowed, False

    def stream(self, at_least: int, open_sink: Callable[[bytes], Sink | None]) -> None:
        """Offer the line being read, once `at_least` bytes of it arrived, to `open_sink` (once per line):
        a sink it returns has taken those bytes and gets the rest of the line as it arrives. Call after
        the lines `read` returned are handled, so that they go out first."""
        if self.sink is None and not self.offered and not self.skipping and len(self.buf) >= at_least:
            self.offered = True
            sink = open_sink(bytes(self.buf))
            if sink is not None:
                self.buf.clear()
                self.sink = sink

    def abort_stream(self) -> None:
        """The fd is gone in the middle of a streamed line: its sink is told so."""
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.abort()

    def drain(self) -> list[bytes]:
        """Everything available now (the fd is gone or going), the unterminated tail included."""
        self.abort_stream()
        lines: list[bytes] = []
        while data := self._chunk():
            lines += self.feed(data)[0]
        tail = bytes(self.buf).strip()
        self.buf.clear()
        return lines + ([tail] if tail and not self.skipping else [])

    def _chunk(self) -> bytes | memoryview | None:
        """None when nothing is ready after all; empty at end of file or on a read error."""
        big = self.wide and (len(self.buf) >= READ_CHUNK or self.sink is not None)
        try:
            if big and self.reuse:
                if self.scratch is None:
                    self.scratch = bytearray(WIDE)
                return memoryview(self.scratch)[: os.readv(self.fd, [self.scratch])]
            return os.read(self.fd, WIDE if big else READ_CHUNK)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _find_newline(self, data: bytes | memoryview) -> int:
        if isinstance(data, memoryview):  # a view of the start of `scratch`
            assert self.scratch is not None
            return self.scratch.find(b"\n", 0, len(data))
        return data.find(b"\n")

    def feed(self, data: bytes | memoryview) -> tuple[list[bytes], bool]:
        if self.sink is not None:
            newline = self._find_newline(data)
            if newline < 0:
                self.sink.more(data)
                return [], False
            sink, self.sink = self.sink, None
            self.offered = False
            if newline == len(data) - 1:  # the usual end of a big line: no copy of it
                sink.end(data)
                return [], False
            sink.end(data[: newline + 1])
            data = data[newline + 1 :]
        search_from = len(self.buf)
        self.buf += data
        lines: list[bytes] = []
        start = 0
        while (newline := self.buf.find(b"\n", search_from)) >= 0:
            if self.skipping:
                self.skipping = False
            else:
                with memoryview(self.buf) as view:  # one copy of the line, not two (a slice, then bytes)
                    line = bytes(view[start:newline]).rstrip(b"\r")
                if line.strip():
                    lines.append(line)
            start = search_from = newline + 1
            self.offered = False
        del self.buf[:start]
        if not self.wide and len(self.buf) >= READ_CHUNK:
            widen(self.fd)
            self.wide = True  # tried once; big lines are read WIDE at a time either way
        overflowed = len(self.buf) > self.limit and not self.skipping
        if len(self.buf) > self.limit:
            self.buf.clear()
            self.skipping = True
        return lines, overflowed


class Relay:
    """The sink of a streamed line: each piece goes to its stream (mux/streaming.py), and what the stream
    answers is performed at once."""

    __slots__ = ("perform", "pieces", "stream")

    def __init__(self, stream: Stream, perform: Callable[[list[Any]], None]) -> None:
        self.stream = stream
        self.perform = perform
        self.pieces = 0  # how many have arrived (a watcher tells a stalled writer by it)

    def more(self, data: bytes | memoryview) -> None:
        self.pieces += 1
        self.perform(self.stream.more(data))

    def end(self, data: bytes | memoryview) -> None:
        self.perform(self.stream.end(data))

    def abort(self) -> None:
        self.perform(self.stream.abort())


class Outbox:
    """Non-blocking writes to one fd, buffering what the reader has not taken yet.

    A write error (the reader closed its end) calls `on_error` once; later sends are dropped.
    `on_drained` is called whenever the buffer empties after having been non-empty; `on_written` after every
    write from the buffer, with `flushed` counting the buffered bytes written so far (a message buffered when
    `flushed + len(pending)` was N is all written once `flushed` reaches N). While bytes wait, `open_line`
    says whether what the reader has so far ends inside a line (a broker dying now leaves it cut).
    """

    __slots__ = (
        "broken",
        "fd",
        "flushed",
        "loop",
        "on_drained",
        "on_error",
        "on_written",
        "open_line",
        "pending",
        "wide",
    )

    def __init__(self, loop: EventLoop, fd: int, on_error: Callable[[OSError], None]) -> None:
        self.loop = loop
        self.fd = fd
        self.pending = bytearray()
        self.on_error = on_error
        self.broken = False
        self.wide = False
        self.on_drained: Callback | None = None
        self.on_written: Callback | None = None
        self.flushed = 0
        self.open_line = False

    def send(self, *parts: bytes | memoryview) -> None:
        """Write `parts` as one run of bytes, without joining them (a big spliced line stays where it is)."""
        if self.broken:
            return
        if self.pending:
            for part in parts:
                self.pending += part
            return
        try:
            written = os.writev(self.fd, parts)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._fail(exc)
            return
        sent = written
        for part in parts:
            if written >= len(part):
                written -= len(part)
                continue
            self.pending += part[written:]
            written = 0
        if self.pending:
            if sent:
                self.open_line = _byte_at(parts, sent - 1) != NEWLINE
            self.loop.add_writer(self.fd, self._flush)
            if not self.wide and len(self.pending) >= READ_CHUNK:
                widen(self.fd)
                self.wide = True  # tried once

    def _flush(self) -> None:
        try:
            written = os.write(self.fd, self.pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)
            return
        if written:
            self.open_line = self.pending[written - 1] != NEWLINE
        del self.pending[:written]
        self.flushed += written
        if self.on_written is not None:
            self.on_written()
        if not self.pending:
            self.loop.remove_writer(self.fd)
            if self.on_drained is not None:
                self.on_drained()

    def _fail(self, exc: OSError) -> None:
        self.broken = True
        self.pending.clear()
        self.loop.remove_writer(self.fd)
        self.on_error(exc)

    def close(self) -> None:
        if not self.broken:
            self.loop.remove_writer(self.fd)
        self.broken = True
        self.pending.clear()


def _byte_at(parts: tuple[bytes | memoryview, ...], index: int) -> int:
    for part in parts:
        if index < len(part):
            return part[index]
        index -= len(part)
    raise IndexError(index)


def write_if_room(fd: int, data: bytes) -> int:
    """Write what fits into `fd` now, without blocking and without changing its flags (it is the client's
    stderr, shared with other processes); the number of bytes that did not fit and were dropped.

    Chunks of PIPE_BUF bytes after a zero-timeout poll: a pipe reported writable takes them at once. Files
    and devices other than ttys never block, and are not polled: macOS answers POLLNVAL for /dev/null."""
    import select

    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    never_blocks = not platform.watchable(fd)
    while data:
        try:
            if not (never_blocks or _writable_now(poller)):
                return len(data)
            written = os.write(fd, data[: select.PIPE_BUF])
        except OSError:
            return len(data)
        data = data[written:]
    return 0


def _writable_now(poller: select.poll) -> bool:
    import select

    events = poller.poll(0)
    return bool(events) and bool(events[0][1] & select.POLLOUT)
