"""The broker: one detached daemon per key, owning the sessions' stdio and the backend slots.

Thin I/O glue, readable top to bottom: it listens on the key's Unix socket (listener.py), answers control
requests (`status`, `stop`, `restart`), takes over each attaching session's stdin/stdout (and stderr),
places the session on a backend slot (slot.py: one backend, its mux and its lifecycle; the rules in
placement.py), performs what the slot's mux decides, lingers after the last session leaves while a
backend is worth keeping warm, hands its sessions over to a fresh broker on `restart` (or a SIGTERM
from anything but `stop`), and exits without leaving anything behind.

Run as `python -m mcpsingleton.broker CHANNEL_FD LOCK_FD`: the spec arrives as JSON on the channel
(a socketpair with the shim that started it), and readiness goes back on it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from datetime import UTC, datetime

from . import __version__, jsonrpc, platform, wire
from .atomic import write_atomically
from .backend import Keeper, kill_leftovers
from .discovery import store as store_discovery
from .eventloop import Callback, EventLoop, Timer
from .keys import KeyPaths, redacted_argv
from .listener import Listener, close_fds, discard, reply_and_close
from .logfile import LogFile
from .mux import Log, StartBackend, StoreDiscovery, ToBackend, ToSession
from .placement import SharingDecision, ends_with_last_session, fits, slot_for_roots
from .sharing import ISOLATED, SHARED
from .slot import BackendSlot
from .streams import LineReader, Outbox, write_if_room

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

MAX_LINE = 64 * 1024 * 1024
"""A longer line from a session is refused with -32700 (and skipped to its end), not buffered."""
MAX_UNREAD = 64 * 1024 * 1024
"""A session that leaves this much of its stdout unread is disconnected; the others go on."""
END_GRACE = 1.5
"""How long a leaving session's in-flight replies, or its final error, may take to be written."""
DECISION_WAIT = 10.0
"""How long the first backend's tools/list may take before its tool shapes are no longer waited for."""
FIRST_SESSION_WINDOW = 5.0
"""A new broker waits at least this long for its first session, even with --linger 0."""
HANDOVER_DRAIN = 5.0
"""A handover (restart, SIGTERM) waits this long for the requests in flight before it stops the backends."""
DRAIN_POLL = 0.02
CRASH_ON_RESUME_ENV = "MCPSINGLETON_TEST_CRASH_ON_RESUME"


class Session:
    """One client session: its connection to the shim's waiter, the client's stdio, and its backend slot."""

    def __init__(self, sid: int, conn: socket.socket, pid: int, fds: list[int], slot: BackendSlot) -> None:
        self.sid = sid
        self.conn = conn
        self.pid = pid
        self.in_fd, self.out_fd = fds[0], fds[1]
        self.err_fd = fds[2] if len(fds) > 2 else None  # older shims hand over stdin and stdout only
        self.slot = slot
        self.parked = False  # in its slot's mux for its handshake; its requests wait until it is placed
        self.reader = LineReader(self.in_fd, MAX_LINE)
        self.saved_flags = {fd: os.get_blocking(fd) for fd in {self.in_fd, self.out_fd}}
        self.outbox: Outbox | None = None
        self.ending = False
        self.reading = False  # the waiter said it is ready: the client's input may be read
        self.waiter_said = b""
        self.attached_at = time.time()
        self.state_mark: object = None  # what the waiter was last sent (`state`), as the mux marks it
        self.handed_over = False  # told to re-attach to the next broker rather than to exit

    def waiter_status(self) -> str:
        """How the waiter said its session ended (`x N`), as the log line shows it."""
        for line in self.waiter_said.decode("ascii", "replace").splitlines():
            if line.startswith(wire.WAITER_STATUS):
                return f"exit status {line[len(wire.WAITER_STATUS) :].strip()}"
        return "exit status unknown (the waiter was killed)"


