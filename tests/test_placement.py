"""The broker's sharing decision (pure): what the first backend's InitializeResult and tools change, and when
its tools are needed at all."""

from __future__ import annotations

from mcpsingleton.placement import SharingDecision

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

