"""Issue 12 env rule with real processes: a client process with its own env spawns shims with env + config vars.

What must not share: configs that differ in a variable the client config sets for the server. What must
share: the same config from two terminals, two client processes, and Claude Code, Gemini CLI and Codex
(each adds its own variables per spawn, or passes only a minimal env).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAKE_SERVER, mcpsingleton_exe

pytestmark = pytest.mark.timeout(60)

reads_client_env = pytest.mark.skipif(
    sys.platform != "linux" or os.environ.get("MCPSINGLETON_PORTABLE") == "1",
    reason="the client's own env is read from /proc (Linux); elsewhere only secrets and --env-key separate",
)

CLIENT = r"""
import json, os, subprocess, sys
shim, spawns = json.loads(sys.argv[1]), json.loads(sys.argv[2])
children = []
for spawn in spawns:
    if spawn["mode"] == "minimal":  # Codex: a fixed set of variables plus the entry's env
        kept = ("HOME", "LANG", "PATH", "SHELL", "TERM")
        env = {k: v for k, v in os.environ.items() if k in kept or k.startswith("MCPSINGLETON_")}  # ours: the test's
    else:  # Claude Code, Gemini CLI: the client's own env (Gemini strips secret-looking names)
        env = {k: v for k, v in os.environ.items() if spawn["mode"] != "strip" or "KEY" not in k}
    env.update(spawn["env"])
    # through a shell that stays the shim's parent (no exec), as `sh -c "mcpsingleton run …"` configs do
    argv = ["sh", "-c", '"$@"; exit $?', "sh", *shim] if spawn["shell"] else shim
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    def send(message):
        child.stdin.write((json.dumps(message) + "\n").encode()); child.stdin.flush()
    send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
          "capabilities": {}, "clientInfo": {"name": "env-client", "version": "1"}}})
    child.stdout.readline()
    send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}})
    reply = json.loads(child.stdout.readline())
    print(json.loads(reply["result"]["content"][0]["text"])["pid"], flush=True)
    children.append(child)
sys.stdin.read()
for child in children:
    child.stdin.close()
    child.wait()
"""


class ClientProcess:
    """A stand-in for an MCP client: its own environment, spawning shims the way a client config says."""

    def __init__(self, own_env: dict[str, str], spawns: list[dict]) -> None:
        shim = [mcpsingleton_exe(), "run", "--linger", "0", "--", sys.executable, str(FAKE_SERVER)]
        self.process = subprocess.Popen(
            [sys.executable, "-c", CLIENT, json.dumps(shim), json.dumps(spawns)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=own_env,
            text=True,
        )
        assert self.process.stdout is not None
        self.backend_pids = [int(self.process.stdout.readline()) for _ in spawns]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=20)


def spawn(mode: str = "full", shell: bool = False, **env: str) -> dict:
    return {"mode": mode, "shell": shell, "env": env}


def terminal(**extra: str) -> dict[str, str]:
    """The environment of a terminal the user starts a client in."""
    return {**os.environ, "TERM_SESSION_ID": "t1", "SHLVL": "2", "EDITOR": "vim", **extra}


def backends_for(clients: list[tuple[dict[str, str], list[dict]]]) -> list[int]:
    """Start every client at once (sessions held open together); each spawn's backend pid, in order."""
    started = [ClientProcess(env, spawns) for env, spawns in clients]
    try:
        return [pid for client in started for pid in client.backend_pids]
    finally:
        for client in started:
            client.close()


@reads_client_env
def test_configs_differing_in_a_config_set_variable_never_share(home: Path) -> None:
    pids = backends_for(
        [(terminal(), [spawn(MEMORY_FILE_PATH="/tmp/a.jsonl"), spawn(MEMORY_FILE_PATH="/tmp/b.jsonl")])]
    )
    assert pids[0] != pids[1]


