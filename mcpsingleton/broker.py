"""The broker: one detached daemon per key, owning the sessions' stdio and the backend slots.

Thin I/O glue, readable top to bottom: it listens on the key's Unix socket (listener.py), answers control
requests (`status`, `stop`, `restart`), takes over each attaching session's stdin/stdout and stderr
(sessions.py), places the session on a backend slot (slots.py; slot.py is one backend, its mux and its
lifecycle; the rules are in placement.py), performs what the slot's mux decides, lingers after the last
session leaves while a backend is worth keeping warm, hands its sessions over to a fresh broker on
`restart` (or a SIGTERM from anything but `stop`), and exits without leaving anything behind (handover.py).

Run as `python -m mcpsingleton.broker CHANNEL_FD LOCK_FD`: the spec arrives as JSON on the channel
(a socketpair with the shim that started it), and readiness goes back on it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from datetime import UTC, datetime

from . import __version__, platform, wire
from .atomic import write_atomically
from .backend import Keeper, kill_leftovers
from .budget import admit
from .discovery import store as store_discovery
from .eventloop import EventLoop
from .handover import Lifetime, restarts_handed_over
from .keys import KeyPaths, redacted_argv
from .listener import Listener, close_fds, discard, reply_and_close
from .logfile import LogFile
from .mux import BackendPart, Log, StartBackend, StoreDiscovery, StreamPart, ToBackend, ToSession
from .sessions import Sessions
from .slots import Slots

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

    from .slot import BackendSlot


class Broker:
    """One key's broker: the loop, the key's socket and the keeper, and the three parts it holds together:
    its sessions (sessions.py), its backend slots (slots.py), and how it ends (handover.py)."""

    def __init__(self, spec: dict[str, Any], lock_fd: int) -> None:
        self.spec = spec
        self.key: str = spec["key"]
        self.paths = KeyPaths(self.key, spec["runtime_dir"])
        self.lock_fd = lock_fd
        self.log = LogFile(spec["log"])
        self.loop = EventLoop()
        self.sessions = Sessions(self)
        self.slots = Slots(self)
        self.lifetime = Lifetime(self)
        self.listener = Listener(self.loop, self.log, self.paths, self._on_hello, self._starved_reason)
        self.keeper: Keeper | None = None
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.exit_code = 0
        self.restarts_before = restarts_handed_over(self.paths.state)  # read before write_state replaces it

    # ---- startup ----------------------------------------------------------------------------

    def write_state(self) -> None:
        state = {
            "key": self.key,
            "name": self.spec["name"],
            "command": redacted_argv(self.spec["argv"]),
            "cwd": self.spec["cwd"],
            "scope": self.spec["scope"],
            "broker_pid": os.getpid(),
            "started_at": self.started_at,
            "log": self.spec["log"],
            "version": __version__,
        }
        write_atomically(self.paths.state, json.dumps(state).encode())

    def run(self) -> int:
        # SIGTERM is a handover, as `restart`: it comes from a blind `kill`, a logout or a service manager,
        # none of which means "end the user's conversations"; `mcpsingleton stop` is how to end them.
        self.loop.add_signal_handler(signal.SIGTERM, lambda: self.lifetime.shutdown("SIGTERM", handover=True))
        self.loop.add_signal_handler(signal.SIGINT, lambda: self.lifetime.shutdown("SIGINT"))
        self.loop.add_signal_handler(signal.SIGHUP, lambda: None)
        self.loop.add_signal_handler(signal.SIGCHLD, self.reap)
        subreaper = platform.become_subreaper()
        leftovers = kill_leftovers(self.key)
        if leftovers:
            self.log.write(f"killed leftovers of an earlier broker for this key: pids {leftovers}")
        self.keeper = Keeper()
        started = f"broker {os.getpid()} started for {self.spec['name']} ({self.key})"
        self.log.write(f"{started}, scope {self.spec['scope']}, linger {self.linger}s")  # `reap` reads the scope
        self.log.write(platform.describe(self.loop.selector, subreaper))  # after: `logs NAME` reads the first line
        self.slots.start_first()
        self.lifetime.arm_linger()
        self.loop.run()
        return self.exit_code

    @property
    def linger(self) -> float:
        return 0.0 if self.spec["scope"] == "isolated" else float(self.spec["linger"])

    # ---- the Host protocol of slot.py -------------------------------------------------------

    def perform(self, slot: BackendSlot, actions: list[Any]) -> None:
        """Carry out what a slot's mux decided."""
        for action in actions:
            if isinstance(action, ToSession):
                self.sessions.deliver(action)
            elif isinstance(action, StreamPart):
                self.sessions.stream(action)
            elif isinstance(action, BackendPart):
                slot.send_part(action)
            elif isinstance(action, ToBackend):
                slot.send(action)
            elif isinstance(action, Log):
                self.log.write(action.text)
            elif isinstance(action, StartBackend):
                slot.start()
            elif isinstance(action, StoreDiscovery):
                self.log.write(store_discovery(self.spec, action.entry))
        self.sessions.finish_ending()
        self.slots.keep_time(slot)

    def has_sessions(self, slot: BackendSlot) -> bool:
        return bool(self.sessions.on(slot))

    def pause_sessions(self, slot: BackendSlot, paused: bool) -> None:
        self.sessions.pause(slot, paused)

    def slot_ready(self, slot: BackendSlot) -> None:
        self.slots.ready(slot)

    def backend_stderr(self, slot: BackendSlot, lines: list[bytes]) -> None:
        self.sessions.backend_stderr(slot, lines)

    def may_start(self, slot: BackendSlot) -> str | None:
        return admit(slot, self.slots, self.spec.get("budget"))

    def slot_failed(self, slot: BackendSlot, reason: str) -> None:
        """The slot's backend never worked: end its sessions with the reason (their shims exit 1)."""
        self.slots.give_up("its first backend never worked")
        for session in self.sessions.on(slot):
            self.sessions.end(session, 1, reason)
        self.lifetime.cancel_linger()
        self.lifetime.arm_linger()

    def reap(self) -> None:
        """Collect every exited child (backends, the keeper, orphans we adopted as subreaper)."""
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
            for slot in self.slots:
                slot.mark_exited(pid, code)

    # ---- control requests -------------------------------------------------------------------

    def _on_hello(self, conn: socket.socket, pid: int, words: list[str], fds: list[int]) -> None:
        if words[:2] == [wire.ATTACH, self.key] and len(words) <= 3 and len(fds) in (2, 3):
            self.sessions.attach(conn, pid, fds, words[2] if len(words) == 3 else None)
        elif words == [wire.STATUS]:
            close_fds(fds)
            reply_and_close(conn, wire.encode_status(self.status()))
        elif words == [wire.STOP]:
            close_fds(fds)
            reply_and_close(conn, wire.WELCOME)
            self.log.write(f"stop requested by pid {pid}")
            self.lifetime.shutdown("stop requested")
        elif words == [wire.RESTART]:
            close_fds(fds)
            reply_and_close(conn, wire.WELCOME)
            self.log.write(f"restart requested by pid {pid}")
            self.lifetime.shutdown("restart requested", handover=True)
        else:
            self.log.write(f"refused a connection from pid {pid}: bad hello {' '.join(words)[:80]!r}")
            discard(conn, fds)

    def _starved_reason(self) -> str:
        return (
            f"the broker for {self.spec['name']} is out of file descriptors with {len(self.sessions)} sessions "
            "attached; end some sessions, or raise `ulimit -n` where the first session starts"
        )

    # ---- status -----------------------------------------------------------------------------

    def status(self) -> list[wire.BackendStatus]:
        """One record per backend slot, as `ls --json` and `metrics` show them."""
        return [self._slot_status(slot) for slot in self.slots]

    def _slot_status(self, slot: BackendSlot) -> wire.BackendStatus:
        record = slot.status(self.has_sessions(slot))
        record.state = "stopping" if self.lifetime.stopping else record.state
        record.restarts += self.restarts_before
        record.key = self.key
        record.name = self.spec["name"]
        record.command = redacted_argv(self.spec["argv"])
        record.cwd = self.spec["cwd"]
        record.scope = self.spec["scope"]
        record.sharing = slot.sharing or "undecided"
        record.policy = slot.policy
        record.config_error = self.spec.get("config_error")
        record.broker_pid = os.getpid()
        record.slot = slot.number
        record.clients = [
            {
                "pid": session.pid,
                "client": slot.mux.client_name(session.sid),
                "attached_at": datetime.fromtimestamp(session.attached_at, UTC).isoformat(timespec="seconds"),
            }
            for session in self.sessions.on(slot)
        ]
        record.started_at = self.started_at
        record.linger_seconds = self.linger
        record.sessions_refused = self.listener.refused
        record.log_lines_dropped = self.log.dropped
        record.version = __version__
        return record


def main(argv: list[str]) -> int:
    platform.raise_fd_limit()
    channel = socket.socket(fileno=int(argv[0]))
    lock_fd = int(argv[1])
    chunks = []
    while chunk := channel.recv(1 << 16):
        chunks.append(chunk)
    try:
        spec = json.loads(b"".join(chunks))
    except ValueError:
        return 1  # the shim that started us died before it sent the whole spec: nothing to clean up
    broker = Broker(spec, lock_fd)
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
