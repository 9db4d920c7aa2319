"""The broker's sessions: each client's stdio, taken over from its shim, and the waiter that stands in for it.

Attach (or resume with the state an earlier broker left with the waiter), read the client's stdin into its
slot's mux, keep the waiter told of the session's state, and end a session (EOF, a broken stdout, or told
to), giving the client's fds back as they were. Which slot a session goes to is slots.py's business.
What the client is written (and owed) is session_output.py's part; how a session ends, session_ending.py's.
"""

from __future__ import annotations

import os
import socket
import time

from ..common import wire
from ..common.paths import runtime_dir
from ..mux import STREAM_FROM, SessionStream, ToSession, jsonrpc, linehead
from . import journal
from .lineio import LineReader, Outbox, Relay
from .listener import discard
from .session_ending import SessionEnding
from .session_output import SessionOutput

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Protocol

    from ..common.logfile import LogFile
    from .eventloop import EventLoop
    from .handover import Lifetime
    from .slot import BackendSlot
    from .slots import Slots

    class Owner(Protocol):
        """What the sessions need from their server (server.py)."""

        loop: EventLoop
        log: LogFile
        slots: Slots
        lifetime: Lifetime

        def perform(self, slot: BackendSlot, actions: list[Any]) -> None: ...

MAX_LINE = 64 * 1024 * 1024
"""A longer line from a session is refused with -32700 (and skipped to its end), not buffered."""
CRASH_ON_RESUME_ENV = "MCPSINGLETON_TEST_CRASH_ON_RESUME"
CUT = "cut"
"""In a waiter's state while a reply streams to its client: that request's id (JSON)."""
JOURNAL = "journal"
"""In a waiter's state: the name of its broker's in-flight journal (journal.py), read by the next broker."""
BEGUN_HEAD = 4096
"""How much of a request line read in part is searched for its id and method (they come first, or not in time)."""
STALL = 0.5
"""A session's request streaming to the shared backend may pause this long (seconds) before it is cut off."""
STREAM_AT_MOST = 2.0
"""And take this long in all: what the other sessions' messages to that backend may wait."""


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
        self.to_waiter: Outbox | None = None  # the waiter's socket: lines it has not taken yet wait here
        self.ending = False
        self.reading = False  # the waiter said it is ready: the client's input may be read
        self.waiter_said = b""
        self.attached_at = time.time()
        self.state_mark: object = None  # what the waiter was last sent (`state`), as the mux marks it
        self.cut: str | None = None  # the id (JSON) of the reply streaming to the client, while it streams
        self.handed_over = False  # told to re-attach to the next broker rather than to exit
        self.streamed_id: str | int | None = None  # the id of the request line streaming in, while one does
        self.begun_id: str | None = None  # the journal's id of a request line read in part (not streaming), owed
        self.resumed = False  # re-attached with the state an earlier broker left with its waiter
        self.streaming = False  # a reply is being streamed to the client: other messages wait in `held`
        self.held: list[tuple[tuple[bytes | memoryview, ...], tuple[str, ...]]] = []  # (message, ids it answers)
        self.held_bytes = 0
        self.unsettled: list[tuple[int, str]] = []  # (the stdout Outbox's `flushed` mark, id) of replies being written
        self.line_open = False  # as the journal was last told: the client's stdout is left inside a line

    def holds(self) -> bool:
        """Whether messages to the client wait: a line is half written, or the waiter has not taken the
        session's last state yet (a reply must not acknowledge what a next broker would not know)."""
        return self.streaming or bool(self.to_waiter is not None and self.to_waiter.pending)

    def waiter_status(self) -> str:
        """How the waiter said its session ended (`x N`), as the log line shows it."""
        status = self._waiter_line(wire.WAITER_STATUS)
        return f"exit status {status}" if status else "exit status unknown (the waiter was killed)"

    def transport(self) -> str:
        """How the client reaches us: `stdio` (a shim), or what a waiter that is not a shim's said (`t http`)."""
        return self._waiter_line(wire.WAITER_TRANSPORT)[:16] or wire.STDIO

    def _waiter_line(self, prefix: str) -> str:
        for line in self.waiter_said.decode("ascii", "replace").splitlines():
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        return ""


