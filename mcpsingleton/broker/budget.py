"""The user's `[budget]` (config.toml: `max_backends`, `max_memory`), checked before a backend starts.

A start that would exceed it first reclaims quiet backends whose state nothing can lose (placement.may_reclaim),
least recently used first; if it would still exceed it, the start is refused with one line for the requests
that needed it (which budget, what runs, how to raise it). A backend in use is never stopped for the budget.

It counts the backends of the slots it is given: the one broker gives it every server's (`Broker.all_slots`),
so the budget is the user's, whatever the number of servers.
"""

from __future__ import annotations

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from .slot import BackendSlot


def admit(starting: BackendSlot, slots: Iterable[BackendSlot], budget: dict[str, Any] | None) -> str | None:
    """None when `starting` may spawn its backend (after reclaiming what it takes); else why not, one line."""
    max_backends, max_memory = limits(budget)
    if not max_backends and not max_memory:
        return None
    others = [slot for slot in slots if slot is not starting and slot.backend is not None]
    idle_first = sorted((slot for slot in others if slot.reclaimable()), key=lambda slot: slot.last_active)
    while True:
        running = Usage(others)
        over = _over(running, max_backends, max_memory)
        if over is None:
            return None
        if not idle_first:
            return _refusal(over, running.slots)
        idle_first.pop(0).reclaim("the budget needs room for another backend")


def limits(budget: dict[str, Any] | None) -> tuple[int | None, int | None]:
    """(max_backends, max_memory in bytes) of a spec's `budget`; None where unset."""
    return (budget or {}).get("max_backends") or None, (budget or {}).get("max_memory") or None


class Usage:
    """The backends running now and, asked once, the PSS of their trees: what the budget counts, for
    `admit` and for the status records alike (`ls`, `ls --json`, `metrics` show the same numbers)."""

    def __init__(self, slots: Iterable[BackendSlot]) -> None:
        self.slots = [slot for slot in slots if slot.backend is not None]
        self._memory: int | None = None

    @property
    def memory(self) -> int:
        """Bytes; measured on first use only, every tree in one process snapshot (psutil: only brokers with a
        memory budget pay for it; `serve` asks for the status every 2 s)."""
        if self._memory is None:
            from ..common.proctree import parent_map, tree_memory

            parents = parent_map()
            self._memory = sum(tree_memory(slot.backend.pid, parents) for slot in self.slots if slot.backend)
        return self._memory

    def report(self, budget: dict[str, Any] | None) -> dict[str, int | None] | None:
        """A status record's `budget`: the limits and what of them is used; None without a [budget].
        `memory_bytes` is None unless `max_memory` is set (then it is what the budget compares)."""
        max_backends, max_memory = limits(budget)
        if not max_backends and not max_memory:
            return None
        return {
            "max_backends": max_backends,
            "max_memory_bytes": max_memory,
            "backends": len(self.slots),
            "memory_bytes": self.memory if max_memory else None,
        }


def _over(running: Usage, max_backends: int | None, max_memory: int | None) -> str | None:
    """Which limit one more backend would exceed with these running, or None."""
    if max_backends and len(running.slots) + 1 > max_backends:
        return f"max_backends = {max_backends}"
    if max_memory and running.memory >= max_memory:
        return f"max_memory = {max_memory >> 20} MiB ({running.memory >> 20} MiB in use)"
    return None


def _refusal(over: str, running: list[BackendSlot]) -> str:
    names = ", ".join(f"{slot.spec['name']} (pid {slot.backend.pid})" for slot in running if slot.backend) or "none"
    return (
        f"the [budget] {over} leaves no room for another backend (running: {names}; none can be reclaimed); "
        "raise it in config.toml, or stop a server (`mcpsingleton stop NAME`)"
    )
