"""`/mcp/NAME` over MCP Streamable HTTP (issue 24): official SDK clients over HTTP alongside stdio sessions
of the same server, one backend, each session with its own results."""

from __future__ import annotations

import http.client as http_client_module
import json
import os
import time
from pathlib import Path

import anyio
import httpx2
import psutil
import pytest
from helpers import RawClient, ls_json, mcpsingleton_exe, own_environ, shim, wait_for
from http_harness import ACCEPT, INITIALIZE, open_sessions, serving, write_config
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from serve_harness import Serve

from mcpsingleton.common.paths import HOME_ENV

MIB = 1024 * 1024
pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning"),
]


def http_client(url: str, token: str, **options) -> Client:
    headers = {"Authorization": f"Bearer {token}"}
    transport = streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=30))
    return Client(transport, read_timeout_seconds=30, **options)


def stdio_client(argv: list[str]) -> RawClient:
    """A stdio session as a client config starts it: the config adds nothing to the client's environment
    (pytest adds PYTEST_CURRENT_TEST to its own during a test, which a shim would count as the config's)."""
    started_with = own_environ()
    env = {**started_with, HOME_ENV: os.environ[HOME_ENV]} if started_with is not None else None
    return RawClient(argv, env=env)


def whoami_pid(result) -> int:
    return json.loads("".join(getattr(block, "text", "") for block in result.content))["pid"]


def test_sdk_client_over_http_shares_the_stdio_sessions_backend(home: Path, fake_server: list[str]) -> None:
    write_config(home, {"fake": fake_server})
    stdio = stdio_client(shim(fake_server, "--name", "fake"))
    stdio.initialize("stdio-client")
    stdio_pid = json.loads(stdio.call("whoami")["result"]["content"][0]["text"])["pid"]
    with serving() as running:

        async def scenario() -> None:
            async with http_client(running.mcp("fake"), running.token) as client:
                assert client.server_info is not None and client.server_info.name == "fake-server"
                assert whoami_pid(await client.call_tool("whoami", {})) == stdio_pid
                echoed = await client.call_tool("echo", {"text": "over http"})
                assert "over http" in "".join(getattr(b, "text", "") for b in echoed.content)
                [record] = await anyio.to_thread.run_sync(ls_json)
                transports = sorted(c["transport"] for c in record["clients"])
                assert transports == ["http", "stdio"]
                assert len(running.endpoint.sessions) == 1
            # leaving the client sends DELETE: the session is gone here and from the broker (serve's thread
            # finishes closing it just after answering)
            gone = await anyio.to_thread.run_sync(lambda: wait_for(lambda: running.endpoint.sessions == {}))
            assert gone, running.endpoint.sessions

        anyio.run(scenario)
        for _ in range(100):
            if len(ls_json()[0]["clients"]) == 1:
                break
            anyio.run(anyio.sleep, 0.05)
        assert [c["transport"] for c in ls_json()[0]["clients"]] == ["stdio"]
    assert stdio.close() == 0


