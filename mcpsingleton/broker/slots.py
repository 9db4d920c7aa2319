"""The broker's backend slots, and which one each session goes to (the rules, pure: placement.py).

A session first joins a shared slot, parked there for its handshake, or gets a slot of its own once the
server is known to need one. The sharing is learnt from the first backend (its `x-mux` declaration, then
its tool shapes, waited for up to DECISION_WAIT); once it is known, each parked session stays, or moves
to a slot of its own or to one with its roots, or waits a few seconds while its slot's backend may still
ask for roots. The muxes have no clock: this module ticks them (`keep_time`) while they count time.
"""

from __future__ import annotations

from ..common.wire import ISOLATED
from ..mux.roots import TICK
from .discovery_cache import load as load_discovery
from .placement import SharingDecision, ends_with_last_session, fits, slot_for_roots
from .slot import BackendSlot

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Protocol

    from ..common.logfile import LogFile
    from .backend import Keeper
    from .eventloop import Callback, EventLoop, Timer
    from .handover import Lifetime
    from .sessions import Session, Sessions
    from .slot import Host

    class Owner(Host, Protocol):
        """What the slots need from their server (server.py): it is also each slot's Host."""

        spec: dict[str, Any]
        loop: EventLoop
        log: LogFile
        keeper: Keeper | None
        sessions: Sessions
        lifetime: Lifetime

DECISION_WAIT = 10.0
"""How long the first backend's tools/list may take before its tool shapes are no longer waited for."""


