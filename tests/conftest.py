"""Shared fixtures: a private MCPSINGLETON_HOME per test, real servers, and a process census."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
EVERYTHING_JS = ROOT / ".cache/npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
FAKE_SERVER = Path(__file__).resolve().parent / "fake_server.py"


PROCESS_FIXTURES = frozenset(
    {"home", "bare_home", "fake_server", "everything", "time_server", "procs", "started", "family"}
)
"""Fixtures that start, or isolate, real processes (shim, broker, servers): a test using one is marked
`real_process`, and shell/test.sh runs those again in portable mode. Others that start processes are marked
by hand."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_process)


def mcpsingleton_exe() -> str:
    found = shutil.which("mcpsingleton", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    assert found, "mcpsingleton is not installed in this environment; run `pip install -e .[test]`"
    return found


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short private state dir (sockets need short paths); everything it started is killed after."""
    directory = Path(tempfile.mkdtemp(prefix="ms-", dir="/tmp"))
    monkeypatch.setenv("MCPSINGLETON_HOME", str(directory))
    monkeypatch.delenv("MCPSINGLETON_LINGER", raising=False)
    yield directory
    for process in processes_of(directory):
        try:
            process.kill()
        except psutil.Error:
            pass
    shutil.rmtree(directory, ignore_errors=True)


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


@pytest.fixture(scope="session")
def everything() -> list[str]:
    """argv of @modelcontextprotocol/server-everything over stdio (installed by .ci/run)."""
    if not EVERYTHING_JS.exists():
        pytest.fail(f"server-everything is not installed at {EVERYTHING_JS}; run `bash .ci/run` once")
    return [shutil.which("node") or "node", str(EVERYTHING_JS), "stdio"]


@pytest.fixture(scope="session")
def time_server() -> list[str]:
    """argv of mcp-server-time (PyPI), from this environment."""
    found = shutil.which("mcp-server-time", path=os.path.dirname(sys.executable))
    if not found:
        pytest.fail("mcp-server-time is not installed; run `pip install -e .[test]`")
    return [found]


@pytest.fixture(scope="session")
def fake_server() -> list[str]:
    return [sys.executable, str(FAKE_SERVER)]


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
