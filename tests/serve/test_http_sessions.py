"""serve's HTTP sessions attach to brokers as shims do (issue 24): one backend with the stdio sessions,
`transport: http` in `ls`, re-attach when the broker dies, end of file detaches them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
from helpers import RawClient, kill_quietly, ls_json, own_environ, shim, wait_for

from mcpsingleton.serve.http_sessions import BrokerSession, Target

pytestmark = pytest.mark.timeout(60)


class Lines:
    """An HTTP session's server→client lines, awaitable by id."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.arrived = asyncio.Event()
        self.ended: list[str] = []

    def take(self, line: bytes) -> None:
        self.messages.append(json.loads(line))
        self.arrived.set()

    async def reply_to(self, request_id: int, timeout: float = 10.0) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                for message in self.messages:
                    if message.get("id") == request_id and "method" not in message:
                        self.messages.remove(message)
                        return message
                self.arrived.clear()
                await self.arrived.wait()


def request(request_id: int, method: str, params: dict) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode()


INITIALIZE = {
    "protocolVersion": "2025-06-18",
    "capabilities": {},
    "clientInfo": {"name": "http-client", "version": "1"},
}


async def http_session(argv: list[str]) -> tuple[BrokerSession, Lines]:
    lines = Lines()
    target = Target(["--linger", "0", "--", *argv], dict(os.environ), own_environ())
    session = BrokerSession(target, lines.take, lines.ended.append)
    await session.open()
    session.send(request(1, "initialize", INITIALIZE))
    await lines.reply_to(1)
    session.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
    return session, lines


async def whoami(session: BrokerSession, lines: Lines, request_id: int) -> int:
    session.send(request(request_id, "tools/call", {"name": "whoami", "arguments": {}}))
    reply = await lines.reply_to(request_id)
    return json.loads(reply["result"]["content"][0]["text"])["pid"]


def test_http_and_stdio_sessions_share_one_backend(home: Path, fake_server: list[str]) -> None:
    stdio = RawClient(shim(fake_server, "--linger", "0"))
    stdio.initialize("stdio-client")
    stdio_pid = json.loads(stdio.call("whoami")["result"]["content"][0]["text"])["pid"]

    async def scenario() -> None:
        session, lines = await http_session(fake_server)
        assert await whoami(session, lines, 2) == stdio_pid
        [record] = await asyncio.to_thread(ls_json)
        clients = {client["client"]: client for client in record["clients"]}
        assert clients["http-client"]["transport"] == "http"
        assert clients["http-client"]["pid"] == os.getpid()
        assert clients["stdio-client"]["transport"] == "stdio"
        session.end()
        await asyncio.to_thread(wait_for, lambda: len(ls_json()[0]["clients"]) == 1)
        await asyncio.sleep(0.1)
        assert lines.ended == ["ended"]

    asyncio.run(scenario())
    assert stdio.close() == 0


def test_http_session_reattaches_when_its_broker_dies(home: Path, fake_server: list[str]) -> None:
    async def scenario() -> None:
        session, lines = await http_session(fake_server)
        first = await whoami(session, lines, 2)
        [record] = await asyncio.to_thread(ls_json)
        assert await asyncio.to_thread(wait_for, lambda: session.state != "")  # the broker told its waiter the state
        kill_quietly(record["broker_pid"], signal.SIGKILL)
        old_broker = record["broker_pid"]
        await asyncio.to_thread(wait_for, lambda: [r["broker_pid"] for r in ls_json()] not in ([], [old_broker]))
        second = await whoami(session, lines, 3)  # no initialize again: the state went with the session
        assert second != first
        [record] = await asyncio.to_thread(ls_json)
        assert [c["transport"] for c in record["clients"]] == ["http"]
        assert lines.ended == []
        session.end()

    asyncio.run(scenario())


