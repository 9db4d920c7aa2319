"""Issue 5: ls, stop, logs, metrics, completions and the demo, against real brokers and sessions."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import anyio
from helpers import ROOT, RawClient, ls_json, mcpsingleton_exe, result_text, shim, shim_params, wait_for
from mcp import Client
from mcp_types import Implementation


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([mcpsingleton_exe(), *args], capture_output=True, text=True, timeout=timeout)


def test_ls_shows_sessions_with_client_names(home: Path, fake_server: list[str]) -> None:
    snapshot: dict[str, object] = {}

    async def main() -> None:
        ready, done = anyio.Event(), anyio.Event()
        opened = 0

        async def session(name: str) -> None:
            nonlocal opened
            info = Implementation(name=name, version="1.0")
            async with Client(shim_params(fake_server), client_info=info) as client:
                await client.call_tool("echo", {"text": name})
                opened += 1
                if opened == 3:
                    ready.set()
                await done.wait()

        async with anyio.create_task_group() as group:
            for name in ("alpha", "beta", "gamma"):
                group.start_soon(session, name)
            await ready.wait()
            snapshot["json"] = await anyio.to_thread.run_sync(ls_json)
            snapshot["table"] = await anyio.to_thread.run_sync(lambda: cli("ls").stdout)
            done.set()

    anyio.run(main)
    (entry,) = snapshot["json"]
    assert sorted(c["client"] for c in entry["clients"]) == ["alpha", "beta", "gamma"]
    assert all(isinstance(c["pid"], int) for c in entry["clients"])
    for field in (
        "key",
        "name",
        "command",
        "cwd",
        "scope",
        "broker_pid",
        "backend_pid",
        "state",
        "started_at",
        "restarts",
        "memory_bytes",
    ):
        assert field in entry, field
    assert entry["command"] == fake_server and entry["scope"] == "cwd" and entry["memory_bytes"] > 1_000_000
    table = snapshot["table"]
    assert "fake_server" in table and re.search(r"\b3 \((alpha|beta|gamma)", table)


def ls_on_a_terminal(columns: int) -> str:
    """`ls` with its stdout on a pseudo-terminal `columns` wide, as a person runs it."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {name: value for name, value in os.environ.items() if name != "COLUMNS"}
    try:
        done = subprocess.run([mcpsingleton_exe(), "ls"], stdout=terminal, env=env, timeout=30)
        assert done.returncode == 0
        os.close(terminal)
        output = b""
        with contextlib.suppress(OSError):  # EIO once everything written has been read
            while chunk := os.read(controller, 65536):
                output += chunk
    finally:
        os.close(controller)
    return output.decode().replace("\r\n", "\n")


def test_ls_fits_the_terminal_and_a_pipe_gets_every_character(home: Path, fake_server: list[str]) -> None:
    """A long policy and many client names made a ~230-column row: cut with `…` (and, on a narrow terminal,
    the least needed columns left out) to the terminal's width; a pipe still gets all of it."""
    clients = [RawClient(shim(fake_server)) for _ in range(3)]
    for number, client in enumerate(clients):
        client.initialize(name=f"a-client-with-a-long-name-{number}")
    [entry] = ls_json()
    narrow, wide = ls_on_a_terminal(80), ls_on_a_terminal(120)
    piped = cli("ls").stdout
    assert all(client.close() == 0 for client in clients)

    assert entry["policy"] in piped and entry["key"][:12] in piped
    assert max(len(line) for line in piped.splitlines()) > 120
    for output, width in ((narrow, 80), (wide, 120)):
        header, row, *_notes = output.splitlines()  # notes: portable mode says MEMORY is RSS, the env rule weaker
        assert all(len(line) <= width for line in output.splitlines()) and row.endswith("…")
        assert "fake_server" in row and "3 (a-client" in row and "RESTARTS" in header
    assert "KEY" not in narrow and entry["key"][:12] in wide


def test_ls_all_groups_unmanaged_duplicates(home: Path, fake_server: list[str], tmp_path: Path) -> None:
    script = tmp_path / "demo-mcp-server.py"
    shutil.copy(fake_server[1], script)
    unmanaged = [RawClient([sys.executable, str(script)]) for _ in range(2)]
    for client in unmanaged:
        client.initialize()
    try:
        entries = ls_json_all()
        (group,) = [e for e in entries if not e.get("managed") and str(script) in e["command"]]
        assert group["count"] == 2
        assert sorted(group["pids"]) == sorted(c.process.pid for c in unmanaged)
        assert 0 < group["savable_bytes"] < group["memory_bytes"]
        table = cli("ls", "--all").stdout
        assert f"2× {os.path.basename(sys.executable)} {script}" in table
        assert "would save about" in table
    finally:
        for client in unmanaged:
            client.close()


