"""The per-session process (`mcpsingleton run …`): compute the key (`keys`), read the cached sharing
decision (`sharing`), attach to the broker (`attach`; `election` starts one on the cold path), then exec
into the `sh` waiter. Nothing is imported eagerly: the warm path
pays only for the modules it uses.

`resume` stays importable from here because waiters already running say
`from mcpsingleton.shim import resume` when they re-attach (it was a module before the folders)."""

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing on the warm path
if TYPE_CHECKING:
    from typing import Any


def __getattr__(name: str) -> "Any":
    """`resume` of `attach`, loaded on first use (PEP 562)."""
    if name == "resume":
        from .attach import resume

        return resume
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
