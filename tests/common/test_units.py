"""Small units with real files and fds: the log file, keys and names, argument parsing, the event loop."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, mcpsingleton_exe

from mcpsingleton.broker.eventloop import EventLoop
from mcpsingleton.common.cmdline import default_name
from mcpsingleton.common.errors import UsageError
from mcpsingleton.common.logfile import LogFile
from mcpsingleton.common.options import backend_timing, command_index, parse_duration, parse_size, run_prefix
from mcpsingleton.shim.attach import parse_args
from mcpsingleton.shim.keys import env_fingerprint, is_secret_name, key_of, key_parts, redacted_argv

SALT = b"s" * 32


def test_log_rotates_at_its_cap(tmp_path: Path) -> None:
    log = LogFile(str(tmp_path / "k.log"), max_bytes=2000)
    for index in range(100):
        log.write(f"line {index} " + "x" * 40)
    assert (tmp_path / "k.log.1").exists()
    assert (tmp_path / "k.log").stat().st_size <= 2000
    assert "line 99" in (tmp_path / "k.log").read_text()
    assert (tmp_path / "k.log").stat().st_mode & 0o777 == 0o600


def test_log_on_a_full_disk_drops_lines_without_raising(tmp_path: Path) -> None:
    target = tmp_path / "full.log"
    target.symlink_to("/dev/full")
    log = LogFile(str(target))
    log.write("first")
    log.write("second")
    assert log.dropped == 2


def test_long_log_lines_are_cut(tmp_path: Path) -> None:
    log = LogFile(str(tmp_path / "k.log"))
    log.write("z" * 100_000)
    text = (tmp_path / "k.log").read_text()
    assert len(text) < 5000 and "more chars" in text


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("API_TOKEN", True),
        ("GITHUB_PERSONAL_ACCESS_TOKEN", True),
        ("OPENAI_API_KEY", True),
        ("DB_PASSWORD", True),
        ("PWD", False),
        ("SHLVL", False),
        ("SSH_AUTH_SOCK", False),
        ("MCPSINGLETON_KEY", False),
        ("HOME", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_env_fingerprint_depends_on_secret_values_only() -> None:
    base = {"API_TOKEN": "a", "PWD": "/x", "TERM_SESSION_ID": "1"}
    same = env_fingerprint(base, [], SALT)
    assert env_fingerprint({**base, "PWD": "/y", "TERM_SESSION_ID": "2", "SHLVL": "3"}, [], SALT) == same
    assert env_fingerprint({**base, "API_TOKEN": "b"}, [], SALT) != same
    assert env_fingerprint({**base, "REGION": "eu"}, ["REGION"], SALT) != env_fingerprint(
        {**base, "REGION": "us"}, ["REGION"], SALT
    )
    assert env_fingerprint(base, [], b"t" * 32) != same, "salted"


def compute_key(*args: object) -> str:
    return key_of(key_parts(*args))  # type: ignore[arg-type]


def test_keys_follow_scope(tmp_path: Path) -> None:
    argv = [sys.executable, "server.py"]
    a, b = str(tmp_path), "/"
    assert compute_key(argv, "cwd", a, {}, [], SALT) != compute_key(argv, "cwd", b, {}, [], SALT)
    assert compute_key(argv, "global", a, {}, [], SALT) == compute_key(argv, "global", b, {}, [], SALT)
    assert compute_key(argv, "isolated", a, {}, [], SALT) != compute_key(argv, "isolated", a, {}, [], SALT)
    absolute = shutil.which("python3")
    assert absolute
    assert compute_key(["python3", "x"], "global", a, {}, [], SALT) == compute_key(
        [absolute, "x"], "global", b, {}, [], SALT
    ), "a program found on PATH hashes like its absolute path"


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["npx", "-y", "@modelcontextprotocol/server-everything"], "server-everything"),
        (["node", "/a/node_modules/@x/server-everything/dist/index.js", "stdio"], "server-everything"),
        (["uvx", "mcp-server-time"], "mcp-server-time"),
        (["npx", "-y", "@upstash/context7-mcp@latest"], "context7-mcp"),
        (["python", "-m", "mcp_server_git"], "mcp_server_git"),
        (["env", "GITHUB_TOKEN=ghp_s3cret", "server"], "server"),
        (["env", "-u", "HOME", "A_KEY=s3cret", "/usr/bin/github-mcp"], "github-mcp"),
        (["uvx", "--with", "mcp<2", "x"], "x"),
        (["uvx", "--from", "git+https://s3cret@host/r.git", "mcp-x"], "mcp-x"),
        (["docker", "run", "-i", "--rm", "-e", "TOKEN", "ghcr.io/github/github-mcp-server:v1"], "github-mcp-server"),
        (["docker", "run", "-it", "-e", "TOKEN=s3cret", "--network", "host", "mcp/fetch"], "fetch"),
        (["npx", "-y", "@scope/pkg@1.2", "--flag", "v"], "pkg"),
        (["sh", "-c", "API_KEY=s3cret exec npx -y 'pkg'"], "pkg"),
        (["/bin/sh", "-c", "python /tmp/daemonize.py; exec python x.py"], "daemonize"),
        (["node", "--require", "/s3cret/hook.js", "/a/server-everything/dist/index.js"], "server-everything"),
        (["API_TOKEN=s3cret"], "server"),
    ],
)
def test_default_names(argv: list[str], name: str) -> None:
    assert default_name(argv) == name


def test_secret_values_in_a_command_are_masked_for_display() -> None:
    argv = ["env", "GITHUB_TOKEN=ghp_1", "REGION=eu", "srv", "--api-key", "sk-2", "--token=t3", "--port", "80"]
    assert redacted_argv(argv) == ["env", "GITHUB_TOKEN=***", "REGION=eu", "srv", "--api-key", "***", "--token=***",
                                   "--port", "80"]


def test_durations_and_sizes() -> None:
    assert [parse_duration(t) for t in ("0", "250ms", "30s", "5m", "2h", "1.5")] == [0, 0.25, 30, 300, 7200, 1.5]
    assert [parse_size(t) for t in ("512M", "2G", "300MiB", "1024")] == [512 << 20, 2 << 30, 300 << 20, 1024]
    for bad in ("soon", "-1s"):
        with pytest.raises(UsageError):
            parse_duration(bad)
    with pytest.raises(UsageError):
        parse_size("lots")


def test_run_arguments() -> None:
    options = parse_args(["--scope", "global", "--name=x", "--env-key", "A", "--env-key", "B", "--", "npx", "--y"])
    assert (options.scope, options.name, options.env_keys, options.command) == (
        "global",
        "x",
        ["A", "B"],
        ["npx", "--y"],
    )
    assert parse_args(["node", "s.js", "--flag"]).command == ["node", "s.js", "--flag"]
    assert parse_args(["x"]).scope == "auto", "the sharing policy decides unless told"
    for bad in (["--scope", "world", "--", "x"], ["--bogus", "--", "x"], ["--name"], ["--"], ["--max-procs", "0"]):
        with pytest.raises(UsageError):
            parse_args(bad)


def test_lazy_is_an_on_off_option_read_only_before_the_command() -> None:
    assert parse_args(["--lazy", "--name", "x", "srv", "--lazy"]).lazy is True
    assert parse_args(["--lazy", "--", "srv"]).command == ["srv"]
    assert parse_args(["srv", "--lazy"]).lazy is False  # the server's own word
    with pytest.raises(UsageError, match="takes no value"):
        parse_args(["--lazy=yes", "srv"])
    written = run_prefix("srv", name="n", lazy=True)
    assert written == ["run", "--name", "n", "--lazy"] and run_prefix("srv", lazy=False) == ["run"]
    assert command_index([*written, "srv", "-h"]) == len(written)  # unwrap finds the server's command after it


def test_eager_and_idle_are_run_options_that_outrank_config_toml() -> None:
    assert backend_timing(parse_args(["srv"]), None, None) == (True, 600.0)  # lazy by default, idle 10m
    assert backend_timing(parse_args(["srv"]), False, "30s") == (False, 30.0)  # config.toml: lazy = false, idle
    assert backend_timing(parse_args(["--eager", "--idle", "0", "srv"]), True, "30s") == (False, 0.0)
    assert backend_timing(parse_args(["--lazy", "srv"]), False, None) == (True, 600.0)
    with pytest.raises(UsageError, match="contradict"):
        parse_args(["--lazy", "--eager", "srv"])
    with pytest.raises(UsageError, match="invalid duration"):
        parse_args(["--idle", "soon", "srv"])
    assert run_prefix("srv", eager=True, idle="5m") == ["run", "--eager", "--idle", "5m"]


@pytest.mark.parametrize(
    ("argv", "command", "name"),
    [
        (["npx", "-y", "pkg", "-h"], ["npx", "-y", "pkg", "-h"], None),
        (["--name", "x", "srv", "--scope", "global", "--help"], ["srv", "--scope", "global", "--help"], "x"),
        (["--name", "-h", "srv"], ["srv"], "-h"),
        (["--name", "--", "srv", "--", "a"], ["srv", "--", "a"], "--"),
        (["--", "-srv"], ["-srv"], None),
    ],
)
def test_run_reads_its_options_only_before_the_command(argv: list[str], command: list[str], name: str | None) -> None:
    """As env/nohup/sudo: a server's own -h or --scope (Gemini CLI drops the `--`) is the server's."""
    options = parse_args(argv)
    assert (options.command, options.name, options.scope) == (command, name, "auto")


def test_run_option_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPSINGLETON_LINGER", "30s")
    assert parse_args(["x"]).linger == "30s"
    assert parse_args(["--linger", "0", "x"]).linger == "0"
    monkeypatch.setenv("MCPSINGLETON_LINGER", "soon")
    with pytest.raises(UsageError, match="MCPSINGLETON_LINGER"):
        parse_args(["x"])


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        ([], ""),
        (["bogus"], ""),
        (["ls", "--bogus"], "ls"),
        (["ls", "extra"], "ls"),
        (["stop"], "stop"),
        (["restart"], "restart"),
        (["logs"], "logs"),
        (["explain"], "explain"),
        (["wrap", "--scope", "world"], "wrap"),
        (["wrap", "no-such-client"], "wrap"),
        (["unwrap", "no-such-client"], "unwrap"),
        (["run"], "run"),
        (["run", "--bogus", "x"], "run"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_every_usage_error_is_one_line_naming_the_help_and_exits_2(
    argv: list[str], command: str, tmp_path: Path
) -> None:
    env = {**os.environ, "MCPSINGLETON_HOME": str(tmp_path)}
    out = subprocess.run([mcpsingleton_exe(), *argv], capture_output=True, text=True, env=env, timeout=30)
    assert (out.returncode, out.stdout) == (2, "")
    [line] = out.stderr.splitlines()
    help_command = f"mcpsingleton {command}".strip()
    assert line.startswith("mcpsingleton: ") and line.endswith(f"; see {help_command} --help")


def test_run_usage_error_exit_status() -> None:
    out = subprocess.run([mcpsingleton_exe(), "run", "--scope", "world", "--", "x"], capture_output=True, text=True)
    assert out.returncode == 2 and "--scope: invalid value 'world'" in out.stderr
    assert (
        "mcpsingleton run"
        in subprocess.run([mcpsingleton_exe(), "run", "--help"], capture_output=True, text=True).stdout
    )


def test_event_loop_timers_fds_and_signals() -> None:
    loop = EventLoop()
    events: list[str] = []
    read_end, write_end = os.pipe()
    loop.add_reader(read_end, lambda: (events.append(os.read(read_end, 10).decode()), loop.remove_reader(read_end)))
    cancelled = loop.call_later(0.01, lambda: events.append("cancelled"))
    cancelled.cancel()
    loop.call_later(0.02, lambda: os.write(write_end, b"data"))
    loop.add_signal_handler(__import__("signal").SIGUSR1, lambda: events.append("usr1"))
    loop.call_later(0.03, lambda: os.kill(os.getpid(), __import__("signal").SIGUSR1))
    loop.call_later(0.2, loop.stop)
    started = time.monotonic()
    loop.run()
    assert events == ["data", "usr1"]
    assert time.monotonic() - started < 2
    loop.close()
    os.close(read_end)
    os.close(write_end)


def test_the_readme_user_venv_recipe_works_in_a_fresh_home(tmp_path: Path) -> None:
    """Its lines run as written in an empty HOME; only `pip install /path/to/clone` is stood in for (no
    network here): the venv gets this install's console script."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    recipe = readme.split("# or a user venv from a clone:\n", 1)[1].split("mcpsingleton wrap", 1)[0]
    venv_line, *rest = recipe.strip().splitlines()
    assert venv_line.startswith("python3 -m venv ~/.local/share/mcpsingleton && ") and "pip install" in venv_line
    stand_in = f"{sys.executable} -m venv --without-pip ~/.local/share/mcpsingleton && " \
        f"ln -s {mcpsingleton_exe()} ~/.local/share/mcpsingleton/bin/mcpsingleton"
    env = {"HOME": str(tmp_path), "PATH": f"{tmp_path}/.local/bin:/usr/bin:/bin"}
    done = subprocess.run(["sh", "-ec", "\n".join([stand_in, *rest, "mcpsingleton --version"])],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mcpsingleton, version ")


def test_a_handover_note_counts_only_for_the_broker_that_follows_it(tmp_path: Path) -> None:
    """A broker none followed (its sessions had ended) leaves a note; a broker started a day later is no restart."""
    from mcpsingleton.broker.handover import HANDED_OVER, HANDED_OVER_WINDOW, restarts_handed_over

    state = tmp_path / "broker.json"  # the one broker's: one note per key it handed over
    assert restarts_handed_over(str(state)) == {}
    state.write_text(json.dumps({"key": "broker", "broker_pid": 1, HANDED_OVER: {"k": 3}}))
    assert restarts_handed_over(str(state)) == {"k": 3}
    old = time.time() - HANDED_OVER_WINDOW - 1
    os.utime(state, (old, old))
    assert restarts_handed_over(str(state)) == {}
    state.write_text(json.dumps({"key": "broker", HANDED_OVER: {"k": "many", "j": -1}}))
    assert restarts_handed_over(str(state)) == {}
    state.write_text(json.dumps({"key": "broker", HANDED_OVER: "many"}))
    assert restarts_handed_over(str(state)) == {}


def test_the_shim_takes_the_welcome_line_only_and_leaves_what_follows_to_its_waiter(tmp_path: Path) -> None:
    """A session whose backend can never start is told `exit 1` right after `ok`: the shim read both at once,
    found no welcome, attached again and started the backend a second time (two `sharing:` lines in its log)."""
    import socket
    import threading

    from mcpsingleton.shim.attach import try_attach

    path = str(tmp_path / "broker.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def broker() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)  # the hello (its fds are dropped)
        conn.sendall(b"ok\nexit 1\n")
        conn.close()

    answering = threading.Thread(target=broker)
    answering.start()
    read_end, write_end = os.pipe()
    try:
        conn = try_attach(path, b"MCPS2 attach k\n", fds=(read_end, write_end))
        answering.join(10)
        assert conn is not None, "welcomed"
        assert conn.recv(64) == b"exit 1\n", "the line after the welcome is left for the waiter"
        conn.close()
    finally:
        os.close(read_end)
        os.close(write_end)
        listener.close()
