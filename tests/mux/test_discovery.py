"""Cached discovery in the sans-IO mux: sessions answered from the key's last known discovery while the
backend starts (or, lazily, not at all), and told what changed once the live answers are in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mux_harness import CACHED_INIT, ENTRY, TOOL_A, TOOL_B, TOOLS_CHANGED, Harness, answer_lists, init_result

from mcpsingleton.broker import discovery_cache as discovery
from mcpsingleton.mux.discovery import MAX_DEPTH

RESOURCES_CHANGED = "notifications/resources/list_changed"


def test_a_cold_session_is_answered_from_the_cache_while_requests_wait_for_the_backend() -> None:
    h = Harness(auto_start=False, discovery=ENTRY)
    h.open(1)
    h.request(1, 1, "tools/list")
    h.request(1, 2, "tools/call", {"name": "a"})
    init, tools = h.replies(1)
    assert init["result"]["instructions"] == "from the cache"
    assert tools == {"jsonrpc": "2.0", "id": 1, "result": {"tools": [TOOL_A]}}
    assert h.starts == 1 and h.backend == []  # the backend was asked for, and nothing is sent before it runs
    h.clear()
    h.start()
    assert h.last_request("initialize")  # the backend's own handshake happens behind the session's back
    calls = h.backend_requests("tools/call")
    assert len(calls) == 1 and calls[0]["params"] == {"name": "a"}  # the held request went on once it was ready
    assert {r["method"] for r in h.backend_requests()} >= {"tools/list", "resources/list", "resources/templates/list"}


def test_the_cache_is_served_at_the_sessions_own_older_protocol_version() -> None:
    h = Harness(auto_start=False, discovery=ENTRY)
    h.open(1, version="2025-03-26")
    assert h.only_reply(1)["result"]["protocolVersion"] == "2025-03-26"


def test_lazy_answers_initialize_lists_and_ping_without_starting_the_backend() -> None:
    h = Harness(discovery=ENTRY, lazy=True)
    assert h.mux.discovery.serves_without_backend()
    h.open(1)
    h.request(1, 1, "tools/list")
    h.request(1, 2, "resources/list")
    h.request(1, 3, "ping")
    assert [r["id"] for r in h.replies(1)] == [0, 1, 2, 3]
    assert h.starts == 0 and h.backend == []
    h.request(1, 4, "tools/call", {"name": "a"})
    assert h.starts == 1  # the first request that needs the backend starts it
    assert h.backend_requests("tools/call")


def test_a_list_answered_from_the_cache_inside_a_batch_is_answered_once() -> None:
    h = Harness(discovery=ENTRY, lazy=True)
    h.open(1)
    h.take(1)
    h.send(1, [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, {"jsonrpc": "2.0", "id": 2, "method": "ping"}])
    assert h.starts == 0  # nothing in the batch needed the backend
    (batch,) = h.take(1)
    assert sorted(reply["id"] for reply in batch) == [1, 2]


def test_lazy_without_a_cache_entry_starts_the_backend_for_the_first_session() -> None:
    h = Harness(discovery={}, lazy=True)
    assert not h.mux.discovery.serves_without_backend()
    h.open(1)
    assert h.starts == 1
    assert h.only_reply(1)["result"] == h.init_result


def test_a_list_that_changed_is_announced_to_sessions_served_from_the_cache_and_stored() -> None:
    h = Harness(auto_start=False, discovery=ENTRY)
    h.open(1)
    h.request(1, 1, "tools/list")
    h.open(2)  # initialized from the cache too, but never given a list from it
    h.start()
    h.open(3)  # came after the backend was ready: live answers only
    h.take(1), h.take(2), h.take(3)
    answer_lists(h, [TOOL_A, TOOL_B])
    assert [n["method"] for n in h.notes_to(1)] == [TOOLS_CHANGED]
    assert h.notes_to(2) == [] and h.notes_to(3) == []
    (stored,) = h.stored
    assert stored is not None and stored["tools/list"] == {"tools": [TOOL_A, TOOL_B]}
    assert stored["initialize"] == h.init_result  # the live InitializeResult replaces the cached one
    asked = len(h.backend_requests("tools/list"))
    h.request(1, 5, "tools/list")
    assert len(h.backend_requests("tools/list")) == asked + 1 and h.replies(1) == []  # the backend answers now


def test_unchanged_lists_announce_nothing_and_store_nothing() -> None:
    entry = {**ENTRY, "initialize": init_result()}
    h = Harness(auto_start=False, discovery=entry)
    h.open(1)
    h.request(1, 1, "tools/list")
    h.request(1, 2, "resources/list")
    h.start()
    answer_lists(h, [TOOL_A])
    assert h.notes_to(1) == [] and h.stored == []


def test_the_first_run_stores_what_the_server_said() -> None:
    h = Harness(discovery={})
    h.open(1)
    answer_lists(h, [TOOL_A])
    expected = {"initialize": h.init_result, "tools/list": {"tools": [TOOL_A]}, "resources/list": {"resources": []}}
    assert h.stored == [expected]


def test_a_paginated_server_is_not_cached() -> None:
    h = Harness(discovery={})
    h.open(1)
    answer_lists(h, [TOOL_A], next_cursor="page-2")
    assert h.stored == []
    assert any("paginates" in line for line in h.logs)


def test_a_server_that_starts_paginating_loses_its_cache_entry() -> None:
    h = Harness(auto_start=False, discovery={**ENTRY, "initialize": init_result()})
    h.open(1)
    h.request(1, 1, "tools/list")
    h.start()
    answer_lists(h, [TOOL_A], next_cursor="page-2")
    assert h.stored == [None]  # the broker removes the file
    assert [n["method"] for n in h.notes_to(1)] == [TOOLS_CHANGED]
    assert h.mux.discovery.entry is None


def test_a_list_request_with_a_cursor_is_never_answered_from_the_cache() -> None:
    h = Harness(discovery=ENTRY, lazy=True)
    h.open(1)
    h.request(1, 1, "tools/list", {"cursor": "page-2"})
    assert h.starts == 1 and [r["id"] for r in h.replies(1)] == [0]


def test_another_server_version_makes_every_list_served_from_the_cache_stale() -> None:
    """Same command, upgraded server (npx @latest): the lists it served are announced changed even when
    equal, and the new version's answers replace the entry."""
    h = Harness(auto_start=False, discovery=ENTRY)
    h.init_result = {**init_result(), "serverInfo": {"name": "fake", "version": "2"}}
    h.open(1)
    h.request(1, 1, "tools/list")
    h.request(1, 2, "resources/list")
    h.start()
    answer_lists(h, [TOOL_A])
    assert sorted(n["method"] for n in h.notes_to(1)) == [RESOURCES_CHANGED, TOOLS_CHANGED]
    assert h.stored[-1] is not None and h.stored[-1]["initialize"]["serverInfo"]["version"] == "2"
    assert any("serverInfo changed" in line for line in h.logs)
    h.open(2)
    assert h.only_reply(2)["result"]["serverInfo"]["version"] == "2"  # never the cached one again


