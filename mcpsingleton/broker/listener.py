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

from ..common import platform, wire
from ..common.logfile import LogFile
from ..common.paths import KeyPaths
from .eventloop import EventLoop

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Callable

    OnHello = Callable[[socket.socket, int, list[str], list[int]], None]

STARVED_PAUSE = 0.1
"""Out of file descriptors: the listener rests this long between bursts of refusals (no busy loop)."""
STARVED_BURST = 16
"""… and refuses at most this many waiting newcomers per burst (a shim gives up after 5 s of silence)."""
HELLO_TIMEOUT = 0.2
"""How long a connection accepted on the reserve fd may take to say what it wants."""
HELLO_BYTES = 16 * 1024
"""At most this much of a hello is read: it and the state a re-attaching session brings (wire.STATE_LIMIT)."""
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


class Hello:
    """A hello as it arrives: with a re-attaching session's state it may take several reads (macOS's Unix
    sockets carry 8 KiB at a time). The fds come with its first bytes."""

    __slots__ = ("data", "fds", "truncated")

    def __init__(self) -> None:
        self.data = b""
        self.fds: list[int] = []
        self.truncated = False
        """Passed fds were dropped: the broker is out of fds (Linux says MSG_CTRUNC, XNU fails with EMSGSIZE)."""

    def read(self, conn: socket.socket) -> bool:
        """Read what has arrived; True once the hello is complete (its newline, HELLO_BYTES, end of file)."""
        try:
            data, ancillary, flags, _ = conn.recvmsg(
                HELLO_BYTES - len(self.data), socket.CMSG_SPACE(4 * array.array("i").itemsize)
            )
        except OSError as exc:
            if exc.errno != errno.EMSGSIZE:
                raise
            self.truncated = True  # only an attach passes fds: that is all there is to know
            return True
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                self.fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
        self.truncated = self.truncated or bool(flags & socket.MSG_CTRUNC)
        self.data += data
        return not data or self.data.endswith(b"\n") or len(self.data) >= HELLO_BYTES


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
            platform.socket_buffers(conn)
            self._await_hello(conn, Hello())

    def _await_hello(self, conn: socket.socket, hello: Hello) -> None:
        self.loop.add_reader(conn.fileno(), lambda: self._hello(conn, hello))

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
            self._hello(conn, Hello(), starved=True)
        try:
            self.reserve_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass
        return conn is not None

    def _resume(self) -> None:
        if self.sock is not None:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _hello(self, conn: socket.socket, hello: Hello, starved: bool = False) -> None:
        """Read a hello (in pieces if need be: the loop calls again as more arrives) and act on it.

        Starved, the connection blocks with a timeout: the listener answers a few of them and rests."""
        self.loop.remove_reader(conn.fileno())
        try:
            while not hello.read(conn):
                if not starved:
                    self._await_hello(conn, hello)
                    return
            pid, uid = platform.peer_credentials(conn)
        except OSError as exc:
            self.log.write(f"control connection failed: {exc}")
            discard(conn, hello.fds)
            return
        if uid != os.getuid():
            self.log.write(f"refused a connection from uid {uid} (pid {pid}): only uid {os.getuid()} may attach")
            discard(conn, hello.fds)
            return
        words = wire.parse_hello(hello.data)
        if hello.truncated or (starved and words is not None and words[0] == wire.ATTACH):
            close_fds(hello.fds)  # the fds that did arrive: there is no room for a session
            self.refused += 1
            self.log.write(f"refused pid {pid}: out of file descriptors")
            reply_and_close(conn, wire.refusal(self.starved_reason()))
        elif words is None:
            self.log.write(f"refused a connection from pid {pid}: unknown hello {hello.data[:40]!r}")
            discard(conn, hello.fds)
        else:
            self.on_hello(conn, pid, words, hello.fds)
