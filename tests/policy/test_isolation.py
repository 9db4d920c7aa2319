"""Issue 12, learnt at run time: one broker, one backend per session when the running server says it is
per-client (x-mux, tool shapes); roots never mix (server-filesystem); an isolated backend's stderr reaches
its own session. Real processes; official SDK sessions where roots matter.

server-filesystem (dist/index.js, pinned in shell/install.sh) asks roots/list once initialized when the
client declares roots, and again on notifications/roots/list_changed; a non-empty answer REPLACES its
allowed directories, an empty one keeps them (the directories on its command line). Without the roots
capability it never asks and serves its command-line directories.
"""

from __future__ import annotations

import array
import json
import os
import shutil
import signal
import socket
import subprocess
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import psutil
import pytest
from helpers import (
    ROOT,
    RawClient,
    backend_roots,
    ls_json,
    mcpsingleton_exe,
    result_text,
    shim,
    shim_params,
    tagged_backends,
    text_of,
    wait_for,
)
from mcp import Client, types

from mcpsingleton.common import wire
from mcpsingleton.common.paths import BROKER, KeyPaths

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]

FILESYSTEM_JS = ROOT / ".cache/npm/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js"


def whoami(client: RawClient) -> int:
    return json.loads(result_text(client.call("whoami")))["pid"]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.parametrize(
    ("flag", "policy"),
    [
        ("--x-mux=isolated", "server declares x-mux sharing=isolated"),
        ("--x-mux-experimental=isolated", "server declares x-mux sharing=isolated"),
        ("--browser-tools", "tools look session-bound: browser_navigate"),
    ],
)
def test_a_per_client_server_gets_one_backend_per_session_in_one_broker(
    home: Path, fake_server: list[str], flag: str, policy: str
) -> None:
    command = shim([*fake_server, flag])
    first, second = RawClient(command), RawClient(command)
    first.initialize()
    first_pid = whoami(first)
    second.initialize()
    second_pid = whoami(second)
    assert first_pid != second_pid, "each session has its own backend"
    records = ls_json()
    assert len(records) == 2 and len({record["broker_pid"] for record in records}) == 1, records
    assert {record["backend_pid"] for record in records} == {first_pid, second_pid}
    assert all(record["sharing"] == "isolated" and record["policy"] == policy for record in records), records
    assert all(len(record["clients"]) == 1 for record in records)
    assert second.close() == 0
    assert wait_for(lambda: not alive(second_pid)), "an isolated backend ends with its session (no linger)"
    assert alive(first_pid) and [r["backend_pid"] for r in ls_json()] == [first_pid]
    (broker,) = {psutil.Process(record["broker_pid"]) for record in records}
    assert first.close() == 0
    assert wait_for(lambda: not alive(first_pid)), "the first session's backend too"
    assert wait_for(lambda: not alive(broker.pid)), "a broker with no backend left to keep warm does not linger"


def test_every_backend_of_a_broker_is_listed_stopped_and_orphan_proof(home: Path, fake_server: list[str]) -> None:
    command = shim([*fake_server, "--x-mux=isolated", "--grandchild"], "--name", "iso")
    clients = [RawClient(command) for _ in range(2)]
    for client in clients:
        client.initialize()
    pids = [whoami(client) for client in clients]
    table = subprocess.run([mcpsingleton_exe(), "ls"], capture_output=True, text=True, timeout=30).stdout
    assert table.count("server declares x-mux sharing=isolated") == 2 and "SHARING" in table, table
    metrics = subprocess.run([mcpsingleton_exe(), "metrics"], capture_output=True, text=True, timeout=30).stdout
    assert sorted(line.split(",slot=")[1][:3] for line in metrics.splitlines() if "backend_up{" in line) == [
        '"1"',
        '"2"',
    ]
    assert {p.pid for p in backend_roots(home)} == set(pids)
    logs = subprocess.run([mcpsingleton_exe(), "logs", "iso"], capture_output=True, text=True, timeout=30).stdout
    second = next(pid for pid in pids if f"backend #2 started: pid {pid}" in logs)
    assert f"backend #2: fake server {second} starting" in logs, "each backend's stderr, named, in `logs`"
    (broker_pid,) = {record["broker_pid"] for record in ls_json()}
    everything = [p.pid for p in tagged_backends(home)]
    assert len(everything) >= 4, "two backends, each with a grandchild"
    os.kill(broker_pid, signal.SIGKILL)
    assert wait_for(lambda: not any(alive(pid) for pid in everything)), "the keeper stops every backend's group"
    for client in clients:
        client.close()


