"""Other real clients over `/mcp/NAME` (issue 24): the official TypeScript SDK client and MCP Inspector's CLI
(`--cli --transport http`), against server-everything through a real `serve`, beside a stdio session of it.

Both are pinned and installed by shell/install.sh into .cache/http-clients; without them these tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT, TESTS, RawClient, ls_json, own_environ, shim, wait_for
from http_harness import write_config
from serve_harness import Serve

from mcpsingleton.common.paths import HOME_ENV

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

CLIENTS = ROOT / ".cache/http-clients/node_modules"
SDK = CLIENTS / "@modelcontextprotocol/sdk"
INSPECTOR = CLIENTS / ".bin/mcp-inspector"
TS_CLIENT = TESTS / "node/ts_http_client.mjs"


def needs(path: Path) -> None:
    if not path.exists() or shutil.which("node") is None:
        pytest.skip(f"{path.relative_to(ROOT)} is not installed; run `bash shell/install.sh`")


@pytest.fixture
def everything_served(home: Path, everything: list[str]) -> Iterator[tuple[Serve, RawClient]]:
    """serve exposing server-everything, and a stdio session of it (as a config adds nothing to its client's env)."""
    write_config(home, {"everything": everything})
    started_with = own_environ()
    env = {**started_with, HOME_ENV: os.environ[HOME_ENV]} if started_with is not None else None
    stdio = RawClient(shim(everything, "--name", "everything"), env=env)
    stdio.initialize("stdio-client")
    serve = Serve("--session-ttl", "5s")
    try:
        yield serve, stdio
    finally:
        serve.stop()
        stdio.close()


def transports() -> list[tuple[str, str]]:
    """The sessions of the one server, over every backend of its key: a client that declares roots other than
    the stdio session's gets a backend of its own once the server asked for roots (placement), as over stdio."""
    records = ls_json()
    assert len({record["key"] for record in records}) == 1, "the HTTP sessions have the stdio session's key"
    return sorted((client["client"], client["transport"]) for record in records for client in record["clients"])


def test_typescript_sdk_client_over_http(everything_served: tuple[Serve, RawClient]) -> None:
    needs(SDK)
    serve, _ = everything_served
    url = f"http://127.0.0.1:{serve.port}/mcp/everything"
    node = subprocess.Popen(
        ["node", str(TS_CLIENT), str(SDK), url, serve.token],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdin is not None and node.stdout is not None
        ready = json.loads(node.stdout.readline() or "null")
        assert ready is not None, node.stderr.read() if node.stderr else ""
        assert ready["ready"]["server"] and ready["ready"]["session"]
        assert transports() == [("stdio-client", "stdio"), ("ts-client", "http")]
        node.stdin.write("go\n")
        node.stdin.flush()
        done = json.loads(node.stdout.readline() or "null")
        assert done is not None, node.stderr.read() if node.stderr else ""
        done = done["done"]
        assert done["tools"] > 5
        assert "from typescript" in done["echoed"]
        assert "Steps: 3" in done["long"]
        assert done["progress"] == [[1, 3], [2, 3], [3, 3]]
        assert node.wait(30) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    assert wait_for(lambda: transports() == [("stdio-client", "stdio")]), "the DELETE detached it"


def test_inspector_cli_over_http(everything_served: tuple[Serve, RawClient]) -> None:
    needs(INSPECTOR)
    serve, stdio = everything_served
    url = f"http://127.0.0.1:{serve.port}/mcp/everything"

    def inspector(*arguments: str) -> dict:
        header = f"Authorization: Bearer {serve.token}"
        argv = [str(INSPECTOR), "--cli", url, "--transport", "http", "--header", header, *arguments]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=serve_dir(serve))
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    listed = inspector("--method", "tools/list")
    assert "echo" in {tool["name"] for tool in listed["tools"]}
    called = inspector("--method", "tools/call", "--tool-name", "echo", "--tool-arg", "message=from inspector")
    assert "from inspector" in json.dumps(called)
    assert "Echo" in json.dumps(stdio.call("echo", {"message": "still here"})), "the stdio session is unaffected"
    assert all(record["restarts"] == 0 for record in ls_json())
    assert wait_for(lambda: transports() == [("stdio-client", "stdio")], timeout=30), "ended or expired (5s TTL)"


def serve_dir(serve: Serve) -> str:
    """A scratch dir for the inspector (it may write a catalog under its cwd or HOME)."""
    return os.environ[HOME_ENV]
