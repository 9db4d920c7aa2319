"""The broker: one detached daemon per user (per MCPSINGLETON_HOME), hosting every server key.

Thin process-level glue, readable top to bottom: it holds `broker.lock` for life, listens on `broker.sock`
(listener.py), runs the one event loop and the one keeper, and keeps a Server per key (server.py: that key's
sessions, backend slots and lifetime). An attach for a key it does not host yet is answered `spec`: the shim
sends the server's spec on the same connection and the Server is created (the first spec wins: admission.py).
It answers control requests (`status`, `stop [KEY]`, `restart [KEY]`), hands everything over to a fresh broker on
`restart` without a key or SIGTERM, exits once it has had no server for a while, and is watched by a
watchdog: a loop that stops turning dumps every thread's stack to the log and exits, as after a crash.

Run as `python -m mcpsingleton.broker CHANNEL_FD LOCK_FD`: readiness goes back on the channel (a socketpair
with the shim that started it); the broker needs no spec to start.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import sys
import time

from .. import __version__
from ..common import platform, wire
from ..common.atomic import write_atomically
from ..common.logfile import LogFile, utc_iso
from ..common.paths import BROKER, KeyPaths
from .admission import Admission
from .backend import Keeper, kill_orphans
from .budget import Usage
from .eventloop import EventLoop
from .handover import EXIT_POLL, FIRST_SESSION_WINDOW, HANDED_OVER, HANDED_OVER_WINDOW, restarts_handed_over
from .listener import Listener, close_fds, reply_and_close
from .server import Server

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from .eventloop import Timer
    from .slot import BackendSlot

WATCHDOG = 10.0
"""A loop that has not turned for this long is stuck (a bug, an endless loop): the broker dumps its stacks to
its log and exits, and its sessions re-attach to a fresh broker as after a crash."""
WATCHDOG_REARM = 3.0
"""How often the loop re-arms it. Each re-arm ends faulthandler's C thread and starts a new one, so an idle
broker would start a thread every second at 1.0; at 3.0 a turn must still stall over 7 s to trip it (any real
turn is milliseconds) and a stuck loop is still caught within WATCHDOG."""
EMPTY_GRACE = 1.0
"""After its last server ended, the broker waits this long for a new one before it exits (FIRST_SESSION_WINDOW
when it has never had one: the shim that started it is on its way)."""
HANG_ENV = "MCPSINGLETON_TEST_HANG"
"""Tests only: a path; when it exists at a hello, the broker removes it and spins forever (the watchdog's test)."""


class Broker:
    """The process: loop, socket, keeper, and one Server per key."""

    def __init__(self, lock_fd: int) -> None:
        self.paths = KeyPaths(BROKER)
        self.lock_fd = lock_fd
        self.log = LogFile(self.paths.log())
        self.loop = EventLoop()
        self.listener = Listener(self.loop, self.log, self.paths, self._on_hello, self._starved_reason)
        self.keeper: Keeper | None = None
        self.servers: dict[str, Server] = {}
        self.admission = Admission(self.loop, self.log, self)
        self.had_servers = False
        self.internal_errors: dict[str, int] = {}
        """Per key, exceptions contained to a server (kept across its servers: one ends by containing one)."""
        now = time.monotonic()  # what the previous broker handed over: read before write_state replaces it
        self.handed_over = {key: (count, now) for key, count in restarts_handed_over(self.paths.state).items()}
        """Per key, the restarts of a server that handed its sessions over, and when: the server that takes
        them (within HANDED_OVER_WINDOW) goes on counting from there (`ls` RESTARTS)."""
        self.idle_timer: Timer | None = None
        self.started_at = utc_iso()
        self.stopping = False
        self.hang_armed = bool(os.environ.get(HANG_ENV))

    # ---- startup ----------------------------------------------------------------------------

    def write_state(self) -> None:
        """`broker.json`: what `ls`, `stop` and `reap` need to find this broker (no env, no key)."""
        state = {
            "key": BROKER,
            "protocol": wire.PROTOCOL,
            "broker_pid": os.getpid(),
            "started_at": self.started_at,
            "log": self.log.path,
            "version": __version__,
        }
        write_atomically(self.paths.state, json.dumps(state).encode())

    def run(self) -> int:
        # SIGTERM is a handover, as `restart`: it comes from a blind `kill`, a logout or a service manager,
        # none of which means "end the user's conversations"; `mcpsingleton stop` is how to end them.
        self.loop.add_signal_handler(signal.SIGTERM, lambda: self.shutdown("SIGTERM", handover=True))
        self.loop.add_signal_handler(signal.SIGINT, lambda: self.shutdown("SIGINT"))
        self.loop.add_signal_handler(signal.SIGHUP, lambda: None)
        self.loop.add_signal_handler(signal.SIGCHLD, self.reap)
        subreaper = platform.become_subreaper()
        self.keeper = Keeper()
        self.log.write(f"broker {os.getpid()} started (one per user: every server's sessions attach here)")
        self.log.write(platform.describe(self.loop.selector, subreaper))
        self._arm_watchdog()
        self.arm_idle_exit()
        self.loop.run()
        faulthandler.cancel_dump_traceback_later()
        return 0

    def _arm_watchdog(self) -> None:
        """Re-armed every WATCHDOG_REARM by the loop itself: should the loop stop turning, a C thread dumps every
        thread's stack to the log (fd 2) and exits the process; the keeper then stops the backends."""
        faulthandler.dump_traceback_later(WATCHDOG, exit=True)
        self.loop.call_later(WATCHDOG_REARM, self._arm_watchdog)

    # ---- servers ----------------------------------------------------------------------------

    def reap(self) -> None:
        """Collect every exited child (backends of every server, the keeper, orphans we adopted as subreaper)."""
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
            for server in list(self.servers.values()):
                for slot in server.slots:
                    slot.mark_exited(pid, code)

    def all_slots(self) -> list[BackendSlot]:
        """Every backend slot of every server (the [budget] is the user's, not one server's)."""
        return [slot for server in list(self.servers.values()) for slot in server.slots]

    def sessions_refused(self) -> int:
        return self.listener.refused

    def contained(self, key: str) -> int:
        return self.internal_errors.get(key, 0)

    def count_contained(self, key: str) -> None:
        self.internal_errors[key] = self.internal_errors.get(key, 0) + 1

    def restarts_before(self, key: str) -> int:
        """The restarts a new server of `key` goes on from: those of the server it takes the sessions over from."""
        count, when = self.handed_over.pop(key, (0, 0.0))
        return count if time.monotonic() - when <= HANDED_OVER_WINDOW else 0

    def add_server(self, spec: dict) -> None:
        if self.stopping:
            return  # its sessions are turned away (`Admission.attach`) and retry with the next broker
        server = Server(spec, self)
        self.servers[server.key] = server
        self.had_servers = True
        self.log.write(f"server {spec['name']} ({server.key}) added; {len(self.servers)} hosted")
        server.guarded(server.start)

    def server_finished(self, server: Server) -> None:
        """A server ended (linger over, stopped, handed over, or abandoned): forget it; the process goes on."""
        if self.servers.get(server.key) is server:
            del self.servers[server.key]
        if server.lifetime.restarts_handed_over is not None:
            self.handed_over[server.key] = (server.lifetime.restarts_handed_over, time.monotonic())
        self.log.write(f"server {server.spec['name']} ({server.key}) ended; {len(self.servers)} left")
        if self.stopping:
            self._exit_when_done()
        else:
            self.arm_idle_exit()

    def arm_idle_exit(self) -> None:
        """No server (nor one being asked for): exit after a while, so a broker nobody uses does not linger."""
        if self.servers or self.admission.waiting or self.stopping or self.idle_timer is not None:
            return

        def expire() -> None:
            self.idle_timer = None
            if not self.servers and not self.admission.waiting:
                self.shutdown("no servers left")

        grace = EMPTY_GRACE if self.had_servers else FIRST_SESSION_WINDOW
        self.idle_timer = self.loop.call_later(grace, expire)

    def cancel_idle_exit(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    # ---- hellos -----------------------------------------------------------------------------

    def _on_hello(self, conn: socket.socket, pid: int, words: list[str], fds: list[int]) -> None:
        if self.hang_armed and os.path.exists(os.environ[HANG_ENV]):
            os.unlink(os.environ[HANG_ENV])
            while True:  # tests only: a loop that never turns again (the watchdog must end it)
                pass
        command, args = words[0], words[1:]
        if command == wire.ATTACH and len(args) in (1, 2) and len(fds) in (2, 3):
            self.admission.attach(conn, pid, args[0], args[1] if len(args) == 2 else None, fds)
            return
        close_fds(fds)
        if command == wire.STATUS and not args:
            reply_and_close(conn, wire.encode_status(self.status()))
        elif command in (wire.STOP, wire.RESTART) and len(args) <= 1:
            self._control(conn, pid, command, args[0] if args else None)
        else:
            self.log.write(f"refused a connection from pid {pid}: bad hello {' '.join(words)[:80]!r}")
            conn.close()

    # ---- control requests -------------------------------------------------------------------

    def _control(self, conn: socket.socket, pid: int, command: str, key: str | None) -> None:
        """`stop`/`restart`, of one server (KEY) or of everything (then the broker exits)."""
        handover = command == wire.RESTART
        if key is None:
            reply_and_close(conn, wire.WELCOME)
            self.log.write(f"{command} of every server requested by pid {pid}")
            self.shutdown(f"{command} requested", handover=handover)
            return
        server = self.servers.get(key)
        if server is None:
            reply_and_close(conn, wire.refusal(f"no server with key {key} runs here"))
            return
        reply_and_close(conn, wire.WELCOME)
        server.log.write(f"{command} requested by pid {pid}")
        server.guarded(lambda: server.lifetime.shutdown(f"{command} requested", handover=handover))

    def _starved_reason(self) -> str:
        sessions = sum(len(server.sessions) for server in self.servers.values())
        return (
            f"the broker is out of file descriptors with {sessions} sessions attached; end some sessions, "
            "or raise `ulimit -n` where the first session starts"
        )

    def status(self) -> list[wire.BackendStatus]:
        """One record per backend slot of every server, as `ls --json` and `metrics` show them."""
        usage = Usage(self.all_slots())
        return [record for server in list(self.servers.values()) for record in server.status(usage)]

    # ---- ending -----------------------------------------------------------------------------

    def shutdown(self, why: str, handover: bool = False) -> None:
        """Every server stops (or hands its sessions over to the next broker), then the process exits."""
        if self.stopping:
            return
        self.stopping = True
        self.cancel_idle_exit()
        self.log.write(f"shutting down: {why}" + (" (handing every session over)" if handover else ""))
        for server in list(self.servers.values()):
            server.guarded(lambda server=server: server.lifetime.shutdown(why, handover=handover))  # type: ignore[misc]
        self._exit_when_done()

    def _exit_when_done(self) -> None:
        if self.servers:
            return  # each server_finished comes back here
        if self.admission.waiting:
            self.loop.call_later(EXIT_POLL, self._exit_when_done)
            return
        if self.keeper is not None:
            self.keeper.close()
            self.reap()
        orphans = kill_orphans()
        if orphans:
            self.log.write(f"killed orphans adopted as subreaper: pids {orphans}")
        self._leave_state()
        self.listener.close()
        self.log.write(f"broker {os.getpid()} exited")
        os.close(self.lock_fd)  # last: a new broker may start from here on
        self.loop.stop()

    def _leave_state(self) -> None:
        """Remove our state file; after a handover, leave in it each server's restarts so far, that one counted,
        for the next broker (`restarts_handed_over`): to the user a `restart` is a restart of the backend."""
        now = time.monotonic()
        handed = {key: count for key, (count, when) in self.handed_over.items() if now - when <= HANDED_OVER_WINDOW}
        try:
            with open(self.paths.state) as handle:
                state = json.load(handle)
            if state.get("broker_pid") != os.getpid():
                return
            if not handed:
                os.unlink(self.paths.state)
                return
            write_atomically(self.paths.state, json.dumps({**state, HANDED_OVER: handed}).encode())
        except (OSError, ValueError):
            pass


def main(argv: list[str]) -> int:
    platform.raise_fd_limit()
    channel = socket.socket(fileno=int(argv[0]))
    broker = Broker(int(argv[1]))
    if broker.log.fileno() >= 0:
        os.dup2(broker.log.fileno(), 1)
        os.dup2(broker.log.fileno(), 2)
    try:
        broker.listener.listen()
        broker.write_state()
    except OSError as exc:
        _tell(channel, f"error cannot listen on {broker.paths.sock}: {exc.strerror}\n".encode())
        return 1
    if not _tell(channel, b"ready\n"):
        broker.log.write("the session that started this broker left before it was ready; serving the next one")
    channel.close()
    return broker.run()


def _tell(channel: socket.socket, line: bytes) -> bool:
    """Say something to the shim that started us; False when it is gone (killed by its client, say)."""
    try:
        channel.sendall(line)
    except OSError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
