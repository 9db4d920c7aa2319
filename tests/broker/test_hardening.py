"""Issue 10, broker and process faults: no backend, no session and no process limit takes the broker down."""

from __future__ import annotations

import array
import errno
import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import RawClient, backend_roots, ls_json, mcpsingleton_exe, result_text, shim, wait_for

from mcpsingleton.broker.eventloop import EventLoop
from mcpsingleton.broker.listener import Hello, Listener
from mcpsingleton.common import platform, wire
from mcpsingleton.common.logfile import LogFile
from mcpsingleton.common.paths import KeyPaths

NAME = "hardened"


def log_text() -> str:
    return subprocess.run([mcpsingleton_exe(), "logs", NAME], capture_output=True, text=True).stdout


def session(command: list[str]) -> RawClient:
    client = RawClient(shim(command, "--name", NAME))
    client.initialize()
    return client


def start_initialize(client: RawClient) -> None:
    """Send initialize without waiting; a shim that already exited (refused) is fine."""
    try:
        client.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {}})
    except BrokenPipeError:
        pass


def broker_process() -> psutil.Process:
    (entry,) = ls_json()
    return psutil.Process(entry["broker_pid"])


def test_backend_that_closes_its_stdin_is_restarted(home: Path, fake_server: list[str]) -> None:
    """Row 4: EPIPE toward a backend that runs on is a lost backend, not a request that hangs forever."""
    client = session(fake_server)
    (first,) = backend_roots(home)
    assert result_text(client.call("close_stdin")) == "stdin closed"
    reply = client.call("echo", {"text": "lost"})
    assert reply["error"]["code"] == -32603
    assert "stopped reading its input" in reply["error"]["message"]
    assert result_text(client.call("echo", {"text": "again"})) == "again"
    assert wait_for(lambda: first.pid not in {p.pid for p in backend_roots(home)})
    (entry,) = ls_json()
    assert entry["backend_write_failures"] == 1 and entry["restarts"] == 1 and entry["state"] == "running"
    assert "stopped reading its input" in log_text()
    assert client.close() == 0


def test_a_restart_whose_spawn_fails_backs_off_and_retries(home: Path, fake_server: list[str]) -> None:
    """Row 6: once the backend has worked, a failed spawn is like a crash: errors to requests, not EOF."""
    script = home / "server.sh"
    script.write_text(f"#!/bin/sh\nexec {shlex.join(fake_server)}\n")
    script.chmod(0o755)
    client = session([str(script)])
    script.chmod(0o644)  # briefly not executable (an upgrade in progress, say)
    assert client.call("crash")["error"]["code"] == -32603
    reply = client.call("echo", {"text": "meanwhile"})
    assert reply["error"]["code"] == -32603 and "cannot start backend" in reply["error"]["message"]
    assert client.process.poll() is None, "the session must go on"
    (entry,) = ls_json()
    assert entry["spawn_failures"] == 1 and entry["state"] == "restarting"
    script.chmod(0o755)
    assert result_text(client.call("echo", {"text": "back"}, timeout=40)) == "back"
    assert ls_json()[0]["state"] == "running"
    assert client.close() == 0


def test_a_backend_that_stops_reading_pauses_its_sessions(home: Path, fake_server: list[str]) -> None:
    """Row 7: the broker stops reading sessions that feed a full backend pipe; its memory stays bounded."""
    client = session(fake_server)
    other = session(fake_server)
    assert result_text(client.call("stall")) == "stalled"
    broker = broker_process()
    before = broker.memory_info().rss
    params = {"name": "echo", "arguments": {"text": "x" * (1 << 20)}}
    assert client.process.stdin is not None
    fd = client.process.stdin.fileno()
    os.set_blocking(fd, False)
    pending, written, number = b"", 0, 0
    while written < 200 << 20:
        if not pending:
            number += 1
            pending = json.dumps({"jsonrpc": "2.0", "id": number, "method": "tools/call", "params": params}).encode()
            pending += b"\n"
        if not select.select([], [fd], [], 3.0)[1]:
            break  # nobody reads any more: the broker stopped reading this session
        sent = os.write(fd, pending)
        pending, written = pending[sent:], written + sent
    assert written < 100 << 20, "the broker kept reading a session whose backend reads nothing"
    assert broker.memory_info().rss - before < 48 << 20
    assert "pausing its sessions" in log_text()
    assert ls_json()[0]["backpressure_pauses"] == 1
    other.process.kill()
    client.process.kill()


