"""Cached discovery and `run --lazy` with real brokers and backends: the second start of a key answers
before its backend does, a lazy key runs no backend until a tool is called, and the cache file is
private and free of secrets."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest
from helpers import RawClient, backend_roots, key_log, ls_json, node_server, processes_of, result_text, shim, wait_for

SECRET = "s3cret-token-value-42"


def cache_files(home: Path) -> list[Path]:
    return sorted((home / "state" / "discovery").glob("*.json"))


def first_run(command: list[str], home: Path, *options: str, env: dict[str, str] | None = None) -> None:
    """One session that lets the broker learn the server's discovery, then leaves (the broker with it)."""
    client = RawClient(shim(command, "--linger", "0", *options), env=env)
    client.initialize()
    assert wait_for(lambda: cache_files(home)), "the broker stored no discovery"
    assert client.close() == 0
    assert wait_for(lambda: not processes_of(home)), "the first broker did not go away"


def test_a_second_start_answers_initialize_before_the_backend_has(home: Path, fake_server: list[str]) -> None:
    gate = home / "gate"
    gate.touch()
    command = [*fake_server, f"--initialize-gate={gate}"]
    first_run(command, home)
    gate.unlink()  # from now on the backend cannot answer initialize until the test says so
    client = RawClient(shim(command, "--linger", "0"))
    init = client.initialize()
    assert init["result"]["serverInfo"] == {"name": "fake-server", "version": "1.0"}
    tools = client.reply_to(client.request("tools/list"))
    assert "echo" in [tool["name"] for tool in tools["result"]["tools"]]
    call = client.request("tools/call", {"name": "echo", "arguments": {"text": "late"}})
    assert client.read(timeout=0.5) is None  # a tool call needs the backend: it waits
    gate.touch()
    assert result_text(client.reply_to(call)) == "late"
    assert client.close() == 0


@pytest.mark.parametrize("asked_by", ["default", "--lazy", "config.toml"])
def test_lazy_runs_no_backend_until_a_tool_is_called(home: Path, fake_server: list[str], asked_by: str) -> None:
    first_run(fake_server, home)
    if asked_by == "config.toml":
        (home / "config.toml").write_text('[servers."fake-server"]\nlazy = true\n')
    client = RawClient(shim(fake_server, *([asked_by] if asked_by == "--lazy" else [])))
    client.initialize()
    client.reply_to(client.request("tools/list"))
    client.reply_to(client.request("ping"))
    (row,) = ls_json()
    assert (row["state"], row["backend_pid"], row["memory_bytes"]) == ("idle", None, 0)
    assert backend_roots(home) == []
    assert result_text(client.call("echo", {"text": "hi"})) == "hi"
    (row,) = ls_json()
    assert row["state"] == "running" and row["backend_pid"] and row["memory_bytes"] > 0
    assert client.close() == 0


@pytest.mark.parametrize("asked_by", ["--eager", "config.toml"])
def test_eager_starts_the_backend_at_once_even_with_discovery_cached(
    home: Path, fake_server: list[str], asked_by: str
) -> None:
    first_run(fake_server, home)
    if asked_by == "config.toml":
        (home / "config.toml").write_text('[servers."fake-server"]\nlazy = false\n')
    client = RawClient(shim(fake_server, *([asked_by] if asked_by == "--eager" else [])))
    assert client.initialize()["result"]["serverInfo"]["name"] == "fake-server"
    assert wait_for(lambda: backend_roots(home)), "an eager session starts its backend without a request"
    assert client.close() == 0


def test_isolated_sessions_that_never_call_a_tool_start_no_backend(home: Path) -> None:
    """sequential-thinking (isolated by the catalog): once its discovery is cached, three sessions list its
    tools without a backend; the one that calls a tool gets exactly one, its own."""
    command = node_server("@modelcontextprotocol/server-sequential-thinking")
    first_run(command, home)
    clients = [RawClient(shim(command)) for _ in range(3)]
    try:
        for client in clients:
            client.initialize()
            tools = client.reply_to(client.request("tools/list"))["result"]["tools"]
            assert [tool["name"] for tool in tools] == ["sequentialthinking"]
        assert backend_roots(home) == []
        records = ls_json()
        assert len(records) == 3 and {r["state"] for r in records} == {"idle"}, records
        thought = {"thought": "t", "thoughtNumber": 1, "totalThoughts": 1, "nextThoughtNeeded": False}
        assert "thoughtNumber" in result_text(clients[1].call("sequentialthinking", thought))
        assert len(backend_roots(home)) == 1
        states = sorted(r["state"] for r in ls_json())
        assert states == ["idle", "idle", "running"], states
    finally:
        for client in clients:
            assert client.close() == 0


