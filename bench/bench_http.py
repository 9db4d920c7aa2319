"""MCP over Streamable HTTP through `serve` (`/mcp/NAME`): what a session costs and that none is leaked.

    .venv/bin/python bench/bench_http.py [--quick] [--sessions 1000] [--calls 200]

open       ms to open an HTTP session (POST initialize, answered; the broker and backend already warm)
roundtrip  ms per `tools/call` echo on bench/fast_server.py: over HTTP (one POST, the reply as SSE) beside a
           stdio session of the same backend (through the shim), interleaved
abandoned  --sessions sessions opened and walked away from (no DELETE) under `--session-ttl 2s`, twice: serve's
           RSS and fds and the broker's clients at the start, after the first round's expiry (the baseline:
           Python keeps its allocator's high-water mark), at the second round's peak and after its expiry
Writes bench/results/http.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import time
from typing import Any

import httpx2
import psutil
from common import (
    ECHO_CALL,
    MIB,
    Home,
    RawClient,
    entry_point,
    fast_cmd,
    initialize_params,
    log,
    machine,
    shim_cmd,
    summary,
    write_result,
)

ACCEPT = {"Accept": "application/json, text/event-stream"}
URL_LINE = re.compile(r"^http://127\.0\.0\.1:(\d+)/\?token=(\S+)$")
TTL = "2s"


class Serve:
    """`mcpsingleton serve` on a free port in the bench's home, with `[servers."fast"]` in its config.toml."""

    def __init__(self, home: Home) -> None:
        with open(os.path.join(home.path, "config.toml"), "w") as handle:
            handle.write(f'[servers."fast"]\ncommand = {json.dumps(fast_cmd())}\n')
        argv = [entry_point(), "serve", "--port", "0", "--no-browser", "--session-ttl", TTL]
        self.process = subprocess.Popen(
            argv, env=home.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout is not None
        match = URL_LINE.match(self.process.stdout.readline().strip())
        assert match, "serve did not print its URL"
        self.url = f"http://127.0.0.1:{match.group(1)}/mcp/fast"
        self.headers = {"Authorization": f"Bearer {match.group(2)}", **ACCEPT}
        self.home = home

    def numbers(self) -> dict[str, Any]:
        served = psutil.Process(self.process.pid)
        out = subprocess.run([entry_point(), "ls", "--json"], env=self.home.env, capture_output=True, text=True)
        records = json.loads(out.stdout or "[]")
        clients = sum(client.get("transport") == "http" for record in records for client in record["clients"])
        rss = round(served.memory_info().rss / MIB, 2)
        return {"serve_rss_mib": rss, "serve_fds": served.num_fds(), "http_clients": clients}

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(15)


async def open_one(http: httpx2.AsyncClient, serve: Serve) -> str:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": initialize_params()}
    opened = await http.post(serve.url, json=body, headers=serve.headers)
    opened.raise_for_status()
    session = opened.headers["mcp-session-id"]
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    await http.post(serve.url, json=initialized, headers={**serve.headers, "Mcp-Session-Id": session})
    return session


async def open_many(serve: Serve, count: int, concurrency: int = 16) -> None:
    limit = asyncio.Semaphore(concurrency)

    async def one(http: httpx2.AsyncClient) -> None:
        async with limit:
            await open_one(http, serve)

    async with httpx2.AsyncClient(timeout=60) as http:
        await asyncio.gather(*(one(http) for _ in range(count)))


def wait_until_expired(serve: Serve, timeout: float = 120) -> float:
    """Seconds until the broker holds no session (every HTTP session expired and detached)."""
    started = time.monotonic()
    while serve.numbers()["http_clients"] and time.monotonic() - started < timeout:
        time.sleep(0.25)
    return round(time.monotonic() - started, 2)


async def open_and_roundtrip(serve: Serve, stdio: RawClient, opens: int, calls: int) -> dict[str, Any]:
    method, params = ECHO_CALL["fast"]
    open_ms, http_ms, stdio_ms = [], [], []
    async with httpx2.AsyncClient(timeout=60) as http:
        for _ in range(opens):
            started = time.perf_counter()
            await open_one(http, serve)
            open_ms.append((time.perf_counter() - started) * 1000)
        session = {**serve.headers, "Mcp-Session-Id": await open_one(http, serve)}
        for index in range(calls):
            body = {"jsonrpc": "2.0", "id": index + 2, "method": method, "params": params}
            started = time.perf_counter()
            (await http.post(serve.url, json=body, headers=session)).raise_for_status()
            http_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await asyncio.to_thread(stdio.request, method, params)
            stdio_ms.append((time.perf_counter() - started) * 1000)
    return {"open_ms": summary(open_ms), "roundtrip_http_ms": summary(http_ms), "roundtrip_stdio_ms": summary(stdio_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 sessions, 50 calls")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    sessions, calls = (100, 50) if args.quick else (args.sessions, args.calls)
    result: dict[str, Any] = {"machine": machine(), "ttl": TTL, "sessions": sessions}
    with Home() as home:
        serve = Serve(home)
        stdio = RawClient(shim_cmd(fast_cmd(), "--name", "fast"), home.env)
        try:
            stdio.initialize()
            log("open and round trip")
            result.update(asyncio.run(open_and_roundtrip(serve, stdio, 50, calls)))
            wait_until_expired(serve)
            result["abandoned"] = {"start": serve.numbers()}
            for label in ("first", "second"):
                log(f"{label} round: {sessions} sessions opened and abandoned")
                started = time.perf_counter()
                asyncio.run(open_many(serve, sessions))
                result["abandoned"][f"{label}_open_s"] = round(time.perf_counter() - started, 2)
                result["abandoned"][f"{label}_peak"] = serve.numbers()
                result["abandoned"][f"{label}_expired_after_s"] = wait_until_expired(serve)
                time.sleep(0.5)
                result["abandoned"][f"{label}_after"] = serve.numbers()
        finally:
            stdio.close()
            serve.close()
    write_result("http", result)
    print(json.dumps({key: value for key, value in result.items() if key != "machine"}, indent=2))


if __name__ == "__main__":
    main()
