"""The broker: one detached daemon per key, owning the backend and the sessions' stdio.

Thin I/O glue around the sans-IO multiplexer: it reads each session's stdin fd (handed over by its
shim), writes its stdout fd, runs the backend, and performs what `Mux` decides. It also answers
control requests (`status`, `stop`) on the same Unix socket, lingers after the last session leaves,
and exits without leaving anything behind.

Run as `python -m mcpsingleton.broker CHANNEL_FD LOCK_FD`: the spec arrives as JSON on the channel
(a socketpair with the shim that started it), and readiness goes back on it.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import sys
import time
from collections import deque
from datetime import UTC, datetime

from . import __version__, jsonrpc, platform
from .backend import Backend, Keeper, kill_leftovers, stop_ladder
from .eventloop import EventLoop, Timer
from .keys import PROTOCOL, KeyPaths
from .logfile import LogFile
from .mux import Log, Mux, StartBackend, ToBackend, ToSession

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

MAX_LINE = 64 * 1024 * 1024
"""A longer line from a session is refused with -32700 (and skipped to its end), not buffered."""
MAX_UNREAD = 64 * 1024 * 1024
"""A session that leaves this much of its stdout unread is disconnected; the others go on."""
READ_CHUNK = 64 * 1024
"""Below glibc's mmap threshold: a larger read buffer costs an mmap/munmap pair per message (~100 µs)."""
END_GRACE = 1.5
"""How long a leaving session's in-flight replies, or its final error, may take to be written."""
SAMPLE_INTERVAL = 1.0
"""How often the backend tree is measured against --max-memory / --max-procs (only when one is set)."""
IDLE_WAIT = 30.0
"""How long a memory-capped restart waits for in-flight requests to finish."""
FIRST_SESSION_WINDOW = 5.0
"""A new broker waits at least this long for its first session, even with --linger 0."""


def read_chunk(fd: int) -> bytes | None:
    """What a readable fd has: None if nothing after all, b"" at end of file (or a read error)."""
    try:
        return os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return None
    except OSError:
        return b""


class LineBuffer:
    """Splits a byte stream into lines; lines over `limit` are reported once and skipped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.skipping = False

    def feed(self, data: bytes) -> tuple[list[bytes], bool]:
        search_from = len(self.buf)
        self.buf += data
        lines: list[bytes] = []
        start = 0
        while (newline := self.buf.find(b"\n", search_from)) >= 0:
            if self.skipping:
                self.skipping = False
            else:
                line = bytes(self.buf[start:newline]).rstrip(b"\r")
                if line.strip():
                    lines.append(line)
            start = search_from = newline + 1
        del self.buf[:start]
        overflow = len(self.buf) > self.limit and not self.skipping
        if len(self.buf) > self.limit:
            self.buf.clear()
            self.skipping = True
        return lines, overflow


class Outbox:
    """Non-blocking writes to one fd, buffering what the reader has not taken yet."""

    def __init__(self, loop: EventLoop, fd: int, on_error: Any) -> None:
        self.loop = loop
        self.fd = fd
        self.pending = bytearray()
        self.on_error = on_error
        self.broken = False
        self.on_drained: Any = None

    def send(self, data: bytes) -> None:
        if self.broken:
            return
        if self.pending:
            self.pending += data
            return
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._fail(exc)
            return
        if written < len(data):
            self.pending += data[written:]
            self.loop.add_writer(self.fd, self._flush)

    def _flush(self) -> None:
        try:
            written = os.write(self.fd, self.pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)
            return
        del self.pending[:written]
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


class Session:
    """One client session: its control connection to the shim and the client's stdio pipes."""

    def __init__(self, sid: int, conn: socket.socket, pid: int, in_fd: int, out_fd: int) -> None:
        self.sid = sid
        self.conn = conn
        self.pid = pid
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.lines = LineBuffer(MAX_LINE)
        self.saved_flags = {fd: os.get_blocking(fd) for fd in {in_fd, out_fd}}
        self.outbox: Outbox | None = None
        self.ending = False
        self.reading = False
        self.attached_at = time.time()


