"""What tests share besides fixtures: the installed executable, a process census of a test's
MCPSINGLETON_HOME, a raw stdio client, SDK sessions through the shim, a recording tap for backends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import psutil
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from mcpsingleton.shim.keys import reads_client_environ

TESTS = Path(__file__).resolve().parent
"""tests/: its helpers, harnesses and fixture files; the tests themselves are in folders mirroring the package."""
ROOT = TESTS.parent
FAKE_SERVER = TESTS / "fake_server.py"
NODE_MODULES = ROOT / ".cache/npm/node_modules"
EVERYTHING_JS = NODE_MODULES / "@modelcontextprotocol/server-everything/dist/index.js"


def mcpsingleton_exe() -> str:
    found = shutil.which("mcpsingleton", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    assert found, "mcpsingleton is not installed in this environment; run `pip install -e .[test]`"
    return found


def processes_of(home: Path) -> list[psutil.Process]:
    """Every live process started with this MCPSINGLETON_HOME (shims, brokers, backends, their children)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get("MCPSINGLETON_HOME") == str(home):
                found.append(process)
        except psutil.Error:
            continue
    return found


def tagged_backends(home: Path) -> list[psutil.Process]:
    """Processes carrying MCPSINGLETON_KEY: backends and everything they spawned."""
    result = []
    for process in processes_of(home):
        try:
            if "MCPSINGLETON_KEY" in process.environ():
                result.append(process)
        except psutil.Error:
            continue
    return result


def backend_roots(home: Path) -> list[psutil.Process]:
    """Tagged processes whose parent is not tagged: one per backend process tree."""
    tagged = tagged_backends(home)
    pids = {p.pid for p in tagged}
    return [p for p in tagged if p.ppid() not in pids]


def key_log(home: Path) -> Path:
    """The log of the one server key a test ran (beside the broker's own broker.log)."""
    return next(path for path in (home / "logs").glob("*.log") if path.name != "broker.log")


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def ls_json(env: dict[str, str] | None = None) -> list[dict]:
    out = subprocess.run(
        [mcpsingleton_exe(), "ls", "--json"], capture_output=True, text=True, timeout=30, env=env or os.environ.copy()
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def kill_quietly(pid: int, signum: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


class RawClient:
    """A stdio JSON-RPC client over real pipes, for tests that need byte-level control."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env or os.environ.copy(),
            cwd=cwd,
        )
        self.next_id = 0
        self.buffer = b""

    def send_raw(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def send(self, message: dict) -> None:
        self.send_raw(json.dumps(message).encode() + b"\n")

    def request(self, method: str, params: dict | None = None, request_id: object = None) -> object:
        if request_id is None:
            self.next_id += 1
            request_id = self.next_id
        message = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return request_id

    def read(self, timeout: float = 10.0) -> dict | list | None:
        """The next message, or None at end of file or timeout."""
        import select

        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def reply_to(self, request_id: object, timeout: float = 10.0) -> dict:
        """Read until the response to `request_id`; notifications on the way are kept in `self.seen`."""
        self.seen = getattr(self, "seen", [])
        while True:
            message = self.read(timeout)
            assert message is not None, f"no reply to {request_id!r}"
            if isinstance(message, dict) and "method" not in message and message.get("id") == request_id:
                return message
            self.seen.append(message)

    def initialize(self, name: str = "raw-client", capabilities: dict | None = None) -> dict:
        request_id = self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": capabilities or {},
                "clientInfo": {"name": name, "version": "1"},
            },
        )
        reply = self.reply_to(request_id)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return reply

    def call(self, tool: str, arguments: dict | None = None, timeout: float = 10.0) -> dict:
        request_id = self.request("tools/call", {"name": tool, "arguments": arguments or {}})
        return self.reply_to(request_id, timeout)

    def close(self, timeout: float = 10.0) -> int:
        assert self.process.stdin is not None
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        return self.process.wait(timeout=timeout)

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read().decode("utf-8", "replace")


def shim(command: list[str], *options: str) -> list[str]:
    return [mcpsingleton_exe(), "run", *options, "--", *command]


def result_text(reply: dict) -> str:
    return "".join(block.get("text", "") for block in reply["result"]["content"])


TAP_SOURCE = r"""
import os, subprocess, sys, threading
log_in, log_out, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def copy(source, sink, path):
    with open(path, "ab", buffering=0) as log:
        while True:
            try:
                data = os.read(source, 65536)
            except OSError:
                data = b""
            if not data:
                return
            log.write(data)
            try:
                while data:
                    data = data[os.write(sink, data):]
            except OSError:
                return
def feed():
    copy(0, child.stdin.fileno(), log_in)
    try:
        child.stdin.close()
    except OSError:
        pass
threading.Thread(target=feed, daemon=True).start()
copy(child.stdout.fileno(), 1, log_out)
code = child.wait()
os._exit(code if code >= 0 else 128 - code)
"""


def tapped(command: list[str], directory: Path) -> list[str]:
    """`command` behind a recorder: what it reads is appended to directory/in.jsonl, what it writes to out.jsonl.

    The recorder exits with the command's status once the command closes its stdout, so a crash is seen.
    """
    return [sys.executable, "-c", TAP_SOURCE, str(directory / "in.jsonl"), str(directory / "out.jsonl"), *command]


def tap_messages(path: Path) -> list[dict]:
    """The complete JSON-RPC lines a tapped backend read (in.jsonl) or wrote (out.jsonl) so far."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    messages = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            messages.append(message)
    return messages


def shim_params(command: list[str], *options: str, cwd: str | None = None, env: dict | None = None):
    """How a client config runs a server through mcpsingleton."""
    return StdioServerParameters(
        command=mcpsingleton_exe(),
        args=["run", *options, "--", *command],
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def text_of(result) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def run_sessions(count: int, params, body, hold: anyio.Event | None = None):
    """Open `count` concurrent SDK sessions, run `body(index, client)` in each, all held open together."""
    results: dict[int, object] = {}
    ready = anyio.Event()
    opened = 0

    async def one(index: int) -> None:
        nonlocal opened
        async with Client(params, read_timeout_seconds=60) as client:
            opened += 1
            if opened == count:
                ready.set()
            await ready.wait()
            results[index] = await body(index, client)
            if hold is not None:
                await hold.wait()

    async with anyio.create_task_group() as group:
        for index in range(count):
            group.start_soon(one, index)
    return results


def own_environ() -> dict[str, str] | None:
    """This process's environment as it started, which is what a shim it starts reads as its client's."""
    if not reads_client_environ():
        return None
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return None
    return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)


def node_server(package: str) -> list[str]:
    entry = NODE_MODULES / package / "dist/index.js"
    if not entry.exists():
        pytest.fail(f"{package} is not installed at {entry}; run `bash shell/install.sh`")
    return [shutil.which("node") or "node", str(entry)]
