"""One server key inside the broker: its spec, its log, its sessions, its backend slots and how it ends.

The broker process (process.py) hosts one Server per key. A Server is what a whole broker process was before
there was one per user: it takes over each attaching session's stdio (sessions.py), places the session on a
backend slot (slots.py; slot.py is one backend), performs what a slot's mux decides, lingers after its last
session while a backend is worth keeping warm, and ends (handover.py) — then the broker forgets it; the
process goes on for the other servers. Sessions, Slots and Lifetime see it through narrow protocols.

Every callback a Server registers runs inside its guard (`GuardedLoop`): an exception escaping Server code is
logged in that server's log and counted, and ends that server (its sessions re-attach to a fresh one), never
the process and never another server.
"""

from __future__ import annotations

import os
import signal
import traceback

from .. import __version__
from ..common import wire
from ..common.logfile import LogFile, utc_iso
from ..common.paths import KeyPaths
from ..mux import BackendPart, Log, StartBackend, StoreDiscovery, StreamPart, ToBackend, ToSession
from ..shim.keys import redacted_argv
from .backend import kill_leftovers
from .budget import Usage, admit
from .discovery_cache import store as store_discovery
from .handover import Lifetime
from .sessions import Sessions
from .slots import Slots

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    from .backend import Keeper
    from .eventloop import Callback, EventLoop, Timer
    from .slot import BackendSlot

    class Process(Protocol):
        """What a Server needs from the broker process hosting it."""

        loop: EventLoop
        keeper: Keeper | None

        def reap(self) -> None: ...
        def server_finished(self, server: Server) -> None: ...
        def sessions_refused(self) -> int: ...
        def contained(self, key: str) -> int: ...
        def count_contained(self, key: str) -> None: ...
        def restarts_before(self, key: str) -> int: ...
        def all_slots(self) -> list[BackendSlot]: ...


SPEC_FIELDS: dict[str, type | tuple[type, ...]] = {
    "key": str,
    "name": str,
    "argv": list,
    "cwd": str,
    "env": dict,
    "scope": str,
    "linger": (int, float),
}
"""What a spec line must hold (the rest is optional: sharing, policy, caps, lazy …)."""
FAULT_ENV = "MCPSINGLETON_TEST_FAULT"
"""Tests only: a file holding a server's name when its server is created; once that server has passed a tool call
to its backend, it raises (once), as a bug would, so containment can be tested."""


def parse_spec(line: bytes, key: str) -> dict[str, Any] | None:
    """A spec line a shim sent for `key`; None when it is not one (the connection is then refused)."""
    import json

    try:
        spec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(spec, dict) or spec.get("key") != key:
        return None
    if not all(isinstance(spec.get(name), kind) for name, kind in SPEC_FIELDS.items()):
        return None
    if not all(isinstance(word, str) for word in spec["argv"]) or not spec["argv"]:
        return None
    return spec


class GuardedLoop:
    """The broker's loop as one server sees it: every callback it registers runs inside the server's guard."""

    def __init__(self, loop: EventLoop, guard: Callable[[BaseException], None]) -> None:
        self._loop = loop
        self._guard = guard

    def _guarded(self, callback: Callback) -> Callback:
        def run() -> None:
            try:
                callback()
            except Exception as exc:  # the point: nothing of one server reaches the process
                self._guard(exc)

        return run

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._loop.add_reader(fd, self._guarded(callback))

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._loop.add_writer(fd, self._guarded(callback))

    def remove_reader(self, fd: int) -> None:
        self._loop.remove_reader(fd)

    def remove_writer(self, fd: int) -> None:
        self._loop.remove_writer(fd)

    def call_later(self, delay: float, callback: Callback) -> Timer:
        return self._loop.call_later(delay, self._guarded(callback))


