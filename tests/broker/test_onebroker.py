"""Issue 21 points 1-3 and 7: one broker per user hosts every server key; each server is contained; sessions
outlive the one broker; a per-key broker of the previous version keeps its sessions until `restart --all`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import (
    TESTS,
    RawClient,
    backend_roots,
    kill_quietly,
    ls_json,
    mcpsingleton_exe,
    own_environ,
    processes_of,
    result_text,
    shim,
    wait_for,
)

from mcpsingleton.broker.server import FAULT_ENV
from mcpsingleton.common import wire
from mcpsingleton.common.paths import BROKER, KeyPaths, runtime_dir
from mcpsingleton.common.wire import LEGACY_PROTOCOL
from mcpsingleton.shim.attach import REATTACHES_ENV
from mcpsingleton.shim.keys import key_of, key_parts, user_salt

SERVERS = 5
LEGACY_BROKER = TESTS / "legacy_broker.py"


def sessions_of_servers(fake_server: list[str], tmp_path: Path, count: int = SERVERS) -> list[RawClient]:
    """One session per server key: the same server in `count` directories (per-directory keys), as a user
    working in several projects runs it."""
    clients = []
    for number in range(count):
        directory = tmp_path / f"project{number}"
        directory.mkdir()
        client = RawClient(shim(fake_server, "--scope", "cwd", "--name", f"s{number}"), cwd=str(directory))
        assert client.initialize()["result"]["serverInfo"]["name"] == "fake-server"
        clients.append(client)
    return clients


def echo(client: RawClient, text: str) -> str:
    return result_text(client.call("echo", {"text": text}))


def ours(home: Path) -> list[psutil.Process]:
    """Processes of ours other than backends and session waiters: the broker and its keeper."""
    found = []
    for process in processes_of(home):
        try:
            argv = " ".join(process.cmdline())
            environ = process.environ()
        except psutil.Error:
            continue
        if "MCPSINGLETON_KEY" not in environ and "mcpsingleton-session" not in argv and "mcpsingleton run" not in argv:
            found.append(process)
    return found


def broker_pid(home: Path) -> int:
    return json.loads((home / "run" / "broker.json").read_text())["broker_pid"]


def test_one_broker_and_one_keeper_host_every_server(home: Path, fake_server: list[str], tmp_path: Path) -> None:
    clients = sessions_of_servers(fake_server, tmp_path)
    records = ls_json()
    assert len({record["key"] for record in records}) == SERVERS
    assert len({record["broker_pid"] for record in records}) == 1, "every key in one broker"
    assert len(backend_roots(home)) == SERVERS
    kinds = sorted("keeper" if "mcpsingleton-keeper" in p.cmdline() else "broker" for p in ours(home))
    assert kinds == ["broker", "keeper"], [p.cmdline() for p in ours(home)]
    run_files = sorted(p.name for p in (home / "run").iterdir() if p.suffix in (".sock", ".lock", ".json"))
    assert run_files == ["broker.json", "broker.lock", "broker.sock"], "no per-key socket, lock or state file"
    logs = {p.name for p in (home / "logs").iterdir()}
    assert {f"{record['key']}.log" for record in records} | {"broker.log"} <= logs, "per-key logs stay"
    shown = subprocess.run([mcpsingleton_exe(), "logs", "s3"], capture_output=True, text=True, timeout=30)
    assert "started for s3 (" in shown.stdout
    assert [echo(client, f"hi {n}") for n, client in enumerate(clients)] == [f"hi {n}" for n in range(SERVERS)]
    assert [client.close() for client in clients] == [0] * SERVERS


def test_every_session_of_five_servers_goes_on_after_kill_9_of_the_broker(
    home: Path, fake_server: list[str], tmp_path: Path
) -> None:
    clients = sessions_of_servers(fake_server, tmp_path)
    old = broker_pid(home)
    old_backends = {p.pid for p in backend_roots(home)}
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: not old_backends & {p.pid for p in backend_roots(home)}), "the keeper stopped them"
    assert [echo(client, f"after {n}") for n, client in enumerate(clients)] == [f"after {n}" for n in range(SERVERS)]
    records = ls_json()
    assert len({record["key"] for record in records}) == SERVERS
    assert {record["broker_pid"] for record in records} == {broker_pid(home)} != {old}
    assert [client.close() for client in clients] == [0] * SERVERS


def test_stop_and_restart_of_one_server_leave_the_others_alone(
    home: Path, fake_server: list[str], tmp_path: Path
) -> None:
    first, second, third = sessions_of_servers(fake_server, tmp_path, 3)
    broker = broker_pid(home)
    backend_of = {record["name"]: record["backend_pid"] for record in ls_json()}
    stopped = subprocess.run([mcpsingleton_exe(), "stop", "s0"], capture_output=True, text=True, timeout=30)
    assert stopped.returncode == 0, stopped.stderr
    assert first.process.wait(timeout=10) == 0, "a stopped server's session ends with status 0"
    restarted = subprocess.run([mcpsingleton_exe(), "restart", "s1"], capture_output=True, text=True, timeout=30)
    assert restarted.returncode == 0, restarted.stderr
    assert echo(second, "restarted") == "restarted", "its session goes on, on a fresh backend"
    assert echo(third, "untouched") == "untouched"
    after = {record["name"]: record for record in ls_json()}
    assert sorted(after) == ["s1", "s2"]
    assert after["s1"]["backend_pid"] != backend_of["s1"]
    assert after["s2"]["backend_pid"] == backend_of["s2"], "another server's backend is not touched"
    assert {record["broker_pid"] for record in after.values()} == {broker}, "the broker goes on"
    assert [second.close(), third.close()] == [0, 0]


def test_an_exception_in_one_server_is_contained_to_it(
    home: Path, fake_server: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point 2: a bug escaping one server's code is logged in its log, counted, and ends only that server (its
    session re-attaches to a fresh one); the process and the other servers go on."""
    trigger = tmp_path / "fault"
    trigger.write_text("s0")
    monkeypatch.setenv(FAULT_ENV, str(trigger))
    faulty, other = sessions_of_servers(fake_server, tmp_path, 2)
    broker = broker_pid(home)
    other_backend = next(r["backend_pid"] for r in ls_json() if r["name"] == "s1")
    assert echo(faulty, "boom") == "boom", "the call was on its way: it is answered before the server ends"
    assert echo(other, "unaffected") == "unaffected"
    assert echo(faulty, "again") == "again", "its session re-attached to a fresh server"
    counted = psutil.Process(faulty.process.pid).environ().get(REATTACHES_ENV, "").split()
    assert len(counted) == 1, "an internal error is a crash to the waiter's crash-loop guard, not a handover"
    records = {record["name"]: record for record in ls_json()}
    assert records["s0"]["internal_errors"] == 1 and records["s1"]["internal_errors"] == 0
    assert records["s1"]["backend_pid"] == other_backend
    assert {record["broker_pid"] for record in records.values()} == {broker}
    log = (home / "logs" / f"{records['s0']['key']}.log").read_text()
    assert "internal error (contained to this server" in log and "a fault injected for this test" in log
    assert [faulty.close(), other.close()] == [0, 0]


