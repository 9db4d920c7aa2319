"""What the mux asks the broker to do, and the base every protocol feature shares.

Plain classes with __slots__ rather than dataclasses: importing `dataclasses` (and `inspect` with it)
costs each broker ~1.8 MiB and ~15 ms of cold start, and one broker runs per server.
"""

from __future__ import annotations

from ..jsonrpc import Message

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeAlias

    from .router import Mux
    from .session import Session


class ToBackend:
    __slots__ = ("message",)

    def __init__(self, message: Message) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"ToBackend({self.message!r})"


class ToSession:
    __slots__ = ("message", "session")

    def __init__(self, session: int, message: Message | list[Message]) -> None:
        self.session = session
        self.message = message

    def __repr__(self) -> str:
        return f"ToSession({self.session}, {self.message!r})"


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


Action = ToBackend | ToSession | StartBackend | StoreDiscovery | Log

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