def test_a_capability_difference_is_logged() -> None:
    h = Harness(auto_start=False, discovery={**ENTRY, "initialize": init_result({"tools": {}})})
    h.open(1)
    h.start()
    answer_lists(h, [TOOL_A])
    assert any("capabilities changed" in line for line in h.logs)


def test_a_key_that_is_never_cached_asks_the_backend_for_nothing_more() -> None:
    h = Harness()  # discovery=None: a roots-bound slot
    h.open(1)
    assert [r["method"] for r in h.backend_requests()] == ["initialize"]
    assert h.stored == []


def test_a_broken_entry_is_ignored() -> None:
    h = Harness(auto_start=False, discovery={"initialize": "not an object", "tools/list": {"tools": []}})
    h.open(1)
    assert h.replies(1) == [] and h.starts == 1  # waits for the backend as without a cache


def test_a_list_a_session_asks_for_again_keeps_the_entry_current() -> None:
    """After `list_changed` clients list again: what they are answered updates the entry, and the mux asks
    the backend for nothing itself (a server that says list_changed on every list cannot make it loop)."""
    h = Harness(discovery={})
    h.open(1)
    answer_lists(h, [TOOL_A])
    h.clear()
    h.from_backend({"jsonrpc": "2.0", "method": TOOLS_CHANGED})
    assert [n["method"] for n in h.notes_to(1)] == [TOOLS_CHANGED] and h.backend == []
    h.request(1, 7, "tools/list")
    h.answer(h.last_request("tools/list"), {"tools": [TOOL_A, TOOL_B]})
    assert h.only_reply(1)["result"] == {"tools": [TOOL_A, TOOL_B]}
    assert h.stored[-1] == {
        "initialize": h.init_result,
        "tools/list": {"tools": [TOOL_A, TOOL_B]},
        "resources/list": {"resources": []},
    }
    stored = len(h.stored)
    h.request(1, 8, "tools/list")
    h.answer(h.last_request("tools/list"), {"tools": [TOOL_A, TOOL_B]})
    h.request(1, 9, "tools/list", {"cursor": "page-2"})
    h.answer(h.last_request("tools/list"), {"tools": [TOOL_A]})
    assert len(h.stored) == stored  # the same list again, or a later page: nothing to store