class Broker:
    def __init__(self, spec: dict[str, Any], lock_fd: int) -> None:
        self.spec = spec
        self.key: str = spec["key"]
        self.paths = KeyPaths(self.key, spec["runtime_dir"])
        self.lock_fd = lock_fd
        self.log = LogFile(spec["log"])
        self.loop = EventLoop()
        self.mux = Mux("mcpsingleton", __version__)
        self.sessions: dict[int, Session] = {}
        self.next_sid = 0
        self.listener: socket.socket | None = None
        self.sock_inode = 0
        self.backend: Backend | None = None
        self.backend_lines = LineBuffer(1 << 31)
        self.stderr_lines = LineBuffer(1 << 20)
        self.stderr_tail: deque[str] = deque(maxlen=8)
        self.keeper: Keeper | None = None
        self.linger_timer: Timer | None = None
        self.backend_outbox: Outbox | None = None
        self.retired: list[Backend] = []
        self.fatal: str | None = None
        self.stopping = False
        self.restarts = 0
        self.limit_restarts = 0
        self.crash_streak = 0
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.exit_code = 0

    # ---- startup ----------------------------------------------------------------------------

    def listen(self) -> None:
        """Under the lock any existing socket is stale; bind a temp name and rename it into place."""
        try:
            os.unlink(self.paths.sock)
        except FileNotFoundError:
            pass
        temp = f"{self.paths.sock}.{os.getpid()}.tmp"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(temp)
        os.chmod(temp, 0o600)
        listener.listen(128)
        os.rename(temp, self.paths.sock)
        self.sock_inode = os.stat(self.paths.sock).st_ino
        listener.setblocking(False)
        self.listener = listener
        self.loop.add_reader(listener.fileno(), self._accept)

    def write_state(self) -> None:
        state = {
            "key": self.key,
            "name": self.spec["name"],
            "command": self.spec["argv"],
            "cwd": self.spec["cwd"],
            "scope": self.spec["scope"],
            "broker_pid": os.getpid(),
            "started_at": self.started_at,
            "log": self.spec["log"],
            "version": __version__,
        }
        temp = f"{self.paths.state}.{os.getpid()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle)
        os.replace(temp, self.paths.state)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, lambda: self.shutdown("signal"))
        self.loop.add_signal_handler(signal.SIGHUP, lambda: None)
        self.loop.add_signal_handler(signal.SIGCHLD, self._reap)
        subreaper = platform.become_subreaper()
        leftovers = kill_leftovers(self.key)
        if leftovers:
            self.log.write(f"killed leftovers of an earlier broker for this key: pids {leftovers}")
        self.keeper = Keeper()
        self.log.write(f"broker {os.getpid()} started for {self.spec['name']} ({self.key}), linger {self.linger}s")
        self.log.write(platform.describe(self.loop.selector, subreaper))
        self._start_backend()
        self._arm_linger()
        self._arm_sampler()
        self.loop.run()
        return self.exit_code

    @property
    def linger(self) -> float:
        return 0.0 if self.spec["scope"] == "isolated" else float(self.spec["linger"])

    # ---- control socket ---------------------------------------------------------------------

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.write(f"accept failed: {exc}")
                return
            conn.setblocking(False)
            self.loop.add_reader(conn.fileno(), lambda c=conn: self._hello(c))

    def _hello(self, conn: socket.socket) -> None:
        self.loop.remove_reader(conn.fileno())
        fds: list[int] = []
        try:
            data, ancillary, _flags, _ = conn.recvmsg(4096, socket.CMSG_SPACE(4 * array.array("i").itemsize))
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
            pid, uid = platform.peer_credentials(conn)
        except OSError as exc:
            self.log.write(f"control connection failed: {exc}")
            self._discard(conn, fds)
            return
        if uid != os.getuid():
            self.log.write(f"refused a connection from uid {uid} (pid {pid}): only uid {os.getuid()} may attach")
            self._discard(conn, fds)
            return
        words = data.decode("ascii", "replace").split()
        if len(words) < 2 or words[0] != f"MCPS{PROTOCOL}":
            self.log.write(f"refused a connection from pid {pid}: unknown hello {data[:40]!r}")
            self._discard(conn, fds)
            return
        command = words[1]
        if command == "attach" and len(words) >= 3 and words[2] == self.key and len(fds) == 2:
            self._attach(conn, pid, fds[0], fds[1])
        elif command == "status":
            self._reply_and_close(conn, json.dumps(self.status()).encode() + b"\n")
            self._close_fds(fds)
        elif command == "stop":
            self._reply_and_close(conn, b"ok\n")
            self._close_fds(fds)
            self.log.write(f"stop requested by pid {pid}")
            self.shutdown("stop requested")
        else:
            self.log.write(f"refused a connection from pid {pid}: bad hello {data[:80]!r}")
            self._discard(conn, fds)

    def _discard(self, conn: socket.socket, fds: list[int]) -> None:
        self._close_fds(fds)
        conn.close()

    @staticmethod
    def _close_fds(fds: list[int]) -> None:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    @staticmethod
    def _reply_and_close(conn: socket.socket, data: bytes) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(1.0)
            conn.sendall(data)
        except OSError:
            pass
        conn.close()

    # ---- sessions ---------------------------------------------------------------------------

    def _attach(self, conn: socket.socket, pid: int, in_fd: int, out_fd: int) -> None:
        if self.stopping:
            self._discard(conn, [in_fd, out_fd])  # the shim sees EOF before welcome and retries
            return
        self.next_sid += 1
        session = Session(self.next_sid, conn, pid, in_fd, out_fd)
        for fd in session.saved_flags:
            os.set_blocking(fd, False)
        session.outbox = Outbox(self.loop, out_fd, lambda exc, s=session: self._session_broken(s, exc))
        try:
            conn.send(b"ok\n")
        except OSError:
            self._release_fds(session)
            conn.close()
            return
        self.sessions[session.sid] = session
        self._perform(self.mux.open_session(session.sid))
        self.loop.add_reader(conn.fileno(), lambda: self._shim_event(session))
        self._cancel_linger()
        self.log.write(f"session {session.sid} attached (pid {pid}); {len(self.sessions)} attached")

    def _session_readable(self, session: Session) -> None:
        data = read_chunk(session.in_fd)
        if data is None:
            return
        if not data:
            self._session_eof(session)
            return
        lines, overflow = session.lines.feed(data)
        if overflow:
            message = f"Parse error: line longer than {MAX_LINE // (1024 * 1024)} MiB; skipped"
            self.log.write(f"session {session.sid}: {message}")
            self._perform([ToSession(session.sid, jsonrpc.error(None, jsonrpc.PARSE_ERROR, message))])
        for line in lines:
            if session.sid not in self.sessions:
                return
            self._perform(self.mux.from_session(session.sid, line))
        if self.fatal is not None and session.sid in self.sessions:
            self.end_session(session, 1, self.fatal)

    def _session_eof(self, session: Session) -> None:
        """The client closed our stdin: let in-flight replies out (briefly), then detach with status 0."""
        self.loop.remove_reader(session.in_fd)
        if self.mux.busy(session.sid):
            session.ending = True
            self.loop.call_later(END_GRACE, lambda: self.end_session(session, *self._verdict()))
            return
        self.end_session(session, *self._verdict())

    def _verdict(self) -> tuple[int, str | None]:
        """How a session ends: status 0, or 1 with the reason when the backend cannot start."""
        return (0, None) if self.fatal is None else (1, self.fatal)

    def _shim_event(self, session: Session) -> None:
        """The waiter says `r` once it can exit cleanly on a signal; after that the socket only closes."""
        try:
            data = session.conn.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_session(session, "shim exited")
        elif not session.reading and not session.ending:
            session.reading = True
            self.loop.add_reader(session.in_fd, lambda: self._session_readable(session))

    def _session_broken(self, session: Session, exc: OSError) -> None:
        self.log.write(f"session {session.sid}: writing stdout failed ({exc.strerror}); detaching it")
        self.loop.call_later(0, lambda: self._drop_session(session, "stdout closed", 0))

    def end_session(self, session: Session, code: int, message: str | None = None) -> None:
        """Detach a session after its pending output is written; its shim prints `message` and exits."""
        if session.sid not in self.sessions:
            return
        session.ending = True
        outbox = session.outbox
        if outbox is not None and outbox.pending and not outbox.broken:
            timer = self.loop.call_later(END_GRACE, lambda: self._drop_session(session, "ended", code, message))

            def drained() -> None:
                timer.cancel()
                self._drop_session(session, "ended", code, message)

            outbox.on_drained = drained
            self.loop.remove_reader(session.in_fd)
            return
        self._drop_session(session, "ended", code, message)

    def _drop_session(self, session: Session, why: str, code: int = 0, message: str | None = None) -> None:
        if self.sessions.pop(session.sid, None) is None:
            return
        self._perform(self.mux.close_session(session.sid))
        self.loop.remove_reader(session.in_fd)
        self.loop.remove_reader(session.conn.fileno())
        if session.outbox is not None:
            session.outbox.close()
        self._release_fds(session)
        farewell = (f"msg mcpsingleton: {message}\n" if message else "") + f"exit {code}\n"
        try:
            session.conn.send(farewell.encode("utf-8", "replace"))
        except OSError:
            pass
        session.conn.close()
        self.log.write(f"session {session.sid} (pid {session.pid}) detached: {why}; {len(self.sessions)} attached")
        self._arm_linger()

    @staticmethod
    def _release_fds(session: Session) -> None:
        for fd, blocking in session.saved_flags.items():
            try:
                os.set_blocking(fd, blocking)  # a tty or shared pipe must not stay non-blocking for others
            except OSError:
                pass
        Broker._close_fds(list(session.saved_flags))

    # ---- the multiplexer's actions ----------------------------------------------------------

    def _perform(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, ToSession):
                session = self.sessions.get(action.session)
                if session is not None and session.outbox is not None:
                    session.outbox.send(jsonrpc.encode(action.message))
                    if len(session.outbox.pending) > MAX_UNREAD:
                        self._session_broken(session, OSError(0, f"client left {MAX_UNREAD} bytes unread"))
            elif isinstance(action, ToBackend):
                if self.backend_outbox is not None:
                    self.backend_outbox.send(jsonrpc.encode(action.message))
            elif isinstance(action, Log):
                self.log.write(action.text)
            elif isinstance(action, StartBackend):
                self._start_backend()
        self._finish_ending_sessions()

    def _finish_ending_sessions(self) -> None:
        for session in list(self.sessions.values()):
            if session.ending and not self.mux.busy(session.sid) and not (session.outbox and session.outbox.pending):
                self._drop_session(session, "stdin closed", *self._verdict())

    # ---- backend ----------------------------------------------------------------------------

    def _start_backend(self) -> None:
        if self.backend is not None:
            return
        if self.fatal is not None:
            self._perform(self.mux.backend_exited(self.fatal))
            return
        delay = 0.0 if self.crash_streak == 0 else min(0.25 * 2 ** (self.crash_streak - 1), 30.0)
        if delay:
            self.log.write(f"backend crashed {self.crash_streak} time(s) in a row; restarting in {delay:.2f}s")
            self.loop.call_later(delay, self._spawn)
        else:
            self._spawn()

    def _spawn(self) -> None:
        if self.backend is not None or self.stopping:
            return
        argv = self.spec["argv"]
        try:
            backend = Backend(argv, self.spec["cwd"], self.spec["env"], self.key, self.keeper)
        except OSError as exc:
            self._backend_unstartable(f"cannot start backend {argv[0]!r}: {exc.strerror or exc}")
            return
        self.backend = backend
        self.backend_outbox = Outbox(self.loop, backend.stdin, lambda exc: None)
        self.backend_lines = LineBuffer(1 << 31)
        self.loop.add_reader(backend.stdout, lambda: self._backend_readable(backend))
        self.loop.add_reader(backend.stderr, lambda: self._backend_stderr(backend))
        self.log.write(f"backend started: pid {backend.pid} `{' '.join(argv)}`")
        self._perform(self.mux.backend_started())

    def _backend_readable(self, backend: Backend) -> None:
        data = read_chunk(backend.stdout)
        if data is None:
            return
        if not data:
            self._backend_gone(backend)
            return
        lines, _ = self.backend_lines.feed(data)
        for line in lines:
            self._perform(self.mux.from_backend(line))

    def _backend_stderr(self, backend: Backend) -> None:
        data = read_chunk(backend.stderr)
        if data is None:
            return
        if not data:
            self.loop.remove_reader(backend.stderr)
            return
        self._log_stderr(data)

    def _log_stderr(self, data: bytes) -> None:
        lines, _ = self.stderr_lines.feed(data)
        for line in lines:
            text = line.decode("utf-8", "replace")
            self.stderr_tail.append(text)
            self.log.write(f"backend: {text}")

    def _drain_stderr(self, backend: Backend) -> None:
        try:
            while chunk := os.read(backend.stderr, READ_CHUNK):
                self._log_stderr(chunk)
        except OSError:
            pass
        if self.stderr_lines.buf:
            self._log_stderr(b"\n")

    def _detach_backend(self) -> Backend | None:
        """Stop reading and writing the current backend; it is retired until the ladder has reaped it."""
        backend, self.backend = self.backend, None
        if backend is None:
            return None
        self.loop.remove_reader(backend.stdout)
        self.loop.remove_reader(backend.stderr)
        if self.backend_outbox is not None:
            self.backend_outbox.close()
            self.backend_outbox = None
        self.retired.append(backend)
        return backend

    def _backend_gone(self, backend: Backend) -> None:
        """The backend closed its stdout: it is dead to us. Error its requests, stop what is left of it."""
        self._detach_backend()
        self._drain_stderr(backend)
        self._reap()
        status = backend.exit_status
        described = f"exited with status {status}" if status is not None else "closed its stdout"
        if status is not None and status < 0:
            described = f"was killed by signal {-status}"
        stop_ladder(self.loop, backend, self._reap, backend.close_pipes, grace=0.5)
        if not self.mux.ever_initialized():
            tail = " | ".join(self.stderr_tail) or "(no stderr output)"
            self._backend_unstartable(
                f"backend `{' '.join(self.spec['argv'])}` {described} before answering initialize; last stderr: {tail}"
            )
            return
        self.restarts += 1
        lived = time.monotonic() - backend.started
        self.crash_streak = 0 if lived > 60 else self.crash_streak + 1
        self.log.write(f"backend pid {backend.pid} {described} after {lived:.1f}s")
        self._perform(self.mux.backend_exited(f"the backend {described}"))
        if self.mux.has_subscribers():
            self._start_backend()  # subscribers expect updates without asking again

    # ---- resource caps ----------------------------------------------------------------------

    def _arm_sampler(self) -> None:
        if self.spec.get("max_memory") or self.spec.get("max_procs"):
            self.loop.call_later(SAMPLE_INTERVAL, self._sample)

    def _sample(self) -> None:
        """Check the backend tree against --max-memory / --max-procs; restart it when it grew past them."""
        from .proctree import parent_map, tree_memory, tree_process_count

        backend = self.backend
        if backend is not None and not self.stopping:
            parents = parent_map()
            count = tree_process_count(backend.pid, parents)
            if self.spec.get("max_procs") and count > self.spec["max_procs"]:
                self._recycle(f"its process tree holds {count} processes (--max-procs {self.spec['max_procs']})")
            elif self.spec.get("max_memory"):
                used = tree_memory(backend.pid, parents)
                if used > self.spec["max_memory"]:
                    self._recycle_when_idle(
                        f"its tree uses {used >> 20} MiB (--max-memory {self.spec['max_memory'] >> 20} MiB)",
                        time.monotonic() + IDLE_WAIT,
                    )
        if not self.stopping:
            self.loop.call_later(SAMPLE_INTERVAL, self._sample)

    def _recycle_when_idle(self, reason: str, deadline: float) -> None:
        """A leaking backend is replaced between requests where possible, never in the middle of one."""
        if self.backend is None or self.stopping:
            return
        if self.mux.has_pending() and time.monotonic() < deadline:
            self.loop.call_later(0.05, lambda: self._recycle_when_idle(reason, deadline))
            return
        self._recycle(reason)

    def _recycle(self, reason: str) -> None:
        """Stop the backend group now (ladder) and start a fresh one that gets the sessions' state replayed."""
        backend = self._detach_backend()
        if backend is None:
            return
        self.limit_restarts += 1
        self.restarts += 1
        self.log.write(f"restarting backend pid {backend.pid}: {reason}")
        self._perform(self.mux.backend_exited(f"the backend was restarted because {reason}"))

        def stopped() -> None:
            backend.close_pipes()
            if self.sessions and not self.stopping:
                self._start_backend()

        stop_ladder(self.loop, backend, self._reap, stopped)

    def _backend_unstartable(self, reason: str) -> None:
        """The backend never worked in this broker: tell every session, then leave no broker behind."""
        self.fatal = reason
        self.log.write(reason)
        self._perform(self.mux.backend_exited(reason))
        for session in list(self.sessions.values()):
            self.end_session(session, 1, reason)
        self._cancel_linger()
        self._arm_linger()

    def _reap(self) -> None:
        """Collect every exited child (the backend, the keeper, orphans we adopted as subreaper)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if self.keeper is not None and pid == self.keeper.process.pid:
                self.keeper.process.returncode = code
            for backend in ([self.backend] if self.backend is not None else []) + self.retired:
                if backend.pid == pid:
                    backend.mark_exited(code)
                backend.group_alive()  # a group is confirmed gone the moment its last member is reaped
            self.retired = [b for b in self.retired if b.exit_status is None]

    # ---- linger and shutdown ----------------------------------------------------------------

    def _arm_linger(self) -> None:
        """No session left: stay `linger` seconds (a broken backend: none, once its error is delivered)."""
        if self.sessions or self.stopping or self.linger_timer is not None:
            return
        if not self.next_sid:
            delay = max(self.linger, FIRST_SESSION_WINDOW)  # the shim that started us is on its way
        elif self.fatal is not None:
            delay = 0.0
        else:
            delay = self.linger
        self.linger_timer = self.loop.call_later(delay, lambda: self.shutdown("no sessions left"))

    def _cancel_linger(self) -> None:
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None

    @property
    def state(self) -> str:
        """starting|running|lingering|restarting|stopping, as `ls` shows it."""
        if self.stopping:
            return "stopping"
        if not self.mux.ever_initialized():
            return "starting"
        if not self.mux.backend_ready():
            return "restarting"
        return "running" if self.sessions else "lingering"

    def shutdown(self, why: str) -> None:
        """Stop taking sessions, end the attached ones, stop the backend with the ladder, then exit."""
        if self.stopping:
            return
        self.stopping = True
        self._cancel_linger()
        self.log.write(f"shutting down: {why}")
        self._unlisten()
        for session in list(self.sessions.values()):
            self.end_session(session, 0)
        backend = self._detach_backend()
        if backend is None:
            self._exit()
            return

        def stopped() -> None:
            self._drain_stderr(backend)
            backend.close_pipes()
            self._exit()

        stop_ladder(self.loop, backend, self._reap, stopped, strays=True)

    def _unlisten(self) -> None:
        """Remove the socket (only if it is still ours) so new shims start a fresh broker."""
        try:
            if os.stat(self.paths.sock).st_ino == self.sock_inode:
                os.unlink(self.paths.sock)
        except OSError:
            pass
        if self.listener is not None:
            self.loop.remove_reader(self.listener.fileno())
            self.listener.close()
            self.listener = None

    def _exit(self) -> None:
        if self.sessions:  # wait for ending sessions to flush (bounded by END_GRACE)
            self.loop.call_later(0.05, self._exit)
            return
        if self.keeper is not None:
            self.keeper.close()
            self._reap()
        try:
            with open(self.paths.state) as handle:
                if json.load(handle).get("broker_pid") == os.getpid():
                    os.unlink(self.paths.state)
        except (OSError, ValueError):
            pass
        self.log.write(f"broker {os.getpid()} exited")
        os.close(self.lock_fd)  # last: a new broker may start from here on
        self.loop.stop()

    # ---- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        clients = []
        for session in self.sessions.values():
            clients.append(
                {
                    "pid": session.pid,
                    "client": self.mux.client_name(session.sid),
                    "attached_at": datetime.fromtimestamp(session.attached_at, UTC).isoformat(timespec="seconds"),
                }
            )
        return {
            "key": self.key,
            "name": self.spec["name"],
            "command": self.spec["argv"],
            "cwd": self.spec["cwd"],
            "scope": self.spec["scope"],
            "broker_pid": os.getpid(),
            "backend_pid": self.backend.pid if self.backend is not None else None,
            "clients": clients,
            "state": self.state,
            "started_at": self.started_at,
            "restarts": self.restarts,
            "limit_restarts": self.limit_restarts,
            "max_memory": self.spec.get("max_memory"),
            "max_procs": self.spec.get("max_procs"),
            "linger_seconds": self.linger,
            "requests": self.mux.stats["requests"],
            "errors": self.mux.stats["errors"],
            "log_lines_dropped": self.log.dropped,
            "version": __version__,
        }


def main(argv: list[str]) -> int:
    channel = socket.socket(fileno=int(argv[0]))
    lock_fd = int(argv[1])
    chunks = []
    while chunk := channel.recv(1 << 16):
        chunks.append(chunk)
    spec = json.loads(b"".join(chunks))
    broker = Broker(spec, lock_fd)
    os.dup2(broker.log.fileno(), 1) if broker.log.fileno() >= 0 else None
    os.dup2(broker.log.fileno(), 2) if broker.log.fileno() >= 0 else None
    try:
        broker.listen()
        broker.write_state()
    except OSError as exc:
        channel.sendall(f"error cannot listen on {broker.paths.sock}: {exc.strerror}\n".encode())
        return 1
    channel.sendall(b"ready\n")
    channel.close()
    return broker.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