def test_stop_ends_every_backend_of_the_broker(home: Path, fake_server: list[str]) -> None:
    command = shim([*fake_server, "--x-mux=isolated"], "--name", "iso")
    clients = [RawClient(command) for _ in range(2)]
    for client in clients:
        client.initialize()
    pids = [whoami(client) for client in clients]
    stopped = subprocess.run([mcpsingleton_exe(), "stop", "iso"], capture_output=True, text=True, timeout=30)
    assert stopped.returncode == 0, stopped.stderr
    assert not any(alive(pid) for pid in pids)
    assert [client.process.wait(timeout=10) for client in clients] == [0, 0]


def test_a_shim_of_the_older_protocol_handing_over_two_fds_still_attaches(home: Path, fake_server: list[str]) -> None:
    first = RawClient(shim(fake_server))
    first.initialize()
    (record,) = ls_json()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(KeyPaths(BROKER).sock)
    to_broker, our_stdin = os.pipe()
    our_stdout, from_broker = os.pipe()
    two_fds = array.array("i", [to_broker, from_broker])
    conn.sendmsg([wire.hello(wire.ATTACH, record["key"])], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, two_fds)])
    assert conn.recv(16) == wire.WELCOME
    conn.sendall(wire.WAITER_READY)
    os.close(to_broker), os.close(from_broker)
    params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "old", "version": "0"}}
    request = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
    os.write(our_stdin, json.dumps(request).encode() + b"\n")
    assert json.loads(os.read(our_stdout, 1 << 16))["result"]["serverInfo"]["name"] == "fake-server"
    os.close(our_stdin)
    conn.close()
    first.close()


def test_a_pipelining_session_waiting_for_a_restarting_backend_is_placed(home: Path, fake_server: list[str]) -> None:
    first = RawClient(shim(fake_server))
    first.initialize()
    first.call("crash")  # the shared backend is gone; the next session's initialize waits for a new one
    second = RawClient(shim(fake_server))
    params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "eager", "version": "1"}}
    second.request("initialize", params)
    call = second.request("tools/call", {"name": "echo", "arguments": {"text": "placed"}})
    assert result_text(second.reply_to(call)) == "placed"
    first.close(), second.close()


def test_ls_says_when_config_toml_was_ignored(home: Path, fake_server: list[str]) -> None:
    (home / "config.toml").write_text("[servers\n")
    client = RawClient(shim(fake_server))
    client.initialize()
    (record,) = ls_json()
    assert record["config_error"] and record["sharing"] == "shared"
    table = subprocess.run([mcpsingleton_exe(), "ls"], capture_output=True, text=True, timeout=30).stdout
    assert f"config.toml was ignored when deciding: {record['config_error']}" in table
    client.close()


def test_a_shared_server_still_shares_and_says_why(home: Path, fake_server: list[str]) -> None:
    command = shim([*fake_server, "--x-mux=shared"])
    first, second = RawClient(command), RawClient(command)
    first.initialize()
    second.initialize()
    assert whoami(first) == whoami(second)
    (record,) = ls_json()
    assert record["sharing"] == "shared" and record["policy"] == "server declares x-mux sharing=shared"
    assert len(record["clients"]) == 2
    first.close(), second.close()


