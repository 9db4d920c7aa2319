"""`/mcp/NAME` over MCP Streamable HTTP (issue 24): official SDK clients over HTTP alongside stdio sessions
of the same server, one backend, each session with its own results."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
import httpx2
import pytest
from conftest import RawClient, ls_json, shim
from http_harness import serving, write_config
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from test_http_sessions import own_environ

from mcpsingleton.keys import HOME_ENV

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
            # leaving the client sends DELETE: the session is gone here and from the broker
            assert running.endpoint.sessions == {}

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