def test_first_sessions_attached_from_threads_at_once_share_one_salt(tmp_path: Path) -> None:
    """serve attaches new sessions from threads: on a fresh home they all create the salt at once (the temp file's
    name was per process, so all but one failed with `cannot use …/salt (File exists)`)."""
    from concurrent.futures import ThreadPoolExecutor

    from mcpsingleton.shim.keys import user_salt

    for attempt in range(20):
        directory = tmp_path / str(attempt)
        directory.mkdir()
        with ThreadPoolExecutor(8) as pool:
            salts = set(pool.map(user_salt, [str(directory)] * 8))
        assert len(salts) == 1


def test_dirs_made_on_the_way_to_a_private_dir_are_private_too(tmp_path: Path) -> None:
    """A broker's first discovery entry made `state/` (0755) on its way to `state/discovery/`; `serve`, started
    later, then refused `state/` for its history as readable by others."""
    from mcpsingleton.common.paths import ensure_private_dir

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    ensure_private_dir(str(home / "state" / "discovery"))
    assert (home / "state").stat().st_mode & 0o777 == 0o700
    ensure_private_dir(str(home / "state"))


def test_http_session_follows_a_restart_of_its_broker(home: Path, fake_server: list[str]) -> None:
    """`restart` hands sessions over (`reattach` on the waiter's socket): an HTTP session goes on with the next one."""
    import subprocess

    from helpers import mcpsingleton_exe

    async def scenario() -> None:
        session, lines = await http_session(fake_server)
        first = await whoami(session, lines, 2)
        [record] = await asyncio.to_thread(ls_json)
        assert await asyncio.to_thread(wait_for, lambda: session.state != "")
        restart = [mcpsingleton_exe(), "restart", record["key"]]
        done = await asyncio.to_thread(subprocess.run, restart, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        old_broker = record["broker_pid"]
        await asyncio.to_thread(wait_for, lambda: [r["broker_pid"] for r in ls_json()] not in ([], [old_broker]))
        assert await whoami(session, lines, 3) != first
        assert [c["transport"] for c in (await asyncio.to_thread(ls_json))[0]["clients"]] == ["http"]
        assert lines.ended == []
        session.end()

    asyncio.run(scenario())


def test_http_session_outlives_any_number_of_restarts(home: Path, fake_server: list[str]) -> None:
    """A `restart` is an orderly handover, not a crash: more than the crash-loop guard's 3 within 60 s must not
    end an HTTP session (issue 19's soak)."""
    import subprocess

    from helpers import mcpsingleton_exe

    async def scenario() -> None:
        session, lines = await http_session(fake_server)
        await whoami(session, lines, 2)
        for number in range(3, 8):
            assert await asyncio.to_thread(wait_for, lambda: session.state != "" and session.conn is not None)
            restart = [mcpsingleton_exe(), "restart", "--all"]
            done = await asyncio.to_thread(subprocess.run, restart, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            assert await whoami(session, lines, number), f"answered after restart {number - 2}"
        assert lines.ended == [] and session.reattaches == []
        session.end()

    asyncio.run(scenario())


def test_isolated_server_gives_each_http_session_its_own_backend(home: Path, fake_server: list[str]) -> None:
    async def scenario() -> None:
        lines_a, lines_b = Lines(), Lines()
        pids = []
        for lines in (lines_a, lines_b):
            argv = ["--scope", "isolated", "--linger", "0", "--", *fake_server]
            target = Target(argv, dict(os.environ), own_environ())
            session = BrokerSession(target, lines.take, lines.ended.append)
            await session.open()
            session.send(request(1, "initialize", INITIALIZE))
            await lines.reply_to(1)
            pids.append(await whoami(session, lines, 2))
        assert pids[0] != pids[1]
        records = await asyncio.to_thread(ls_json)
        assert sorted(len(r["clients"]) for r in records) == [1, 1]
        assert {r["sharing"] for r in records} == {"isolated"}

    asyncio.run(scenario())
