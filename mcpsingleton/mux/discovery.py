"""Cached discovery: a session on a cold key is answered at once from what this server said last time.

The broker hands the mux the key's last known InitializeResult and list results (`entry`, data only:
the file is the broker's business). While the backend is not ready, a session's `initialize` and its
first-page `tools/list`, `prompts/list`, `resources/list` and `resources/templates/list` are answered
from the entry; everything else waits for the backend (queue.py). With `lazy`, those answers do not
even start the backend.

Each time the backend becomes ready the mux asks it for the lists itself. Sessions that were
answered from the entry get the matching `notifications/*/list_changed` for every list that turned
out different (every list, when the server's serverInfo changed), and the broker is asked to store
the new entry; later first-page list results that sessions ask for keep it current (not on an isolated
backend: `own_lists_only`, a session's answers may be its own). After an idle reclaim the next backend's
lists are compared the same way for every session, instead of a list_changed for each. A server that
paginates its lists (a `nextCursor`) is not cached: its lists may depend on who asks. Nor is a result
nested more than MAX_DEPTH levels deep: it is passed on, but writing it and reading it back would come
near the interpreter's recursion limit.
"""

from __future__ import annotations

from . import eras, jsonrpc
from .actions import Feature, Log, StoreDiscovery, ToSession
from .jsonrpc import Message

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .actions import Action
    from .router import Mux
    from .session import Session

INITIALIZE = "initialize"
LISTS: dict[str, tuple[str, str]] = {
    "tools/list": ("tools", "notifications/tools/list_changed"),
    "prompts/list": ("prompts", "notifications/prompts/list_changed"),
    "resources/list": ("resources", "notifications/resources/list_changed"),
    "resources/templates/list": ("resources", "notifications/resources/list_changed"),
}
"""Each cached list: the server capability that declares it, and the notification that says it changed."""
MAX_DEPTH = 200
"""Deepest nesting of a list result that is cached (real tool schemas nest a few dozen levels at most)."""


