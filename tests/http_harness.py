"""`/mcp/NAME` mounted in a minimal Starlette app behind serve's Guard, run by uvicorn in a thread (tests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from mcpsingleton.serve.auth import Auth, Guard
from mcpsingleton.serve.mcp_http import McpEndpoint
from mcpsingleton.serve.server import bind


@dataclass
class Running:
    url: str
    token: str
    endpoint: McpEndpoint
    loop: asyncio.AbstractEventLoop

    def mcp(self, name: str) -> str:
        return f"{self.url}/mcp/{name}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def call(self, function, *args):
        """Run `function(*args)` on the server's loop (its maps are only touched there)."""
        return asyncio.run_coroutine_threadsafe(_call(function, *args), self.loop).result(10)


async def _call(function, *args):
    return function(*args)


def write_config(home: Path, servers: dict[str, list[str]]) -> None:
    """config.toml naming each server with its command, as `serve` finds them."""
    import json

    lines = []
    for name, argv in servers.items():
        lines += [f'[servers."{name}"]', f"command = {json.dumps(argv)}", ""]
    (home / "config.toml").write_text("\n".join(lines))


@contextmanager
def serving(ttl: float = 1800.0) -> Iterator[Running]:
    listener = bind("127.0.0.1", 0)
    port = listener.getsockname()[1]
    auth = Auth.for_address("127.0.0.1", port)
    endpoint = McpEndpoint(ttl=ttl)
    app = Guard(Starlette(routes=endpoint.routes()), auth)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    started = threading.Event()
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())
        started.set()
        try:
            await server.serve(sockets=[listener])
        finally:
            await endpoint.close()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    started.wait(10)
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.05)
    try:
        yield Running(f"http://127.0.0.1:{port}", auth.token, endpoint, loops[0])
    finally:
        server.should_exit = True
        thread.join(15)
        listener.close()


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "abandoner"}},
}
ACCEPT = {"Accept": "application/json, text/event-stream"}


async def open_sessions(url: str, headers: dict[str, str], count: int, concurrency: int = 16) -> list[str]:
    """Open `count` sessions (initialize + initialized) and walk away from them; their ids."""
    import anyio
    import httpx2

    ids: list[str] = []
    limit = anyio.Semaphore(concurrency)

    async def one(http: httpx2.AsyncClient) -> None:
        async with limit:
            opened = await http.post(url, json=INITIALIZE, headers={**headers, **ACCEPT})
            assert opened.status_code == 200, opened.text
            session = {**headers, **ACCEPT, "Mcp-Session-Id": opened.headers["mcp-session-id"]}
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert (await http.post(url, json=initialized, headers=session)).status_code == 202
            ids.append(opened.headers["mcp-session-id"])

    async with httpx2.AsyncClient(timeout=60) as http, anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(one, http)
    return ids