def test_the_same_config_from_two_terminals_shares(home: Path) -> None:
    first = terminal(TERM_SESSION_ID="t1", EDITOR="vim", OLDPWD="/a")
    second = terminal(TERM_SESSION_ID="t2", EDITOR="nano", WINDOWID="77")  # inherited differences only
    pids = backends_for(
        [(first, [spawn(MEMORY_FILE_PATH="/tmp/a.jsonl")]), (second, [spawn(MEMORY_FILE_PATH="/tmp/a.jsonl")])]
    )
    assert len(set(pids)) == 1


def test_claude_gemini_and_codex_sessions_of_one_entry_share(home: Path) -> None:
    entry = {"MEMORY_FILE_PATH": "/tmp/a.jsonl"}
    claude = {"CLAUDECODE": "1", "CLAUDE_CODE_ENTRYPOINT": "cli", "CLAUDE_PROJECT_DIR": "/p", "AI_AGENT": "claude"}
    pids = backends_for(
        [
            (terminal(), [spawn(**entry, **claude, CLAUDE_CODE_SESSION_ID="s1")]),
            (terminal(TERM_SESSION_ID="t2"), [spawn(**entry, **claude, CLAUDE_CODE_SESSION_ID="s2")]),
            (terminal(), [spawn("strip", **entry, GEMINI_CLI="1")]),
            (terminal(), [spawn("minimal", **entry)]),
        ]
    )
    assert len(set(pids)) == 1, "Claude Code ×2, Gemini CLI and Codex share one backend"


@reads_client_env
def test_a_config_variable_equal_to_the_clients_own_value_still_counts_when_it_differs(home: Path) -> None:
    """The client's env has MEMORY_FILE_PATH=/a; a config that sets /b must not join a session that inherited /a."""
    own = terminal(MEMORY_FILE_PATH="/tmp/a.jsonl")
    pids = backends_for([(own, [spawn(), spawn(MEMORY_FILE_PATH="/tmp/b.jsonl"), spawn()])])
    assert pids[0] == pids[2] != pids[1]


@reads_client_env
def test_a_shell_between_client_and_shim_does_not_hide_the_config(home: Path) -> None:
    pids = backends_for(
        [
            (
                terminal(),
                [
                    spawn(shell=True, MEMORY_FILE_PATH="/tmp/a.jsonl"),
                    spawn(shell=True, MEMORY_FILE_PATH="/tmp/b.jsonl"),
                    spawn(MEMORY_FILE_PATH="/tmp/a.jsonl"),
                ],
            )
        ]
    )
    assert pids[0] != pids[1]
    assert pids[0] == pids[2], "through a shell or not, the same config shares"


def test_portable_mode_falls_back_to_secrets_and_env_keys(home: Path) -> None:
    own = terminal(MCPSINGLETON_PORTABLE="1")
    pids = backends_for(
        [(own, [spawn(MEMORY_FILE_PATH="/tmp/a.jsonl"), spawn(MEMORY_FILE_PATH="/tmp/b.jsonl"), spawn(API_TOKEN="x")])]
    )
    assert pids[0] == pids[1] != pids[2], "without the client's env only secrets and --env-key separate"


def test_config_set_names_are_what_differs_from_the_client_minus_what_clients_add() -> None:
    from mcpsingleton.keys import config_set_names

    client = {"PATH": "/bin", "EDITOR": "vim", "MEMORY_FILE_PATH": "/a", "SHLVL": "1"}
    spawned = {
        **client,
        "MEMORY_FILE_PATH": "/b",  # the config changed it
        "REGION": "eu",  # the config added it
        "SHLVL": "2",  # volatile
        "CLAUDECODE": "1",
        "CLAUDE_CODE_SESSION_ID": "s1",
        "GEMINI_CLI": "1",
        "MCPSINGLETON_HOME": "/tmp/x",
    }
    assert config_set_names(spawned, client) == {"MEMORY_FILE_PATH", "REGION"}
    assert config_set_names(spawned, None) == set(), "client env unknown: nothing can be attributed to the config"