def ls_json_all() -> list[dict]:
    import json

    out = cli("ls", "--json", "--all")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_stop_by_name_ends_sessions_with_eof(home: Path, fake_server: list[str]) -> None:
    clients = [RawClient(shim(fake_server, "--name", "stoppable")) for _ in range(2)]
    for client in clients:
        client.initialize()
    out = cli("stop", "stoppable")
    assert out.returncode == 0 and "stopped stoppable" in out.stdout
    for client in clients:
        assert client.read(timeout=5) is None, "end of file, not a hang"
        assert client.process.wait(timeout=5) == 0
    assert ls_json() == []
    missing = cli("stop", "stoppable")
    assert missing.returncode == 1 and missing.stderr.startswith("mcpsingleton: no running backend")


def test_logs_by_name_and_key(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--name", "loggy"))
    client.initialize()
    (entry,) = ls_json()
    by_name = cli("logs", "loggy").stdout
    assert "started for loggy" in by_name and "backend: fake server" in by_name
    assert cli("logs", entry["key"][:8]).stdout == by_name
    assert client.close() == 0
    assert cli("stop", "loggy").returncode == 0
    assert wait_for(lambda: not ls_json(), timeout=5)
    assert "started for loggy" in cli("logs", "loggy").stdout, "logs stay readable after the broker is gone"
    assert cli("logs", "nothing-like-this").returncode == 1


def test_metrics_prometheus_text(home: Path, fake_server: list[str]) -> None:
    clients = [RawClient(shim(fake_server, "--name", "metered")) for _ in range(2)]
    for client in clients:
        client.initialize()
        assert result_text(client.call("echo", {"text": "x"})) == "x"
    text = cli("metrics").stdout
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"# (HELP|TYPE) mcpsingleton_\w+ ", line), line
            continue
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    labels = '{name="metered",key="' + ls_json()[0]["key"] + '",slot="1"}'
    assert samples["mcpsingleton_backends"] == 1
    assert samples[f"mcpsingleton_sessions{labels}"] == 2
    assert samples[f"mcpsingleton_backend_up{labels}"] == 1
    assert samples[f"mcpsingleton_requests_total{labels}"] >= 4
    assert samples[f"mcpsingleton_backend_memory_bytes{labels}"] > 1_000_000
    assert samples[f"mcpsingleton_backend_processes{labels}"] >= 1
    assert "mcpsingleton_orphans_reaped_total" in samples


def test_completions_generate_and_match_shipped_files() -> None:
    for shell in ("bash", "zsh", "fish"):
        out = subprocess.run(
            [mcpsingleton_exe()],
            env={**os.environ, "_MCPSINGLETON_COMPLETE": f"{shell}_source"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0 and "_MCPSINGLETON_COMPLETE" in out.stdout
        shipped = (ROOT / "shell" / "completions" / f"mcpsingleton.{shell}").read_text()
        assert out.stdout == shipped, f"run shell/completions.sh to refresh the {shell} completions"


def test_demo_runs(home: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "shell" / "demo.py"), "--sessions", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Echo: hello from demo-client-2" in out.stdout
    shown = re.search(r"server-everything\s+global\s+shared\s+running\s+3 ", out.stdout)
    assert shown, "the catalog shares it everywhere"
    saved = re.search(r"saved:\s+([\d.]+) MiB", out.stdout)
    assert saved and float(saved.group(1)) > 0
    assert "nothing left running" in out.stdout


def test_ls_watch_refreshes_until_interrupted(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--name", "watched"))
    client.initialize()
    watcher = subprocess.Popen([mcpsingleton_exe(), "ls", "--watch"], stdout=subprocess.PIPE, text=True)
    time.sleep(3)
    watcher.send_signal(signal.SIGINT)
    output, _ = watcher.communicate(timeout=10)
    assert watcher.returncode == 0
    assert output.count("mcpsingleton ls (Ctrl-C to quit)") >= 2
    assert "watched" in output


def test_a_backend_that_never_starts_is_logged_without_nested_parentheses(home: Path) -> None:
    """The log's sharing line once ended `…; shared per directory (its first backend never worked))`."""
    initialize = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",' \
        b'"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}\n'
    done = subprocess.run([mcpsingleton_exe(), "run", "--", "false"], input=initialize, capture_output=True, timeout=30)
    assert done.returncode == 1

    def sharing_lines() -> list[str]:
        logs = "".join(log.read_text() for log in (home / "logs").glob("*.log"))
        return [line for line in logs.splitlines() if " sharing: " in line]

    [line] = wait_for(sharing_lines, timeout=30)  # the broker may log it after the session ended (slow under load)
    assert line.endswith("sharing: shared (default: no catalog entry; shared per directory; kept, as its first"
                         " backend never worked)")
