"""How a session ends: end of its stdin, a broken stdout, told to (`end`), or handed over to the next broker;
then it is dropped, its waiter told how to exit (or to re-attach), and the client's fds given back as they were.

A part of `sessions.Sessions` (a base class of it), kept apart so the stdin and waiter side reads on its own.
"""

from __future__ import annotations

import os

from ..common import wire
from .listener import close_fds

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..common.logfile import LogFile
    from .eventloop import EventLoop
    from .journal import Journal
    from .sessions import Owner, Session

END_GRACE = 1.5
"""How long a leaving session's in-flight replies, or its final error, may take to be written."""


class SessionEnding:
    """Ending and dropping the sessions of `Sessions`."""

    server: Owner
    loop: EventLoop
    log: LogFile
    by_sid: dict[int, Session]
    leaving: set[int]
    telling: set[int]
    orderly: bool
    journal: Journal

    if TYPE_CHECKING:  # the rest of `Sessions`

        def __iter__(self) -> Iterator[Session]: ...

        def _flush_held(self, session: Session) -> None: ...

        def _client_took_all(self, session: Session) -> None: ...

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
        self.release_fds(session)
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
    def release_fds(session: Session) -> None:
        """Give the client's fds back as they came (blocking flags restored), then close ours."""
        for fd, blocking in session.saved_flags.items():
            try:
                os.set_blocking(fd, blocking)  # a tty or shared pipe must not stay non-blocking for others
            except OSError:
                pass
        close_fds(list(session.saved_flags) + ([session.err_fd] if session.err_fd is not None else []))
