"""One MCP client session as its own process, for the benchmarks (standard library only).

    session_client.py [--call JSON]... [--env NAME=VALUE]... [--wait-go] -- SERVER_COMMAND...

With --wait-go it first prints {"waiting": true} and blocks until it reads one line on stdin (so that
many sessions can be released at the same instant). Spawns the server command with pipes (exactly
as an MCP client does; --env adds a variable to the server's environment only, as a client config's `env`
does), sends initialize, notifications/initialized and the given calls (each a
JSON [method, params]), then prints one JSON line to stdout:
    {"ready": true, "pid": <server pid>, "init_ms": ..., "init_at": ..., "errors": [...]}
(init_ms: from spawning the server to its InitializeResult; init_at: time.monotonic() then, a
clock shared by every process on the machine).

Then it obeys its own stdin, one command a line:
    go SECONDS WINDOW [METHOD_PARAMS_JSON]   closed-loop load: keep WINDOW requests in flight for
                                             SECONDS; prints {"count": N, "seconds": S}
    (end of file)                            close the server's stdin, wait for it, exit
While idle it keeps draining the server's stdout, so the server never blocks on a full pipe.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    calls = [json.loads(options[i + 1]) for i, word in enumerate(options) if word == "--call"]
    extra = dict(options[i + 1].split("=", 1) for i, word in enumerate(options) if word == "--env")
    if "--wait-go" in options:
        report({"waiting": True})
        if not os.read(0, 64):  # one short "go" line; unbuffered, so serve_parent sees the rest
            return 0
    started = time.perf_counter()
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              env={**os.environ, **extra})
    session = Session(server)
    errors: list[str] = []
    try:
        init = session.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                              "clientInfo": {"name": "bench-session", "version": "1"}})
        init_at = time.monotonic()
        init_ms = (time.perf_counter() - started) * 1000
        if "result" not in init:
            errors.append(f"initialize: {init}")
        session.write({"jsonrpc": "2.0", "method": "notifications/initialized"})
        for method, params in calls:
            reply = session.request(method, params)
            if "result" not in reply or reply["result"].get("isError"):
                errors.append(f"{method}: {json.dumps(reply)[:200]}")
    except (OSError, EOFError, TimeoutError, ValueError) as exc:
        report({"ready": False, "pid": server.pid, "error": f"{type(exc).__name__}: {exc}"})
        server.kill()
        return 1
    report({"ready": not errors, "pid": server.pid, "init_ms": round(init_ms, 2), "init_at": init_at,
            "errors": errors})
    session.serve_parent()
    server.stdin.close()  # type: ignore[union-attr]
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
    return 0


def report(data: dict) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


class Session:
    def __init__(self, server: subprocess.Popen) -> None:
        self.server = server
        self.out = server.stdin.fileno()  # type: ignore[union-attr]
        self.inp = server.stdout.fileno()  # type: ignore[union-attr]
        self.buf = b""
        self.next_id = 0

    def write_bytes(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.out, view):]

    def write(self, message: dict) -> None:
        self.write_bytes(json.dumps(message).encode() + b"\n")

    def request(self, method: str, params: dict | None, timeout: float = 120.0) -> dict:
        self.next_id += 1
        self.write({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}})
        deadline = time.monotonic() + timeout
        while True:
            newline = self.buf.find(b"\n")
            if newline < 0:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer to {method}")
                chunk = os.read(self.inp, 65536)
                if not chunk:
                    raise EOFError("server closed its stdout")
                self.buf += chunk
                continue
            line, self.buf = self.buf[:newline], self.buf[newline + 1:]
            if not line.strip():
                continue
            message = json.loads(line)
            if "method" in message:
                if "id" in message:
                    self.write({"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32601, "message": "no"}})
                continue
            if message.get("id") == self.next_id:
                return message

    def serve_parent(self) -> None:
        """Drain the server while waiting for commands on stdin; return at stdin EOF."""
        selector = selectors.DefaultSelector()
        selector.register(0, selectors.EVENT_READ, "parent")
        selector.register(self.inp, selectors.EVENT_READ, "server")
        pending = b""
        while True:
            for key, _ in selector.select():
                if key.data == "server":
                    if not os.read(self.inp, 65536):
                        selector.unregister(self.inp)
                    continue
                chunk = os.read(0, 4096)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    command, pending = pending.split(b"\n", 1)
                    words = command.decode().split(" ", 3)
                    if words[0] == "go":
                        call = json.loads(words[3]) if len(words) > 3 else ["ping", {}]
                        report(self.load(float(words[1]), int(words[2]), call))

    def load(self, seconds: float, window: int, call: list) -> dict:
        """Closed loop: `window` requests in flight; every reply (one line) is answered by a new request."""
        method, params = call
        body = json.dumps({"method": method, "params": params})[1:]
        template = '{"jsonrpc":"2.0","id":%d,' + body.replace("%", "%%") + "\n"
        next_id = 1_000_000
        sent = completed = 0
        burst = "".join(template % (next_id + i) for i in range(window)).encode()
        next_id += window
        sent += window
        self.buf = b""
        self.write_bytes(burst)
        started = time.perf_counter()
        deadline = started + seconds
        while True:
            chunk = os.read(self.inp, 65536)
            if not chunk:
                break
            self.buf += chunk
            lines = self.buf.count(b"\n")
            if not lines:
                continue
            self.buf = self.buf[self.buf.rfind(b"\n") + 1:]
            completed += lines
            if time.perf_counter() < deadline:
                self.write_bytes("".join(template % (next_id + i) for i in range(lines)).encode())
                next_id += lines
                sent += lines
            elif completed >= sent:
                break
        elapsed = time.perf_counter() - started
        return {"count": completed, "seconds": round(elapsed, 4), "window": window}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
