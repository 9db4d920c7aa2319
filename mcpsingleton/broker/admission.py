"""Admission of an attach: which server it goes to, and asking the shim for the spec of a key not hosted yet.

Kept out of process.py because it is one idea with state of its own (the attaches waiting for a key's spec)
and a small protocol of its own (send `spec`, read one line under a timer, ask the next shim should this one
fail), apart from what the process does with its loop, keeper, control requests and exit. It sees the broker
only through `Host`.
"""

from __future__ import annotations

import socket

from ..common import wire
from .listener import close_fds, discard, reply_and_close
from .server import parse_spec

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any, Protocol

    from ..common.logfile import LogFile
    from .eventloop import EventLoop
    from .server import Server

    class Host(Protocol):
        """What admission needs from the broker process."""

        servers: dict[str, Server]
        stopping: bool

        def add_server(self, spec: dict[str, Any]) -> None: ...
        def arm_idle_exit(self) -> None: ...
        def cancel_idle_exit(self) -> None: ...


SPEC_TIMEOUT = 5.0
"""How long a shim asked for a spec may take to send it; then its connection and fds are dropped."""


class Admission:
    """Attaches to the server of their key; for a key not hosted yet, the first shim is asked for its spec."""

    def __init__(self, loop: EventLoop, log: LogFile, host: Host) -> None:
        self.loop = loop
        self.log = log
        self.host = host
        self.waiting: dict[str, list[tuple[socket.socket, int, str | None, list[int]]]] = {}
        """Attaches for a key being created (its first shim is sending the spec): they follow it, in order."""

    def attach(self, conn: socket.socket, pid: int, key: str, state: str | None, fds: list[int]) -> None:
        server = self.host.servers.get(key)
        if self.host.stopping or (server is not None and server.lifetime.stopping):
            discard(conn, fds)  # the shim sees EOF before welcome and retries: the next server or broker takes it
        elif server is not None:
            server.guarded(lambda: server.sessions.attach(conn, pid, fds, state))
        elif key in self.waiting:
            self.waiting[key].append((conn, pid, state, fds))  # after the one asked for the spec, in arrival order
        else:
            self.waiting[key] = []
            self.host.cancel_idle_exit()
            self._ask_spec(conn, pid, key, state, fds)

    def _ask_spec(self, conn: socket.socket, pid: int, key: str, state: str | None, fds: list[int]) -> None:
        """A key not hosted yet: the shim sends its spec on this connection. Other attaches for the key wait
        meanwhile, and attach in their order once its server exists (the first session keeps the first slot,
        as when each key had a broker of its own); should this shim send no valid spec, the next is asked."""
        try:
            conn.send(wire.SPEC)
        except OSError:
            discard(conn, fds)
            self._spec_failed(key)
            return
        received = bytearray()

        def readable() -> None:
            try:
                chunk = conn.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            received.extend(chunk)
            if chunk and b"\n" not in chunk and len(received) <= wire.SPEC_LIMIT:
                return
            self.loop.remove_reader(conn.fileno())
            timer.cancel()
            spec = parse_spec(bytes(received).partition(b"\n")[0], key) if b"\n" in received else None
            if spec is None:
                self.log.write(f"refused pid {pid}: no valid spec for {key}")
                close_fds(fds)
                refusal = "the broker got no valid server spec; see `mcpsingleton logs broker`"
                reply_and_close(conn, wire.refusal(refusal))
                self._spec_failed(key)
                return
            self.host.add_server(spec)
            for waiting in [(conn, pid, state, fds), *self.waiting.pop(key, [])]:
                self._attach_later(key, *waiting)

        def expired() -> None:
            self.loop.remove_reader(conn.fileno())
            self.log.write(f"pid {pid} was asked for the spec of {key} and sent none within {SPEC_TIMEOUT:g}s")
            discard(conn, fds)
            self._spec_failed(key)

        timer = self.loop.call_later(SPEC_TIMEOUT, expired)
        self.loop.add_reader(conn.fileno(), readable)

    def _attach_later(self, key: str, conn: socket.socket, pid: int, state: str | None, fds: list[int]) -> None:
        """After the new server's first spawn (a timer due now): a backend that cannot start is known when the
        session is read, so what it sent is answered with why before it ends."""
        self.loop.call_later(0, lambda: self.attach(conn, pid, key, state, fds))

    def _spec_failed(self, key: str) -> None:
        """The shim asked for a key's spec sent none: ask the next one waiting, if any."""
        queue = self.waiting.pop(key, [])
        if queue:
            conn, pid, state, fds = queue.pop(0)
            self.waiting[key] = queue
            self._ask_spec(conn, pid, key, state, fds)
        else:
            self.host.arm_idle_exit()
