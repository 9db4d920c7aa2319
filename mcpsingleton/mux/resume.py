"""A session's state as its waiter keeps it, so the session outlives its broker.

The broker sends the waiter a snapshot whenever one of these changes (rarely: the handshake, setLevel,
subscribe/unsubscribe, roots); when the broker dies the waiter attaches to a new one with the last
snapshot, and the new broker restores the session from it: no `initialize` from the client is expected.
A snapshot is client data: every field is checked, and a field of the wrong type is ignored.
"""

from __future__ import annotations

from .parking import Carried
from .roots import NO_ROOTS, settled

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Hashable
    from typing import Any

    from .actions import Action
    from .router import Mux


def mark(mux: Mux, sid: int) -> Hashable:
    """Cheap to compute on every read: changes whenever `snapshot` would (the broker compares marks)."""
    session = mux.sessions.get(sid)
    if session is None:
        return None
    carried = mux.parking.carried.get(sid)
    return (
        session.protocol_version,
        session.client_name,
        id(session.capabilities),
        session.initialized,
        session.stateless,
        session.roots_signature,
        mux.log_levels.levels.get(sid),
        frozenset(mux.subscriptions.held.get(sid, ())),
        id(carried),
    )


def snapshot(mux: Mux, sid: int) -> dict[str, Any] | None:
    """What a new broker needs to go on with this session (None: the session is not here)."""
    session = mux.sessions.get(sid)
    if session is None:
        return None
    carried = mux.parking.carried.get(sid)
    level = mux.log_levels.levels.get(sid) or (carried.level if carried else None)
    subscriptions = set(mux.subscriptions.held.get(sid, ())) | set(carried.subscriptions if carried else ())
    state: dict[str, Any] = {
        "version": session.protocol_version,
        "client": session.client_name,
        "capabilities": session.capabilities,
        "initialized": session.initialized,
        "modern": session.stateless,  # the key older snapshots (kept by running waiters) carry
    }
    if level is not None:
        state["level"] = level
    if subscriptions:
        state["subscriptions"] = sorted(subscriptions)
    if settled(session.roots_signature):
        state["roots"] = mux.roots.declared.get(sid, [])
    return state


def restore(mux: Mux, sid: int, state: dict[str, Any]) -> list[Action]:
    """Make the just-opened session `sid` what `state` says it was; its level and subscriptions apply once placed."""
    session = mux.sessions[sid]
    session.protocol_version = _typed(state, "version", str)
    session.client_name = _typed(state, "client", str)
    session.capabilities = _typed(state, "capabilities", dict) or {}
    session.initialized = _typed(state, "initialized", bool) or False
    session.stateless = _typed(state, "modern", bool) or False
    roots = _typed(state, "roots", list)
    actions: list[Action] = []
    if roots is not None:
        kept = [r for r in roots if isinstance(r, dict) and isinstance(r.get("uri"), str)]
        mux.roots.declared[sid] = kept
        session.roots_signature = tuple(sorted({root["uri"] for root in kept}))
    elif session.initialized and session.can("roots"):
        actions += mux.roots.ask(session, {})
    elif session.initialized:
        session.roots_signature = NO_ROOTS
    mux.handshake.adopted(session)
    if session.initialized and not mux.discovery.serves_without_backend():
        actions += mux.handshake.want_backend()  # no initialize of the client's will start it: the sharing waits on it
    # (lazy: its next request that needs the backend starts it, as for any session; its subscriptions do once placed)
    subscriptions = [uri for uri in _typed(state, "subscriptions", list) or [] if isinstance(uri, str)]
    carried = Carried(_typed(state, "level", str), subscriptions)
    if session.parked:
        mux.parking.carried[sid] = carried
        return actions
    actions += mux.log_levels.resume(session, carried.level)
    return actions + mux.subscriptions.resume(session, carried.subscriptions)


def _typed(state: dict[str, Any], field: str, kind: type) -> Any:
    value = state.get(field)
    return value if isinstance(value, kind) else None
