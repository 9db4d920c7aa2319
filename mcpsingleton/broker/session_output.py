"""What a session's client is written: messages, the replies streamed to it, those held back, and the replies it
is owed (journaled until their last byte is written; answered with an error after the previous broker died).

A part of `sessions.Sessions` (a base class of it), kept apart so the stdin and waiter side reads on its own.
"""

from __future__ import annotations

import json

from ..common.wire import SHARED
from ..mux import StreamPart, ToSession, jsonrpc
from . import journal
from .lineio import write_if_room

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from ..common.logfile import LogFile
    from .sessions import Session
    from .slot import BackendSlot

MAX_UNREAD = 64 * 1024 * 1024
"""A session that leaves this much of its stdout unread is disconnected; the others go on."""


class SessionOutput:
    """The client's stdout of each session: what `Sessions` writes there, and the journal of what it owes."""

    by_sid: dict[int, Session]
    journal: journal.Journal
    log: LogFile

    if TYPE_CHECKING:  # the rest of `Sessions`

        def _sync_state(self, session: Session) -> None: ...

        def _broken(self, session: Session, exc: OSError) -> None: ...

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