def test_out_of_file_descriptors_refuses_newcomers_clearly(home: Path, fake_server: list[str]) -> None:
    """Row 5: EMFILE on accept: no busy loop or log flood, a clear refusal, and `reap` leaves the broker alone."""
    if not hasattr(psutil.Process, "rlimit"):
        pytest.skip("psutil cannot set another process's limits here (prlimit is Linux-only)")
    first = session(fake_server)
    broker = broker_process()
    broker.rlimit(psutil.RLIMIT_NOFILE, (64, 64))
    clients = [RawClient(shim(fake_server, "--name", NAME)) for _ in range(100)]
    attached, refused = [first], []
    for client in clients:
        start_initialize(client)
        if client.read(timeout=30) is not None:
            attached.append(client)
        else:
            refused.append(client)
    assert len(attached) >= 10 and len(refused) >= 10
    for client in refused:
        assert client.process.wait(timeout=30) == 1
        error = client.stderr()
        assert "out of file descriptors" in error and "Traceback" not in error, error
    for client in attached[:5]:
        assert result_text(client.call("echo", {"text": "still here"})) == "still here"
    assert log_text().count("\n") < 1000, "the log must not be flooded"
    reap = subprocess.run([mcpsingleton_exe(), "reap", "--dry-run", "--json"], capture_output=True, text=True)
    assert "hung-broker" not in reap.stdout, reap.stdout
    assert broker.is_running()
    for client in attached[1:]:
        client.close()
    late = session(fake_server)  # file descriptors are free again: newcomers are welcome
    assert result_text(late.call("echo", {"text": "welcome"})) == "welcome"
    assert ls_json()[0]["sessions_refused"] == len(refused)
    for client in (first, late):
        client.close()


def listen_queue(pid: int) -> int:
    """Connections waiting in the listen backlog of the broker `pid` (via `ss`; 128 when ss is missing)."""
    try:
        out = subprocess.run(["ss", "-xlpH"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return 128
    return max((int(line.split()[2]) for line in out.splitlines() if f"pid={pid}," in line), default=0)


def test_full_listen_backlog_is_retried(home: Path, fake_server: list[str]) -> None:
    """Row 14: 160 shims at once on a stopped broker: no traceback; they retry and attach once it runs again."""
    first = session(fake_server)
    broker = broker_process()
    broker.suspend()
    try:
        clients = [RawClient(shim(fake_server, "--name", NAME)) for _ in range(160)]
        assert wait_for(lambda: listen_queue(broker.pid) >= 128, timeout=60), "the backlog never filled"
        time.sleep(0.5)  # the shims past the backlog meet the full queue
    finally:
        broker.resume()
    for client in clients:
        start_initialize(client)
    failed = []
    for client in clients:
        if client.read(timeout=30) is None:
            failed.append(client.stderr())
        client.process.kill()
    assert not [error for error in failed if "Traceback" in error], failed[:1]
    # a heavily loaded machine may time some out in the backlog: then with one clear line
    assert all(error.startswith("mcpsingleton: ") and error.count("\n") == 1 for error in failed), failed[:3]
    assert len(failed) < len(clients), failed[:3]
    assert result_text(first.call("echo", {"text": "fine"})) == "fine"


KILLED_AT_READY = """
import os, socket, sys
from mcpsingleton.shim import election, attach as shim
settimeout = socket.socket.settimeout
def die_when_waiting_for_ready(self, seconds):
    if seconds == election.READY_TIMEOUT:
        os._exit(137)  # killed by its client just as the broker is about to say `ready`
    settimeout(self, seconds)
socket.socket.settimeout = die_when_waiting_for_ready
sys.exit(shim.main(sys.argv[1:]))
"""


def test_broker_outlives_the_shim_that_started_it(home: Path, fake_server: list[str]) -> None:
    """Row 17: the starting shim dies before reading `ready`: the broker serves the next session, nothing stale."""
    starter = subprocess.run(
        [sys.executable, "-c", KILLED_AT_READY, "--name", NAME, "--", *fake_server],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert starter.returncode == 137
    run_dir = home / "run"
    states = wait_for(lambda: list(run_dir.glob("*.json")))
    broker_pid = json.loads(states[0].read_text())["broker_pid"]
    time.sleep(0.5)
    assert psutil.pid_exists(broker_pid), "the broker died writing `ready`"
    client = session(fake_server)
    assert ls_json()[0]["broker_pid"] == broker_pid
    assert result_text(client.call("echo", {"text": "next"})) == "next"
    stop = subprocess.run([mcpsingleton_exe(), "stop", NAME], capture_output=True, text=True, timeout=30)
    assert stop.returncode == 0, stop.stderr
    assert client.process.wait(timeout=10) == 0
    # the one broker goes on for other servers; with none left it exits, and leaves nothing stale
    assert wait_for(lambda: not [p for p in run_dir.iterdir() if p.suffix in (".sock", ".json")])


def test_the_shims_exit_status_is_in_the_broker_log(home: Path, fake_server: list[str]) -> None:
    """How the client ended each session (0, 143 …) is in the broker's log line for that session."""
    ended = session(fake_server)
    killed = session(fake_server)
    killed.process.send_signal(signal.SIGTERM)
    assert killed.process.wait(timeout=10) == 143
    assert ended.close() == 0
    assert wait_for(lambda: "exit status 143" in log_text() and "exit status 0" in log_text())


def test_hostile_nesting_reaches_only_its_sender_and_is_counted(home: Path, fake_server: list[str]) -> None:
    """Rows 1-2 through real processes: a 5000-deep line from a session gets -32700 there only; the same
    from the backend is dropped; the broker lives, the other session goes on, `ls` and `metrics` count both."""
    hostile, bystander = session(fake_server), session(fake_server)
    deep = "[" * 5000 + "]" * 5000
    hostile.send_raw(deep.encode() + b"\n")
    refusal = hostile.read()
    assert isinstance(refusal, dict) and refusal["error"]["code"] == -32700 and refusal["id"] is None
    assert result_text(hostile.call("garbage", {"line": deep})) == "after garbage"
    assert result_text(bystander.call("echo", {"text": "unaffected"})) == "unaffected"
    (entry,) = ls_json()
    assert entry["rejected"] == 1 and entry["dropped"] >= 1 and entry["internal_errors"] == 0
    metrics = subprocess.run([mcpsingleton_exe(), "metrics"], capture_output=True, text=True, timeout=30).stdout
    assert "mcpsingleton_rejected_lines_total" in metrics
    assert hostile.close() == 0 and bystander.close() == 0


UNEXECUTABLE_BROKER = """
import sys
from mcpsingleton.__main__ import main
sys.executable = sys.argv.pop(1)  # the Python a broker is started with: a file this user cannot execute
main()
"""


def test_a_broker_that_cannot_be_executed_is_one_line(home: Path, fake_server: list[str], tmp_path: Path) -> None:
    """Issue 19 row 19: the broker's Python cannot be executed: one line saying so, not a traceback."""
    unexecutable = tmp_path / "python3"
    unexecutable.write_text("")
    unexecutable.chmod(0o644)
    argv = [sys.executable, "-c", UNEXECUTABLE_BROKER, str(unexecutable), *shim(fake_server, "--name", NAME)[1:]]
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"mcpsingleton: the broker failed to start (cannot execute {unexecutable}: Permission denied); "
        "see `mcpsingleton logs broker`"  # the one broker: not one server's
    ]


class DroppingFds(socket.socket):
    """A connection whose recvmsg fails as XNU's does when the receiver is out of fds: EMSGSIZE, the passed
    fds dropped. Linux cannot be made to do this (it sets MSG_CTRUNC instead), hence the one stand-in."""

    def recvmsg(self, *args: int) -> tuple[bytes, list[tuple[int, int, bytes]], int, object]:
        raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))


