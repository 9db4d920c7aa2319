"""What the mux asks the broker to do, and the base every protocol feature shares.

Plain classes with __slots__ rather than dataclasses: importing `dataclasses` (and `inspect` with it)
costs each broker ~1.8 MiB and ~15 ms of cold start, and one broker runs per server.
"""

from __future__ import annotations

import json

from . import jsonrpc
from .jsonrpc import Message

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeAlias

    from .jsonwalk import Span
    from .router import Mux
    from .session import Session


class Spliced:
    """A line passed on as its sender wrote it, with only its top-level id replaced (the fast path: a big
    message is neither decoded nor re-encoded). `parts` are written out as they are, without joining."""

    __slots__ = ("line", "new_id", "span")

    def __init__(self, line: bytes, span: Span, new_id: bytes) -> None:
        self.line = line
        self.span = span
        self.new_id = new_id

    def parts(self) -> tuple[bytes | memoryview, ...]:
        """The line with the new id and its newline, as slices of the original bytes (no copy)."""
        start, end = self.span
        view = memoryview(self.line)
        return view[:start], self.new_id, view[end:], b"\n"

    def decode(self) -> Any:
        return json.loads(b"".join(self.parts()))


class Outgoing:
    """A message for one peer: a decoded message, or a `Spliced` line that is decoded only if asked."""

    __slots__ = ("_message", "spliced")

    def __init__(self, message: Any, spliced: Spliced | None = None) -> None:
        self._message = message
        self.spliced = spliced

    @property
    def message(self) -> Any:
        if self._message is None and self.spliced is not None:
            self._message = self.spliced.decode()
        return self._message

    def parts(self) -> tuple[bytes | memoryview, ...]:
        """What to write: the spliced line's slices, or the message encoded as one line."""
        return self.spliced.parts() if self.spliced is not None else (jsonrpc.encode(self._message),)


class ToBackend(Outgoing):
    __slots__ = ()

    def __init__(self, message: Message | None, spliced: Spliced | None = None) -> None:
        super().__init__(message, spliced)

    def __repr__(self) -> str:
        return f"ToBackend({self.message!r})"


class ToSession(Outgoing):
    __slots__ = ("session",)

    def __init__(self, session: int, message: Message | list[Message] | None, spliced: Spliced | None = None) -> None:
        super().__init__(message, spliced)
        self.session = session

    def __repr__(self) -> str:
        return f"ToSession({self.session}, {self.message!r})"


class StreamPart:
    """Bytes of a line being passed to a session as they arrive (streaming.py); `done` ends the line.
    Until then nothing else may be written to that session: its other messages wait."""

    __slots__ = ("done", "parts", "request_id", "session")

    def __init__(
        self, session: int, parts: tuple[bytes | memoryview, ...], done: bool = False, request_id: str | None = None
    ) -> None:
        self.session = session
        self.parts = parts
        self.done = done
        self.request_id = request_id
        """The id (JSON) of the session's request this line answers: the broker tells the waiter, should it die."""

    def __repr__(self) -> str:
        size = sum(len(part) for part in self.parts)
        return f"StreamPart({self.session}, {size} bytes{', done' if self.done else ''})"


class BackendPart:
    """Bytes of a session's request being passed to the backend as they arrive (streaming.py); `done` ends
    the line. Until then nothing else may be written to the backend: other messages wait."""

    __slots__ = ("done", "parts")

    def __init__(self, parts: tuple[bytes | memoryview, ...], done: bool = False) -> None:
        self.parts = parts
        self.done = done

    def __repr__(self) -> str:
        size = sum(len(part) for part in self.parts)
        return f"BackendPart({size} bytes{', done' if self.done else ''})"


class StartBackend:
    """The mux needs a backend process and none is running."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StartBackend)

    def __hash__(self) -> int:
        return hash(StartBackend)


class StoreDiscovery:
    """What the backend said about itself changed: store it for this key (None: forget what is stored)."""

    __slots__ = ("entry",)

    def __init__(self, entry: dict[str, Any] | None) -> None:
        self.entry = entry

    def __repr__(self) -> str:
        return f"StoreDiscovery({self.entry!r})"


class Log:
    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Log({self.text!r})"


Action = ToBackend | ToSession | StreamPart | BackendPart | StartBackend | StoreDiscovery | Log

if TYPE_CHECKING:
    Reply: TypeAlias = Callable[[Message], list[Action]]
    """Called with the answer to a request the broker sent on its own behalf."""
    SessionHandler: TypeAlias = Callable[[Session, Message], list[Action]]
    BackendHandler: TypeAlias = Callable[[Message], list[Action]]


class Feature:
    """One protocol feature: owns its state and answers the lifecycle events with actions.

    The router fans each event out to every feature, in a fixed order; a feature that does not care
    about one inherits the empty answer.
    """

    def __init__(self, mux: Mux) -> None:
        self.mux = mux

    def session_closed(self, session: Session) -> list[Action]:
        """`session` left (it is already out of `mux.sessions`): release what it held."""
        return []

    def backend_lost(self, reason: str) -> list[Action]:
        """The backend exited: what it owed fails with `reason`; what it held is gone."""
        return []

    def backend_ready(self, restarted: bool) -> list[Action]:
        """The backend answered initialize; after a restart it must learn what sessions still hold."""
        return []

    def tick(self) -> list[Action]:
        """About a second passed (the broker's timer, while `Mux.ticking()`): what waits on time moves on."""
        return []
