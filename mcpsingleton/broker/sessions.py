"""The broker's sessions: each client's stdio, taken over from its shim, and the waiter that stands in for it.

Attach (or resume with the state an earlier broker left with the waiter), read the client's stdin into its
slot's mux, keep the waiter told of the session's state, and end a session (EOF, a broken stdout, or told
to), giving the client's fds back as they were. Which slot a session goes to is slots.py's business.
"""

from __future__ import annotations

import json
import os
import socket
import time

from ..common import wire
from ..common.paths import runtime_dir
from ..common.wire import SHARED
from ..mux import STREAM_FROM, SessionStream, StreamPart, ToSession, jsonrpc, linehead
from . import journal
from .lineio import LineReader, Outbox, Relay, write_if_room
from .listener import close_fds, discard

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
MAX_UNREAD = 64 * 1024 * 1024
"""A session that leaves this much of its stdout unread is disconnected; the others go on."""
END_GRACE = 1.5
"""How long a leaving session's in-flight replies, or its final error, may take to be written."""
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


class Sessions:
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
            self._release_fds(session)
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

    def _end_cut_line(self, session: Session, request_id: str) -> None:
        """The previous broker died in the middle of a reply to this client: end that line, and answer its request
        with an error, before anything else is written (else the next message would be glued onto the cut line)."""
        try:
            asked = json.loads(request_id)
        except ValueError:
            asked = None
        error = jsonrpc.error(
            asked if isinstance(asked, (str, int)) and not isinstance(asked, bool) else None,
            jsonrpc.INTERNAL_ERROR,
            "mcpsingleton: the broker went away while this reply was being written; the reply is lost",
        )
        assert session.outbox is not None
        session.outbox.send(b"\n", jsonrpc.encode(error))
        self.log.write(f"session {session.sid}: ended the reply to {request_id} its previous broker was cut off in")

    def _answer_lost(self, session: Session, journal_name: str, cut: object) -> None:
        """The previous broker died owing this session replies (its journal says which): each request gets an
        error now, before anything else is written; the one whose cut line was just ended has had its error."""
        cut_id = _normalized(cut) if isinstance(cut, str) else None
        owed, line_open = journal.owed_by(self.journal.dir, journal_name, session.pid)
        lost = [request_id for request_id in owed if request_id != cut_id]
        assert session.outbox is not None
        if line_open and cut_id is None:  # a reply half written when it died: ended here, its error follows
            session.outbox.send(b"\n")
        for request_id in lost:
            error = jsonrpc.error(json.loads(request_id), jsonrpc.INTERNAL_ERROR, journal.LOST)
            session.outbox.send(jsonrpc.encode(error))
        if lost:
            self.log.write(f"session {session.sid}: answered {len(lost)} request(s) its previous broker died owing")

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

    def deliver(self, action: ToSession) -> None:
        """Queue a message for a session's stdout; one that leaves too much of it unread is detached."""
        session = self.by_sid.get(action.session)
        if session is None or session.outbox is None:
            return
        parts = action.parts()
        answers = _answered_ids(action) if self.journal.owes(session.pid) else ()
        if not session.holds():
            self._write(session, parts, answers)
            return
        session.held.append((parts, answers))  # it follows the half-written line, or the state the waiter takes
        session.held_bytes += sum(len(part) for part in parts)
        if session.held_bytes > MAX_UNREAD:  # a waiter stopped for good: as a client that stopped reading
            session.held, session.held_bytes = [], 0
            self._broken(session, OSError(0, f"{MAX_UNREAD} bytes held for a waiter that does not read"))

    def _release_held(self, session: Session) -> None:
        if not session.holds():
            self._flush_held(session)

    def _flush_held(self, session: Session) -> None:
        """Write what was held, in order (at a stream's start or the session's end, whatever the waiter has)."""
        held, session.held, session.held_bytes = session.held, [], 0
        for parts, answers in held:
            self._write(session, parts, answers)

    def stream(self, part: StreamPart) -> None:
        """Part of a reply streamed to its session (mux/streaming.py); at its end, what waited follows.

        The waiter is told which request's reply is on its way first, and when it ended: should this broker
        die in between, the next one ends the cut line and answers that request (`_end_cut_line`)."""
        session = self.by_sid.get(part.session)
        if session is None or session.outbox is None:
            return
        if not session.streaming and not part.done:
            session.cut = part.request_id
            self._sync_state(session)
            self._flush_held(session)  # what waited for the waiter comes before the line, as it came before
        owed = part.done and part.request_id is not None and self.journal.owes(session.pid)
        answers = (_normalized(part.request_id or ""),) if owed else ()
        self._write(session, part.parts, answers)
        session.streaming = not part.done
        if part.done:
            if not session.outbox.pending:
                self._client_took_all(session)
            self._release_held(session)

    def _client_took_all(self, session: Session) -> None:
        """Every byte written to the client has left the outbox: a streamed line's end too, so a broker dying
        from here on cuts nothing (until then the waiter's state names the line, `cut`)."""
        if session.cut is not None and not session.streaming:
            session.cut = None
            self._sync_state(session)

    def _write(self, session: Session, parts: tuple[bytes | memoryview, ...], answers: tuple[str, ...] = ()) -> None:
        """Queue a message for the client; the requests it answers are owed until its last byte is written."""
        outbox = session.outbox
        assert outbox is not None
        outbox.send(*parts)
        for request_id in answers:
            if outbox.pending:
                session.unsettled.append((outbox.flushed + len(outbox.pending), request_id))
            else:
                self.journal.settle(session.pid, request_id)
        if outbox.pending or session.line_open:
            self._note_line(session)
        if len(outbox.pending) > MAX_UNREAD:
            self._broken(session, OSError(0, f"client left {MAX_UNREAD} bytes unread"))

    def _settle_written(self, session: Session) -> None:
        """More of the client's stdout was written: the replies now wholly in its pipe are owed no more."""
        assert session.outbox is not None
        flushed = session.outbox.flushed
        while session.unsettled and session.unsettled[0][0] <= flushed:
            self.journal.settle(session.pid, session.unsettled.pop(0)[1])
        self._note_line(session)

    def _note_line(self, session: Session) -> None:
        """Tell the journal when the client's stdout is left inside a line, or no longer (a half-written reply:
        a next broker ends that line before the errors it writes). Only while bytes wait: a line being
        streamed is the waiter's `cut`, not the journal's."""
        assert session.outbox is not None
        line_open = bool(session.outbox.pending) and session.outbox.open_line and not session.streaming
        if line_open != session.line_open:
            session.line_open = line_open
            self.journal.note_line(session.pid, line_open)

    def backend_stderr(self, slot: BackendSlot, lines: list[bytes]) -> None:
        """An isolated backend's stderr also goes to its session's stderr, as a direct server's would.

        A shared backend's stays in the log: its lines may carry another session's data."""
        if slot.sharing == SHARED:
            slot.stderr_unsent.clear()
            return
        slot.stderr_unsent.extend(lines)
        owner = next((s for s in self.by_sid.values() if s.slot is slot and not s.parked), None)
        if slot.sharing is None or owner is None or owner.err_fd is None:
            return
        data = b"".join(line + b"\n" for line in slot.stderr_unsent)
        slot.stderr_unsent.clear()
        slot.counters["stderr_dropped"] += write_if_room(owner.err_fd, data)

    # ---- ending ---------------------------------------------------------------------------------

    def _eof(self, session: Session) -> None:
        """The client closed our stdin: let in-flight replies out (briefly), then detach with status 0."""
        self.loop.remove_reader(session.in_fd)
        if session.slot.mux.busy(session.sid):
            self._mark_leaving(session)
            self.loop.call_later(END_GRACE, lambda: self.end(session, *self._verdict(session)))
            return
        self.end(session, *self._verdict(session))

    @staticmethod
    def _verdict(session: Session) -> tuple[int, str | None]:
        """How a session ends: status 0, or 1 with the reason when its backend cannot start."""
        return (0, None) if session.slot.fatal is None else (1, session.slot.fatal)

    def _mark_leaving(self, session: Session) -> None:
        session.ending = True
        self.leaving.add(session.sid)

    def finish_ending(self) -> None:
        """Detach the sessions whose stdin closed once nothing of theirs is in flight or unwritten.

        Runs after every message routed: only the sessions that are ending are looked at."""
        for session in [self.by_sid[sid] for sid in self.leaving if sid in self.by_sid]:
            if (
                session.ending
                and not session.slot.mux.busy(session.sid)
                and not (session.outbox and session.outbox.pending)
                and not session.held
            ):
                self._drop(session, "stdin closed", *self._verdict(session))

    def _broken(self, session: Session, exc: OSError) -> None:
        self.log.write(f"session {session.sid}: writing stdout failed ({exc.strerror}); detaching it")
        self.loop.call_later(0, lambda: self._drop(session, "stdout closed", 0))

    def hand_over(self, orderly: bool = True) -> None:
        """The sessions are to re-attach to the next broker: stop reading their input, tell them so as they end.

        A session in the middle of a line is read up to its end (`_readable`): the next broker would get only
        the rest of it, which parses as nothing. Not `orderly` (the server's own code failed): the waiters are
        not told `reattach` but see end of file, as after a crash, so their crash-loop guard counts it and a
        server that fails on every re-attach cannot keep its sessions re-attaching forever."""
        self.orderly = orderly
        for session in self:
            session.handed_over = True
            if not session.reader.mid_line:
                self.loop.remove_reader(session.in_fd)

    def cut_short(self, session: Session, reason: str) -> None:
        """The handover can wait no longer for the end of the line a session is writing: the request is
        answered with `reason` under its id when the part that arrived holds it (the next broker gets the rest)."""
        reader = session.reader
        request_id = session.streamed_id if reader.sink is not None else _request_id(bytes(reader.buf))
        reader.abort_stream()
        self.loop.remove_reader(session.in_fd)
        if request_id is not None:
            self.deliver(ToSession(session.sid, jsonrpc.error(request_id, jsonrpc.INTERNAL_ERROR, reason)))

    def end_all(self) -> None:
        for session in self:
            self.end(session, 0)

    def end(self, session: Session, code: int, message: str | None = None) -> None:
        """Detach a session after its pending output is written; its shim prints `message` and exits."""
        if session.sid not in self.by_sid:
            return
        self._mark_leaving(session)
        if not session.streaming:
            self._flush_held(session)  # the session ends here: what waited for its waiter goes out now
        outbox = session.outbox
        if outbox is not None and outbox.pending and not outbox.broken:
            timer = self.loop.call_later(END_GRACE, lambda: self._drop(session, "ended", code, message))

            def drained() -> None:
                timer.cancel()
                self._client_took_all(session)
                self._drop(session, "ended", code, message)

            outbox.on_drained = drained
            self.loop.remove_reader(session.in_fd)
            return
        self._drop(session, "ended", code, message)

    def _drop(self, session: Session, why: str, code: int | None = None, message: str | None = None) -> None:
        """Forget a session; unless its waiter is already gone (`code` None), tell it how to exit."""
        self.leaving.discard(session.sid)
        if session.sid not in self.by_sid:
            return
        session.reader.abort_stream()  # a request it was writing is cut off at the backend
        del self.by_sid[session.sid]
        self.server.perform(session.slot, session.slot.mux.close_session(session.sid))
        self.loop.remove_reader(session.in_fd)
        self.loop.remove_reader(session.conn.fileno())
        if session.outbox is not None:
            session.outbox.close()
        if not session.handed_over:  # (handed over: what it is still owed stays, for the next broker to answer)
            self.journal.forget(session.pid)
        self._release_fds(session)
        if code is not None and session.to_waiter is not None:
            if not session.handed_over:
                session.to_waiter.send(wire.farewell(code, message))
                why += f"; exit status {code}"
            elif self.orderly:
                session.to_waiter.send(wire.REATTACH)
                why += "; told to re-attach"
            else:
                why += "; left to re-attach as after a crash"
        self._close_waiter(session)
        self.log.write(f"session {session.sid} (pid {session.pid}) detached: {why}; {len(self.by_sid)} attached")
        self.server.slots.after_leaving(session.slot)
        self.server.lifetime.arm_linger()

    def _close_waiter(self, session: Session) -> None:
        """Close the waiter's socket once it has taken our last lines (a stopped waiter: END_GRACE at most)."""
        link = session.to_waiter
        if link is None or not link.pending:
            session.conn.close()
            return

        def close() -> None:
            timer.cancel()
            link.close()
            session.conn.close()
            self.telling.discard(session.sid)

        self.telling.add(session.sid)
        timer = self.loop.call_later(END_GRACE, close)
        link.on_drained = close

    @staticmethod
    def _release_fds(session: Session) -> None:
        for fd, blocking in session.saved_flags.items():
            try:
                os.set_blocking(fd, blocking)  # a tty or shared pipe must not stay non-blocking for others
            except OSError:
                pass
        close_fds(list(session.saved_flags) + ([session.err_fd] if session.err_fd is not None else []))


def _answered_ids(action: ToSession) -> tuple[str, ...]:
    """The ids (journal text) of the requests a message to a session answers: a reply's, a batch reply's."""
    if action.spliced is not None:  # only replies are spliced to sessions: the id spliced in is the session's own
        return (_normalized(action.spliced.new_id),)
    message = action.message
    replies = message if isinstance(message, list) else [message]
    answers = (reply for reply in replies if isinstance(reply, dict) and "method" not in reply and "id" in reply)
    return tuple(journal.id_text(reply["id"]) for reply in answers)


def _normalized(encoded_id: str | bytes) -> str:
    """An id encoded elsewhere (a spliced reply, a streamed one), as the journal writes it."""
    try:
        return journal.id_text(json.loads(encoded_id))
    except ValueError:
        return ""


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
