"""The broker's placement rules (pure): what the first backend's InitializeResult and tools change about the
sharing, when its tools are needed at all, and which roots may join a slot's backend, and when."""

from __future__ import annotations

from mux_harness import Harness, init_result

from mcpsingleton.broker.placement import SharingDecision, fits, may_reclaim
from mcpsingleton.mux import jsonrpc
from mcpsingleton.mux.roots import NO_ROOTS, QUIET_TICKS, ROOTS_WAIT_TICKS

TOOLS = {"capabilities": {"tools": {}}}


def spec(**fields: object) -> dict:
    static = {"scope": "cwd", "sharing": None, "sharing_final": False, "policy": "default: shared per directory"}
    return {**static, **fields}


def test_a_final_decision_is_known_before_anything_runs() -> None:
    assert SharingDecision(spec(sharing="shared", sharing_final=True)).known
    isolated = SharingDecision(spec(scope="isolated"))
    assert isolated.known and isolated.isolated


def test_the_server_s_declaration_decides_at_once() -> None:
    decision = SharingDecision(spec(sharing="shared", policy="catalog: stateless"))
    declared = {"capabilities": {"tools": {}, "experimental": {"x-mux": {"sharing": "isolated"}}}}
    assert decision.learn(declared, None)
    assert decision.isolated and decision.policy == "server declares x-mux sharing=isolated"


def test_tools_are_waited_for_only_when_nothing_decided_and_the_server_has_tools() -> None:
    assert SharingDecision(spec(sharing="shared")).learn(TOOLS, None), "the catalog decided: no tools needed"
    assert SharingDecision(spec()).learn({"capabilities": {}}, None), "no tools declared: nothing to wait for"
    decision = SharingDecision(spec())
    assert not decision.learn(TOOLS, None) and not decision.known
    assert decision.learn(TOOLS, [{"name": "browser_navigate"}])
    assert decision.isolated and decision.policy == "tools look session-bound: browser_navigate"


def test_ordinary_tools_share_and_keep_the_static_reason() -> None:
    decision = SharingDecision(spec())
    assert decision.learn(TOOLS, [{"name": "get_current_time"}])
    assert decision.sharing == "shared" and decision.policy == "default: shared per directory"


def test_giving_up_keeps_the_static_decision_and_says_why() -> None:
    decision = SharingDecision(spec())
    decision.give_up("its tools/list failed")
    assert decision.known and decision.sharing == "shared"
    assert decision.policy == "default: shared per directory; kept, as its tools/list failed"


# ---- issue 21 point 5: which backends idle reclaim may stop -------------------------------------

SHARED_DECLARED = {"capabilities": {"experimental": {"x-mux": {"sharing": "shared"}}}}


def test_stateless_is_known_from_the_catalog_a_declaration_or_the_stateless_era_only() -> None:
    assert SharingDecision(spec(sharing="shared", policy="catalog: stateless")).stateless
    assert not SharingDecision(spec(sharing="shared", sharing_final=True)).stateless, "a user's scope says nothing"
    for init, stateless in [
        (SHARED_DECLARED, True),
        ({"capabilities": {"x-mux": {"sharing": "session-aware"}}}, False),  # it keeps per-session state
        ({"protocolVersion": "2026-07-28", "capabilities": {}}, True),
        ({"capabilities": {}}, False),  # an unknown server shares by default; its state is unknown
    ]:
        decision = SharingDecision(spec())
        assert decision.learn(init, None) and decision.stateless is stateless, init
    catalog = SharingDecision(spec(sharing="shared", policy="catalog: stateless"))
    catalog.learn({"capabilities": {"x-mux": {"sharing": "session-aware"}}}, None)
    assert not catalog.stateless, "the server's own word outranks the catalog"


def test_the_sharing_is_learnt_from_the_cached_discovery_when_it_holds_the_server_s_word() -> None:
    decision = SharingDecision(spec())
    assert decision.learn_from_cache({"initialize": {"capabilities": {"x-mux": {"sharing": "isolated"}}}})
    assert decision.isolated
    waiting = SharingDecision(spec())
    assert not waiting.learn_from_cache({"initialize": TOOLS}), "tools declared, none cached: the backend decides"
    assert not SharingDecision(spec()).learn_from_cache({}), "no entry: nothing learnt"


class ReclaimSlot:
    """What `may_reclaim` reads of a backend slot."""

    def __init__(self, sharing: str, stateless: bool, roots_learnt: bool = False) -> None:
        self.mux, self.sharing, self.stateless = Harness().mux, sharing, stateless
        self.mux.roots.learnt = roots_learnt