def test_unknown_server_session_and_token(home: Path, fake_server: list[str]) -> None:
    write_config(home, {"fake": fake_server})
    with serving() as running:
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "x"}},
        }
        accept = {"Accept": "application/json, text/event-stream"}
        with httpx2.Client(timeout=10) as http:
            assert http.post(running.mcp("fake"), json=initialize, headers=accept).status_code == 401
            headers = {**running.headers, **accept}
            foreign = http.post(running.mcp("fake"), json=initialize, headers={**headers, "Origin": "http://evil.test"})
            assert foreign.status_code == 403, "a page of another site cannot reach a server even with the token"
            rebound = http.post(running.mcp("fake"), json=initialize, headers={**headers, "Host": "evil.test"})
            assert rebound.status_code == 403, "DNS rebinding: a Host that is not loopback"
            missing = http.post(running.mcp("nosuch"), json=initialize, headers=headers)
            assert missing.status_code == 404 and "no server named" in missing.text
            stale = http.post(running.mcp("fake"), json=initialize, headers={**headers, "Mcp-Session-Id": "abc"})
            assert stale.status_code == 404
            opened = http.post(running.mcp("fake"), json=initialize, headers=headers)
            assert opened.status_code == 200
            session = opened.headers["mcp-session-id"]
            # a session id is no key to another server's sessions
            other = http.post(running.mcp("other"), json=initialize, headers={**headers, "Mcp-Session-Id": session})
            assert other.status_code == 404
            assert http.delete(running.mcp("fake"), headers={**headers, "Mcp-Session-Id": session}).status_code == 200
            gone = http.post(running.mcp("fake"), json=initialize, headers={**headers, "Mcp-Session-Id": session})
            assert gone.status_code == 404
        # a body larger than a stdio session's longest line is refused before it is read
        connection = http_client_module.HTTPConnection("127.0.0.1", int(running.url.rsplit(":", 1)[1]), timeout=10)
        connection.putrequest("POST", "/mcp/fake")
        for name, value in {**running.headers, "Content-Length": str(65 * 1024 * 1024)}.items():
            connection.putheader(name, value)
        connection.endheaders()
        assert connection.getresponse().status == 413
        connection.close()


def serve_numbers(process: psutil.Process) -> tuple[int, int]:
    return process.memory_info().rss, process.num_fds()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_abandoned_sessions_end_after_the_ttl_and_leave_nothing(home: Path, fake_server: list[str]) -> None:
    """1,000 HTTP sessions opened and abandoned (no DELETE): after --session-ttl each is ended and detached;
    serve's fds and the broker's session table are back at their baseline, and serve's memory near it: the
    baseline is taken after two rounds of 1,000, as Python keeps its allocator's high-water mark, which moves
    with the peak number of sessions open at once (measured over 5 rounds: 85.6, 88.1, 88.3, 88.4, 88.4 MiB).
    That no object of a session survives it is checked exactly by the next test."""
    write_config(home, {"fake": fake_server})
    serve = Serve("--session-ttl", "2s")
    try:
        served = psutil.Process(serve.process.pid)
        headers = {"Authorization": f"Bearer {serve.token}"}
        url = f"http://127.0.0.1:{serve.port}/mcp/fake"

        def clients() -> int:
            return sum(len(record["clients"]) for record in ls_json())

        for _ in range(2):  # warm: imports, the broker, allocator pools, the dashboard's samples of a full table
            anyio.run(open_sessions, url, headers, 1000)
            assert wait_for(lambda: clients() == 0, timeout=30)
        time.sleep(0.5)
        baseline_rss, baseline_fds = serve_numbers(served)
        [record] = ls_json()
        broker = psutil.Process(record["broker_pid"])
        broker_fds = broker.num_fds()

        anyio.run(open_sessions, url, headers, 1000)
        peak_rss, peak_fds = serve_numbers(served)
        assert peak_fds > baseline_fds  # (sessions were open at once)

        assert wait_for(lambda: clients() == 0, timeout=60)
        time.sleep(0.5)
        # (either may hold a passing fd of its own at a given moment: the dashboard's sampling, a log rotation)
        assert wait_for(lambda: served.num_fds() <= baseline_fds), "every session's pipes and socket are closed"
        assert wait_for(lambda: broker.num_fds() <= broker_fds), "and the broker's copies"
        rss = served.memory_info().rss
        assert [record["broker_pid"] for record in ls_json()] == [broker.pid]
        print(f"serve rss MiB: baseline {baseline_rss / MIB:.1f}, peak {peak_rss / MIB:.1f}, after {rss / MIB:.1f}")
        assert rss - baseline_rss < 6 * MIB  # the high-water mark moves with the peak (objects: the test below)
    finally:
        serve.stop()


