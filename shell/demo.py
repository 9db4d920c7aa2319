"""Demo: N client sessions of server-everything through `mcpsingleton run` share one backend.

Starts the sessions the way a client config would, shows `mcpsingleton ls`, then compares the memory
of the shared setup with N separate servers started directly, and closes everything.
Usage: python shell/demo.py [--sessions N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
EVERYTHING = ROOT / ".cache/npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
MIB = 1024 * 1024


class RawSession:
    """A minimal stdio MCP client: initialize, one tool call, then hold the session open."""

    def __init__(self, argv: list[str], env: dict[str, str], name: str) -> None:
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
        )
        self.name = name
        self.next_id = 0

    def request(self, method: str, params: dict) -> dict:
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        assert self.process.stdout is not None
        while line := self.process.stdout.readline():
            message = json.loads(line)
            if message.get("id") == self.next_id and "method" not in message:
                return message
            if "method" in message and "id" in message:  # a server request (roots/list): answer it
                self.send({"jsonrpc": "2.0", "id": message["id"], "result": {"roots": []}})
        raise RuntimeError(f"{self.name}: the server closed the session")

    def send(self, message: dict) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def start(self) -> str:
        init = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": self.name, "version": "1"}}
        self.request("initialize", init)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        reply = self.request("tools/call", {"name": "echo", "arguments": {"message": f"hello from {self.name}"}})
        return reply["result"]["content"][0]["text"]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)


def tree_pss(pids: list[int]) -> int:
    """PSS (else RSS) summed over the given processes and all their descendants."""
    seen: set[int] = set()
    total = 0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for process in family:
            if process.pid in seen:
                continue
            seen.add(process.pid)
            try:
                info = process.memory_full_info()
                total += getattr(info, "pss", info.rss)
            except psutil.Error:
                continue
    return total


def shared_pss(home: str) -> int:
    """Every process mcpsingleton runs for this demo: waiters, broker, keeper, backend tree."""
    pids = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("MCPSINGLETON_HOME") == home:
                pids.append(process.pid)
        except psutil.Error:
            continue
    return tree_pss(pids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=5)
    count = parser.parse_args().sessions
    if not EVERYTHING.exists():
        sys.exit("mcpsingleton: server-everything is not installed; run `bash shell/install.sh` first")
    exe = shutil.which("mcpsingleton", path=os.path.dirname(sys.executable)) or "mcpsingleton"
    server = [shutil.which("node") or "node", str(EVERYTHING), "stdio"]
    home = tempfile.mkdtemp(prefix="ms-demo-", dir="/tmp")
    env = {**os.environ, "MCPSINGLETON_HOME": home}

    print(f"Starting {count} client sessions of server-everything through `mcpsingleton run` ...")
    shared = []
    for number in range(count):  # one after another, as a user opens sessions
        shared.append(RawSession([exe, "run", "--linger", "0", "--", *server], env, f"demo-client-{number}"))
        print(f"  {shared[-1].name}: {shared[-1].start()}")
    time.sleep(0.5)
    print("\n$ mcpsingleton ls")
    print(subprocess.run([exe, "ls"], env=env, capture_output=True, text=True).stdout)
    shared_total = shared_pss(home)

    print(f"Starting {count} separate servers directly, the way clients do without mcpsingleton ...")
    direct = [RawSession(server, env, f"direct-{i}") for i in range(count)]
    for session in direct:
        session.start()
    time.sleep(0.5)
    direct_total = tree_pss([s.process.pid for s in direct])
    for session in direct:
        session.close()

    print(f"\nMemory (PSS) for {count} sessions:")
    print(f"  {count} separate servers:    {direct_total / MIB:7.1f} MiB")
    print(f"  shared via mcpsingleton: {shared_total / MIB:7.1f} MiB (1 backend + broker + {count} tiny waiters)")
    print(
        f"  saved:                   {(direct_total - shared_total) / MIB:7.1f} MiB "
        f"({100 * (1 - shared_total / direct_total):.0f}%)"
    )

    for session in shared:
        session.close()
    deadline = time.monotonic() + 5
    while shared_pss(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = shared_pss(home)
    print("\nAll sessions closed (--linger 0): " + ("nothing left running." if not left else "processes remain!"))
    shutil.rmtree(home, ignore_errors=True)
    return 0 if not left else 1


if __name__ == "__main__":
    sys.exit(main())
