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
from helpers import FAKE_SERVER, TESTS, mcpsingleton_exe

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

    def __init__(self, own_env: dict[str, str], spawns: list[dict], options: tuple[str, ...] = ()) -> None:
        shim = [mcpsingleton_exe(), "run", "--linger", "0", *options, "--", sys.executable, str(FAKE_SERVER)]
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


def backends_for(clients: list[tuple[dict[str, str], list[dict]]], options: tuple[str, ...] = ()) -> list[int]:
    """Start every client at once (sessions held open together); each spawn's backend pid, in order."""
    started = [ClientProcess(env, spawns, options) for env, spawns in clients]
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


def test_env_key_cfbundleidentifier_keys_by_client_app(home: Path) -> None:
    """macOS privacy permissions (TCC) go to the app that started a process: a backend started under
    Claude Desktop reads ~/Documents with Claude Desktop's grant, for every session it serves. Apps
    started from Finder/Dock carry their bundle id in the environment; `--env-key __CFBundleIdentifier`
    gives each app its own backend where that matters (README); by default they share."""
    bundles = ("com.anthropic.claudefordesktop", "com.todesktop.cursor")
    apps = [terminal(__CFBundleIdentifier=bundle) for bundle in bundles]
    shared = backends_for([(env, [spawn()]) for env in apps])
    assert len(set(shared)) == 1
    by_app = backends_for([(env, [spawn()]) for env in apps], ("--env-key", "__CFBundleIdentifier"))
    assert len(set(by_app)) == 2


def test_portable_mode_falls_back_to_secrets_and_env_keys(home: Path) -> None:
    own = terminal(MCPSINGLETON_PORTABLE="1")
    pids = backends_for(
        [(own, [spawn(MEMORY_FILE_PATH="/tmp/a.jsonl"), spawn(MEMORY_FILE_PATH="/tmp/b.jsonl"), spawn(API_TOKEN="x")])]
    )
    assert pids[0] == pids[1] != pids[2], "without the client's env only secrets and --env-key separate"


def test_config_set_names_are_what_differs_from_the_client_minus_what_clients_add() -> None:
    from mcpsingleton.shim.keys import config_set_names

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


# ---- the environments real clients pass (recorded; tests/test_clients.py runs the clients themselves) ------------

FIXTURES = TESTS / "fixtures" / "clients"
RECORDED = ("claude-code-2.1.197", "gemini-cli-0.61.0", "gemini-cli-0.61.0-ci", "codex-0.171.0")
"""Each client's own environment and what it passed to a stdio server, all started from one terminal
environment holding one secret-named variable, SOME_API_TOKEN (value redacted)."""
SECRET = "SOME_API_TOKEN"
SALT = b"s" * 32


def recorded(name: str, **config: str) -> tuple[dict[str, str], dict[str, str]]:
    """(what the client passed to the server plus the entry's `config` env, the client's own env)."""
    spawn = json.loads((FIXTURES / f"{name}.json").read_text())
    return {**spawn["server_env"], **config}, spawn["client_env"]


def without_secret(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name != SECRET}


def key_of(server_env: dict[str, str], client_env: dict[str, str]) -> str:
    from mcpsingleton.shim import keys

    argv = ["/usr/bin/node", "/srv/server-everything/dist/index.js"]
    return keys.key_of(keys.key_parts(argv, "cwd", "/home/user/project", server_env, [], SALT, client_env))


def test_every_recorded_client_shares_with_a_terminal_start_when_no_secret_is_around() -> None:
    """Claude Code's seven variables (one per session), Gemini's two, Codex's PATH edit: none separates."""
    terminal_env = without_secret(recorded("claude-code-2.1.197")[1])
    direct = key_of(terminal_env, terminal_env)
    for name in RECORDED:
        server_env, client_env = recorded(name)
        assert key_of(without_secret(server_env), without_secret(client_env)) == direct, name


def test_the_same_entry_env_shares_across_recorded_clients_and_a_different_value_separates() -> None:
    keys_a = {name: key_of(*map(without_secret, recorded(name, MEMORY_FILE_PATH="/a.jsonl"))) for name in RECORDED}
    keys_b = {name: key_of(*map(without_secret, recorded(name, MEMORY_FILE_PATH="/b.jsonl"))) for name in RECORDED}
    assert len(set(keys_a.values())) == 1, keys_a
    assert len(set(keys_b.values())) == 1, keys_b
    assert keys_a["codex-0.171.0"] != keys_b["codex-0.171.0"], "the config's value still separates"


def test_a_secret_only_claude_code_passes_on_separates_it_and_is_named() -> None:
    """Gemini CLI and Codex strip SOME_API_TOKEN, Claude Code passes it: env rule, by design (DESIGN.md)."""
    from mcpsingleton.shim.keys import key_env_names

    keys = {name: key_of(*recorded(name)) for name in RECORDED}
    assert keys["gemini-cli-0.61.0"] == keys["gemini-cli-0.61.0-ci"] == keys["codex-0.171.0"]
    assert keys["claude-code-2.1.197"] != keys["codex-0.171.0"]

    def separating(server_env: dict[str, str], client_env: dict[str, str]) -> dict[str, str]:
        return key_env_names(server_env, [], client_env)

    assert separating(*recorded("claude-code-2.1.197")) == {SECRET: "secret-named"}
    assert separating(*recorded("codex-0.171.0")) == {}
    assert separating(*recorded("codex-0.171.0", REGION="eu")) == {"REGION": "set by the client config"}