class Server:
    """One key's sessions and backend slots inside the broker process, and how they end."""

    def __init__(self, spec: dict[str, Any], process: Process) -> None:
        self.spec = spec
        self.key: str = spec["key"]
        self.process = process
        self.log = LogFile(KeyPaths(self.key).log())
        self.loop: EventLoop = GuardedLoop(process.loop, self._contain)  # type: ignore[assignment]
        self.keeper = process.keeper
        self.started_at = utc_iso()
        self.abandoned = False
        self.restarts_before = process.restarts_before(self.key)  # a handover's: `ls` counts on from there
        self.fault_armed = _fault_armed(spec["name"])
        self.sessions = Sessions(self)
        self.slots = Slots(self)
        self.lifetime = Lifetime(self)

    def start(self) -> None:
        """Sweep what a dead broker left of this key, then start the first slot (unless lazy)."""
        leftovers = kill_leftovers(self.key)
        if leftovers:
            self.log.write(f"killed leftovers of an earlier broker for this key: pids {leftovers}")
        started = f"broker {os.getpid()} started for {self.spec['name']} ({self.key})"
        # `logs NAME` finds a server's log by this first line, and `reap` reads the scope in it
        self.log.write(f"{started}, scope {self.spec['scope']}, linger {self.linger}s")
        self.slots.start_first()
        self.lifetime.arm_linger()

    @property
    def linger(self) -> float:
        return 0.0 if self.spec["scope"] == "isolated" else float(self.spec["linger"])

    def reap(self) -> None:
        self.process.reap()

    def finished(self) -> None:
        """Every slot is retired and every session gone: the broker forgets this server."""
        self.log.write(f"server {self.spec['name']} stopped; broker {os.getpid()} goes on")
        self.log.close()  # the broker lives on: a fd per ended server would add up (isolated keys: one per session)
        self.process.server_finished(self)

    # ---- containment --------------------------------------------------------------------------

    def guarded(self, work: Callback) -> None:
        """Run server code the broker calls directly (an attach, a control request) inside this server's guard."""
        try:
            work()
        except Exception as exc:  # contained to this server, as its own callbacks are
            self._contain(exc)

    def _contain(self, exc: BaseException) -> None:
        """An exception escaped this server's code: log it here, count it, end this server (its sessions
        re-attach to a fresh one); should that ending fail too, drop it outright. The process and the other
        servers go on."""
        self.process.count_contained(self.key)
        text = "".join(traceback.format_exception(exc)).rstrip().replace("\n", " | ")
        self.log.write(f"internal error (contained to this server; please report it): {text}")
        if self.abandoned:
            return
        if not self.lifetime.stopping:
            self.lifetime.shutdown("an internal error", handover=True, crashed=True)
        else:
            self.abandon()

    def abandon(self) -> None:
        """Last resort for a server whose own shutdown failed: SIGKILL its backend groups, let go of its
        sessions (their waiters see end of file and re-attach), stop watching every fd of it, forget it."""
        self.abandoned = True
        self.log.write("abandoning this server: its shutdown failed too")
        for slot in self.slots:
            backend = slot.backend
            if backend is not None:
                for fd in (backend.stdin, backend.stdout, backend.stderr):
                    self.loop.remove_reader(fd)
                    self.loop.remove_writer(fd)
                try:
                    os.killpg(backend.pgid, signal.SIGKILL)
                except OSError:
                    pass
        for session in self.sessions:
            for fd in (session.in_fd, session.out_fd, session.conn.fileno()):
                self.loop.remove_reader(fd)
                self.loop.remove_writer(fd)
            session.conn.close()
            self.sessions.release_fds(session)
        self.process.server_finished(self)

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
        if self.fault_armed:
            self._fault(actions)

    def _fault(self, actions: list[Any]) -> None:
        if any(isinstance(action, ToBackend) and b"tools/call" in b"".join(action.parts()) for action in actions):
            self.fault_armed = False
            raise RuntimeError(f"{FAULT_ENV}: a fault injected for this test")

    def has_sessions(self, slot: BackendSlot) -> bool:
        return bool(self.sessions.on(slot))

    def pause_sessions(self, slot: BackendSlot, paused: bool) -> None:
        self.sessions.pause(slot, paused)

    def slot_ready(self, slot: BackendSlot) -> None:
        self.slots.ready(slot)

    def backend_stderr(self, slot: BackendSlot, lines: list[bytes]) -> None:
        self.sessions.backend_stderr(slot, lines)

    def may_start(self, slot: BackendSlot) -> str | None:
        """The user's [budget] counts every backend of every server: the one broker is where they all are."""
        return admit(slot, self.process.all_slots(), self.spec.get("budget"))

    def slot_failed(self, slot: BackendSlot, reason: str) -> None:
        """The slot's backend never worked: end its sessions with the reason (their shims exit 1)."""
        self.slots.give_up("its first backend never worked")
        for session in self.sessions.on(slot):
            self.sessions.end(session, 1, reason)
        self.lifetime.cancel_linger()
        self.lifetime.arm_linger()

    # ---- status -----------------------------------------------------------------------------

    def status(self, usage: Usage) -> list[wire.BackendStatus]:
        """One record per backend slot, as `ls --json` and `metrics` show them (none when that fails: contained);
        `usage`: what the user's [budget] counts in the whole broker, measured once for every server."""
        try:
            budget = usage.report(self.spec.get("budget"))
            return [self._slot_status(slot, budget) for slot in self.slots]
        except Exception as exc:  # one server's fault never costs the others their `ls`
            self._contain(exc)
            return []

    def _slot_status(self, slot: BackendSlot, budget: dict[str, int | None] | None) -> wire.BackendStatus:
        record = slot.status(self.has_sessions(slot))
        record.budget = budget
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
                "transport": session.transport(),
                "attached_at": utc_iso(session.attached_at),
            }
            for session in self.sessions.on(slot)
        ]
        record.started_at = self.started_at
        record.linger_seconds = self.linger
        record.internal_errors += self.process.contained(self.key)
        record.sessions_refused = self.process.sessions_refused()
        record.log_lines_dropped = self.log.dropped
        record.version = __version__
        return record


def _fault_armed(name: str) -> bool:
    path = os.environ.get(FAULT_ENV)
    if not path:
        return False
    try:
        with open(path) as handle:
            if handle.read().strip() != name:
                return False
        os.unlink(path)
    except OSError:
        return False
    return True