@pytest.mark.parametrize(
    ("flag", "options", "reaches_session"),
    [
        ("--x-mux=isolated", (), True),
        ("--x-mux=shared", (), False),
        ("--grandchild", ("--scope", "isolated"), True),
    ],
)
def test_stderr_of_an_isolated_backend_reaches_its_session_only(
    home: Path, fake_server: list[str], flag: str, options: tuple[str, ...], reaches_session: bool
) -> None:
    command = shim([*fake_server, flag], *options)
    first, second = RawClient(command), RawClient(command)
    first.initialize()
    second.initialize()
    first.call("stderr", {"text": "first-secret"})
    second.call("stderr", {"text": "second-secret"})
    first.close(), second.close()
    first_err, second_err = first.stderr(), second.stderr()
    assert ("first-secret" in first_err) is reaches_session, first_err
    assert ("fake server" in first_err) is reaches_session, "its lines from before the session was placed too"
    assert "second-secret" not in first_err and "first-secret" not in second_err


# ---- roots: server-filesystem ----------------------------------------------------------------------


@pytest.fixture
def directories(tmp_path: Path) -> dict[str, Path]:
    """Three project directories, each with a file naming it; `configured` is on the server's command line."""
    found = {}
    for name in ("alpha", "beta", "configured"):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "secret.txt").write_text(f"{name} secret")
        found[name] = directory.resolve()
    return found


def filesystem(configured: Path) -> list[str]:
    if not FILESYSTEM_JS.exists():
        pytest.fail(f"server-filesystem is not installed at {FILESYSTEM_JS}; run `bash shell/install.sh`")
    return [shutil.which("node") or "node", str(FILESYSTEM_JS), str(configured)]


def roots_client(params, roots: list[Path] | None) -> Client:
    """An SDK session declaring `roots` (None: no roots capability at all)."""
    if roots is None:
        return Client(params, read_timeout_seconds=30)

    async def list_roots(context) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=path.as_uri()) for path in roots])

    return Client(params, read_timeout_seconds=30, list_roots_callback=list_roots)


async def allowed(client: Client, expected: Path) -> str:
    """list_allowed_directories once it shows `expected` (the server learns roots just after initialize)."""
    with anyio.fail_after(20):
        while True:
            text = text_of(await client.call_tool("list_allowed_directories", {}))
            if str(expected) in text:
                return text
            await anyio.sleep(0.1)


async def reads(client: Client, path: Path) -> str:
    result = await client.call_tool("read_text_file", {"path": str(path / "secret.txt")})
    return text_of(result)


def test_sessions_with_different_roots_never_see_each_other(home: Path, directories: dict[str, Path]) -> None:
    params = shim_params(filesystem(directories["configured"]), "--linger", "0")
    alpha, beta = directories["alpha"], directories["beta"]

    async def main() -> dict[str, object]:
        seen: dict[str, object] = {}
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(roots_client(params, [alpha]))
            second = await stack.enter_async_context(roots_client(params, [beta]))
            seen["first"], seen["second"] = await allowed(first, alpha), await allowed(second, beta)
            seen["first reads beta"] = await reads(first, beta)
            seen["second reads alpha"] = await reads(second, alpha)
            seen["first reads alpha"] = await reads(first, alpha)
            seen["backends"] = len(backend_roots(home))
        return seen

    seen = anyio.run(main)
    assert str(beta) not in str(seen["first"]) and str(directories["configured"]) not in str(seen["first"])
    assert str(alpha) not in str(seen["second"])
    assert "beta secret" not in str(seen["first reads beta"]) and "denied" in str(seen["first reads beta"])
    assert "alpha secret" not in str(seen["second reads alpha"])
    assert seen["first reads alpha"] == "alpha secret"
    assert seen["backends"] == 2
    assert wait_for(lambda: not backend_roots(home)), "a backend that learnt roots ends with its sessions"