class Sessions(SessionOutput, SessionEnding):
    """The attached sessions, by id, and the I/O of each: its stdin, stdout, stderr and waiter."""

    def __init__(self, server: Owner) -> None:
        self.server = server
        self.loop = server.loop
        self.log = server.log
        self.by_sid: dict[int, Session] = {}
        self.leaving: set[int] = set()  # sessions that leave once nothing of theirs is in flight or unwritten
        self.telling: set[int] = set()  # dropped sessions whose waiters have not taken our last lines yet
        self.orderly = True  # a handover's waiters are told `reattach`; after an internal error they see end of file
        self.next_sid = 0
        self.journal = journal.of_this_broker(runtime_dir())  # one per broker process: every server's sessions

    def __len__(self) -> int:
        return len(self.by_sid)

    def __iter__(self) -> Iterator[Session]:
        """A snapshot: sessions may leave while the caller walks them."""
        return iter(list(self.by_sid.values()))

    def on(self, slot: BackendSlot) -> list[Session]:
        return [session for session in self.by_sid.values() if session.slot is slot]

    # ---- attaching ----------------------------------------------------------------------------

    def attach(self, conn: socket.socket, pid: int, fds: list[int], state: str | None) -> None:
        if self.server.lifetime.stopping:
            discard(conn, fds)  # the shim sees EOF before welcome and retries
            return
        self.next_sid += 1
        session = Session(self.next_sid, conn, pid, fds, self.server.slots.first)
        for fd in session.saved_flags:
            os.set_blocking(fd, False)
        session.outbox = Outbox(self.loop, session.out_fd, lambda exc: self._broken(session, exc))
        session.outbox.on_drained = lambda: self._client_took_all(session)
        session.outbox.on_written = lambda: self._settle_written(session)
        session.to_waiter = Outbox(self.loop, conn.fileno(), lambda exc: None)  # gone: its end of file follows
        session.to_waiter.on_drained = lambda: self._waiter_took_all(session)
        try:
            conn.send(wire.WELCOME)  # 3 bytes, the first on this socket: never a partial write
        except OSError:
            self.release_fds(session)
            conn.close()
            return
        self.by_sid[session.sid] = session
        self.server.slots.join(session)
        self.loop.add_reader(conn.fileno(), lambda: self._waiter_event(session))
        self.server.lifetime.cancel_linger()
        self.log.write(f"session {session.sid} attached (pid {pid}); {len(self.by_sid)} attached")
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
        session.resumed = True
        cut = state.pop(CUT, None)
        if isinstance(cut, str):
            self._end_cut_line(session, cut)
        lost = state.pop(JOURNAL, None)
        if isinstance(lost, str):
            self._answer_lost(session, lost, cut)
        self.log.write(f"session {session.sid}: re-attached from an earlier broker; state restored")
        self.server.perform(session.slot, session.slot.mux.resume_session(session.sid, state))
        if session.parked:
            self.server.slots.place(session)

    # ---- the waiter -----------------------------------------------------------------------------

    def _sync_state(self, session: Session) -> None:
        """Tell the waiter the session's state when it changed, so the session can outlive this broker.

        Only after the waiter said `r`: the shim reads the welcome alone, and nothing may follow it there.
        One state line at a time: while the waiter has not taken the last one (it is stopped, or its socket's
        buffer is small: 8 KiB on macOS), newer states wait, and once it has, only the latest is sent."""
        if session.sid not in self.by_sid or session.to_waiter is None or session.to_waiter.pending:
            return
        mux = session.slot.mux
        mark = mux.session_state_mark(session.sid)
        if mark is None or (mark, session.cut) == session.state_mark:
            return
        state = mux.session_state(session.sid)
        if state is None:
            return
        if session.cut is not None:
            state[CUT] = session.cut
        state[JOURNAL] = self.journal.name
        session.state_mark = (mark, session.cut)
        session.to_waiter.send(wire.state_line(state))

    def _waiter_took_all(self, session: Session) -> None:
        """The waiter has every line sent so far: a newer state follows, or the messages held for it go out."""
        self._sync_state(session)
        self._release_held(session)
        if session.ending:
            self.finish_ending()

    def _waiter_event(self, session: Session) -> None:
        """The waiter says `r` once it can exit cleanly on a signal, `x N` when it exits; then the socket closes."""
        try:
            data = session.conn.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(session, f"shim exited ({session.waiter_status()})")
            return
        if not session.reading and data.startswith(wire.WAITER_READY):
            data = data[len(wire.WAITER_READY) :]
            session.reading = True
            if session.resumed:
                self._sync_state(session)  # its waiter holds the state it came with (a cut line's id, say)
            if not session.slot.paused and not session.ending:
                self._read(session)
                if session.slot.fatal is not None:
                    # its backend can never start: it ends now, not at its next line (a re-attached one may send none)
                    self._readable(session)
        session.waiter_said = (session.waiter_said + data)[-64:]

    # ---- the client's stdin and stdout ------------------------------------------------------------

    def _read(self, session: Session) -> None:
        """Any stdin can be watched: the loop treats fds no selector reports truthfully (files) as always ready.

        Once the session is being handed over, only up to the end of a line it was writing: what the client
        writes after that is the next broker's."""
        if session.handed_over and not session.reader.mid_line:
            return
        self.loop.add_reader(session.in_fd, lambda: self._readable(session))

    def _readable(self, session: Session) -> None:
        lines, overflowed, at_eof = session.reader.read()
        if overflowed:
            message = f"Parse error: line longer than {MAX_LINE // (1024 * 1024)} MiB; skipped"
            self.log.write(f"session {session.sid}: {message}")
            self.server.perform(
                session.slot, [ToSession(session.sid, jsonrpc.error(None, jsonrpc.PARSE_ERROR, message))]
            )
        for line in lines:
            if session.sid not in self.by_sid:
                return
            if session.begun_id is not None:  # its line is whole: owed again only if the mux accepts it
                self.journal.settle(session.pid, session.begun_id)
                session.begun_id = None
            self._route(session, session.slot.mux.from_session(session.sid, line))
            if session.parked:
                self.server.slots.place(session)
        if session.sid in self.by_sid:
            self._sync_state(session)
            if session.handed_over and not session.reader.mid_line:
                self.loop.remove_reader(session.in_fd)  # its last line is in: the rest is the next broker's
            elif not at_eof:
                session.reader.stream(STREAM_FROM, lambda line_head: self._open_stream(session, line_head))
            self._owe_begun_line(session)
        if at_eof:
            self._eof(session)
        elif session.slot.fatal is not None and session.sid in self.by_sid:
            self.end(session, 1, session.slot.fatal)

    def _owe_begun_line(self, session: Session) -> None:
        """A request line read only in part, its id and method already in: owed from now on, as a streaming one
        is from its head. A broker killed before the rest arrives leaves the id to the next broker, which gets
        only the rest (a parse error that names no id) and answers the id from this journal instead."""
        reader = session.reader
        if session.begun_id is not None or reader.sink is not None or not reader.buf:
            return
        request_id = _request_id(bytes(reader.buf[:BEGUN_HEAD]), method_first=True)
        if request_id is not None:
            session.begun_id = journal.id_text(request_id)
            self.journal.owe(session.pid, session.begun_id)
            self.journal.commit()

    def _open_stream(self, session: Session, line_head: bytes) -> Relay | None:
        """A request too long to wait for: passed to the backend as it arrives, when the mux says it may."""
        stream = session.slot.mux.stream_from_session(session.sid, line_head, session.reader.limit)
        if stream is None:
            return None
        session.begun_id = None  # the stream owes its id from here on (`streamed_id`)
        self.server.perform(session.slot, stream.start(line_head))
        session.streamed_id = _request_id(line_head)  # (the head itself is 64 KiB or more: not kept)
        if session.streamed_id is not None:  # owed from its head on: a broker dying mid-line never answers it
            self.journal.owe(session.pid, journal.id_text(session.streamed_id))
            self.journal.commit()
        relay = Relay(stream, lambda actions: self._route(session, actions))
        deadline = time.monotonic() + STREAM_AT_MOST
        self.loop.call_later(STALL, lambda: self._watch(session, relay, stream, 0, deadline))
        return relay

    def _watch(self, session: Session, relay: Relay, stream: SessionStream, seen: int, deadline: float) -> None:
        """Every session shares the backend a request streams to: should its writer pause for STALL, or take
        longer than STREAM_AT_MOST, the backend's copy is cut off and the request goes in full at its end."""
        if session.reader.sink is not relay:
            return  # the line ended (or the session did)
        if relay.pieces == seen or time.monotonic() > deadline:
            self.server.perform(session.slot, stream.stalled())
            return
        pieces = relay.pieces
        self.loop.call_later(STALL, lambda: self._watch(session, relay, stream, pieces, deadline))

    def _route(self, session: Session, actions: list[Any]) -> None:
        """Perform what the mux made of a session's input. The requests it accepted are journaled as owed,
        unless answered at once (`Journal.commit` comes after); those the session cancelled are owed no more."""
        mux = session.slot.mux
        if mux.accepted or mux.released:
            accepted, released = mux.owed_changes()
            for sid, request_id in accepted:
                if sid == session.sid:
                    self.journal.owe(session.pid, journal.id_text(request_id))
            for sid, request_id in released:
                if sid == session.sid:
                    self.journal.settle(session.pid, journal.id_text(request_id))
        self.server.perform(session.slot, actions)
        self.journal.commit()

    def pause(self, slot: BackendSlot, paused: bool) -> None:
        """Backpressure: stop (or resume) reading the sessions that feed a backend which is not reading."""
        for session in self.on(slot):
            if session.reading and not session.ending:
                if paused:
                    self.loop.remove_reader(session.in_fd)
                else:
                    self._read(session)

    def cut_short(self, session: Session, reason: str) -> None:
        """The handover can wait no longer for the end of the line a session is writing: the request is
        answered with `reason` under its id when the part that arrived holds it (the next broker gets the rest)."""
        reader = session.reader
        request_id = session.streamed_id if reader.sink is not None else _request_id(bytes(reader.buf))
        reader.abort_stream()
        self.loop.remove_reader(session.in_fd)
        if request_id is not None:
            self.deliver(ToSession(session.sid, jsonrpc.error(request_id, jsonrpc.INTERNAL_ERROR, reason)))


def _request_id(line_head: bytes, method_first: bool = False) -> str | int | None:
    """The id of a request line whose end has not arrived, when it came before the member still open (with
    `method_first`, only when its method did too: a line that is surely a request, not a reply)."""
    try:
        found = linehead.head(line_head)
        value = found.small(line_head, "id") if found is not None else None
        if method_first and found is not None and not isinstance(found.small(line_head, "method"), str):
            return None
    except Exception:  # a client's bytes: nothing in them may reach the loop
        return None
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None
