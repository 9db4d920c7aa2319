"""Issue 12 with real servers and official SDK sessions: the policy isolates what keeps per-client state.

Each server's behaviour asserted here was read in its installed source (versions pinned in shell/install.sh):
desktop-commander keeps one process-wide map of terminal sessions (dist/terminal-manager.js),
sequential-thinking one thought history per process (dist/lib.js), server-memory re-reads the file
named by MEMORY_FILE_PATH on every call (dist/index.js).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest
from helpers import (
    NODE_MODULES,
    backend_roots,
    node_server,
    processes_of,
    run_sessions,
    shim_params,
    text_of,
    wait_for,
)
from mcp import Client

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

def backends_while_open(home: Path, count: int, params, body) -> tuple[dict[int, object], int]:
    """Run `body` in `count` concurrent sessions; the results and how many backends served them."""
    census: dict[str, int] = {}

    async def counted(index: int, client: Client) -> object:
        result = await body(index, client)
        census["backends"] = max(census.get("backends", 0), len(backend_roots(home)))
        return result

    results = anyio.run(run_sessions, count, params, counted)
    return results, census["backends"]


def test_desktop_commander_terminal_sessions_are_invisible_to_the_other_session(home: Path, tmp_path: Path) -> None:
    params = shim_params(node_server("@wonderwhy-er/desktop-commander"), env={"HOME": str(tmp_path)})
    started: dict[int, str] = {}
    turn = anyio.Event()

    async def body(index: int, client: Client) -> str:
        if index == 0:
            result = await client.call_tool("start_process", {"command": "sleep 60", "timeout_ms": 2000})
            started[0] = text_of(result)
            turn.set()
        else:
            await turn.wait()
        return text_of(await client.call_tool("list_sessions", {}))

    results, backends = backends_while_open(home, 2, params, body)
    pid = next(word for word in started[0].replace(",", " ").split() if word.isdigit())
    assert f"PID: {pid}" in str(results[0]), results[0]
    assert f"PID: {pid}" not in str(results[1]), "session B must not see A's terminal session"
    assert backends == 2


SEQUENTIAL_BIN = "node_modules/.bin/mcp-server-sequential-thinking"


@pytest.mark.parametrize(
    "launch",
    [
        "node dist/index.js",
        "absolute .bin link",  # issue 19 row 18: these two were shared per directory
        "relative .bin link",
    ],
)
def test_sequential_thinking_histories_are_independent(home: Path, launch: str) -> None:
    command = {
        "node dist/index.js": node_server("@modelcontextprotocol/server-sequential-thinking"),
        "absolute .bin link": [str(NODE_MODULES.parent / SEQUENTIAL_BIN)],
        "relative .bin link": [f"./{SEQUENTIAL_BIN}"],
    }[launch]
    params = shim_params(command, cwd=str(NODE_MODULES.parent))

    async def body(index: int, client: Client) -> list[int]:
        lengths = []
        for number in (1, 2):
            thought = {"thought": f"s{index} t{number}", "thoughtNumber": number, "totalThoughts": 2}
            result = await client.call_tool("sequentialthinking", {**thought, "nextThoughtNeeded": number < 2})
            lengths.append(json.loads(text_of(result))["thoughtHistoryLength"])
        return lengths

    results, backends = backends_while_open(home, 2, params, body)
    assert results == {0: [1, 2], 1: [1, 2]}
    assert backends == 2


def _remember(entity: str):
    async def body(index: int, client: Client) -> str:
        observation = {"name": f"{entity}{index}", "entityType": "note", "observations": ["x"]}
        await client.call_tool("create_entities", {"entities": [observation]})
        return text_of(await client.call_tool("read_graph", {}))

    return body


@pytest.mark.skipif(
    sys.platform != "linux" or os.environ.get("MCPSINGLETON_PORTABLE") == "1",
    reason="without /proc only secrets and --env-key separate configs (see test_env_rule)",
)
def test_memory_files_from_different_configs_never_mix(home: Path, tmp_path: Path) -> None:
    server = node_server("@modelcontextprotocol/server-memory")
    files = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]

    async def main() -> dict[str, str]:
        graphs: dict[str, str] = {}
        hold = anyio.Event()

        async def one(path: Path) -> None:
            async with Client(shim_params(server, env={"MEMORY_FILE_PATH": str(path)})) as client:
                graphs[path.name] = await _remember(path.stem)(0, client)
                if len(graphs) == 2:
                    graphs["backends"] = str(len(backend_roots(home)))
                    hold.set()
                await hold.wait()

        async with anyio.create_task_group() as group:
            for path in files:
                group.start_soon(one, path)
        return graphs

    graphs = anyio.run(main)
    assert graphs["backends"] == "2"
    assert "a0" in files[0].read_text() and "b0" not in files[0].read_text()
    assert "b0" in files[1].read_text() and "a0" not in files[1].read_text()
    assert "b0" not in graphs["a.jsonl"]


def test_memory_sessions_with_the_same_file_share_one_backend(home: Path, tmp_path: Path) -> None:
    server = node_server("@modelcontextprotocol/server-memory")
    params = shim_params(server, env={"MEMORY_FILE_PATH": str(tmp_path / "same.jsonl")})
    _, backends = backends_while_open(home, 3, params, _remember("e"))  # (its concurrent writes race, as direct)
    assert backends == 1


@pytest.mark.parametrize("server", ["everything", "time_server"])
def test_stateless_servers_still_share_one_backend(home: Path, server: str, request: pytest.FixtureRequest) -> None:
    command = request.getfixturevalue(server)

    async def body(index: int, client: Client) -> int:
        return len((await client.list_tools()).tools)

    _, backends = backends_while_open(home, 3, shim_params(command), body)
    assert backends == 1


def _time_body(index: int, client: Client):
    async def call() -> str:
        return text_of(await client.call_tool("get_current_time", {"timezone": "UTC"}))

    return call()


def test_config_toml_can_isolate_a_shared_server(home: Path, time_server: list[str]) -> None:
    (home / "config.toml").write_text('[servers."mcp-server-time"]\nscope = "isolated"\n')
    _, backends = backends_while_open(home, 2, shim_params(time_server, "--linger", "0"), _time_body)
    assert backends == 2
    assert wait_for(lambda: not processes_of(home), timeout=10.0), "isolated backends end with their session"


def test_broken_config_toml_warns_once_and_the_session_works(home: Path, time_server: list[str]) -> None:
    from helpers import RawClient, mcpsingleton_exe, result_text

    (home / "config.toml").write_text('[servers."mcp-server-time"\nscope = "isolated"\n')
    client = RawClient([mcpsingleton_exe(), "run", "--linger", "0", "--", *time_server])
    client.initialize()
    assert '"timezone": "UTC"' in result_text(client.call("get_current_time", {"timezone": "UTC"}))
    assert client.close() == 0
    lines = client.stderr().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("mcpsingleton: ignoring ") and "config.toml" in lines[0]
