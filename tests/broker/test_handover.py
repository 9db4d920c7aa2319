"""Issue 19: a handover (`restart`, SIGTERM) under hostile timing: a call longer than the drain, a request line
half written, `reap` while the broker drains, a session whose cwd was deleted. Real brokers, real signals."""

from __future__ import annotations

import array
import fcntl
import json
import os
import signal
import subprocess
import termios
from pathlib import Path

import pytest
from helpers import RawClient, ls_json, mcpsingleton_exe, result_text, shim, wait_for

RESTART = "restart"


def hand_over(how: str) -> subprocess.Popen | None:
    """Start a handover as a user (`restart`, returned running) or a service manager (SIGTERM) does."""
    if how == RESTART:
        return subprocess.Popen([mcpsingleton_exe(), "restart", "--all"], stdout=subprocess.PIPE, text=True)
    (entry,) = ls_json()
    os.kill(entry["broker_pid"], signal.SIGTERM)
    return None


def log_text(home: Path) -> str:
    return "\n".join(path.read_text() for path in sorted(home.rglob("*.log")))


@pytest.mark.parametrize("how", [RESTART, "sigterm"])
def test_a_call_longer_than_the_drain_gets_an_error_before_the_session_moves_on(
    home: Path, fake_server: list[str], how: str
) -> None:
    client = RawClient(shim(fake_server))
    client.initialize()
    slow = client.request("tools/call", {"name": "slow", "arguments": {"seconds": 60}})
    assert wait_for(lambda: ls_json()[0]["requests"] >= 1)
    handover = hand_over(how)
    reply = client.reply_to(slow, timeout=30)
    assert reply["error"]["code"] == -32603
    assert "restart" in reply["error"]["message"], reply
    assert "pid" in result_text(client.call("whoami", timeout=30)), "the session went on, on the next broker"
    assert handover is None or handover.wait(timeout=30) == 0
    assert client.close() == 0
    assert "1 session(s) still waited for replies (0 in the middle of a request line)" in log_text(home)


def big_echo(request_id: int, size: int) -> bytes:
    return (
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "x" * size}},
            }
        ).encode()
        + b"\n"
    )


def send_first_half(client: RawClient, line: bytes) -> bytes:
    """Write the first half of `line` and wait until the broker has read all of it (its stdin pipe holds none
    of it: a sleep instead let a loaded machine hand over before the broker was mid-line); the second half."""
    assert client.process.stdin is not None
    client.send_raw(line[: len(line) // 2])
    unread = array.array("i", [0])

    def all_read() -> bool:
        fcntl.ioctl(client.process.stdin.fileno(), termios.FIONREAD, unread)  # either end of a pipe answers
        return unread[0] == 0

    assert wait_for(all_read), "the broker reads the first half"
    return line[len(line) // 2 :]


@pytest.mark.parametrize(
    ("how", "size"), [(RESTART, 40_000), ("sigterm", 40_000), (RESTART, 300_000)], ids=["40KB", "sigterm", "streamed"]
)
def test_a_request_line_half_written_at_a_handover_is_served_whole(
    home: Path, fake_server: list[str], how: str, size: int
) -> None:
    client = RawClient(shim(fake_server))
    client.initialize()
    line = big_echo(7, size)
    rest = send_first_half(client, line)
    handover = hand_over(how)
    assert wait_for(lambda: "shutting down: " in log_text(home))
    client.send_raw(rest)
    reply = client.reply_to(7, timeout=30)
    assert result_text(reply) == "x" * size
    assert "pid" in result_text(client.call("whoami", timeout=30)), "the session went on, on the next broker"
    assert not getattr(client, "seen", []), "no parse error for a line cut in two"
    assert handover is None or handover.wait(timeout=30) == 0
    assert client.close() == 0


def test_reap_leaves_a_broker_that_hands_over_alone(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server))
    client.initialize()
    slow = client.request("tools/call", {"name": "slow", "arguments": {"seconds": 4}})
    assert wait_for(lambda: ls_json()[0]["requests"] >= 1)
    (entry,) = ls_json()
    handover = subprocess.Popen([mcpsingleton_exe(), "restart", "--all"])
    assert wait_for(lambda: "shutting down: restart requested" in log_text(home))
    # --dry-run: what reap would kill, without touching what other tests on this machine run
    found = subprocess.run([mcpsingleton_exe(), "reap", "--dry-run", "--json"], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    assert entry["broker_pid"] not in {row["pid"] for row in json.loads(found.stdout)}, found.stdout
    assert result_text(client.reply_to(slow, timeout=30)) == "slow done", "the call in flight finished"
    assert handover.wait(timeout=30) == 0
    assert client.close() == 0


def restart_after_deleting_its_cwd(argv: list[str], gone: Path) -> RawClient:
    """A session started in `gone`, which is then deleted, then `restart --all`; the session as it goes on."""
    gone.mkdir()
    client = RawClient(argv, cwd=str(gone))
    client.initialize()
    assert json.loads(result_text(client.call("whoami")))["cwd"] == str(gone)
    gone.rmdir()
    done = subprocess.run([mcpsingleton_exe(), "restart", "--all"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return client


def test_a_session_whose_cwd_was_deleted_ends_with_one_line_at_a_restart(
    home: Path, fake_server: list[str], tmp_path: Path
) -> None:
    gone = tmp_path / "project"
    client = restart_after_deleting_its_cwd(shim(fake_server), gone)
    client.request("tools/call", {"name": "whoami", "arguments": {}})  # lazy: the re-attached session's next
    assert client.process.wait(timeout=30) == 1  # call is what needs a backend there
    (line,) = client.stderr().splitlines()
    assert line.startswith("mcpsingleton: ") and f"{gone} no longer exists" in line, line


def test_a_shared_session_whose_cwd_was_deleted_goes_on_after_a_restart(
    home: Path, fake_server: list[str], tmp_path: Path
) -> None:
    client = restart_after_deleting_its_cwd(shim(fake_server, "--scope", "global"), tmp_path / "project")
    assert "pid" in result_text(client.call("whoami", timeout=30)), "re-attached: the cwd is no part of its key"
    assert client.close() == 0


def test_a_session_started_from_a_deleted_directory_is_refused_with_one_line(
    home: Path, fake_server: list[str], tmp_path: Path
) -> None:
    gone = tmp_path / "project"
    gone.mkdir()
    script = 'cd "$1" && rmdir "$1" && shift && exec "$@"'
    started = subprocess.run(
        ["sh", "-c", script, "sh", str(gone), *shim(fake_server)], capture_output=True, text=True, timeout=30
    )
    assert started.returncode == 1
    assert started.stderr.splitlines() == [
        "mcpsingleton: the current directory no longer exists; start the session from an existing one"
    ]


@pytest.mark.parametrize("size", [40_000, 300_000], ids=["40KB", "streamed"])
def test_a_request_line_left_half_written_past_the_drain_is_answered_under_its_id(
    home: Path, fake_server: list[str], size: int
) -> None:
    client = RawClient(shim(fake_server))
    client.initialize()
    line = big_echo(7, size)
    rest = send_first_half(client, line)
    done = subprocess.run([mcpsingleton_exe(), "restart", "--all"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    reply = client.reply_to(7, timeout=30)
    assert reply["error"]["code"] == -32603 and "send it again" in reply["error"]["message"]
    client.send_raw(rest)  # the rest goes to the next broker: one line it cannot parse
    assert result_text(client.call("echo", {"text": "after"}, timeout=30)) == "after"
    assert [message["error"]["code"] for message in client.seen] == [-32700]
    assert client.close() == 0