class Broker:
    def __init__(self, spec: dict[str, Any], lock_fd: int) -> None:
        self.spec = spec
        self.key: str = spec["key"]
        self.paths = KeyPaths(self.key, spec["runtime_dir"])
        self.lock_fd = lock_fd
        self.log = LogFile(spec["log"])
        self.loop = EventLoop()
        self.sessions: dict[int, Session] = {}
        self.slots: dict[int, BackendSlot] = {}
        self.retiring: dict[int, list[Callback]] = {}
        self.decision = SharingDecision(spec)
        self.decision_timer: Timer | None = None
        self.next_sid = 0
        self.next_slot = 0
        self.listener = Listener(self.loop, self.log, self.paths, self._on_hello, self._starved_reason)
        self.keeper: Keeper | None = None
        self.linger_timer: Timer | None = None
        self.stopping = False
        self.started_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.exit_code = 0

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
        self.loop.add_signal_handler(signal.SIGTERM, lambda: self.shutdown("SIGTERM", handover=True))
        self.loop.add_signal_handler(signal.SIGINT, lambda: self.shutdown("SIGINT"))
        self.loop.add_signal_handler(signal.SIGHUP, lambda: None)
        self.loop.add_signal_handler(signal.SIGCHLD, self.reap)
        subreaper = platform.become_subreaper()
        leftovers = kill_leftovers(self.key)
        if leftovers:
            self.log.write(f"killed leftovers of an earlier broker for this key: pids {leftovers}")
        self.keeper = Keeper()
        self.log.write(f"broker {os.getpid()} started for {self.spec['name']} ({self.key}), linger {self.linger}s")
        self.log.write(platform.describe(self.loop.selector, subreaper))  # after: `logs NAME` reads the first line
        self.first_slot = self.create_slot()
        if not self.first_slot.mux.discovery.serves_without_backend():  # --lazy: a request that needs it starts it
            self.first_slot.start()
        self._arm_linger()
        self.loop.run()
        return self.exit_code

    @property
    def linger(self) -> float:
        return 0.0 if self.spec["scope"] == "isolated" else float(self.spec["linger"])

    # ---- backend slots ----------------------------------------------------------------------

    def create_slot(self) -> BackendSlot:
        """A new backend slot (not started yet), with the sharing decided so far."""
        self.next_slot += 1
        slot = BackendSlot(self.next_slot, self.spec, self.loop, self.log, self.keeper, self)
        slot.sharing = self.decision.sharing if self.decision.known else None
        slot.policy = self.decision.policy
        self.slots[slot.number] = slot
        return slot

    def new_slot(self, why: str) -> BackendSlot:
        slot = self.create_slot()
        self.log.write(f"backend slot {slot.number} created: {why}")
        slot.start()
        return slot

    def retire_slot(self, slot: BackendSlot, done: Callback, strays: bool = False) -> None:
        """Stop a slot's backend and forget the slot (its sessions must have been moved or ended).

        `strays`: also stop processes that left the backend's group. Only when the whole broker stops:
        the key tag they are found by is shared by every slot of the key."""
        waiting = self.retiring.setdefault(slot.number, [])
        waiting.append(done)
        if len(waiting) > 1:
            return  # already stopping: `done` runs when it has
        slot.retiring = True

        def stopped() -> None:
            self.slots.pop(slot.number, None)
            for callback in self.retiring.pop(slot.number, []):
                callback()

        slot.stop(stopped, strays)

    # ---- placement (rules: placement.py) ------------------------------------------------------

    def _join(self, session: Session) -> None:
        """Put a new session on a slot: its own (isolated), or parked on a shared one until it is placed."""
        if self.decision.known and self.decision.isolated:
            self._open(session, self._isolated_slot(session), False)
            return
        shared = [s for s in self.slots.values() if not s.retiring and s.sharing != ISOLATED]
        home = shared[0] if shared else self.new_slot(f"session {session.sid}")
        self._open(session, home, self._taken(home, session))

    def _taken(self, slot: BackendSlot, besides: Session) -> bool:
        return (slot.used and slot.sharing == ISOLATED) or any(
            s.slot is slot and s is not besides for s in self.sessions.values()
        )

    def _isolated_slot(self, session: Session) -> BackendSlot:
        unused = [s for s in self.slots.values() if not s.retiring and not self._taken(s, session)]
        return unused[0] if unused else self.new_slot(f"session {session.sid} (isolated)")

    def _open(self, session: Session, slot: BackendSlot, parked: bool) -> None:
        session.slot, session.parked, slot.used = slot, parked, True
        self.perform(slot, slot.mux.open_session(session.sid, parked))

    def _place(self, session: Session) -> None:
        """A parked session whose handshake is done, once sharing is known: stay, or move to another slot."""
        slot = session.slot
        signature = slot.mux.placeable(session.sid) if self.decision.known else None
        if signature is None:
            return
        session.parked = False
        if not self.decision.isolated and fits(slot, signature):
            self.perform(slot, slot.mux.unpark(session.sid))
            return
        if self.decision.isolated:
            target = self._isolated_slot(session)
        else:
            others = [s for s in self.slots.values() if s is not slot]
            target = slot_for_roots(others, signature) or self.new_slot(f"session {session.sid} declared other roots")
            target.mux.roots.used = True  # the server acts on roots: no other roots may join this backend
            self.log.write(f"session {session.sid}: roots differ from slot {slot.number}'s; on slot {target.number}")
        target.used = True
        state, actions = slot.mux.export_session(session.sid)
        self.perform(slot, actions)
        session.slot = target
        self.perform(target, target.mux.adopt_session(state))

    def _decided(self) -> None:
        """The sharing is known: record it on the slots and place the sessions parked until now."""
        if self.decision_timer is not None:
            self.decision_timer.cancel()
            self.decision_timer = None
        self.log.write(f"sharing: {self.decision.sharing} ({self.decision.policy})")
        for slot in self.slots.values():
            if slot.sharing is None:
                slot.sharing, slot.policy = self.decision.sharing, self.decision.policy
                self.backend_stderr(slot, [])
                self._after_leaving(slot)  # its first session may have left already
        self._place_parked()

    def _place_parked(self) -> None:
        for session in list(self.sessions.values()):
            if session.parked and not session.ending:
                self._place(session)

    def _give_up(self, why: str) -> None:
        if not self.decision.known:
            self.decision.give_up(why)
            self._decided()

    def slot_ready(self, slot: BackendSlot) -> None:
        """A backend answered initialize: the first one may tell whether the server can be shared.

        Parked sessions whose initialize waited for it may be placed now (they may send nothing more)."""
        if self.decision.known:
            self._place_parked()
            return
        if slot is not self.first_slot:
            return
        init_result = slot.mux.handshake.init_result or {}
        if self.decision.learn(init_result, None):
            self._decided()
            return

        def listed(tools: list[Any] | None) -> list[Any]:
            if not self.decision.known:
                if tools is None:
                    self.decision.give_up("its tools/list failed")
                else:
                    self.decision.learn(init_result, tools)
                self.loop.call_later(0, self._decided)
            return []

        self.perform(slot, slot.mux.ask_tools(listed))
        if self.decision_timer is None:
            why = f"its tools/list took over {DECISION_WAIT:.0f}s"
            self.decision_timer = self.loop.call_later(DECISION_WAIT, lambda: self._give_up(why))

    def backend_stderr(self, slot: BackendSlot, lines: list[bytes]) -> None:
        """An isolated backend's stderr also goes to its session's stderr, as a direct server's would.

        A shared backend's stays in the log: its lines may carry another session's data."""
        if slot.sharing == SHARED:
            slot.stderr_unsent.clear()
            return
        slot.stderr_unsent.extend(lines)
        owner = next((s for s in self.sessions.values() if s.slot is slot and not s.parked), None)
        if slot.sharing is None or owner is None or owner.err_fd is None:
            return
        data = b"".join(line + b"\n" for line in slot.stderr_unsent)
        slot.stderr_unsent.clear()
        slot.counters["stderr_dropped"] += write_if_room(owner.err_fd, data)

    # the Host protocol of slot.py

    def has_sessions(self, slot: BackendSlot) -> bool:
        return any(session.slot is slot for session in self.sessions.values())

    def pause_sessions(self, slot: BackendSlot, paused: bool) -> None:
        """Backpressure: stop (or resume) reading the sessions that feed a backend which is not reading."""
        for session in list(self.sessions.values()):
            if session.slot is slot and session.reading and not session.ending:
                if paused:
                    self.loop.remove_reader(session.in_fd)
                else:
                    self._read_session(session)

    def slot_failed(self, slot: BackendSlot, reason: str) -> None:
        """The slot's backend never worked: end its sessions with the reason (their shims exit 1)."""
        self._give_up("its first backend never worked")
        for session in list(self.sessions.values()):
            if session.slot is slot:
                self.end_session(session, 1, reason)
        self._cancel_linger()
        self._arm_linger()

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
            for slot in self.slots.values():
                slot.mark_exited(pid, code)

    def perform(self, slot: BackendSlot, actions: list[Any]) -> None:
        """Carry out what a slot's mux decided."""
        for action in actions:
            if isinstance(action, ToSession):
                session = self.sessions.get(action.session)
                if session is not None and session.outbox is not None:
                    session.outbox.send(*action.parts())
                    if len(session.outbox.pending) > MAX_UNREAD:
                        self._session_broken(session, OSError(0, f"client left {MAX_UNREAD} bytes unread"))
            elif isinstance(action, ToBackend):
                slot.send(action)
            elif isinstance(action, Log):
                self.log.write(action.text)
            elif isinstance(action, StartBackend):
                slot.start()
            elif isinstance(action, StoreDiscovery):
                self.log.write(store_discovery(self.spec, action.entry))
        self._finish_ending_sessions()

    # ---- control requests -------------------------------------------------------------------

    def _on_hello(self, conn: socket.socket, pid: int, words: list[str], fds: list[int]) -> None:
        if words[:2] == [wire.ATTACH, self.key] and len(words) <= 3 and len(fds) in (2, 3):
            self._attach(conn, pid, fds, words[2] if len(words) == 3 else None)
        elif words == [wire.STATUS]:
            close_fds(fds)
            reply_and_close(conn, wire.encode_status(self.status()))
        elif words == [wire.STOP]:
            close_fds(fds)
            reply_and_close(conn, wire.WELCOME)
            self.log.write(f"stop requested by pid {pid}")
            self.shutdown("stop requested")
        elif words == [wire.RESTART]:
            close_fds(fds)
            reply_and_close(conn, wire.WELCOME)
            self.log.write(f"restart requested by pid {pid}")
            self.shutdown("restart requested", handover=True)
        else:
            self.log.write(f"refused a connection from pid {pid}: bad hello {' '.join(words)[:80]!r}")
            discard(conn, fds)

    def _starved_reason(self) -> str:
        return (
            f"the broker for {self.spec['name']} is out of file descriptors with {len(self.sessions)} sessions "
            "attached; end some sessions, or raise `ulimit -n` where the first session starts"
        )

    # ---- sessions ---------------------------------------------------------------------------

    def _attach(self, conn: socket.socket, pid: int, fds: list[int], state: str | None) -> None:
        if self.stopping:
            discard(conn, fds)  # the shim sees EOF before welcome and retries
            return
        self.next_sid += 1
        session = Session(self.next_sid, conn, pid, fds, self.first_slot)
        for fd in session.saved_flags:
            os.set_blocking(fd, False)
        session.outbox = Outbox(self.loop, session.out_fd, lambda exc: self._session_broken(session, exc))
        try:
            conn.send(wire.WELCOME)
        except OSError:
            self._release_fds(session)
            conn.close()
            return
        self.sessions[session.sid] = session
        self._join(session)
        self.loop.add_reader(conn.fileno(), lambda: self._waiter_event(session))
        self._cancel_linger()
        self.log.write(f"session {session.sid} attached (pid {pid}); {len(self.sessions)} attached")
        if state is not None:
            self._resume(session, state)

    def _resume(self, session: Session, text: str) -> None:
        """A session whose broker went away re-attached with its state: go on from it (no initialize follows)."""
        if os.environ.get(CRASH_ON_RESUME_ENV):  # tests only: a broker that dies on every re-attach (a crash loop)
            os._exit(70)
        state = wire.decode_state(text)
        if state is None:
            self.log.write(f"session {session.sid}: re-attached with an unreadable state; served as a new session")
            return
        self.log.write(f"session {session.sid}: re-attached from an earlier broker; state restored")
        self.perform(session.slot, session.slot.mux.resume_session(session.sid, state))
        if session.parked:
            self._place(session)

    def _sync_state(self, session: Session) -> None:
        """Tell the waiter the session's state when it changed, so the session can outlive this broker.

        Only after the waiter said `r`: the shim reads the welcome alone, and nothing may follow it there."""
        mux = session.slot.mux
        mark = mux.session_state_mark(session.sid)
        if mark == session.state_mark or mark is None:
            return
        try:
            session.conn.send(wire.state_line(mux.session_state(session.sid)))
        except OSError:
            return  # the waiter is gone (its end of file is on its way to _waiter_event), or busy: sent next time
        session.state_mark = mark

    def _waiter_event(self, session: Session) -> None:
        """The waiter says `r` once it can exit cleanly on a signal, `x N` when it exits; then the socket closes."""
        try:
            data = session.conn.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_session(session, f"shim exited ({session.waiter_status()})")
            return
        if not session.reading and data.startswith(wire.WAITER_READY):
            data = data[len(wire.WAITER_READY) :]
            session.reading = True
            if not session.slot.paused and not session.ending:
                self._read_session(session)
        session.waiter_said = (session.waiter_said + data)[-64:]

    def _read_session(self, session: Session) -> None:
        """Any stdin can be watched: the loop treats fds no selector reports truthfully (files) as always ready.

        Never once the session is being handed over: what the client writes from then on is the next broker's."""
        if session.handed_over:
            return
        self.loop.add_reader(session.in_fd, lambda: self._session_readable(session))

    def _session_readable(self, session: Session) -> None:
        lines, overflowed, at_eof = session.reader.read()
        if overflowed:
            message = f"Parse error: line longer than {MAX_LINE // (1024 * 1024)} MiB; skipped"
            self.log.write(f"session {session.sid}: {message}")
            self.perform(session.slot, [ToSession(session.sid, jsonrpc.error(None, jsonrpc.PARSE_ERROR, message))])
        for line in lines:
            if session.sid not in self.sessions:
                return
            self.perform(session.slot, session.slot.mux.from_session(session.sid, line))
            if session.parked:
                self._place(session)
        if session.sid in self.sessions:
            self._sync_state(session)
        if at_eof:
            self._session_eof(session)
        elif session.slot.fatal is not None and session.sid in self.sessions:
            self.end_session(session, 1, session.slot.fatal)

    def _session_eof(self, session: Session) -> None:
        """The client closed our stdin: let in-flight replies out (briefly), then detach with status 0."""
        self.loop.remove_reader(session.in_fd)
        if session.slot.mux.busy(session.sid):
            session.ending = True
            self.loop.call_later(END_GRACE, lambda: self.end_session(session, *self._verdict(session)))
            return
        self.end_session(session, *self._verdict(session))

    @staticmethod
    def _verdict(session: Session) -> tuple[int, str | None]:
        """How a session ends: status 0, or 1 with the reason when its backend cannot start."""
        return (0, None) if session.slot.fatal is None else (1, session.slot.fatal)

    def _finish_ending_sessions(self) -> None:
        for session in list(self.sessions.values()):
            if (
                session.ending
                and not session.slot.mux.busy(session.sid)
                and not (session.outbox and session.outbox.pending)
            ):
                self._drop_session(session, "stdin closed", *self._verdict(session))

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

    def _drop_session(self, session: Session, why: str, code: int | None = None, message: str | None = None) -> None:
        """Forget a session; unless its waiter is already gone (`code` None), tell it how to exit."""
        if self.sessions.pop(session.sid, None) is None:
            return
        self.perform(session.slot, session.slot.mux.close_session(session.sid))
        self.loop.remove_reader(session.in_fd)
        self.loop.remove_reader(session.conn.fileno())
        if session.outbox is not None:
            session.outbox.close()
        self._release_fds(session)
        if code is not None:
            try:
                session.conn.send(wire.REATTACH if session.handed_over else wire.farewell(code, message))
            except OSError:
                pass
            why += "; told to re-attach" if session.handed_over else f"; exit status {code}"
        session.conn.close()
        self.log.write(f"session {session.sid} (pid {session.pid}) detached: {why}; {len(self.sessions)} attached")
        self._after_leaving(session.slot)
        self._arm_linger()

    def _after_leaving(self, slot: BackendSlot) -> None:
        """An isolated or roots-holding backend ends with its last session (its state must not carry over)."""
        if not self.has_sessions(slot) and ends_with_last_session(slot) and not self.stopping:
            self.log.write(f"backend slot {slot.number} ends with its last session ({slot.policy})")
            self.retire_slot(slot, lambda: None)

    @staticmethod
    def _release_fds(session: Session) -> None:
        for fd, blocking in session.saved_flags.items():
            try:
                os.set_blocking(fd, blocking)  # a tty or shared pipe must not stay non-blocking for others
            except OSError:
                pass
        close_fds(list(session.saved_flags) + ([session.err_fd] if session.err_fd is not None else []))

    # ---- linger and shutdown ----------------------------------------------------------------

    def _arm_linger(self) -> None:
        """No session left: stay `linger` seconds to keep the backend warm; not at all when there is none to keep
        (it is broken, or ended with its session: isolated or holding roots)."""
        if self.sessions or self.stopping or self.linger_timer is not None:
            return
        if not self.next_sid:
            delay = max(self.linger, FIRST_SESSION_WINDOW)  # the shim that started us is on its way
        elif all(slot.fatal is not None or slot.retiring for slot in self.slots.values()):
            delay = 0.0
        else:
            delay = self.linger
        self.linger_timer = self.loop.call_later(delay, lambda: self.shutdown("no sessions left"))

    def _cancel_linger(self) -> None:
        if self.linger_timer is not None:
            self.linger_timer.cancel()
            self.linger_timer = None

    def shutdown(self, why: str, handover: bool = False) -> None:
        """Stop taking sessions, retire every slot (ladder), then exit.

        The sessions end (`stop`), or with `handover` (`restart`, SIGTERM) are told to re-attach to the next
        broker: their input is no longer read, the requests in flight get up to HANDOVER_DRAIN to finish
        (the rest are answered with an error when the backend stops), and only once the backends are gone
        are the waiters told, so the next broker never runs next to this one's backends."""
        if self.stopping:
            return
        self.stopping = True
        self._cancel_linger()
        self.log.write(f"shutting down: {why}" + (" (handing the sessions over)" if handover else ""))
        self.listener.close()
        if not handover:
            for session in list(self.sessions.values()):
                self.end_session(session, 0)
            self._retire_all()
            return
        for session in self.sessions.values():
            session.handed_over = True
            self.loop.remove_reader(session.in_fd)
        self._drain(time.monotonic() + HANDOVER_DRAIN)

    def _drain(self, deadline: float) -> None:
        busy = [s for s in self.sessions.values() if s.slot.mux.busy(s.sid)]
        if busy and time.monotonic() < deadline:
            self.loop.call_later(DRAIN_POLL, lambda: self._drain(deadline))
            return
        if busy:
            self.log.write(f"handover: {len(busy)} session(s) still had requests in flight; they get errors")

        def hand_over() -> None:
            for session in list(self.sessions.values()):
                self.end_session(session, 0)

        self._retire_all(before_exit=hand_over)

    def _retire_all(self, before_exit: Callback | None = None) -> None:
        remaining = set(self.slots)

        def finish() -> None:
            if before_exit is not None:
                before_exit()
            self._exit()

        if not remaining:
            finish()
        for number in list(remaining):

            def retired(number: int = number) -> None:
                remaining.discard(number)
                if not remaining:
                    finish()

            self.retire_slot(self.slots[number], retired, strays=True)

    def _exit(self) -> None:
        if self.sessions:  # wait for ending sessions to flush (bounded by END_GRACE)
            self.loop.call_later(0.05, self._exit)
            return
        if self.keeper is not None:
            self.keeper.close()
            self.reap()
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

    def status(self) -> list[wire.BackendStatus]:
        """One record per backend slot, as `ls --json` and `metrics` show them."""
        return [self._slot_status(slot) for slot in self.slots.values()]

    def _slot_status(self, slot: BackendSlot) -> wire.BackendStatus:
        record = slot.status(self.has_sessions(slot))
        record.state = "stopping" if self.stopping else record.state
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
            for session in self.sessions.values()
            if session.slot is slot
        ]
        record.started_at = self.started_at
        record.linger_seconds = self.linger
        record.sessions_refused = self.listener.refused
        record.log_lines_dropped = self.log.dropped
        record.version = __version__
        return record


def main(argv: list[str]) -> int:
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