def test_sessions_with_equal_roots_share_one_backend(home: Path, directories: dict[str, Path]) -> None:
    params = shim_params(filesystem(directories["configured"]))
    alpha = directories["alpha"]

    async def main() -> int:
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(roots_client(params, [alpha])) for _ in range(2)]
            for client in clients:
                assert await reads(client, alpha) == "alpha secret" or await allowed(client, alpha)
                await allowed(client, alpha)
            return len(backend_roots(home))

    assert anyio.run(main) == 1


def test_a_client_without_roots_gets_the_configured_directory_as_direct(
    home: Path, directories: dict[str, Path]
) -> None:
    params = shim_params(filesystem(directories["configured"]))
    alpha, configured = directories["alpha"], directories["configured"]

    async def main() -> dict[str, object]:
        seen: dict[str, object] = {}
        async with AsyncExitStack() as stack:
            with_roots = await stack.enter_async_context(roots_client(params, [alpha]))
            await allowed(with_roots, alpha)
            without = await stack.enter_async_context(roots_client(params, None))
            seen["allowed"] = text_of(await without.call_tool("list_allowed_directories", {}))
            seen["reads alpha"] = await reads(without, alpha)
            seen["reads configured"] = await reads(without, configured)
            seen["backends"] = len(backend_roots(home))
        return seen

    seen = anyio.run(main)
    assert str(configured) in str(seen["allowed"]) and str(alpha) not in str(seen["allowed"])
    assert "alpha secret" not in str(seen["reads alpha"])
    assert seen["reads configured"] == "configured secret"
    assert seen["backends"] == 2


def test_a_server_that_never_asks_for_roots_is_shared_whatever_the_roots(
    home: Path, time_server: list[str], directories: dict[str, Path]
) -> None:
    params = shim_params(time_server)

    async def main() -> int:
        async with AsyncExitStack() as stack:
            for roots in ([directories["alpha"]], None, [directories["beta"]]):  # like Claude Code, Codex, …
                client = await stack.enter_async_context(roots_client(params, roots))
                assert "UTC" in text_of(await client.call_tool("get_current_time", {"timezone": "UTC"}))
            return len(backend_roots(home))

    assert anyio.run(main) == 1


def declare_roots(client: RawClient, root: Path) -> None:
    """Initialize declaring roots and answer the broker's roots/list with `root`."""
    client.initialize(capabilities={"roots": {"listChanged": True}})
    while True:
        message = client.read()
        assert isinstance(message, dict), "the broker never asked for roots"
        if message.get("method") == "roots/list":
            client.send({"jsonrpc": "2.0", "id": message["id"], "result": {"roots": [{"uri": root.as_uri()}]}})
            return


def test_different_roots_on_a_cold_key_with_cached_discovery_get_a_backend_each(
    home: Path, everything: list[str], directories: dict[str, Path]
) -> None:
    """Issue 19 row 8: the cache answers both handshakes before the backend has asked for roots (it asks
    0.35 s after initialized); both sessions on it would leave it the common roots: none."""
    first = RawClient(shim(everything, "--linger", "0"))
    first.initialize()
    assert wait_for(lambda: list((home / "state" / "discovery").glob("*.json")))
    assert first.close() == 0
    assert wait_for(lambda: not backend_roots(home))
    alpha, beta = RawClient(shim(everything)), RawClient(shim(everything))
    declare_roots(alpha, directories["alpha"])
    declare_roots(beta, directories["beta"])
    seen = {
        name: result_text(client.call("get-roots-list", timeout=20))
        for name, client in [("alpha", alpha), ("beta", beta)]
    }
    assert directories["alpha"].as_uri() in seen["alpha"] and directories["beta"].as_uri() not in seen["alpha"]
    assert directories["beta"].as_uri() in seen["beta"] and directories["alpha"].as_uri() not in seen["beta"]
    assert len(backend_roots(home)) == 2
    assert alpha.close() == 0 and beta.close() == 0