def test_a_server_that_declared_itself_isolated_is_placed_from_the_cache_without_a_backend(
    home: Path, fake_server: list[str]
) -> None:
    """x-mux sharing=isolated, learnt by the first run: the next broker knows it from the cached entry, so three
    sessions each get a lazy slot of their own, and only the one that calls a tool starts a backend."""
    command = [*fake_server, "--x-mux=isolated"]
    first_run(command, home)
    clients = [RawClient(shim(command)) for _ in range(3)]
    try:
        for client in clients:
            client.initialize()
            assert "echo" in [t["name"] for t in client.reply_to(client.request("tools/list"))["result"]["tools"]]
        assert backend_roots(home) == []
        assert result_text(clients[2].call("echo", {"text": "mine"})) == "mine"
        assert len(backend_roots(home)) == 1
        records = ls_json()
        assert sorted(r["state"] for r in records) == ["idle", "idle", "running"], records
        assert {r["sharing"] for r in records} == {"isolated"}
    finally:
        for client in clients:
            assert client.close() == 0


def test_a_lazy_session_that_re_attaches_after_a_broker_crash_starts_no_backend_until_it_needs_one(
    home: Path, fake_server: list[str]
) -> None:
    first_run(fake_server, home)
    client = RawClient(shim(fake_server))
    try:
        client.initialize()
        (before,) = ls_json()
        os.kill(before["broker_pid"], signal.SIGKILL)

        def reattached() -> bool:
            rows = ls_json()
            return len(rows) == 1 and rows[0]["broker_pid"] != before["broker_pid"] and len(rows[0]["clients"]) == 1

        assert wait_for(reattached, timeout=15), "the session re-attached to a new broker"
        assert backend_roots(home) == [] and ls_json()[0]["state"] == "idle"
        assert result_text(client.call("echo", {"text": "after"})) == "after"
        assert len(backend_roots(home)) == 1
    finally:
        assert client.close() == 0


def test_lazy_without_a_cache_entry_starts_the_backend_at_once(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--lazy"))
    assert client.initialize()["result"]["serverInfo"]["name"] == "fake-server"
    assert backend_roots(home)
    assert client.close() == 0


def test_the_cache_file_is_private_and_holds_no_env_values(home: Path, fake_server: list[str]) -> None:
    first_run(fake_server, home, env={**os.environ, "API_TOKEN": SECRET})
    (path,) = cache_files(home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    text = path.read_text()
    assert SECRET not in text and "API_TOKEN" not in text
    assert json.loads(text)["entry"]["tools/list"]["tools"]


def test_discovery_that_contains_a_secret_value_is_not_cached(home: Path, fake_server: list[str]) -> None:
    command = [*fake_server, "--instructions-env=API_TOKEN"]
    client = RawClient(shim(command, "--linger", "0"), env={**os.environ, "API_TOKEN": SECRET})
    assert client.initialize()["result"]["instructions"] == SECRET
    log = key_log(home)
    assert wait_for(lambda: "contains the value of $API_TOKEN" in log.read_text())
    assert cache_files(home) == []
    assert client.close() == 0


def test_server_everything_from_the_cache_answers_as_it_did_live(home: Path, everything: list[str]) -> None:
    live = RawClient(shim(everything, "--linger", "0"))
    live_init = live.initialize()["result"]
    live_tools = live.reply_to(live.request("tools/list"))["result"]
    assert wait_for(lambda: cache_files(home))
    assert live.close() == 0
    assert wait_for(lambda: not processes_of(home))
    cached = RawClient(shim(everything, "--lazy"))
    assert cached.initialize()["result"] == live_init
    assert cached.reply_to(cached.request("tools/list"))["result"] == live_tools
    assert backend_roots(home) == []  # all of that without a backend
    reply = cached.call("echo", {"message": "from a lazy start"})
    assert "from a lazy start" in result_text(reply)
    assert cached.close() == 0
