"""The multiplexer: many client sessions onto one backend MCP server, as a pure state machine.

Sans-IO in the manner of h11: the broker feeds it events (a line from a session, a line from the
backend, a session leaving, the backend starting or exiting) and performs the actions it returns.
Nothing here touches a socket, a process or a clock, so every protocol rule is tested in-process.

One module per protocol feature, each owning its state (see docs/ARCHITECTURE.md); `router.Mux` is
the facade the broker uses; `inputs` is the one place where methods are routed.
"""

from .actions import Action, BackendPart, Log, StartBackend, StoreDiscovery, StreamPart, ToBackend, ToSession
from .backend_state import IllegalTransition
from .handshake import HANDSHAKE_VERSIONS, LOCAL_METHODS
from .log_levels import LOG_LEVELS
from .requests import ABANDONED_MEMORY
from .router import Mux
from .session_stream import SessionStream
from .streaming import STREAM_FROM

__all__ = [
    "ABANDONED_MEMORY",
    "HANDSHAKE_VERSIONS",
    "LOCAL_METHODS",
    "LOG_LEVELS",
    "STREAM_FROM",
    "Action",
    "BackendPart",
    "IllegalTransition",
    "Log",
    "Mux",
    "SessionStream",
    "StartBackend",
    "StoreDiscovery",
    "StreamPart",
    "ToBackend",
    "ToSession",
]
