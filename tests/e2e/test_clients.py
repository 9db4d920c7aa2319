"""Issue 25: the real clients — Claude Code, Gemini CLI and Codex, as installed from npm — share one backend.

Each client gets the same entry through its own `mcp add`, in one project directory, started from one
terminal environment (no secret in it). Claude Code and Gemini CLI health-check their servers offline
(`mcp list`). Codex has no such check: `codex exec` starts its MCP servers with the session and then
waits for a network it does not have here, so it is stopped once its session attached. The clients are
installed by shell/install.sh (pinned); without them these tests skip, and tests/test_env_rule.py still
checks the rule on the environments they were recorded to pass (tests/fixtures/clients).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import ROOT, backend_roots, ls_json, mcpsingleton_exe, wait_for

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        os.environ.get("MCPSINGLETON_PORTABLE") == "1",
        reason="the clients start from an environment of their own, so portable mode would not reach the shims",
    ),
]

CLIENT_BIN = ROOT / ".cache/clients/node_modules/.bin"
PINNED = {"claude": "Claude Code 2.1.197", "gemini": "Gemini CLI 0.61.0", "codex": "Codex 0.171.0"}
CHECK_SECONDS = 120


def client(name: str) -> str:
    path = CLIENT_BIN / name
    if not path.exists():
        pytest.skip(f"{PINNED[name]} is not installed in {CLIENT_BIN}; run `bash shell/install.sh` (needs npm)")
    return str(path)


class Workspace:
    """One user: a home for the clients, a project dir, the terminal environment every client starts in."""

    def __init__(self, user_home: Path, home: Path, server: list[str]) -> None:
        self.project = user_home / "project"
        self.project.mkdir(parents=True)
        (user_home / ".gemini").mkdir(parents=True)
        trusted = {str(self.project): "TRUST_FOLDER"}  # Gemini CLI starts no server in an untrusted folder
        (user_home / ".gemini" / "trustedFolders.json").write_text(json.dumps(trusted))
        node_dir = os.path.dirname(server[0])
        self.env = {
            "PATH": f"{node_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(user_home),
            "USER": "user",
            "LOGNAME": "user",
            "LANG": "C.UTF-8",
            "TERM": "xterm-256color",
            "SHELL": "/bin/sh",
            "MCPSINGLETON_HOME": str(home),
        }
        self.home = home
        # no `--` in the entry: Gemini CLI's `mcp add` would drop it anyway; `run` does not need it
        self.entry = [mcpsingleton_exe(), "run", "--linger", "60s", *server]
        self.codex_runs: list[subprocess.Popen] = []

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            argv, cwd=self.project, env=self.env, capture_output=True, text=True, timeout=CHECK_SECONDS
        )
        assert done.returncode == 0, f"{argv[:3]}: {done.stdout}{done.stderr}"
        return done

    def add_entry_to_every_client(self) -> None:
        """The same entry, through each client's own `mcp add`; MCPSINGLETON_HOME in the entry (Codex strips it)."""
        home = f"MCPSINGLETON_HOME={self.home}"
        self.run(client("claude"), "mcp", "add", "everything", "-e", home, "--", *self.entry)
        self.run(client("gemini"), "mcp", "add", "-e", home, "everything", *self.entry)
        self.run(client("codex"), "mcp", "add", "--env", home, "everything", "--", *self.entry)

    def health_check(self, name: str) -> subprocess.Popen:
        argv = [client(name), "mcp", "list"]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}  # Gemini CLI reports on stderr
        return subprocess.Popen(argv, cwd=self.project, env=self.env, text=True, **pipes)

    def start_codex(self) -> None:
        argv = [client("codex"), "exec", "--skip-git-repo-check", "say hi"]
        self.codex_runs.append(
            subprocess.Popen(
                argv,
                cwd=self.project,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def stop_codex(self) -> None:
        for run in self.codex_runs:
            try:
                os.killpg(run.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            run.wait(timeout=20)
        self.codex_runs.clear()

    def attaches(self) -> int:
        """Sessions every broker of this home has served so far (from their logs)."""
        logs = (self.home / "logs").glob("*.log")
        return sum(log.read_text().count(" attached (pid ") for log in logs)


@pytest.fixture
def workspaces(home: Path) -> Iterator[Callable[[list[str]], Workspace]]:
    """Make the workspace for a server's argv, with the entry added to every client; Codex stopped after.

    The user's home is not under /tmp: there Codex refuses to make the per-process tool dir it puts first
    in every server's PATH (`~/.codex/tmp/arg0-linux/codex-arg0XXXXXX`), which the rule must ignore."""
    for name in PINNED:
        client(name)
    user_home = Path(tempfile.mkdtemp(prefix="ms-clients-", dir="/var/tmp"))
    made: list[Workspace] = []

    def make(server: list[str]) -> Workspace:
        made.append(Workspace(user_home, home, server))
        made[-1].add_entry_to_every_client()
        return made[-1]

    try:
        yield make
    finally:
        for space in made:
            space.stop_codex()
        shutil.rmtree(user_home, ignore_errors=True)


def codex_sessions(env: dict[str, str]) -> int:
    return sum("codex" in (c.get("client") or "") for entry in ls_json(env) for c in entry["clients"])


def assert_connected(check: subprocess.Popen) -> None:
    out, _ = check.communicate(timeout=CHECK_SECONDS)
    assert check.returncode == 0 and "onnected" in out, out


def run_concurrently(space: Workspace) -> list[dict]:
    """Two sessions of each client at once (Codex's held until both attached); `ls --json` meanwhile."""
    space.start_codex()
    space.start_codex()
    checks = [space.health_check(name) for name in ("claude", "gemini", "claude", "gemini")]
    for check in checks:
        assert_connected(check)
    assert wait_for(lambda: codex_sessions(space.env) == 2, timeout=60), "codex never attached twice"
    listed = ls_json(space.env)
    space.stop_codex()
    assert space.attaches() == 6
    return listed


def test_claude_code_gemini_cli_and_codex_one_after_another_share_one_backend(workspaces, everything) -> None:
    space = workspaces(everything)
    for name in ("claude", "gemini"):
        assert_connected(space.health_check(name))
    space.start_codex()
    assert wait_for(lambda: codex_sessions(space.env) == 1, timeout=60), "codex never attached"
    space.stop_codex()
    entries = ls_json(space.env)
    assert len(entries) == 1, [(entry["key"], entry["clients"]) for entry in entries]
    assert space.attaches() == 3
    assert len(backend_roots(space.home)) == 1


def test_two_concurrent_sessions_of_each_client_share_one_backend(workspaces, time_server) -> None:
    """mcp-server-time never asks for roots: all six sessions on one backend, `ls` naming its clients."""
    space = workspaces(time_server)
    listed = run_concurrently(space)
    assert len(listed) == 1, [(entry["key"], entry["clients"]) for entry in listed]
    clients = [c["client"] for c in listed[0]["clients"]]
    assert clients.count("codex-mcp-client") == 2, clients  # ls: who shares it (the others have ended)
    assert len(backend_roots(space.home)) == 1


def test_concurrent_clients_of_a_roots_server_share_one_key_and_split_only_by_roots(workspaces, everything) -> None:
    """server-everything asks for roots; Claude Code declares the project dir, Gemini CLI's and Codex's checks
    declare none: while they overlap, one broker (one key) runs one backend per set of roots (DESIGN.md)."""
    space = workspaces(everything)
    listed = run_concurrently(space)
    assert len({entry["key"] for entry in listed}) == 1
    (log,) = [log.read_text() for log in (space.home / "logs").glob("*.log") if log.name != "broker.log"]  # one key
    extra_slots = [line for line in log.splitlines() if "backend slot " in line and " created: " in line]
    assert len(extra_slots) <= 1 and all(line.endswith("declared other roots") for line in extra_slots), log