def test_emsgsize_on_an_attach_is_the_out_of_fds_refusal(tmp_path: Path) -> None:
    """Issue 20 row 5: on macOS the shim got no refusal and waited 15 s."""
    shim_end, theirs = socket.socketpair()
    conn = DroppingFds(fileno=theirs.detach())
    loop = EventLoop()
    heard: list[list[str]] = []
    reason = "the broker is out of file descriptors"
    listener = Listener(
        loop,
        LogFile(str(tmp_path / "log")),
        KeyPaths("k", str(tmp_path)),
        lambda *hello: heard.append(hello[2]),
        lambda: reason,
    )
    fds = array.array("i", [0, 1, 2]).tobytes()
    shim_end.sendmsg([wire.hello(wire.ATTACH, "k")], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    listener._hello(conn, Hello())
    shim_end.settimeout(5)
    assert shim_end.recv(1024) == wire.refusal(reason)
    assert listener.refused == 1 and not heard
    shim_end.close()
    loop.close()


def test_the_broker_raises_its_soft_fd_limit_and_the_backend_keeps_the_session_s(
    home: Path, fake_server: list[str]
) -> None:
    """Issue 20 row 5: launchd starts everything with a soft limit of 256 fds; each session holds 3-4. The
    server still runs with the limit its client gave, as it would started directly (a select()-based server
    must not be handed fds past FD_SETSIZE)."""
    argv = ["/bin/sh", "-c", 'ulimit -Sn 256 && exec "$@"', "sh", *shim(fake_server, "--name", NAME)]
    client = RawClient(argv)
    client.initialize()
    soft, hard = broker_process().rlimit(psutil.RLIMIT_NOFILE)
    assert soft >= min(hard, platform.FD_LIMIT) > 256
    backend = psutil.Process(json.loads(result_text(client.call("whoami")))["pid"])
    assert backend.rlimit(psutil.RLIMIT_NOFILE) == (256, hard)
    assert client.close() == 0
