"""The broker's Unix socket: bind it race-free, accept connections, check the peer, read its hello.

Out of file descriptors (EMFILE on accept) the listener does not spin: it closes a reserve fd to
accept a newcomer, refuses it with a line its shim prints (a status request is still answered, so
`reap` sees a busy broker, not a hung one), a few at a time, and rests a moment between bursts.
"""

from __future__ import annotations

import array
import errno
import os
import socket

from . import platform, wire
from .eventloop import EventLoop
from .keys import KeyPaths
from .logfile import LogFile

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Callable

    OnHello = Callable[[socket.socket, int, list[str], list[int]], None]

STARVED_PAUSE = 0.1
"""Out of file descriptors: the listener rests this long between bursts of refusals (no busy loop)."""
STARVED_BURST = 16
"""… and refuses at most this many waiting newcomers per burst (a shim gives up after 5 s of silence)."""
HELLO_TIMEOUT = 0.2
HELLO_BYTES = 16 * 1024
"""A hello and the state a re-attaching session brings (wire.STATE_LIMIT) arrive in one read."""
"""How long a connection accepted on the reserve fd may take to say what it wants."""
BACKLOG = 128


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def discard(conn: socket.socket, fds: list[int]) -> None:
    close_fds(fds)
    conn.close()


def reply_and_close(conn: socket.socket, data: bytes) -> None:
    try:
        conn.setblocking(True)
        conn.settimeout(1.0)
        conn.sendall(data)
    except OSError:
        pass
    conn.close()


class Listener:
    """Accepts our own uid's connections and hands each hello (conn, pid, words, fds) to `on_hello`."""

    def __init__(
        self, loop: EventLoop, log: LogFile, paths: KeyPaths, on_hello: OnHello, starved_reason: Callable[[], str]
    ) -> None:
        self.loop = loop
        self.log = log
        self.paths = paths
        self.on_hello = on_hello
        self.starved_reason = starved_reason
        self.sock: socket.socket | None = None
        self.inode = 0
        self.reserve_fd = -1
        self.starved = False
        self.refused = 0

    def listen(self) -> None:
        """Under the key's lock any existing socket is stale; bind a temp name and rename it into place."""
        try:
            os.unlink(self.paths.sock)
        except FileNotFoundError:
            pass
        temp = self.paths.temp_sock(os.getpid())
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(temp)
        os.chmod(temp, 0o600)
        sock.listen(BACKLOG)
        os.rename(temp, self.paths.sock)
        self.inode = os.stat(self.paths.sock).st_ino
        sock.setblocking(False)
        self.sock = sock
        self.reserve_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        """Remove the socket (only if it is still ours) so new shims start a fresh broker."""
        try:
            if os.stat(self.paths.sock).st_ino == self.inode:
                os.unlink(self.paths.sock)
        except OSError:
            pass
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def _accept(self) -> None:
        while self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._accept_starved()
                else:
                    self.log.write(f"accept failed: {exc}")
                return
            if self.starved:
                self.starved = False
                self.log.write(f"file descriptors are available again; {self.refused} session(s) refused so far")
            conn.setblocking(False)
            self._await_hello(conn)

    def _await_hello(self, conn: socket.socket) -> None:
        self.loop.add_reader(conn.fileno(), lambda: self._hello(conn))

    def _accept_starved(self) -> None:
        assert self.sock is not None
        if not self.starved:
            self.starved = True
            self.log.write("out of file descriptors; refusing new sessions until some leave")
        self.loop.remove_reader(self.sock.fileno())
        for _ in range(STARVED_BURST):
            if not self._refuse_one():
                break
        self.loop.call_later(STARVED_PAUSE, self._resume)

    def _refuse_one(self) -> bool:
        """Accept one waiting connection on the reserve fd and answer it; False when none was waiting."""
        assert self.sock is not None
        if self.reserve_fd >= 0:
            os.close(self.reserve_fd)
            self.reserve_fd = -1
        try:
            conn, _ = self.sock.accept()
        except OSError:
            conn = None
        if conn is not None:
            conn.settimeout(HELLO_TIMEOUT)
            self._hello(conn, starved=True)
        try:
            self.reserve_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass
        return conn is not None

    def _resume(self) -> None:
        if self.sock is not None:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _hello(self, conn: socket.socket, starved: bool = False) -> None:
        self.loop.remove_reader(conn.fileno())
        fds: list[int] = []
        try:
            data, ancillary, flags, _ = conn.recvmsg(HELLO_BYTES, socket.CMSG_SPACE(4 * array.array("i").itemsize))
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
            pid, uid = platform.peer_credentials(conn)
        except OSError as exc:
            self.log.write(f"control connection failed: {exc}")
            discard(conn, fds)
            return
        if uid != os.getuid():
            self.log.write(f"refused a connection from uid {uid} (pid {pid}): only uid {os.getuid()} may attach")
            discard(conn, fds)
            return
        words = wire.parse_hello(data)
        if words is None:
            self.log.write(f"refused a connection from pid {pid}: unknown hello {data[:40]!r}")
            discard(conn, fds)
        elif words[0] == wire.ATTACH and (starved or flags & socket.MSG_CTRUNC):
            close_fds(fds)  # the fds that did arrive: there is no room for a session
            self.refused += 1
            self.log.write(f"refused pid {pid}: out of file descriptors")
            reply_and_close(conn, wire.refusal(self.starved_reason()))
        else:
            self.on_hello(conn, pid, words, fds)
