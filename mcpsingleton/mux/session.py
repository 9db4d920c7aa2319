"""What every feature may know of one session: who it is, which era it speaks, what it waits on."""

from __future__ import annotations

from .jsonrpc import Id

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    RootsSignature: TypeAlias = "str | tuple[str, ...]"
    """What a session's roots are for placement: NO_ROOTS, ASKING, or the sorted URIs it declared."""


class Session:
    """Identity and capabilities of one session; each feature keeps its own per-session state."""

    __slots__ = (
        "capabilities",
        "client_name",
        "inflight",
        "initialized",
        "parked",
        "protocol_version",
        "roots_signature",
        "sid",
        "stateless",
    )

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.client_name: str | None = None
        self.capabilities: dict[str, Any] = {}
        self.protocol_version: str | None = None
        self.initialized = False
        self.stateless = False  # speaks the stateless era: no handshake, era fields on every request
        self.inflight: dict[tuple[bool, Id], int] = {}  # its request id → the backend id it was sent under
        self.parked = False  # its handshake is served here, its requests wait until the broker places it (parking.py)
        self.roots_signature: RootsSignature | None = None  # None: not known yet (roots.py)

    def can(self, capability: str, mode: object = None) -> bool:
        """Whether the backend's server→client requests may be sent to this session."""
        if self.stateless:
            return False  # on stdio a stateless-era client takes no server requests
        declared = self.capabilities.get(capability)
        if not isinstance(declared, dict):
            return False
        if capability == "elicitation" and mode == "url":
            return isinstance(declared.get("url"), dict)
        if capability == "elicitation":  # `{}` is the pre-2025-11-25 form-only declaration; `{"url": {}}` is url only
            return not declared or isinstance(declared.get("form"), dict)
        return True