def test_idle_reclaim_stops_only_what_no_session_may_still_need() -> None:
    assert may_reclaim(ReclaimSlot("shared", True), has_sessions=True)
    assert not may_reclaim(ReclaimSlot("shared", False), has_sessions=True), "its sessions may hold state"
    assert not may_reclaim(ReclaimSlot("isolated", True), has_sessions=True)
    assert not may_reclaim(ReclaimSlot("shared", True, roots_learnt=True), has_sessions=True)
    assert may_reclaim(ReclaimSlot("shared", False), has_sessions=False), "nobody holds it"


# ---- issue 19 row 8: other roots never join a backend that may still ask for roots ----------


class Slot:
    """What `fits` reads of a backend slot: its sharing, whether it is retiring, its mux."""

    def __init__(self, h: Harness) -> None:
        self.mux, self.sharing, self.retiring = h.mux, "shared", False


def with_roots(h: Harness, sid: int, uris: list[str]) -> None:
    h.open(sid, capabilities={"roots": {}})
    request = h.requests_to(sid, "roots/list")[-1]
    h.reply(sid, request, {"roots": [{"uri": uri} for uri in uris]})


def tick(h: Harness, times: int) -> None:
    for _ in range(times):
        h.perform(h.mux.tick())


def test_other_roots_wait_while_the_backend_is_still_starting_from_a_cached_discovery() -> None:
    h = Harness(auto_start=False, discovery={"initialize": init_result()})
    with_roots(h, 1, ["file:///alpha"])
    slot = Slot(h)
    assert fits(slot, ("file:///alpha",)) is True, "equal roots: it learns exactly theirs, whenever it asks"
    assert fits(slot, ("file:///beta",)) is None, "the backend has not even started: it may still ask"
    assert fits(slot, NO_ROOTS) is None


def test_a_backend_that_asked_takes_only_equal_roots() -> None:
    h = Harness()
    with_roots(h, 1, ["file:///alpha"])
    h.from_backend(jsonrpc.request("q", "roots/list"))
    slot = Slot(h)
    assert fits(slot, ("file:///beta",)) is False
    assert fits(slot, ("file:///alpha",)) is True


def test_a_backend_quiet_on_roots_for_a_while_takes_anyone() -> None:
    h = Harness()
    with_roots(h, 1, ["file:///alpha"])
    slot = Slot(h)
    assert fits(slot, ("file:///beta",)) is None
    tick(h, QUIET_TICKS)
    assert fits(slot, ("file:///beta",)) is True and fits(slot, NO_ROOTS) is True


def test_a_session_on_the_slot_that_has_not_said_its_roots_makes_others_wait() -> None:
    h = Harness()
    h.open(1, capabilities={"roots": {}})  # asked, no answer yet
    tick(h, QUIET_TICKS)
    assert fits(Slot(h), ("file:///beta",)) is None
    tick(h, ROOTS_WAIT_TICKS)
    assert fits(Slot(h), NO_ROOTS) is True


def test_a_session_on_the_backend_whose_handshake_was_not_read_yet_makes_other_roots_wait() -> None:
    """The first session is placed at once, but its waiter may say it is ready after a later session's: until
    its handshake is read nobody knows its roots, so a newcomer must wait, not get a backend of its own."""
    h = Harness()
    h.perform(h.mux.open_session(1))  # placed, its initialize not read yet
    h.from_backend(jsonrpc.request("q", "roots/list"))  # the server asks at once (server-everything does)
    slot = Slot(h)
    assert fits(slot, NO_ROOTS) is None, "its roots are unknown: wait"
    h.open(2, capabilities={})
    assert fits(slot, NO_ROOTS) is None
    h.send(1, jsonrpc.request(0, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}}))
    h.send(1, jsonrpc.notification("notifications/initialized"))
    assert fits(slot, NO_ROOTS) is True, "both declare none: they share"


def test_a_session_that_never_says_its_handshake_holds_no_one_up_for_long() -> None:
    h = Harness()
    h.perform(h.mux.open_session(1))
    h.from_backend(jsonrpc.request("q", "roots/list"))
    slot = Slot(h)
    assert h.mux.ticking(), "the silent session is counted"
    tick(h, ROOTS_WAIT_TICKS - 1)
    assert fits(slot, NO_ROOTS) is None
    tick(h, 1)
    assert fits(slot, NO_ROOTS) is True, "taken as declaring no roots"