class Slots:
    """The backend slots by number: creating and retiring them, placing sessions on them."""

    def __init__(self, server: Owner) -> None:
        self.server = server
        self.loop = server.loop
        self.log = server.log
        self.by_number: dict[int, BackendSlot] = {}
        self.retiring: dict[int, list[Callback]] = {}
        self.decision = SharingDecision(server.spec)
        self.decision_timer: Timer | None = None
        self.tick_timer: Timer | None = None
        self.next_number = 0

    def __iter__(self) -> Iterator[BackendSlot]:
        """A snapshot: slots may be retired while the caller walks them."""
        return iter(list(self.by_number.values()))

    # ---- creating and retiring ----------------------------------------------------------------

    def start_first(self) -> None:
        """The slot every session joins first; its backend starts now unless it may wait for a request (lazy).

        A server that decides its sharing at run time said it last time too: the cached discovery holds its
        InitializeResult and tools, so later sessions are placed without waiting for a backend (lazy ones)."""
        if not self.decision.known and self.decision.learn_from_cache(load_discovery(self.server.spec)):
            self.log.write(f"sharing: {self.decision.sharing} ({self.decision.policy}; from the cached discovery)")
        self.first = self.create()
        self.first.start_unless_lazy()

    def create(self) -> BackendSlot:
        """A new backend slot (not started yet), with the sharing decided so far."""
        self.next_number += 1
        sharing = self.decision.sharing if self.decision.known else None
        slot = BackendSlot(
            self.next_number, self.server.spec, self.loop, self.log, self.server.keeper, self.server, sharing
        )
        slot.policy, slot.stateless = self.decision.policy, self.decision.stateless
        self.by_number[slot.number] = slot
        return slot

    def _new(self, why: str) -> BackendSlot:
        slot = self.create()
        self.log.write(f"backend slot {slot.number} created: {why}")
        slot.start_unless_lazy()
        return slot

    def retire(self, slot: BackendSlot, done: Callback, strays: bool = False) -> None:
        """Stop a slot's backend and forget the slot (its sessions must have been moved or ended).

        `strays`: also stop processes that left the backend's group. Only when the whole server stops:
        the key tag they are found by is shared by every slot of the key."""
        waiting = self.retiring.setdefault(slot.number, [])
        waiting.append(done)
        if len(waiting) > 1:
            return  # already stopping: `done` runs when it has
        slot.retiring = True

        def stopped() -> None:
            self.by_number.pop(slot.number, None)
            for callback in self.retiring.pop(slot.number, []):
                callback()

        slot.stop(stopped, strays)

    def after_leaving(self, slot: BackendSlot) -> None:
        """An isolated or roots-holding backend ends with its last session (its state must not carry over)."""
        if not self.server.has_sessions(slot) and ends_with_last_session(slot) and not self.server.lifetime.stopping:
            self.log.write(f"backend slot {slot.number} ends with its last session ({slot.policy})")
            self.retire(slot, lambda: None)

    # ---- placing sessions ---------------------------------------------------------------------

    def join(self, session: Session) -> None:
        """Put a new session on a slot: its own (isolated), or parked on a shared one until it is placed."""
        if self.decision.known and self.decision.isolated:
            self._open(session, self._isolated_slot(session), False)
            return
        shared = [s for s in self.by_number.values() if not s.retiring and s.sharing != ISOLATED]
        home = shared[0] if shared else self._new(f"session {session.sid}")
        self._open(session, home, self._taken(home, session))

    def _taken(self, slot: BackendSlot, besides: Session) -> bool:
        return (slot.used and slot.sharing == ISOLATED) or any(
            s.slot is slot and s is not besides for s in self.server.sessions
        )

    def _isolated_slot(self, session: Session) -> BackendSlot:
        unused = [s for s in self.by_number.values() if not s.retiring and not self._taken(s, session)]
        return unused[0] if unused else self._new(f"session {session.sid} (isolated)")

    def _open(self, session: Session, slot: BackendSlot, parked: bool) -> None:
        session.slot, session.parked, slot.used = slot, parked, True
        self.server.perform(slot, slot.mux.open_session(session.sid, parked))

    def place(self, session: Session) -> None:
        """A parked session whose handshake is done, once sharing is known: stay, or move to another slot.

        It stays parked while its slot's backend may still ask for roots and other roots are on it (the
        mux's ticks decide that within seconds)."""
        slot = session.slot
        signature = slot.mux.placeable(session.sid) if self.decision.known else None
        if signature is None:
            return
        if self.decision.isolated:
            target = self._isolated_slot(session)
        else:
            fitting = fits(slot, signature)
            if fitting is None:
                return
            if fitting:
                session.parked = False
                self.server.perform(slot, slot.mux.unpark(session.sid))
                return
            others = [s for s in self.by_number.values() if s is not slot]
            target = slot_for_roots(others, signature) or self._new(f"session {session.sid} declared other roots")
            target.mux.roots.used = True  # the server acts on roots: no other roots may join this backend
            self.log.write(f"session {session.sid}: roots differ from slot {slot.number}'s; on slot {target.number}")
        session.parked = False
        target.used = True
        state, actions = slot.mux.export_session(session.sid)
        self.server.perform(slot, actions)
        session.slot = target
        self.server.perform(target, target.mux.adopt_session(state))

    def _place_parked(self) -> None:
        for session in self.server.sessions:
            if session.parked and not session.ending:
                self.place(session)

    # ---- the mux's clock ----------------------------------------------------------------------

    def keep_time(self, slot: BackendSlot) -> None:
        """Tick every TICK seconds while a slot's mux counts time (roots answers, a backend's first seconds)."""
        if self.tick_timer is None and slot.mux.ticking():
            self.tick_timer = self.loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        self.tick_timer = None
        for slot in self:
            self.server.perform(slot, slot.mux.tick())
        self._place_parked()
        for slot in self:
            self.keep_time(slot)

    # ---- learning the sharing -----------------------------------------------------------------

    def ready(self, slot: BackendSlot) -> None:
        """A backend answered initialize: the first one may tell whether the server can be shared.

        Parked sessions whose initialize waited for it may be placed now (they may send nothing more)."""
        if self.decision.known:
            self._place_parked()
            return
        if slot is not self.first:
            return
        init_result = slot.mux.handshake.init_result or {}
        if self.decision.learn(init_result, None):
            self._decided()
            return

        def listed(tools: list[Any] | None) -> list[Any]:
            if not self.decision.known:
                if tools is None:
                    self.decision.give_up("its tools/list failed")
                else:
                    self.decision.learn(init_result, tools)
                self.loop.call_later(0, self._decided)
            return []

        self.server.perform(slot, slot.mux.ask_tools(listed))
        if self.decision_timer is None:
            why = f"its tools/list took over {DECISION_WAIT:.0f}s"
            self.decision_timer = self.loop.call_later(DECISION_WAIT, lambda: self.give_up(why))

    def give_up(self, why: str) -> None:
        """Decide without the first backend's word (it never worked, or its tools/list took too long)."""
        if not self.decision.known:
            self.decision.give_up(why)
            self._decided()

    def _decided(self) -> None:
        """The sharing is known: record it on the slots and place the sessions parked until now."""
        if self.decision_timer is not None:
            self.decision_timer.cancel()
            self.decision_timer = None
        self.log.write(f"sharing: {self.decision.sharing} ({self.decision.policy})")
        for slot in self.by_number.values():
            slot.stateless = self.decision.stateless
            if slot.sharing is None:
                slot.sharing, slot.policy = self.decision.sharing, self.decision.policy
                self.server.sessions.backend_stderr(slot, [])
                self.after_leaving(slot)  # its first session may have left already
        self._place_parked()