class Discovery(Feature):
    def __init__(self, mux: Mux, entry: dict[str, Any] | None, lazy: bool) -> None:
        super().__init__(mux)
        self.enabled = entry is not None  # None: this slot never caches (a roots-bound one)
        self.entry = valid_entry(entry)
        self.lazy = lazy
        self.own_lists_only = False  # isolated: a session's list results may be its own; cache only the broker's
        self.compares_restart = False  # reclaimed: the next backend's lists are compared, not announced blindly
        self.served: dict[int, dict[str, Any]] = {}  # session → method → the result it was given from the entry
        self.live: dict[str, Any] = {}  # list results collected from the backend since it became ready
        self.awaiting = 0
        self.uncacheable: str | None = None  # why the live lists must not be cached

    def serves_without_backend(self) -> bool:
        """Lazy, with an entry: no backend until a request needs one."""
        return self.lazy and self.entry is not None

    # ---- sessions answered from the entry ----------------------------------------------------

    def answer_initialize(self, session: Session) -> dict[str, Any] | None:
        """The cached InitializeResult for a session on a backend not yet initialized, or None."""
        if self.entry is None or self.mux.handshake.init_result is not None:
            return None
        result: dict[str, Any] = self.entry[INITIALIZE]
        self.served.setdefault(session.sid, {})[INITIALIZE] = result
        return result

    def answer(self, session: Session, message: Message) -> list[Action] | None:
        """A first-page list request answered from the entry while the backend is not ready, or None."""
        method = message["method"]
        if self.entry is None or method not in self.entry or method == INITIALIZE:
            return None
        if eras.era_fields(message) is not None or "cursor" in jsonrpc.params_of(message):
            return None  # stateless-era sessions need their era's result shape; a cursor needs the backend
        result = self.entry[method]
        self.served.setdefault(session.sid, {})[method] = result
        return self.mux.batches.deliver(session, jsonrpc.result(message["id"], result))

    def reclaimed(self) -> None:
        """The quiet backend was stopped (idle reclaim, the budget): when one is back, each session hears
        list_changed only for a list that differs from the entry's, which is what it last saw (a crash, by
        contrast, announces every list: the sessions may have seen anything). Without an entry, as a crash."""
        if not self.enabled or self.entry is None:
            return
        for sid in self.mux.sessions:
            given = self.served.setdefault(sid, {})
            for method in LISTS:
                if method in self.entry:
                    given.setdefault(method, self.entry[method])
        self.compares_restart = True

    # ---- the backend's own answers -----------------------------------------------------------

    def backend_ready(self, restarted: bool) -> list[Action]:
        self.compares_restart = False
        if not self.enabled:
            return []
        declared = self.mux.handshake.capabilities()
        methods = [method for method, (capability, _) in LISTS.items() if capability in declared]
        self.live, self.uncacheable, self.awaiting = {}, None, len(methods)
        if not methods:
            return self._compare()
        return [self.mux.requests.own(method, {}, self._collector(method)) for method in methods]

    def forward(self, session: Session, message: Message) -> list[Action]:
        """A session's list request to the ready backend; a first-page answer that differs updates the entry.

        Clients list again when the backend says a list changed, so the entry follows without the mux
        asking the backend anything more (and a server that says `list_changed` on every list cannot loop)."""
        if not self.enabled or self.own_lists_only or "cursor" in jsonrpc.params_of(message):
            return self.mux.requests.forward(session, message)
        return self.mux.requests.forward(session, message, self._observer(message["method"]))

    def _collector(self, method: str) -> Callable[[Message], list[Action]]:
        def collect(reply: Message) -> list[Action]:
            self._take(method, reply)
            self.awaiting -= 1
            return self._compare() if self.awaiting == 0 else []

        return collect

    def _observer(self, method: str) -> Callable[[Message], list[Action]]:
        def observe(reply: Message) -> list[Action]:
            if self.awaiting or not self._take(method, reply):
                return []  # the backend's own answers are still coming in, or nothing new
            return self._compare()

        return observe

    def _take(self, method: str, reply: Message) -> bool:
        """Remember a list result from the backend; whether it is new."""
        result = reply.get("result")
        if "error" in reply or not isinstance(result, dict):
            return False
        if not jsonrpc.nested_within(result, MAX_DEPTH):  # checked first: even comparing it could recurse too far
            new = self.uncacheable is None
            self.uncacheable = f"its {method} result is nested more than {MAX_DEPTH} levels deep"
            return new
        if self.live.get(method) == result:
            return False
        self.live[method] = result
        if "nextCursor" in result:
            self.uncacheable = self.uncacheable or "the server paginates its lists"
        return True

    def _compare(self) -> list[Action]:
        """All lists are in: tell sessions answered from the entry what changed, and store the new entry."""
        live_init = self.mux.handshake.init_result or {}
        if not jsonrpc.nested_within(live_init, MAX_DEPTH):
            self.uncacheable = f"its InitializeResult is nested more than {MAX_DEPTH} levels deep"
        old = self.entry or {}
        actions: list[Action] = []
        server_changed = INITIALIZE in old and old[INITIALIZE].get("serverInfo") != live_init.get("serverInfo")
        if server_changed:
            actions.append(Log("discovery: the server's serverInfo changed; every cached list is stale"))
        if INITIALIZE in old and old[INITIALIZE].get("capabilities") != live_init.get("capabilities"):
            actions.append(Log(f"discovery: the server's capabilities changed: {live_init.get('capabilities')}"))
        for sid, given in self.served.items():
            session = self.mux.sessions.get(sid)
            if session is not None:
                actions += self._notify_changed(session, given, server_changed)
        self.served = {}
        if self.uncacheable is not None:
            self.entry = None
            actions.append(Log(f"discovery: not cached: {self.uncacheable}"))
            return [*actions, StoreDiscovery(None)] if old else actions
        new = {INITIALIZE: live_init, **self.live}
        if new != old:
            self.entry = new
            actions.append(StoreDiscovery(new))
        return actions

    def _notify_changed(self, session: Session, given: dict[str, Any], server_changed: bool) -> list[Action]:
        notices = {
            LISTS[method][1]
            for method, result in given.items()
            if method in LISTS and (server_changed or self.live.get(method) != result)
        }
        return [ToSession(session.sid, jsonrpc.notification(notice)) for notice in sorted(notices)]

    def adopt(self, session: Session, served: dict[str, Any] | None) -> list[Action]:
        """A session moved here (parking.py) with lists it was given from the entry: compared with this
        backend's own lists once they are in; at once when they are (every list, when none are cached here)."""
        if not served:
            return []
        if self.enabled and not (self.mux.backend.ready and not self.awaiting):
            self.served[session.sid] = served
            return []
        return self._notify_changed(session, served, not self.enabled)

    def session_closed(self, session: Session) -> list[Action]:
        self.served.pop(session.sid, None)
        return []


def valid_entry(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of a stored entry that can be served: an InitializeResult and list results, all objects,
    none nested deeper than MAX_DEPTH (the broker never writes such a file; a hand-made one is not served)."""
    if not entry or not isinstance(entry.get(INITIALIZE), dict):
        return None
    kept = {method: entry[method] for method in LISTS if isinstance(entry.get(method), dict)}
    served = {INITIALIZE: entry[INITIALIZE], **kept}
    return served if all(jsonrpc.nested_within(result, MAX_DEPTH) for result in served.values()) else None