def test_a_path_set_by_the_config_separates_only_with_env_key() -> None:
    from mcpsingleton.shim.keys import env_fingerprint

    server_env, client_env = recorded("codex-0.171.0")
    other = {**server_env, "PATH": "/opt/other/bin:/usr/bin"}
    assert env_fingerprint(server_env, [], SALT, client_env) == env_fingerprint(other, [], SALT, client_env)
    assert env_fingerprint(server_env, ["PATH"], SALT, client_env) != env_fingerprint(other, ["PATH"], SALT, client_env)


def _explain(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    argv = [mcpsingleton_exe(), "explain", *args, "--", "node", "/srv/server-everything/dist/index.js"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)


def test_explain_names_the_variables_that_separate_never_their_values(home: Path) -> None:
    env = {**os.environ, "WEATHER_API_KEY": "hunter2-value", "REGION": "eu"}
    env.pop("MCPSINGLETON_PORTABLE", None)
    out = _explain(env, "--json")
    decision = json.loads(out.stdout)
    assert {"scope", "sharing", "policy"} <= decision.keys()
    assert decision["env_key"] == {"WEATHER_API_KEY": "secret-named"}
    text = _explain(env).stdout
    assert "WEATHER_API_KEY (secret-named)" in text and "PATH" in text and "CLAUDE_CODE_*" in text
    assert "hunter2-value" not in out.stdout + text


def test_explain_warns_where_only_secrets_and_env_keys_separate(home: Path) -> None:
    portable = _explain({**os.environ, "MCPSINGLETON_PORTABLE": "1"})
    assert "warning:" in portable.stdout and "--env-key" in portable.stdout
    assert json.loads(_explain({**os.environ, "MCPSINGLETON_PORTABLE": "1"}, "--json").stdout)["env_rule"] == "secrets"


@reads_client_env
def test_ls_warns_where_only_secrets_and_env_keys_separate(home: Path, fake_server: list[str]) -> None:
    from helpers import RawClient, shim

    portable = {**os.environ, "MCPSINGLETON_PORTABLE": "1"}
    session = RawClient(shim(fake_server, "--linger", "0"), env=portable)
    try:
        session.initialize()
        tables = [
            subprocess.run([mcpsingleton_exe(), "ls"], capture_output=True, text=True, timeout=30, env=env).stdout
            for env in (dict(os.environ), portable)
        ]
    finally:
        session.close()
    assert "warning:" not in tables[0] and "fake_server" in tables[0]
    assert "warning: the client's environment cannot be read" in tables[1] and "--env-key" in tables[1]


# ---- reading the client's environment where there is no /proc (macOS: sysctl KERN_PROCARGS2) -------------------


def procargs(path: str, argv: list[str], environ: list[str]) -> bytes:
    """A KERN_PROCARGS2 buffer as macOS lays it out: argc, exec path, padding, argv, environ, apple strings."""
    words = [*argv, *environ, "", "ptr_munge=", ""]
    return len(argv).to_bytes(4, sys.byteorder) + path.encode() + b"\0\0\0\0" + "\0".join(words).encode()


def test_procargs_are_read_as_exec_path_and_environment() -> None:
    from mcpsingleton.common.processes import parse_procargs

    raw = procargs("/opt/claude/claude", ["claude", "--resume"], ["HOME=/Users/u", "PATH=/bin:/usr/bin", "EMPTY="])
    assert parse_procargs(raw) == ("/opt/claude/claude", {"HOME": "/Users/u", "PATH": "/bin:/usr/bin", "EMPTY": ""})
    assert parse_procargs(b"\1\0") is None and parse_procargs(procargs("", ["x"], [])) is None


def test_without_proc_the_client_env_comes_from_procargs_past_shells(monkeypatch: pytest.MonkeyPatch) -> None:
    """The macOS calls cannot run here: sysctl and proc_pidinfo are replaced by a table of two processes."""
    from mcpsingleton.common import processes
    from mcpsingleton.shim import keys

    shell, client = os.getppid(), 4242
    started = {
        shell: ("/bin/sh", {"MEMORY_FILE_PATH": "/a", "HOME": "/Users/u"}),
        client: ("/Applications/Claude.app/Contents/MacOS/claude", {"HOME": "/Users/u"}),
    }
    monkeypatch.setenv("MCPSINGLETON_PORTABLE", "1")
    monkeypatch.setattr(processes, "_procargs", started.get)
    monkeypatch.setattr(processes.ProcArgs, "parent", staticmethod({shell: client}.get))
    assert keys.client_environ() == {"HOME": "/Users/u"}
    assert keys.reads_client_environ() is False, "our own pid is not in the table"


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="checks a system without KERN_PROCARGS2")
def test_where_neither_proc_nor_procargs_works_nothing_is_attributed_to_the_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mcpsingleton.shim import keys

    monkeypatch.setenv("MCPSINGLETON_PORTABLE", "1")  # the macOS reader, really called: Linux has no such sysctl
    assert keys.client_environ() is None and keys.reads_client_environ() is False
