"""An HTTP session, attached to its server's broker exactly as a shim attaches a stdio session.

`serve` stands in for the shim: for each HTTP session it makes two pipes (the session's stdin and stdout),
attaches through `shim.connect` (the same key, election and hello a shim uses: the broker sees one more
session) and keeps the socket as the waiter does: it says `r` (and `t http`, for `ls`), keeps the last
`state` line, ends on `exit N`, and re-attaches with that state when the broker dies or says `reattach`.
Client→server lines go into the stdin pipe; the stdout pipe's lines go to `on_line`.

Each session costs four pipe fds and one socket here, two fds and a socket in the broker; ending it closes
our write end of its stdin, so the broker sees end of file and detaches it as it would a stdio client's.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..broker.lineio import LineReader
from ..common import wire
from ..common.errors import SetupError
from ..shim import attach as shim

log = logging.getLogger("mcpsingleton.serve")

MAX_LINE = 64 * 1024 * 1024
"""A longer line from the backend is dropped (the broker caps a session's lines the same way)."""
MAX_UNWRITTEN = 64 * 1024 * 1024
"""Client input the broker leaves this long unread ends the session (a broker that stopped reading)."""
END_GRACE = 2.0
"""How long the broker may take to answer our end of file with `exit N` before the socket is closed."""
WAITER_HELLO = b"r" + f"{wire.WAITER_TRANSPORT}{wire.HTTP}\n".encode()


@dataclass(frozen=True)
class Target:
    """What a session attaches to: `run`'s arguments, the server's environment, and the client's."""

    argv: list[str]
    env: dict[str, str]
    client_env: dict[str, str] | None = None
    """What `env` is compared with to find what the configuration set (a part of the key, as for a shim)."""
    cwd: str | None = None


@dataclass
class _Pipes:
    """Our ends (write stdin, read stdout) and the broker's (read stdin, write stdout), kept for re-attaching."""

    stdin_w: int
    stdout_r: int
    broker_fds: tuple[int, int]
    unwritten: bytearray = field(default_factory=bytearray)

    @classmethod
    def open(cls) -> _Pipes:
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        for fd in (stdin_w, stdout_r):
            os.set_blocking(fd, False)
        return cls(stdin_w, stdout_r, (stdin_r, stdout_w))

    def close(self) -> None:
        for fd in (self.stdin_w, self.stdout_r, *self.broker_fds):
            with contextlib.suppress(OSError):
                os.close(fd)


class BrokerSession:
    """One HTTP session's life in its broker: attach, relay lines, re-attach, end.

    `on_line` gets each server→client line; `on_end` is called once, with why the session ended."""

    def __init__(self, target: Target, on_line: Callable[[bytes], None], on_end: Callable[[str], None]) -> None:
        self.target = target
        self.on_line = on_line
        self.on_end = on_end
        self.name = "?"
        self.cwd = target.cwd
        self.pipes: _Pipes | None = None
        self.conn: _socket.socket | None = None
        self.reader: LineReader | None = None
        self.state = ""
        self.said = b""
        self.reattaches: list[float] = []
        self.ended = False  # no more input: the broker is being told, or was
        self.finished = False  # on_end was called
        self.attaching = False
        self.end_reason = ""
        self.paused = False  # the HTTP side cannot take more of the server's lines now
        self.loop = asyncio.get_running_loop()

    async def open(self) -> None:
        """Attach (starting the broker if none runs); raises SetupError with the one line a shim would print."""
        self.pipes = _Pipes.open()
        self.reader = LineReader(self.pipes.stdout_r, MAX_LINE)
        try:
            await self._attach()
        except BaseException:
            self._close_pipes()
            raise
        if self.pipes is not None:  # (ended while attaching)
            self.loop.add_reader(self.pipes.stdout_r, self._stdout_readable)

    async def _attach(self) -> None:
        """`shim.connect` in a thread (it may start a broker); our fds stay open until it returns."""
        assert self.pipes is not None
        target = self.target
        self.attaching = True
        try:
            conn, self.name, self.cwd = await asyncio.to_thread(
                shim.connect, target.argv, target.env, target.client_env, self.state, self.cwd, self.pipes.broker_fds
            )
        finally:
            self.attaching = False
        self.conn = conn
        self.said = b""
        conn.setblocking(False)
        try:
            conn.send(WAITER_HELLO)
        except OSError:
            self._close_conn()
            raise SetupError(f"the broker for {self.name} went away while attaching") from None
        self.loop.add_reader(conn.fileno(), self._waiter_readable)
        if self.ended:  # ended while attaching: now it can be told
            self._close_pipes()
            self.loop.call_later(END_GRACE, lambda: self._finish(self.end_reason))

    # ---- client → server --------------------------------------------------------------------------

    def send(self, line: bytes) -> None:
        """Write one JSON-RPC line to the session's stdin; what the pipe cannot take now waits for it."""
        pipes = self.pipes
        if self.ended or pipes is None:
            return
        if pipes.unwritten:
            pipes.unwritten += line + b"\n"
        else:
            pipes.unwritten = bytearray(line + b"\n")
            self._write()
        if len(pipes.unwritten) > MAX_UNWRITTEN:
            self.end("the broker stopped reading this session's input")

    def _write(self) -> None:
        pipes = self.pipes
        assert pipes is not None
        try:
            written = os.write(pipes.stdin_w, pipes.unwritten)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self.end(f"writing to the broker failed ({exc.strerror})")
            return
        del pipes.unwritten[:written]
        if pipes.unwritten:
            self.loop.add_writer(pipes.stdin_w, self._writable)
        else:
            self.loop.remove_writer(pipes.stdin_w)

    def _writable(self) -> None:
        if not self.ended:
            self._write()

    # ---- server → client --------------------------------------------------------------------------

    def _stdout_readable(self) -> None:
        assert self.reader is not None
        lines, overflowed, at_eof = self.reader.read()
        if overflowed:
            log.warning("%s: a line over %d MiB from the server was dropped", self.name, MAX_LINE >> 20)
        for line in lines:
            self.on_line(line)
        if at_eof:
            self.end("the broker closed the session's output")

    def pause(self, paused: bool) -> None:
        """Backpressure: stop (or resume) reading the server's lines while the HTTP side cannot take them."""
        if self.pipes is not None and paused != self.paused:
            self.paused = paused
            if paused:
                self.loop.remove_reader(self.pipes.stdout_r)
            else:
                self.loop.add_reader(self.pipes.stdout_r, self._stdout_readable)

    # ---- the waiter's part --------------------------------------------------------------------------

    def _waiter_readable(self) -> None:
        assert self.conn is not None
        try:
            data = self.conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._broker_gone()
            return
        self.said += data
        *lines, self.said = self.said.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if line.startswith("state "):
                self.state = line[6:]
            elif line.startswith("msg "):
                log.warning("%s: %s", self.name, line[4:])
            elif line.startswith("exit "):
                self._finish(f"the broker ended the session (exit {line[5:]})")
                return
            elif line == wire.REATTACH.decode().strip():
                self._broker_gone(orderly=True)
                return

    def _broker_gone(self, orderly: bool = False) -> None:
        """The broker died or hands over (`orderly`: not counted by the crash-loop guard): attach the same pipes
        to the next one, with the session's state."""
        self._close_conn()
        if self.ended:
            self._finish("ended")
            return
        self.reattaches = shim.crashes_within_window(self.reattaches, time.monotonic(), orderly)
        if len(self.reattaches) > shim.CRASH_LOOP[0]:
            self._finish(f"the broker for {self.name} keeps going away; see `mcpsingleton logs {self.name}`")
        elif self.state == wire.NO_STATE:
            self._finish(f"the broker for {self.name} went away and the session was too large to carry over")
        else:
            self.loop.create_task(self._reattach())

    async def _reattach(self) -> None:
        try:
            await self._attach()
        except (SetupError, OSError) as exc:
            self._finish(str(exc))
            return
        log.info("%s: an HTTP session re-attached to the next broker", self.name)

    # ---- ending -------------------------------------------------------------------------------------

    def end(self, why: str = "ended") -> None:
        """End the session: the broker sees end of file on its stdin and detaches it, then says `exit 0`."""
        if self.ended:
            return
        self.ended = True
        self.end_reason = why
        if self.attaching:
            return  # its fds are being handed over: _attach ends it once that is done
        self._close_pipes()  # the broker keeps its own copies until it detaches the session
        if self.conn is None:
            self._finish(why)
        else:
            self.loop.call_later(END_GRACE, lambda: self._finish(why))

    def _finish(self, why: str) -> None:
        """Forget everything of the session (closing our socket detaches it, should the broker still hold it)."""
        self._close_pipes()
        self._close_conn()
        if not self.finished:
            self.finished = self.ended = True
            self.on_end(self.end_reason or why)

    def _close_pipes(self) -> None:
        if self.pipes is not None:
            self.loop.remove_writer(self.pipes.stdin_w)
            self.loop.remove_reader(self.pipes.stdout_r)
            self.pipes.close()
            self.pipes = None

    def _close_conn(self) -> None:
        if self.conn is not None:
            self.loop.remove_reader(self.conn.fileno())
            self.conn.close()
            self.conn = None
