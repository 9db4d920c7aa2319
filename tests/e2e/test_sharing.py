"""Issue 2 acceptance: several official-SDK sessions share one backend, each gets its own results."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from helpers import (
    backend_roots,
    ls_json,
    mcpsingleton_exe,
    processes_of,
    run_sessions,
    shim_params,
    tagged_backends,
    text_of,
    wait_for,
)
from mcp import Client

SESSIONS = 5


def test_time_server_sessions_share_one_backend(home: Path, time_server: list[str]) -> None:
    zones = ["Europe/Paris", "Asia/Tokyo", "America/New_York", "Australia/Sydney", "Africa/Nairobi"]
    seen: dict[str, object] = {}

    async def body(index: int, client: Client) -> dict:
        result = await client.call_tool("get_current_time", {"timezone": zones[index]})
        if index == 0:
            seen["roots"] = [p.pid for p in backend_roots(home)]
            seen["ls"] = ls_json()
        return json.loads(text_of(result))

    results = anyio.run(run_sessions, SESSIONS, shim_params(time_server, "--linger", "0"), body)
    for index, zone in enumerate(zones):
        assert results[index]["timezone"] == zone
    assert len(seen["roots"]) == 1, "exactly one backend process tree"
    (entry,) = seen["ls"]
    assert entry["backend_pid"] == seen["roots"][0]
    assert entry["name"] == "mcp-server-time"


def test_everything_sessions_share_and_see_only_their_progress(home: Path, everything: list[str]) -> None:
    census: dict[str, object] = {}
    hold = anyio.Event()

    async def body(index: int, client: Client) -> dict:
        echoed = text_of(await client.call_tool("echo", {"message": f"session-{index}"}))
        progress: list[float] = []
        if index < 2:  # two sessions run the long operation at the same time

            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                progress.append(value)

            await client.call_tool(
                "trigger-long-running-operation", {"duration": 1, "steps": 4}, progress_callback=on_progress
            )
        if index == 0:
            census["roots"] = backend_roots(home)
            census["ls"] = ls_json()
            hold.set()
        return {"echo": echoed, "progress": progress}

    results = anyio.run(run_sessions, SESSIONS, shim_params(everything, "--linger", "0"), body, hold)
    for index in range(SESSIONS):
        assert results[index]["echo"].endswith(f"session-{index}")
    assert results[0]["progress"] == [1, 2, 3, 4]
    assert results[1]["progress"] == [1, 2, 3, 4], "each session sees only its own progress"
    assert len(census["roots"]) == 1
    (entry,) = census["ls"]
    assert len(entry["clients"]) == SESSIONS
    assert entry["state"] == "running"
    assert entry["memory_bytes"] > 0


def test_linger_zero_leaves_nothing(home: Path, time_server: list[str]) -> None:
    async def body(index: int, client: Client) -> str:
        return text_of(await client.call_tool("get_current_time", {"timezone": "UTC"}))

    anyio.run(run_sessions, 3, shim_params(time_server, "--linger", "0"), body)
    closed = time.monotonic()
    assert wait_for(lambda: not processes_of(home), timeout=3.0), [p.cmdline() for p in processes_of(home)]
    assert time.monotonic() - closed < 3.0
    assert not tagged_backends(home)
    assert ls_json() == []


def _backend_count_after(home: Path, variants: list[tuple[list[str], str | None, dict]], server: list[str]) -> int:
    async def main() -> None:
        hold = anyio.Event()

        async def one(options: list[str], cwd: str | None, env: dict) -> None:
            async with Client(shim_params(server, "--linger", "0", *options, cwd=cwd, env=env)) as client:
                await client.call_tool("echo", {"text": "hi"})
                await hold.wait()

        async with anyio.create_task_group() as group:
            for options, cwd, env in variants:
                group.start_soon(one, options, cwd, env)
            for _ in range(200):
                attached = await anyio.to_thread.run_sync(lambda: sum(len(e["clients"]) for e in ls_json()))
                if attached == len(variants):
                    break
                await anyio.sleep(0.1)
            census["backends"] = len(backend_roots(home))
            hold.set()

    census: dict[str, int] = {}
    anyio.run(main)
    return census["backends"]


def test_scope_cwd_separates_directories(home: Path, fake_server: list[str], tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    variants = [([], str(tmp_path / "a"), {}), ([], str(tmp_path / "b"), {}), ([], str(tmp_path / "a"), {})]
    assert _backend_count_after(home, variants, fake_server) == 2


def test_scope_global_shares_across_directories(home: Path, fake_server: list[str], tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    variants = [(["--scope", "global"], str(tmp_path / d), {}) for d in ("a", "b")]
    assert _backend_count_after(home, variants, fake_server) == 1


def test_secret_env_values_never_share(home: Path, fake_server: list[str]) -> None:
    variants = [
        ([], None, {"API_TOKEN": "one", "SHLVL": "1"}),
        ([], None, {"API_TOKEN": "two", "SHLVL": "1"}),
        ([], None, {"API_TOKEN": "one", "SHLVL": "7"}),
    ]
    assert _backend_count_after(home, variants, fake_server) == 2, "same secret + volatile var differs → shared"


def test_isolated_scope_never_shares(home: Path, fake_server: list[str]) -> None:
    variants = [(["--scope", "isolated"], None, {}) for _ in range(2)]
    assert _backend_count_after(home, variants, fake_server) == 2


@pytest.mark.parametrize(
    ("command", "expected"),
    [(["/nonexistent/mcp-server"], "cannot start backend"), (["--fail-start"], "boom, config file missing")],
)
def test_backend_that_cannot_start(home: Path, fake_server: list[str], command: list[str], expected: str) -> None:
    argv = command if command[0].startswith("/") else [*fake_server, *command]
    init = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    started = time.monotonic()
    out = subprocess.run(
        [mcpsingleton_exe(), "run", "--", *argv],
        input=json.dumps(init) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert time.monotonic() - started < 10
    reply = json.loads(out.stdout.splitlines()[0])
    assert reply["id"] == 7 and reply["error"]["code"] == -32603
    assert expected in reply["error"]["message"]
    assert out.returncode == 1
    (line,) = [text for text in out.stderr.splitlines() if text.strip()]
    assert line.startswith("mcpsingleton: ") and expected in line
    assert wait_for(lambda: not processes_of(home), timeout=3.0), "no broker left behind"