# ---- the file the broker keeps (mcpsingleton/broker/discovery_cache.py) -----------------------------------


def spec(**overrides: Any) -> dict[str, Any]:
    return {"key": "k" * 64, "scope": "cwd", "sharing": None, "sharing_final": False, "env": {}, **overrides}


def test_the_stored_entry_loads_back_and_anything_else_loads_as_nothing(home: Path) -> None:
    assert discovery.load(spec()) == {}
    assert discovery.store(spec(), ENTRY).startswith("discovery: cached")
    assert discovery.load(spec()) == ENTRY
    assert discovery.load(spec(key="j" * 64)) == {}
    path = Path(discovery.path_for("k" * 64))
    for broken in ("{", '{"format": 0, "key": "' + "k" * 64 + '", "entry": {}}', "[]"):
        path.write_text(broken)
        assert discovery.load(spec()) == {}


def test_isolated_keys_are_cached_so_their_sessions_need_no_backend_for_discovery(home: Path) -> None:
    isolated = spec(scope="isolated", sharing="isolated")
    assert discovery.load(isolated) == {}
    declared = {**ENTRY, "initialize": init_result({"experimental": {"x-mux": {"sharing": "isolated"}}})}
    assert discovery.store(spec(), declared).startswith("discovery: cached")
    assert discovery.load(isolated) == declared
    browser = {**ENTRY, "tools/list": {"tools": [{"name": "browser_navigate"}]}}
    assert discovery.store(isolated, browser).startswith("discovery: cached")
    assert discovery.load(isolated) == browser


def test_an_isolated_backend_caches_only_what_the_broker_itself_was_told() -> None:
    """A session's own list result on an isolated backend may be its own: it never updates the entry."""
    h = Harness(discovery={})
    h.mux.discovery.own_lists_only = True
    h.open(1)
    answer_lists(h, [TOOL_A])
    stored = len(h.stored)
    assert stored and h.stored[-1]["tools/list"] == {"tools": [TOOL_A]}
    h.clear()
    h.request(1, 7, "tools/list")
    h.answer(h.last_request("tools/list"), {"tools": [TOOL_A, TOOL_B]})
    assert h.only_reply(1)["result"] == {"tools": [TOOL_A, TOOL_B]}
    assert len(h.stored) == stored


def test_an_entry_holding_a_secret_value_is_removed_not_written(home: Path) -> None:
    discovery.store(spec(), ENTRY)
    leaky = {**ENTRY, "initialize": {**CACHED_INIT, "instructions": "token s3cret-value"}}
    line = discovery.store(spec(env={"MY_API_KEY": "s3cret-value", "HOME": "s3cret-value"}), leaky)
    assert line == "discovery: not cached: it contains the value of $MY_API_KEY"
    assert not Path(discovery.path_for("k" * 64)).exists()


def deep_list(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_a_list_nested_too_deeply_is_passed_on_but_never_cached() -> None:
    """Issue 19 row 10: caching it (compare, write, read back) would recurse near the interpreter's limit."""
    h = Harness(discovery=ENTRY)
    h.open(1)
    h.take(1)
    deep_tool = {**TOOL_A, "inputSchema": {"type": "object", "default": deep_list(MAX_DEPTH + 1)}}
    answer_lists(h, [deep_tool])
    assert h.stored == [None], "the old entry is removed, nothing new is written"
    assert any("nested more than" in line for line in h.logs)
    h.request(1, "mine", "tools/list")
    answer = h.last_request("tools/list")
    h.answer(answer, {"tools": [deep_tool]})
    assert h.only_reply(1)["result"] == {"tools": [deep_tool]}, "the session still gets it"
    assert h.stored == [None] and h.mux.stats["internal_errors"] == 0


def test_a_stored_entry_nested_too_deeply_is_not_served() -> None:
    deep = {**ENTRY, "tools/list": {"tools": [{**TOOL_A, "inputSchema": {"default": deep_list(MAX_DEPTH)}}]}}
    h = Harness(auto_start=False, discovery=deep, lazy=True)
    h.open(1)
    assert h.starts == 1, "no usable entry: the backend answers initialize"


def test_an_entry_nested_beyond_the_recursion_limit_is_neither_written_nor_read(home: Path) -> None:
    deep = {**ENTRY, "tools/list": {"tools": [{"name": "a", "inputSchema": {"default": deep_list(5000)}}]}}
    assert discovery.store(spec(), deep) == "discovery: not cached: the entry cannot be written (RecursionError)"
    path = Path(discovery.path_for("k" * 64))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"format": 1, "key": "' + "k" * 64 + '", "entry": ' + "[" * 5000 + "]" * 5000 + "}")
    assert discovery.load(spec()) == {}
