"""Which backend slot a session joins (docs/ARCHITECTURE.md, "Placement"); pure rules, no I/O.

- Sharing is decided once per broker: statically (`--scope`, config.toml, catalog) or, when the running
  server may still change it, from its first backend's InitializeResult and tools (`SharingDecision`).
  Until then later sessions are held unread; no request of theirs reaches any backend before it is known.
- Isolated: every session gets its own slot, which ends with it. The first session keeps the first slot.
- Shared: a session joins a slot parked (its handshake is served, its requests wait) and is placed once
  its roots signature is known. A slot takes a session whose roots equal those of every session on it.
  One whose backend has asked roots/list takes no other; one whose backend may still ask (not started,
  starting, or ready for less than a couple of seconds: mux/roots.py `quiet`) makes such a session wait
  until it knows, since a backend told the common roots of different sessions serves none of them. A
  quiet backend takes everyone, so sessions of servers that ignore roots still share.
"""

from __future__ import annotations

from ..common.wire import ISOLATED, SHARED
from ..mux.roots import ASKING

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

    from ..mux.session import RootsSignature
    from .slot import BackendSlot


class SharingDecision:
    """Shared or isolated, and why; `known` once nothing the running server says can change it any more."""

    def __init__(self, spec: dict[str, Any]) -> None:
        static_isolated = spec["scope"] == ISOLATED
        self.sharing: str | None = ISOLATED if static_isolated else spec.get("sharing")
        self.policy: str = spec.get("policy") or f"--scope {spec['scope']}"
        self.final = static_isolated or bool(spec.get("sharing_final"))
        self.known = self.final
        self.stateless = self.sharing == SHARED and not self.final  # the catalog says shared (may_reclaim)

    def learn(self, init_result: dict[str, Any], tools: list[Any] | None) -> bool:
        """Apply what the first backend said; False while its tools are still needed to decide."""
        from ..policy.learnt import declares_stateless, runtime_decision  # only brokers whose server may still decide

        change = runtime_decision(self.sharing, self.final, init_result, tools)
        if change is None and tools is None and self.sharing is None and _declares_tools(init_result):
            return False
        if change is not None:
            self.sharing, self.policy = change
        self.sharing = self.sharing or SHARED
        self.stateless = self.sharing == SHARED and (declares_stateless(init_result) or (self.stateless and not change))
        self.known = True
        return True

    def learn_from_cache(self, entry: dict[str, Any]) -> bool:
        """Apply what the server said about itself last time (its cached discovery entry); whether that decided."""
        init_result, listed = entry.get("initialize"), entry.get("tools/list")
        tools = listed.get("tools") if isinstance(listed, dict) else None
        if not isinstance(init_result, dict):
            return False
        return self.learn(init_result, tools if isinstance(tools, list) else None)

    def give_up(self, why: str) -> None:
        """The first backend could not tell (it failed, or its tools/list did): keep the static decision."""
        self.sharing = self.sharing or SHARED
        self.policy += f"; kept, as {why}"  # the log wraps the policy in parentheses: none nested here
        self.known = True

    @property
    def isolated(self) -> bool:
        return self.sharing == ISOLATED


def _declares_tools(init_result: dict[str, Any]) -> bool:
    capabilities = init_result.get("capabilities")
    return isinstance(capabilities, dict) and isinstance(capabilities.get("tools"), dict)


def fits(slot: BackendSlot, signature: RootsSignature) -> bool | None:
    """Whether a session with these roots may share this slot's backend; None: not yet known (wait)."""
    if slot.sharing == ISOLATED or slot.retiring:
        return False
    roots = slot.mux.roots
    placed = roots.placed_signatures()
    if placed <= {signature}:
        return True  # whatever the backend asks, it learns exactly these roots
    if ASKING in placed or None in placed:
        return None  # a session on it has yet to say its roots (it has ROOTS_WAIT_TICKS to, even its handshake)
    if roots.used:
        return False
    return True if roots.quiet else None


def slot_for_roots(slots: list[BackendSlot], signature: RootsSignature) -> BackendSlot | None:
    """An existing roots-using slot whose sessions declared exactly these roots."""
    return next((slot for slot in slots if slot.mux.roots.used and fits(slot, signature)), None)


def may_reclaim(slot: BackendSlot, has_sessions: bool) -> bool:
    """Whether a quiet backend may be stopped (idle reclaim, the budget) without a session losing state: no
    session holds it, or the server is known to keep none between requests (the catalog says shared, it
    declares x-mux sharing=shared or speaks the stateless era); never an isolated or roots-holding backend
    while its sessions may still use it."""
    if not has_sessions:
        return True
    return slot.stateless and slot.sharing != ISOLATED and not slot.mux.roots.learnt


def ends_with_last_session(slot: BackendSlot) -> bool:
    """Isolated backends, and backends that learnt roots, must not carry state to the next session: no linger."""
    return slot.sharing == ISOLATED or slot.mux.roots.learnt
