"""Issue 4: nothing orphaned, nothing lost — signals, kills, storms, churn, crashes, other users."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import (
    RawClient,
    backend_roots,
    kill_quietly,
    ls_json,
    mcpsingleton_exe,
    processes_of,
    result_text,
    shim,
    tagged_backends,
    wait_for,
)

from mcpsingleton.common import wire


def launcher(fake_server: list[str]) -> list[str]:
    """An npx-style tree: sh → python server → python grandchild."""
    return ["/bin/sh", "-c", f"{' '.join(fake_server)} --grandchild; echo launcher done"]


def test_sigkill_of_broker_takes_the_whole_backend_tree(home: Path, fake_server: list[str]) -> None:
    clients = [RawClient(shim(launcher(fake_server))) for _ in range(3)]
    for client in clients:
        client.initialize()
        assert "pid" in result_text(client.call("whoami"))
    (entry,) = ls_json()
    tree = tagged_backends(home)
    assert len(tree) >= 3, "sh, server and grandchild"
    for client in clients:
        client.process.send_signal(signal.SIGSTOP)  # held back from re-attaching: the kill alone must clean up
    os.kill(entry["broker_pid"], signal.SIGKILL)
    assert wait_for(lambda: not tagged_backends(home), timeout=3.0), [p.cmdline() for p in tagged_backends(home)]
    for client in clients:
        client.process.send_signal(signal.SIGCONT)
    for client in clients:  # the sessions go on, each on the one new backend
        assert json.loads(result_text(client.call("whoami")))["pid"] not in {p.pid for p in tree}
    assert len(backend_roots(home)) == 1
    for client in clients:
        assert client.close() == 0


def test_stdin_eof_exits_zero_and_signals_exit_128_plus_n(home: Path, fake_server: list[str]) -> None:
    keeper = RawClient(shim(fake_server))
    keeper.initialize()
    backend_pid = backend_roots(home)[0].pid
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        client = RawClient(shim(fake_server))
        client.initialize()
        client.process.send_signal(signum)
        assert client.process.wait(timeout=3) == 128 + signum
    assert psutil.pid_exists(backend_pid), "a session's signal never reaches the shared backend"
    assert "pid" in result_text(keeper.call("whoami"))
    started = time.monotonic()
    assert keeper.close() == 0
    assert time.monotonic() - started < 2.0


def test_isolated_scope_stops_its_own_backend_on_signal(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--scope", "isolated"))
    client.initialize()
    (root,) = backend_roots(home)
    client.process.send_signal(signal.SIGTERM)
    assert client.process.wait(timeout=3) == 143
    assert wait_for(lambda: not psutil.pid_exists(root.pid) or root.status() == psutil.STATUS_ZOMBIE, timeout=3)


def test_cold_start_storm_elects_one_broker(home: Path, fake_server: list[str]) -> None:
    for round_number in range(10):
        clients = [RawClient(shim(fake_server, "--linger", "0")) for _ in range(50)]
        for client in clients:
            assert client.initialize()["result"]["serverInfo"]["name"] == "fake-server"
        # from the second round on, the first round's discovery is cached: lazy, no backend for initialize
        assert len(backend_roots(home)) == (round_number == 0), f"round {round_number}"
        brokers = [p for p in processes_of(home) if "mcpsingleton.broker" in " ".join(p.cmdline())]
        assert len(brokers) == 1, f"round {round_number}"
        for client in clients:
            assert client.close() == 0
        assert wait_for(lambda: not processes_of(home), timeout=5)


def attach_directly(sock: str, key: str) -> tuple[socket.socket, int, int]:
    """Do what a shim does, from the test process: hand over a pipe pair, get welcomed."""
    client_to_broker = os.pipe()
    broker_to_client = os.pipe()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(sock)
    socket.send_fds(conn, [wire.hello(wire.ATTACH, key)], [client_to_broker[0], broker_to_client[1]])
    os.close(client_to_broker[0])
    os.close(broker_to_client[1])
    assert conn.recv(16) == b"ok\n"
    conn.sendall(b"r")  # as the waiter does once its signal traps are set
    return conn, client_to_broker[1], broker_to_client[0]


def test_attach_detach_churn_leaks_nothing(home: Path, fake_server: list[str]) -> None:
    anchor = RawClient(shim(fake_server))
    anchor.initialize()
    (entry,) = ls_json()
    broker = psutil.Process(entry["broker_pid"])
    sock = str(home / "run" / "broker.sock")  # the one broker hosts every key
    init = (
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "churn", "version": "1"},
                },
            }
        ).encode()
        + b"\n"
    )

    def cycle(count: int) -> None:
        for _ in range(count):
            conn, writer, reader = attach_directly(sock, entry["key"])
            os.write(writer, init)
            assert b'"id":1' in os.read(reader, 65536)
            os.close(writer)
            said = b""
            while chunk := conn.recv(4096):  # a `state` line (the session's, for re-attaching) comes first
                said += chunk
            assert said.endswith(b"exit 0\n")
            conn.close()
            os.close(reader)

    cycle(200)  # warm up allocator and caches
    fds_before, rss_before = broker.num_fds(), broker.memory_info().rss
    cycle(2000)
    assert wait_for(lambda: broker.num_fds() <= fds_before, timeout=3), (broker.num_fds(), fds_before)
    assert broker.memory_info().rss - rss_before < 2 * 1024 * 1024
    assert not [c for c in broker.children() if c.status() == psutil.STATUS_ZOMBIE]
    assert result_text(anchor.call("echo", {"text": "still here"})) == "still here"


def test_backend_killed_during_slow_call(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server))
    client.initialize()
    (root,) = backend_roots(home)
    request_id = client.request("tools/call", {"name": "slow", "arguments": {"seconds": 30}})
    time.sleep(0.3)
    root.kill()
    killed = time.monotonic()
    reply = client.reply_to(request_id, timeout=5)
    assert time.monotonic() - killed < 1.0
    assert reply["error"]["code"] == -32603
    assert "signal 9" in reply["error"]["message"]
    assert result_text(client.call("echo", {"text": "again"})) == "again"
    (entry,) = ls_json()
    assert entry["restarts"] == 1
    assert "the backend was killed by signal 9" in entry["last_error"], "ls (and the dashboard) say why"
    assert client.close() == 0


def test_crash_loop_backs_off_and_is_reported(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server))
    client.initialize()
    for _ in range(3):
        reply = client.call("crash", timeout=15)
        assert reply["error"]["code"] == -32603
    (entry,) = ls_json()
    assert entry["restarts"] == 3
    log = subprocess.run([mcpsingleton_exe(), "logs", entry["name"]], capture_output=True, text=True).stdout
    assert "restarting in" in log


def other_user() -> str | None:
    if os.geteuid() != 0 or not shutil.which("useradd"):
        return None
    name = "mcpsingleton-other"
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    return name


def test_other_user_cannot_attach(home: Path, fake_server: list[str]) -> None:
    name = other_user()
    python = shutil.which("python3", path="/usr/bin:/bin")
    if name is None or python is None:
        pytest.skip("needs root, useradd and a system python3 to act as a second user")
    client = RawClient(shim(fake_server))
    client.initialize()
    (entry,) = ls_json()
    sock = str(home / "run" / "broker.sock")  # the one broker hosts every key
    probe = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect(sys.argv[1])\nexcept OSError as e:\n print('refused', e.errno); sys.exit()\n"
        "socket.send_fds(s,[f'MCPS{sys.argv[3]} attach {sys.argv[2]}\\n'.encode()],[0,1]); print('got', s.recv(16))\n"
    )
    user = pwd.getpwnam(name)

    def as_other() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    def attempt() -> str:
        out = subprocess.run(
            [python, "-c", probe, sock, entry["key"], wire.PROTOCOL],
            preexec_fn=as_other,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip()

    assert attempt().startswith("refused 13"), "the 0700 runtime dir keeps others out"
    os.chmod(home, 0o755)  # open every outer layer (dir and socket modes) to reach the peer-uid check
    os.chmod(home / "run", 0o755)
    os.chmod(sock, 0o666)
    try:
        assert attempt() == "got b''", "the broker checks the peer uid and closes without a welcome"
    finally:
        os.chmod(home / "run", 0o700)
    log = (home / "logs" / "broker.log").read_text()  # the connection was refused before any server heard of it
    assert f"refused a connection from uid {user.pw_uid}" in log
    assert result_text(client.call("echo", {"text": "unaffected"})) == "unaffected"


def test_runtime_dir_that_is_not_private_is_refused(home: Path, fake_server: list[str]) -> None:
    (home / "run").mkdir(mode=0o755)
    os.chmod(home / "run", 0o755)
    out = subprocess.run(shim(fake_server), input="", capture_output=True, text=True, timeout=10)
    assert out.returncode == 1
    assert out.stderr.startswith("mcpsingleton: ") and "chmod 700" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_state_files_are_private_and_hold_no_secret(home: Path, fake_server: list[str]) -> None:
    secret = "s3cr3t-value-for-test"
    client = RawClient(shim(fake_server), env={**os.environ, "API_TOKEN": secret})
    client.initialize()
    for path in (home / "run").iterdir():
        if path.suffix in (".json", ".lock") or path.name == "salt":
            assert path.stat().st_mode & 0o077 == 0, path
    for path in [*(home / "run").iterdir(), *(home / "logs").iterdir()]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
        assert secret not in path.name
    ls = subprocess.run([mcpsingleton_exe(), "ls", "--json"], capture_output=True, text=True)
    assert secret not in ls.stdout
    assert client.close() == 0


def test_reused_pid_group_is_not_killed_after_orderly_stop(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--linger", "0"))
    client.initialize()
    keeper = [p for p in processes_of(home) if "mcpsingleton-keeper" in " ".join(p.cmdline())]
    assert len(keeper) == 1
    assert client.close() == 0
    assert wait_for(lambda: not processes_of(home), timeout=5), "keeper exits without killing after an orderly stop"
    kill_quietly(keeper[0].pid)


def test_new_broker_kills_leftovers_tagged_with_its_key(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--name", "tagged"))
    client.initialize()
    (entry,) = ls_json()
    assert client.close() == 0
    subprocess.run([mcpsingleton_exe(), "stop", "tagged"], check=True, capture_output=True)
    assert wait_for(lambda: not ls_json(), timeout=5)
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, "MCPSINGLETON_KEY": entry["key"]},
        start_new_session=True,
    )
    again = RawClient(shim(fake_server, "--name", "tagged"))
    again.initialize()
    assert stray.wait(timeout=5) == -9, "the escaped leftover of the old broker is gone"
    assert (
        "killed leftovers"
        in subprocess.run([mcpsingleton_exe(), "logs", "tagged"], capture_output=True, text=True).stdout
    )
    assert again.close() == 0


def test_attach_while_the_broker_lingers_out_always_succeeds(home: Path, fake_server: list[str]) -> None:
    """Sessions arriving right at linger expiry either catch the old broker or start a new one: never fail."""
    brokers = set()
    for attempt in range(15):
        first = RawClient(shim(fake_server, "--linger", "300ms"))
        first.initialize()
        brokers.add(ls_json()[0]["broker_pid"])
        assert first.close() == 0
        time.sleep(0.22 + 0.012 * attempt)  # sweep across the moment the broker shuts down
        late = RawClient(shim(fake_server, "--linger", "300ms"))
        assert late.initialize()["result"]["serverInfo"]["name"] == "fake-server", f"attempt {attempt}"
        assert result_text(late.call("echo", {"text": str(attempt)})) == str(attempt)
        assert late.close() == 0
        assert wait_for(lambda: not processes_of(home), timeout=5)
    assert len(brokers) == 15