def test_a_broker_whose_loop_stops_turning_is_replaced(
    home: Path, fake_server: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point 2: the watchdog. A loop that spins forever: the broker dumps its stacks to its log and exits;
    the keeper stops the backends, and the sessions go on with a fresh broker, as after a crash."""
    trigger = tmp_path / "hang"
    monkeypatch.setenv("MCPSINGLETON_TEST_HANG", str(trigger))
    clients = sessions_of_servers(fake_server, tmp_path, 2)
    old = broker_pid(home)
    trigger.touch()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:  # any hello makes it spin
        probe.connect(KeyPaths(BROKER).sock)
        probe.sendall(wire.hello(wire.STATUS))
    assert wait_for(lambda: not psutil.pid_exists(old) or psutil.Process(old).status() == "zombie", timeout=30)
    assert [echo(client, "alive") for client in clients] == ["alive", "alive"]
    assert broker_pid(home) != old
    log = (home / "logs" / "broker.log").read_text()
    assert "Timeout (0:00:10)!" in log and "most recent call first" in log, "its stacks are in the log"
    assert [client.close() for client in clients] == [0, 0]


def test_the_broker_loads_none_of_the_modules_it_does_without() -> None:
    """Every module is PSS in the one broker (docs/ARCHITECTURE.md, "Budgets"): datetime (~70 KiB), typing
    (~0.25 MiB), asyncio (~10 MiB), tomllib and psutil stay out of it (psutil: only with a memory cap or budget)."""
    code = "import sys, mcpsingleton.broker; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.replace("'", '"')))
    assert loaded.isdisjoint({"datetime", "typing", "asyncio", "tomllib", "psutil"}), loaded


def test_an_idle_broker_rearms_its_watchdog_every_few_seconds_not_every_second(
    home: Path, fake_server: list[str], tmp_path: Path
) -> None:
    """Each re-arm ends faulthandler's watchdog thread and starts a new one (it lives until the next re-arm,
    so each is seen): an idle broker re-arming every second started ~7 in 6.5 s; every 3 s, at most 4."""
    (client,) = sessions_of_servers(fake_server, tmp_path, 1)
    tasks = Path(f"/proc/{broker_pid(home)}/task")
    if not tasks.is_dir():
        pytest.skip("no /proc task list to watch threads in")
    seen: set[str] = set()
    deadline = time.monotonic() + 6.5
    while time.monotonic() < deadline:
        seen |= {entry.name for entry in tasks.iterdir()}
        time.sleep(0.05)
    assert len(seen) - 1 <= 4, f"{len(seen) - 1} watchdog threads in 6.5 s"  # the main thread is the one more
    assert client.close() == 0


def test_a_per_key_broker_of_the_previous_version_keeps_its_sessions_until_restart_all(
    home: Path, fake_server: list[str], tmp_path: Path
) -> None:
    """Point 7: a shim of this version attaches to a running protocol-1 broker of its key, as before;
    `ls` shows it beside the one broker; `restart --all` moves its sessions into the one broker."""
    directory = runtime_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    env = os.environ.copy()
    parts = key_parts(fake_server, "cwd", os.getcwd(), env, [], user_salt(directory), own_environ())
    legacy_key = key_of(parts, LEGACY_PROTOCOL)
    legacy = subprocess.Popen([sys.executable, str(LEGACY_BROKER), legacy_key, directory], stdout=subprocess.PIPE)
    try:
        assert legacy.stdout is not None and legacy.stdout.readline() == b"ready\n"
        client = RawClient(shim(fake_server, "--scope", "cwd"), env=env)
        assert client.initialize()["result"]["serverInfo"]["name"] == "legacy-broker", "attached to the old broker"
        (other,) = sessions_of_servers(fake_server, tmp_path, 1)  # another key: the one broker
        shown = {record["key"]: record for record in ls_json()}
        (other_key,) = set(shown) - {legacy_key}
        assert shown[legacy_key]["broker_pid"] == legacy.pid and shown[other_key]["broker_pid"] != legacy.pid
        restarted = subprocess.run([mcpsingleton_exe(), "restart", "--all"], capture_output=True, text=True, timeout=60)
        assert restarted.returncode == 0, restarted.stderr
        assert legacy.wait(timeout=10) == 0
        request = client.request("tools/list")
        tools = {tool["name"] for tool in client.reply_to(request, timeout=20)["result"]["tools"]}
        assert "echo" in tools and "legacy" not in tools, "now served by the one broker's backend"
        assert echo(other, "moved too") == "moved too"
        records = ls_json()
        assert {record["key"] for record in records} == {key_of(parts), other_key}
        assert len({record["broker_pid"] for record in records}) == 1
        assert not os.path.exists(KeyPaths(legacy_key).sock)
        assert [client.close(), other.close()] == [0, 0]
    finally:
        kill_quietly(legacy.pid)
        legacy.wait()


def test_attach_to_the_one_broker_asks_the_spec_once_per_key(home: Path, fake_server: list[str]) -> None:
    """Point 2: only the first session of a key sends its spec; a garbled spec is refused with one line."""
    first = RawClient(shim(fake_server))
    first.initialize()
    (record,) = ls_json()
    to_broker, ours_in = os.pipe()
    ours_out, from_broker = os.pipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(KeyPaths(BROKER).sock)
        socket.send_fds(conn, [wire.hello(wire.ATTACH, record["key"])], [to_broker, from_broker])
        assert conn.recv(16) == wire.WELCOME, "a hosted key: no spec asked"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(KeyPaths(BROKER).sock)
        socket.send_fds(conn, [wire.hello(wire.ATTACH, "f" * 20)], [to_broker, from_broker])
        assert conn.recv(16) == wire.SPEC
        conn.sendall(b'{"key": "' + b"0" * 20 + b'"}\n')  # not the key of the hello
        assert conn.recv(200).startswith(wire.REFUSAL)
    for fd in (to_broker, ours_in, ours_out, from_broker):
        os.close(fd)
    time.sleep(0.2)
    assert [r["key"] for r in ls_json()] == [record["key"]]
    assert first.close() == 0


def stale_state_findings() -> list:
    from mcpsingleton.ops import reaper

    return [finding for finding in reaper.find_reapable() if finding.kind in ("stale-state", "hung-broker")]


def test_reap_knows_the_one_broker(home: Path, fake_server: list[str]) -> None:
    """`reap` never takes the live one broker (nor an isolated server it hosts) for stale or hung; once it is
    killed, its `broker.json` and socket are stale and go, its lock stays."""
    isolated = RawClient(shim(fake_server, "--scope", "isolated"))
    isolated.initialize()
    (record,) = ls_json()
    assert stale_state_findings() == [], "a live one broker, and an isolated key it hosts, are left alone"
    assert (home / "logs" / f"{record['key']}.log").exists()
    pid = broker_pid(home)
    os.kill(isolated.process.pid, signal.SIGSTOP)  # its waiter would re-attach and start a new broker
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie")
    isolated.process.kill()
    isolated.process.wait()
    found = [finding for finding in stale_state_findings() if finding.key == BROKER]
    assert [finding.kind for finding in found] == ["stale-state"], found
    from mcpsingleton.ops import reaper

    assert reaper._remove_stale_state(BROKER, ended=False)
    assert sorted(p.name for p in (home / "run").iterdir() if p.name.startswith("broker")) == ["broker.lock"]


def test_servers_that_come_and_go_leave_the_broker_as_it_was(home: Path, fake_server: list[str]) -> None:
    """Every isolated session is a key of its own, a server that ends with it: the broker, which lives on,
    keeps no fd (log, sockets, pipes) of an ended server."""
    anchor = RawClient(shim(fake_server))
    anchor.initialize()
    broker = psutil.Process(broker_pid(home))

    def isolated_session() -> None:
        client = RawClient(shim(fake_server, "--scope", "isolated"))
        client.initialize()
        assert echo(client, "once") == "once"
        assert client.close() == 0

    isolated_session()
    assert wait_for(lambda: len(ls_json()) == 1)
    baseline = broker.num_fds()
    for _ in range(8):
        isolated_session()
    assert wait_for(lambda: len(ls_json()) == 1 and broker.num_fds() <= baseline), (broker.num_fds(), baseline)
    assert anchor.close() == 0


def test_sessions_racing_on_a_new_key_make_one_server(home: Path, fake_server: list[str]) -> None:
    """The first shim of a new key sends its spec; the others wait for that server and attach to it."""
    clients = [RawClient(shim(fake_server)) for _ in range(12)]
    assert all(client.initialize()["result"]["serverInfo"]["name"] == "fake-server" for client in clients)
    log = (home / "logs" / "broker.log").read_text()
    assert log.count(" added; ") == 1, log
    assert len(backend_roots(home)) == 1
    assert [client.close() for client in clients] == [0] * 12


def test_the_budget_counts_every_server_in_the_broker(home: Path, fake_server: list[str], tmp_path: Path) -> None:
    """Point 6's process-wide part: `max_backends` is the user's, so a second server (another key) may not start
    a backend while the first one's is in use; it is answered with the budget's one line, and asked again."""
    (home / "config.toml").write_text("[budget]\nmax_backends = 1\n")
    lazy_dir = tmp_path / "lazy"
    lazy_dir.mkdir()
    lazy = [*shim(fake_server, "--scope", "cwd", "--name", "later", "--linger", "0")]
    learner = RawClient(lazy, cwd=str(lazy_dir))  # its first run learns its discovery: the next one is lazy
    learner.initialize()
    assert learner.close() == 0
    assert wait_for(lambda: not backend_roots(home))
    (first,) = sessions_of_servers(fake_server, tmp_path, 1)
    assert echo(first, "in use") == "in use"
    second = RawClient(lazy, cwd=str(lazy_dir))
    second.initialize()  # answered from its cached discovery: no backend needed yet
    refused = second.call("echo", {"text": "over"})
    assert refused["error"]["message"].startswith("mcpsingleton: the [budget] max_backends = 1"), refused
    assert "running: s0 (pid" in refused["error"]["message"]
    assert len(backend_roots(home)) == 1
    assert first.close() == 0  # its backend no longer in use: reclaimed to make room, not the request refused
    assert result_text(second.call("echo", {"text": "admitted"})) == "admitted"
    assert len(backend_roots(home)) == 1
    assert second.close() == 0
