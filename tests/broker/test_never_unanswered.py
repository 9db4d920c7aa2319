"""No request waits forever (issue 19 rows 1, 9, 10, 11), with real brokers, shims and backends: a parked
lazy session, a client that never answers the broker's roots/list, a backend whose tools/list is nested
near the parser's limit, a backend reply that is not UTF-8. Each request is answered, with a result or an
error, and the broker lives on for everyone else."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import RawClient, backend_roots, key_log, processes_of, result_text, shim, wait_for

pytestmark = pytest.mark.timeout(90)


def cache_files(home: Path) -> list[Path]:
    return sorted((home / "state" / "discovery").glob("*.json"))


@contextmanager
def deep_json() -> Iterator[None]:
    """Let this test's own json.loads read what the broker passes on from a deeply nested reply."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 2000)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


@pytest.mark.parametrize("depth", [976, 982, 988])  # around the broker's parse limit, whatever its stack depth
def test_a_tools_list_nested_near_the_parser_s_limit_is_answered_and_not_cached(
    home: Path, fake_server: list[str], depth: int
) -> None:
    client = RawClient(shim([*fake_server, f"--deep-tools={depth}"]))
    client.initialize()
    with deep_json():
        reply = client.reply_to(client.request("tools/list"))
    assert "result" in reply or "error" in reply
    assert result_text(client.call("echo", {"text": "still here"})) == "still here"
    other = RawClient(shim([*fake_server, f"--deep-tools={depth}"]))
    other.initialize()
    assert result_text(other.call("echo", {"text": "me too"})) == "me too"
    log = key_log(home).read_text()
    assert "Traceback" not in log
    assert all("tools/list" not in json.loads(path.read_text())["entry"] for path in cache_files(home))
    assert client.close() == 0 and other.close() == 0


def test_a_reply_that_is_not_utf8_reaches_its_session_with_the_byte_replaced(
    home: Path, fake_server: list[str]
) -> None:
    client = RawClient(shim(fake_server))
    client.initialize()
    assert result_text(client.call("latin1")) == "caf\N{REPLACEMENT CHARACTER}"
    assert result_text(client.call("echo", {"text": "after"})) == "after"
    assert client.close() == 0


def test_a_second_lazy_session_is_answered_from_the_cache_or_starts_the_backend(
    home: Path, fake_server: list[str]
) -> None:
    """Row 1: the server is unknown to the catalog, so a second session waits to be placed until the first
    backend says how it shares; with --lazy and a cache entry no backend ran, and nothing started one."""
    first = RawClient(shim(fake_server, "--linger", "0"))
    first.initialize()
    assert wait_for(lambda: cache_files(home)), "the broker stored no discovery"
    assert first.close() == 0
    assert wait_for(lambda: not processes_of(home)), "the first broker did not go away"
    one = RawClient(shim(fake_server, "--lazy"))
    one.initialize()
    two = RawClient(shim(fake_server, "--lazy"))
    two.initialize()
    tools = two.reply_to(two.request("tools/list"))
    assert "echo" in [tool["name"] for tool in tools["result"]["tools"]]
    assert backend_roots(home) == [], "a list the cache answers starts no backend"
    assert result_text(two.call("echo", {"text": "placed"})) == "placed"
    assert result_text(one.call("echo", {"text": "first"})) == "first"
    assert one.close() == 0 and two.close() == 0


def test_a_client_that_never_answers_roots_list_holds_no_one_up(home: Path, fake_server: list[str]) -> None:
    """Row 9: after a few seconds it counts as declaring no roots; the backend's own roots/list is answered."""
    silent = RawClient(shim(fake_server))
    silent.initialize(capabilities={"roots": {"listChanged": True}})  # asked for its roots; never answers
    other = RawClient(shim(fake_server))
    other.initialize()
    reply = other.call("roots", timeout=25)  # the backend asks roots/list: what every session declared
    assert json.loads(result_text(reply)) == {"roots": []}
    assert result_text(silent.call("echo", {"text": "still served"})) == "still served"
    log = key_log(home).read_text()
    assert "no answer to roots/list" in log
    assert silent.close() == 0 and other.close() == 0
