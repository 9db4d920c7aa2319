"""Issue 15: sessions outlive their broker (kill -9, SIGTERM, `restart`); `stop` still ends them; a broker
that keeps dying ends its sessions with a clear error instead of respawning forever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import anyio.to_thread
import mcp_types as types
import psutil
import pytest
from helpers import (
    RawClient,
    backend_roots,
    ls_json,
    mcpsingleton_exe,
    result_text,
    shim,
    shim_params,
    tagged_backends,
    tap_messages,
    tapped,
    text_of,
    wait_for,
)
from mcp import Client

from mcpsingleton.shim.attach import REATTACHES_ENV

pytestmark = pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")  # handshake-era calls
SESSIONS = 3


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit status is collected by whoever adopted it, when it gets to it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def client_pids() -> set[int]:
    return {client["pid"] for entry in ls_json() for client in entry["clients"]}


async def whoami(client: Client) -> int:
    return json.loads(text_of(await client.call_tool("whoami", {})))["pid"]


def run(main, timeout: float = 60.0) -> None:
    async def bounded() -> None:
        with anyio.fail_after(timeout):
            await main()

    anyio.run(bounded)


def assert_handed_over(home: Path, old_tree: set[int], old_broker: int, shims: set[int], pids: list[int]) -> None:
    """Every session was served by one new backend, from the same shims; the old tree and broker are gone."""
    assert len(set(pids)) == 1 and pids[0] not in old_tree, "each session is served by the one new backend"
    assert not any(running(pid) for pid in old_tree), "the old backend tree is gone"
    assert not running(old_broker)
    (entry,) = ls_json()
    assert entry["broker_pid"] != old_broker
    assert {client["pid"] for client in entry["clients"]} == shims, "the same shims, re-attached"
    (root,) = backend_roots(home)
    assert pids[0] in {root.pid, *(child.pid for child in root.children(recursive=True))}, "one tree, no orphan"


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_sessions_go_on_when_the_broker_is_killed(home: Path, fake_server: list[str], signum: int) -> None:
    params = shim_params(fake_server)

    async def main() -> None:
        async with AsyncExitStack() as stack:
            opened = (Client(params, read_timeout_seconds=30) for _ in range(SESSIONS))
            clients = [await stack.enter_async_context(client) for client in opened]
            first = {await whoami(client) for client in clients}
            (entry,) = ls_json()
            shims = client_pids()
            assert len(shims) == SESSIONS
            old_tree = {p.pid for p in tagged_backends(home)}
            os.kill(entry["broker_pid"], signum)
            # (a SIGTERMed broker serves what it read before the signal: the next request is the one after)
            assert await anyio.to_thread.run_sync(lambda: wait_for(lambda: not running(entry["broker_pid"])))
            with anyio.fail_after(10):
                pids = [await whoami(client) for client in clients]
            assert len(first) == 1
            assert_handed_over(home, old_tree, entry["broker_pid"], shims, pids)

    run(main)


def test_restart_keeps_sessions_their_subscription_and_log_level(
    home: Path, fake_server: list[str], tmp_path: Path
) -> None:
    params = shim_params(tapped(fake_server, tmp_path))
    updates: list[str] = []
    logs: list[str] = []

    async def on_message(message: object) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(str(params.data))

    async def main() -> None:
        watcher = Client(params, read_timeout_seconds=30, message_handler=on_message, logging_callback=on_log)
        async with watcher as a, Client(params, read_timeout_seconds=30) as b:
            await a.subscribe_resource("file:///watched")
            await a.set_logging_level("warning")
            await whoami(b)
            (entry,) = ls_json()
            shims = client_pids()
            old_tree = {p.pid for p in tagged_backends(home)}
            done = await anyio.to_thread.run_sync(
                lambda: subprocess.run([mcpsingleton_exe(), "restart", "--all"], capture_output=True, text=True)
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith("restarted ")
            with anyio.fail_after(10):
                pids = [await whoami(a), await whoami(b)]
            assert_handed_over(home, old_tree, entry["broker_pid"], shims, pids)
            await a.call_tool("touch", {"uri": "file:///watched"})
            await b.call_tool("touch", {"uri": "file:///other"})
            await a.call_tool("log", {"level": "info", "text": "below the level"})
            await a.call_tool("log", {"level": "error", "text": "above the level"})
            await whoami(a)  # after the notifications above on the same stdout
            await anyio.sleep(0.05)  # the SDK runs notification handlers in tasks
            assert updates == ["file:///watched"], "the subscription survived the restart"
            assert logs == ["above the level"], "the log level survived the restart"
        read = tap_messages(tmp_path / "in.jsonl")  # both backends' input, one after the other
        inits = [index for index, message in enumerate(read) if message.get("method") == "initialize"]
        assert len(inits) == 2
        replayed = [(m.get("method"), m.get("params")) for m in read[inits[1] :] if "id" in m]
        assert ("resources/subscribe", {"uri": "file:///watched"}) in replayed, "the new backend was subscribed"
        assert ("logging/setLevel", {"level": "warning"}) in replayed, "and set to the session's level"

    run(main)


def test_restart_lets_a_request_in_flight_finish(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server))
    client.initialize()
    request_id = client.request("tools/call", {"name": "slow", "arguments": {"seconds": 1}})
    wait_for(lambda: ls_json()[0]["requests"] >= 1)
    done = subprocess.run([mcpsingleton_exe(), "restart", "--all"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert result_text(client.reply_to(request_id)) == "slow done"
    assert "pid" in result_text(client.call("whoami"))
    assert client.close() == 0


def test_restarts_counts_each_restart_across_the_handover(home: Path, fake_server: list[str]) -> None:
    """A restart hands the sessions to a new broker, whose own count starts at 0: ls must still say 1, 2."""
    client = RawClient(shim(fake_server))
    client.initialize()
    for restarts in (1, 2):
        before = ls_json()[0]["broker_pid"]
        done = subprocess.run([mcpsingleton_exe(), "restart", "--all"], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert "pid" in result_text(client.call("whoami"))  # served by the next broker
        [entry] = ls_json()
        assert entry["broker_pid"] != before and entry["restarts"] == restarts
    assert client.close() == 0


def test_stop_still_ends_sessions(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server))
    client.initialize()
    done = subprocess.run([mcpsingleton_exe(), "stop", "fake_server"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert client.process.wait(timeout=10) == 0
    assert client.read(timeout=1) is None, "end of file on the client's stdout"
    assert wait_for(lambda: not ls_json(), timeout=5), "no broker was started again"


def test_a_broker_that_keeps_dying_ends_the_session_with_an_error(home: Path, fake_server: list[str]) -> None:
    env = {**os.environ, "MCPSINGLETON_TEST_CRASH_ON_RESUME": "1"}
    client = RawClient(shim(fake_server), env=env)
    client.initialize()
    (entry,) = ls_json()
    os.kill(entry["broker_pid"], signal.SIGKILL)
    assert client.process.wait(timeout=30) == 1
    assert "mcpsingleton: the broker for fake_server went away 4 times within 60s" in client.stderr()
    assert wait_for(lambda: not tagged_backends(home), timeout=5), "nothing left running"


def test_orderly_handovers_do_not_count_toward_the_crash_loop_guard(home: Path, fake_server: list[str]) -> None:
    """Issue 19 (the soak): every `restart` sends the sessions to the next broker in good order; any number of them
    within 60 s must leave the session alive and answering. Crashes still count: with the restarts behind it, the
    session survives 3 kill -9 of its broker and the 4th ends it with the guard's one line."""
    client = RawClient(shim(fake_server))
    client.initialize()
    for command in (["restart", "--all"], ["restart", "fake_server"]) * 3:  # 6 handovers: of the broker, of the server
        done = subprocess.run([mcpsingleton_exe(), *command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "pid" in result_text(client.call("whoami", timeout=30)), f"answered after `{' '.join(command)}`"
    waiter_env = psutil.Process(client.process.pid).environ()
    assert not waiter_env.get(REATTACHES_ENV, "").split(), "the waiter counted no crash"
    for crash in range(1, 5):
        (entry,) = ls_json()
        os.kill(entry["broker_pid"], signal.SIGKILL)
        assert wait_for(lambda pid=entry["broker_pid"]: not running(pid))
        if crash < 4:
            assert "pid" in result_text(client.call("whoami", timeout=30)), f"answered after crash {crash}"
    assert client.process.wait(timeout=30) == 1
    assert "mcpsingleton: the broker for fake_server went away 4 times within 60s" in client.stderr()
    assert wait_for(lambda: not tagged_backends(home), timeout=10), "nothing left running"


def test_a_line_half_read_by_a_dead_broker_is_answered_once_and_costs_one_parse_error(
    home: Path, fake_server: list[str]
) -> None:
    client = RawClient(shim(fake_server))
    client.initialize()
    (entry,) = ls_json()
    client.send_raw(b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"ec')
    time.sleep(0.3)  # the broker reads (and buffers) the first half: its id and method are in, so it is owed
    os.kill(entry["broker_pid"], signal.SIGKILL)
    client.send_raw(b'ho","arguments":{"text":"lost"}}}\n')
    after = client.call("echo", {"text": "after"})
    owed, cut = client.seen
    assert owed["id"] == 5 and "send it again" in owed["error"]["message"], "answered under its id, first"
    assert cut["error"]["code"] == -32700 and cut["id"] is None, "the rest of the cut line, and nothing else"
    assert result_text(after) == "after"
    assert client.close() == 0