def test_no_object_of_an_expired_session_survives(home: Path, fake_server: list[str]) -> None:
    import gc

    from mcp.server.streamable_http import StreamableHTTPServerTransport

    from mcpsingleton.serve.http_sessions import BrokerSession
    from mcpsingleton.serve.mcp_http import RecentEvents, Relay

    kinds = (Relay, BrokerSession, StreamableHTTPServerTransport, RecentEvents)

    def alive() -> dict[str, int]:
        gc.collect()
        counts = {kind.__name__: 0 for kind in kinds}
        for thing in gc.get_objects():
            if isinstance(thing, kinds):
                counts[type(thing).__name__] += 1
        return {name: count for name, count in counts.items() if count}

    write_config(home, {"fake": fake_server})
    with serving(ttl=1.0) as running:
        anyio.run(open_sessions, running.mcp("fake"), running.headers, 300)
        assert alive(), "(the sessions were there)"
        assert wait_for(lambda: running.endpoint.sessions == {} and not running.endpoint.tasks, timeout=30)
        assert wait_for(lambda: alive() == {}, timeout=10), alive()
        assert wait_for(lambda: ls_json()[0]["clients"] == [], timeout=10)


def test_serve_connections_are_not_delayed_by_nagle() -> None:
    """Every reply on a kept-alive connection waited ~40 ms for the client's delayed ACK: asyncio sets
    TCP_NODELAY only on sockets created with IPPROTO_TCP named, which serve's listening socket was not."""
    import asyncio
    import socket

    from mcpsingleton.serve.server import bind

    async def accepted_nodelay() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listener = bind("127.0.0.1", 0)
        server = await asyncio.start_server(connected, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0


MODERN = "2026-07-28"


def modern(request_id: int, method: str, params: dict | None = None) -> dict:
    """A 2026-07-28 request: no session; what a handshake said rides in `_meta`."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": {"name": "modern-client", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    params = dict(params or {})
    params["_meta"] = {**params.get("_meta", {}), **meta}
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def sse_messages(text: str) -> list[dict]:
    return [json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")]


def test_stateless_era_requests_get_a_session_of_their_own(home: Path, fake_server: list[str]) -> None:
    """2026-07-28 requests carry no session: each is served by a session attached for its duration (the mux
    speaks the era), answered as JSON or, when the client takes them, as events ending with the response."""
    write_config(home, {"fake": fake_server})
    stdio = stdio_client(shim(fake_server, "--name", "fake"))
    stdio.initialize("stdio-client")
    stdio_pid = json.loads(stdio.call("whoami")["result"]["content"][0]["text"])["pid"]
    with serving() as running, httpx2.Client(timeout=30) as http:
        headers = {**running.headers, "MCP-Protocol-Version": MODERN}
        discovered = http.post(running.mcp("fake"), json=modern(1, "server/discover"), headers=headers)
        assert discovered.status_code == 200 and discovered.json()["id"] == 1
        assert "mcp-session-id" not in discovered.headers

        called = http.post(running.mcp("fake"), json=modern(2, "tools/call", {"name": "whoami"}), headers=headers)
        reply = called.json()
        assert reply["id"] == 2 and json.loads(reply["result"]["content"][0]["text"])["pid"] == stdio_pid

        progress = {"name": "progress", "arguments": {"steps": 3}, "_meta": {"progressToken": 7}}
        streamed = http.post(
            running.mcp("fake"),
            json=modern(3, "tools/call", progress),
            headers={**headers, "Accept": "application/json, text/event-stream"},
        )
        assert streamed.headers["content-type"].startswith("text/event-stream")
        messages = sse_messages(streamed.text)
        assert [m["params"]["progressToken"] for m in messages[:-1]] == [7, 7, 7]
        assert messages[-1]["id"] == 3 and "result" in messages[-1]

        note = http.post(running.mcp("fake"), json={"jsonrpc": "2.0", "method": "notifications/x"}, headers=headers)
        assert note.status_code == 202
        assert wait_for(lambda: [c["client"] for c in ls_json()[0]["clients"]] == ["stdio-client"])
        assert running.endpoint.sessions == {}
    assert stdio.close() == 0


def test_sdk_client_in_the_stateless_era(home: Path, fake_server: list[str]) -> None:
    write_config(home, {"fake": fake_server})
    with serving() as running:

        async def scenario() -> None:
            url = f"{running.mcp('fake')}?token={running.token}"
            async with Client(url, mode=MODERN, read_timeout_seconds=30) as client:
                assert len((await client.list_tools()).tools) > 5
                seen: list[float] = []

                async def on_progress(value: float, total: float | None, message: str | None) -> None:
                    seen.append(value)

                result = await client.call_tool("progress", {"steps": 3}, progress_callback=on_progress)
                assert "3 steps" in "".join(getattr(b, "text", "") for b in result.content)
                assert seen == [1.0, 2.0, 3.0]
            gone = await anyio.to_thread.run_sync(lambda: wait_for(lambda: running.endpoint.sessions == {}))
            assert gone, running.endpoint.sessions

        anyio.run(scenario)


def test_entries_wrap_manages_are_served_by_their_name(
    home: Path, fake_server: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client config's wrapped entry (`mcpsingleton run …`) is at /mcp/ENTRY, with the stdio sessions' backend."""
    user = tmp_path / "user"
    (user / ".cursor").mkdir(parents=True)
    entry = {"command": mcpsingleton_exe(), "args": ["run", "--", *fake_server]}
    (user / ".cursor/mcp.json").write_text(json.dumps({"mcpServers": {"wrapped-fake": entry}}))
    monkeypatch.setenv("HOME", str(user))
    stdio = stdio_client(shim(fake_server))
    stdio.initialize("stdio-client")
    stdio_pid = json.loads(stdio.call("whoami")["result"]["content"][0]["text"])["pid"]
    with serving() as running:

        async def scenario() -> None:
            async with http_client(running.mcp("wrapped-fake"), running.token) as client:
                assert whoami_pid(await client.call_tool("whoami", {})) == stdio_pid

        anyio.run(scenario)
    assert stdio.close() == 0


def test_odd_progress_tokens_and_cancellations_never_end_a_session(home: Path, fake_server: list[str]) -> None:
    """A client's values are any JSON: an object as progress token or as a cancelled request's id once raised
    out of the relay (unhashable), ending the session."""
    write_config(home, {"fake": fake_server})
    with serving() as running, httpx2.Client(timeout=30) as http:
        headers = {**running.headers, **ACCEPT}
        opened = http.post(running.mcp("fake"), json=INITIALIZE, headers=headers)
        headers["Mcp-Session-Id"] = opened.headers["mcp-session-id"]
        http.post(running.mcp("fake"), json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        odd = {"name": "echo", "arguments": {"text": "odd"}, "_meta": {"progressToken": {"an": "object"}}}
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": odd}
        http.post(running.mcp("fake"), json=call, headers=headers)
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": [1, 2]}}
        assert http.post(running.mcp("fake"), json=cancel, headers=headers).status_code == 202
        echo = {"name": "echo", "arguments": {"text": "still here"}}
        call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": echo}
        reply = http.post(running.mcp("fake"), json=call, headers=headers)
        assert "still here" in reply.text
        assert len(running.endpoint.sessions) == 1


def test_recent_events_replay_one_stream_after_the_last_seen() -> None:
    """What a client that lost a stream asks for again (Last-Event-ID): later events of that stream only, the
    priming events (no message) skipped; an id no longer kept replays nothing."""
    from mcp.server.streamable_http import EventMessage
    from mcp_types import JSONRPCNotification

    from mcpsingleton.serve.mcp_http import EVENTS_KEPT, RecentEvents

    def note(n: int) -> JSONRPCNotification:
        return JSONRPCNotification(jsonrpc="2.0", method="notifications/message", params={"n": n})

    async def scenario() -> None:
        events = RecentEvents()
        first = await events.store_event("post-1", None)
        await events.store_event("post-1", note(1))
        await events.store_event("get", note(2))
        await events.store_event("post-1", note(3))
        replayed: list[EventMessage] = []

        async def collect(event: EventMessage) -> None:
            replayed.append(event)

        assert await events.replay_events_after(first, collect) == "post-1"
        assert [event.message.params["n"] for event in replayed] == [1, 3]
        for n in range(EVENTS_KEPT):
            await events.store_event("get", note(n))
        assert await events.replay_events_after(first, collect) is None

    anyio.run(scenario)
