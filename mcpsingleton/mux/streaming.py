"""Streaming: a line too long to wait for passes through the broker as it arrives, in either direction.

Store-and-forward costs a big message a full copy in the broker and one more full pipe transfer;
streamed, it costs neither (bench/bench_big.py). The broker offers the head of a line once
`STREAM_FROM` bytes of it arrived without its end; the head decides, and everything else waits for
its end as before. A backend's reply streams to its session (backend_stream.py), a session's request
to the backend (session_stream.py); both only when the router has nothing to do but the id.

What streaming gives up, stated: the bytes of a reply after its head, and the content of a request's big
string, are not checked (control bytes, UTF-8, escapes); they reach the other end as written, as on a
direct connection.
"""

from __future__ import annotations

from . import failures
from .actions import Log

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from .actions import Action
    from .backend_stream import BackendStream
    from .router import Mux
    from .session_stream import SessionStream

    Data = TypeVar("Data")
    Opened = TypeVar("Opened", BackendStream, SessionStream)

STREAM_FROM = 64 * 1024
"""A line is offered for streaming once this much of it arrived without its end."""

Piece = bytes | memoryview


def open_safely(mux: Mux, opener: Callable[..., Opened | None], *args: Any) -> Opened | None:
    """`opener(mux, *args)`: a stream for a line too long to wait for, or None (wait for its end); like every
    entry point, nothing raises."""
    try:
        return opener(mux, *args)
    except Exception:  # the line then takes the full path at its end, which reports what is wrong
        mux.stats["internal_errors"] += 1
        return None


class Stream:
    """One line on its way through the mux in pieces. Its entry points (`start`, `more`, `end`, `abort`)
    keep the rule of the mux's own: nothing raised escapes to the broker. A failure while handling a piece
    ends the line (`_broken` says what that takes), is logged and counted, and every later piece is dropped."""

    def __init__(self, mux: Mux) -> None:
        self.mux = mux
        mux.stats["fast_path"] += 1
        mux.stats["streamed"] += 1

    @property
    def finished(self) -> bool:
        """Nothing more belongs to this line: its pieces are dropped."""
        raise NotImplementedError

    def describe(self) -> str:
        """The line, for the log ("a reply to session 3")."""
        raise NotImplementedError

    def _broken(self) -> list[Action]:
        """What ends the line after an internal error (the stream is finished afterwards)."""
        raise NotImplementedError

    def _safely(self, step: Callable[[Data], list[Action]], data: Data) -> list[Action]:
        if self.finished:
            return []
        try:
            return step(data)
        except Exception as exc:
            self.mux.stats["internal_errors"] += 1
            text = f"internal error while streaming {self.describe()}: {failures.describe(exc)}"
            return [*self._broken(), Log(text)]
