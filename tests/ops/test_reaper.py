"""reap and `ls --all` against real processes: true orphans next to live servers, leftover backends,
stale and hung brokers. Other processes of this user may be running: assertions look at our pids only,
and tests that kill restrict run_reap to them."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from helpers import RawClient, kill_quietly, processes_of, shim, wait_for

from mcpsingleton.common import processes, stdin_peers
from mcpsingleton.common.paths import KeyPaths, runtime_dir
from mcpsingleton.common.stdin_peers import FdHolders
from mcpsingleton.common.wire import KEY_ENV
from mcpsingleton.ops import reaper, unmanaged

FAKE_SERVER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
path = os.environ["FAKE_PIDFILE"]
with open(path + ".tmp", "w") as handle:
    handle.write(f"{os.getpid()} {child.pid}")
os.replace(path + ".tmp", path)
sys.stdin.buffer.read()  # reads until EOF, then carelessly stays: the kind of server that becomes an orphan
time.sleep(120)
"""

LAUNCHER = """
import socket, subprocess, sys
kind, argv = sys.argv[1], sys.argv[2:]
if kind in ("pipe", "session"):
    subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=kind == "session")
else:
    mine, theirs = socket.socketpair()
    subprocess.Popen(argv, stdin=theirs, stdout=subprocess.DEVNULL)
"""
"""Starts a server and exits at once, like a client that dies: the server is reparented to init and
the other end of its stdin closes with the launcher. It runs as the leader of its own process group, as a
client started from a shell does; with "session" the server leads its own session and group instead, as
every launchd job does."""

FAKE_BROKER = """
import fcntl, json, os, socket, subprocess, sys, time
lock, sock_path, mode, key = sys.argv[1:5]
fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
backend = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                           env={**os.environ, "MCPSINGLETON_KEY": key})
print(backend.pid, flush=True)
if mode == "no-socket":
    time.sleep(120)
listener = socket.socket(socket.AF_UNIX)
listener.bind(sock_path)
listener.listen()
held = []
while True:
    conn, _ = listener.accept()
    held.append(conn)
    if mode == "answer":
        conn.makefile("rb").readline()
        conn.sendall(json.dumps({"backend_pid": backend.pid}).encode() + b"\\n")
        conn.close()
"""
"""Stands in for a broker: holds the key's lock, has a tagged backend child, and answers `status`,
stays silent, or never listens."""


@dataclass
class Server:
    pid: int
    child: int

    @property
    def pids(self) -> set[int]:
        return {self.pid, self.child}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Processes:
    """Starts the test's processes and kills every one of them afterwards."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.script = directory / "fake-mcp-server.py"
        self.script.write_text(FAKE_SERVER)
        self.pids: list[int] = []
        self.popens: list[subprocess.Popen] = []
        self.fds: list[int] = []
        self.count = 0

    def _server_env(self, extra: dict[str, str]) -> tuple[dict[str, str], Path]:
        self.count += 1
        pidfile = self.directory / f"server{self.count}.pid"
        return {**os.environ, "FAKE_PIDFILE": str(pidfile), **extra}, pidfile

    def _wait_server(self, pidfile: Path) -> Server:
        assert wait_for(pidfile.exists), "the fake server did not start"
        pid, child = map(int, pidfile.read_text().split())
        self.pids += [pid, child]
        return Server(pid, child)

    def orphan(self, stdin: str = "pipe", args: tuple[str, ...] = (), **env: str) -> Server:
        """A fake server whose starter died, and with it the other end of the server's stdin."""
        server_env, pidfile = self._server_env(env)
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, stdin, sys.executable, str(self.script), *args],
                                    env=server_env, process_group=0)
        launcher.wait(timeout=10)
        return self._wait_server(pidfile)

    def agent(self, **env: str) -> Server:
        """A server as launchd runs a user's agent: parent pid 1, leader of its own session and group."""
        return self.orphan("session", **env)

    def live(self, stdin: str = "pipe", args: tuple[str, ...] = (), **env: str) -> Server:
        """A fake server whose client (this test) still holds the other end of its stdin."""
        server_env, pidfile = self._server_env(env)
        if stdin == "pipe":
            theirs, mine = os.pipe()
        else:
            mine_socket, theirs_socket = socket.socketpair()
            mine, theirs = mine_socket.detach(), theirs_socket.detach()
        self.fds.append(mine)
        proc = subprocess.Popen(
            [sys.executable, str(self.script), *args], stdin=theirs, stdout=subprocess.DEVNULL, env=server_env
        )
        os.close(theirs)
        self.popens.append(proc)
        return self._wait_server(pidfile)

    def broker(self, key: str, mode: str) -> Server:
        """A stand-in broker for `key` (see FAKE_BROKER) with its state file; `child` is its backend."""
        os.makedirs(runtime_dir(), mode=0o700, exist_ok=True)
        paths = KeyPaths(key)
        argv = [sys.executable, "-c", FAKE_BROKER, paths.lock, paths.sock, mode, key, "mcpsingleton.broker"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
        self.popens.append(proc)
        assert proc.stdout
        backend = int(proc.stdout.readline())
        self.pids.append(backend)
        assert wait_for(lambda: mode == "no-socket" or os.path.exists(paths.sock))
        write_state(key, proc.pid)
        return Server(proc.pid, backend)

    def cleanup(self) -> None:
        for fd in self.fds:
            os.close(fd)
        for pid in self.pids:
            kill_quietly(pid)
        for proc in self.popens:
            proc.kill()
            proc.wait()


def write_state(key: str, broker_pid: int, scope: str = "cwd") -> Path:
    os.makedirs(runtime_dir(), mode=0o700, exist_ok=True)
    state = {"key": key, "name": "fake", "command": ["fake-mcp-server"], "cwd": "/", "scope": scope,
             "broker_pid": broker_pid, "started_at": "2026-01-01T00:00:00+00:00"}
    path = Path(KeyPaths(key).state)
    path.write_text(json.dumps(state))
    return path


@pytest.fixture
def procs(home: Path, tmp_path: Path) -> Iterator[Processes]:
    spawned = Processes(tmp_path)
    yield spawned
    spawned.cleanup()


@pytest.fixture
def restrict(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Let run_reap act on the given pids only: this machine may have real orphans that are not ours."""

    def only(*pids: int) -> None:
        find = reaper.find_reapable
        monkeypatch.setattr(reaper, "find_reapable", lambda: [f for f in find() if f.pid in pids])

    return only


def findings_for(*pids: int) -> dict[int, reaper.Finding]:
    """Our processes among find_reapable's findings, by pid (whether as the finding or inside its tree)."""
    return {f.pid: f for f in reaper.find_reapable() if set(f.pids or [f.pid]) & set(pids)}


def reap(dry_run: bool, confirm: bool = False) -> list[dict]:
    out = io.StringIO()
    assert reaper.run_reap(dry_run=dry_run, as_json=True, confirm=confirm, out=out) == 0
    return json.loads(out.getvalue())


# ---- predicates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["npx", "-y", "@modelcontextprotocol/server-everything"],
        ["npm", "exec", "@modelcontextprotocol/server-filesystem", "/tmp"],
        ["/usr/bin/node", "/home/u/.npm/_npx/1a2b/node_modules/.bin/mcp-server-everything"],
        ["node", "/srv/server-everything/dist/index.js", "stdio"],
        ["uvx", "mcp-server-git"],
        ["/usr/bin/python3.12", "-m", "mcp_server_time"],
        ["uv", "run", "fastmcp", "run", "server.py"],
        ["/usr/local/bin/github-mcp-server", "stdio"],
        ["docker", "run", "-i", "--rm", "mcp/github"],
        ["sh", "-c", "npx -y weather-mcp"],
        ["python3", "/tmp/x/fake-mcp-server.py"],
    ],
)
def test_looks_like_mcp_server(argv: list[str]) -> None:
    assert unmanaged.looks_like_mcp_server(argv)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["vim", "mcp-notes.txt"],
        ["tail", "-f", "/var/log/mcp-server.log"],
        ["/opt/mcp/bin/htop"],
        ["python3", "-m", "http.server"],
        ["bash"],
        ["mcpsingleton", "run", "--", "npx", "-y", "mcp-server-git"],
        ["/venv/bin/python", "/venv/bin/mcpsingleton", "run", "--", "uvx", "mcp-server-time"],
        ["/venv/bin/python", "-m", "mcpsingleton.broker", "3", "4"],
        ["mcpsingleton-session", "-c", "read x", "mcpsingleton-session", "everything"],
        ["/bin/sh", "-c", "kill -TERM -$pg", "mcpsingleton-keeper"],
    ],
)
def test_does_not_look_like_mcp_server(argv: list[str]) -> None:
    assert not unmanaged.looks_like_mcp_server(argv)


# ---- orphan-server ------------------------------------------------------------------------------

needs_proof = pytest.mark.skipif(
    not processes.proves_orphans(), reason="proof needs Linux's /proc (macOS, BSD and portable mode do without)"
)


@needs_proof
@pytest.mark.parametrize("stdin", ["pipe", "socket"])
def test_finds_the_orphan_and_not_the_live_server(procs: Processes, stdin: str) -> None:
    orphan, live = procs.orphan(stdin), procs.live(stdin)
    found = findings_for(*orphan.pids, *live.pids)
    assert set(found) == {orphan.pid}
    finding = found[orphan.pid]
    assert finding.kind == "orphan-server"
    assert "stdin" in finding.reason
    assert set(finding.pids) == orphan.pids  # the whole tree goes, its child too
    assert finding.command == [sys.executable, str(procs.script)]


@needs_proof
@pytest.mark.parametrize(
    ("kernel", "complete", "holder", "verdict"),
    [
        (None, True, None, "no process holds"),  # kernel cannot tell (data waiting): the full walk decides
        (None, False, None, None),  # … but not when some process hid its fds from us
        (True, True, None, None),  # the kernel knows a writer we cannot see (in flight, other namespace)
        (True, True, "child", "only inside its own tree"),
        (False, False, "outsider", None),  # a writer outside the tree always means alive
    ],
)
def test_orphan_verdicts(
    procs: Processes,
    monkeypatch: pytest.MonkeyPatch,
    kernel: bool | None,
    complete: bool,
    holder: str | None,
    verdict: str | None,
) -> None:
    """How the /proc walk and the kernel's answer combine, on a real orphan's stdin pipe."""
    orphan = procs.orphan()
    monkeypatch.setattr(stdin_peers, "_pipe_has_writer", lambda pid, inode: kernel)
    holders = {"child": {orphan.child}, "outsider": {os.getpid()}, None: set()}[holder]
    link = os.readlink(f"/proc/{orphan.pid}/fd/0")
    reason = reaper._orphan_reason(orphan.pid, orphan.pids, FdHolders({link: holders}, complete))
    assert (reason is None) if verdict is None else (verdict in reason)


@needs_proof
def test_dry_run_json_lists_the_orphan_and_kills_nothing(procs: Processes) -> None:
    orphan, live = procs.orphan(), procs.live()
    rows = [row for row in reap(dry_run=True) if row["pid"] in orphan.pids | live.pids]
    assert [row["pid"] for row in rows] == [orphan.pid]
    assert rows[0]["reason"] and rows[0]["command"] and rows[0]["action"] == "would kill"
    assert all(alive(pid) for pid in orphan.pids | live.pids)


@needs_proof
def test_reap_kills_the_orphan_tree_and_spares_the_live_server(
    procs: Processes, restrict: Callable[..., None]
) -> None:
    orphan, live = procs.orphan(), procs.live()
    restrict(orphan.pid, live.pid)
    out = io.StringIO()
    assert reaper.run_reap(dry_run=False, as_json=False, confirm=False, out=out) == 0
    assert str(orphan.pid) in out.getvalue() and "killed" in out.getvalue()
    assert not alive(orphan.pid) and not alive(orphan.child)
    assert alive(live.pid) and alive(live.child)


def test_without_proc_only_confirmed_reparented_servers_are_killed(
    procs: Processes,
    restrict: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MCPSINGLETON_PORTABLE", "1")  # the macOS/BSD rule
    orphan, live = procs.orphan(), procs.live()
    found = findings_for(*orphan.pids, *live.pids)
    assert set(found) == {orphan.pid} and found[orphan.pid].needs_confirm
    restrict(orphan.pid, live.pid)
    assert reap(dry_run=False) == []
    assert "--yes" in capsys.readouterr().err
    assert alive(orphan.pid)
    assert [row["pid"] for row in reap(dry_run=False, confirm=True)] == [orphan.pid]
    assert not alive(orphan.pid) and not alive(orphan.child) and alive(live.pid)


def test_without_proc_a_launchd_style_agent_is_never_reaped(
    procs: Processes, restrict: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20 row 8: on macOS every LaunchAgent has parent pid 1; `reap --yes` killed one named *mcp*."""
    monkeypatch.setenv("MCPSINGLETON_PORTABLE", "1")
    agent, orphan = procs.agent(), procs.orphan()
    assert psutil.Process(agent.pid).ppid() == 1 == psutil.Process(orphan.pid).ppid()
    restrict(agent.pid, orphan.pid)
    (row,) = reap(dry_run=False, confirm=True)
    assert row["pid"] == orphan.pid and f"its process group's leader {os.getpgid(orphan.pid)}" in row["reason"]
    assert alive(agent.pid) and alive(agent.child)


class Table(unmanaged.Processes):
    """An injected process table: what a Mac shows, where real processes here cannot show it."""

    def __init__(self, rows: dict[int, tuple[int, int, dict[str, str]]]) -> None:
        """pid → (parent pid, process group, environment); every row runs fake-mcp-server as this user."""
        self.rows = rows
        self.parents = {pid: parent for pid, (parent, _, _) in rows.items()}
        self.own = {pid: ["python3", "fake-mcp-server.py"] for pid in rows}

    def group_of(self, pid: int) -> int | None:
        return self.rows[pid][1] if pid in self.rows else None

    def environ(self, pid: int) -> dict[str, str]:
        return self.rows[pid][2]


AGENT_ENV = {"XPC_SERVICE_NAME": "com.example.mcp-sync"}
APP_ENV = {"XPC_SERVICE_NAME": "application.com.anthropic.claudefordesktop.4242.4250"}


@pytest.mark.parametrize(
    ("rows", "suspected"),
    [
        ({500: (1, 500, AGENT_ENV)}, False),  # a LaunchAgent: leads its group
        ({500: (1, 500, APP_ENV)}, False),  # an app the Dock started: leads its group too
        ({501: (1, 490, AGENT_ENV)}, False),  # left behind by an agent (AbandonProcessGroup): launchd's
        ({501: (1, 490, APP_ENV)}, True),  # Claude Desktop (490) is gone: its server stays behind
        ({501: (1, 490, {"XPC_SERVICE_NAME": "0"})}, True),  # a client run in Terminal is gone
        ({490: (300, 490, APP_ENV), 501: (1, 490, APP_ENV)}, False),  # its client still runs
        ({490: (300, 77, {}), 501: (1, 490, {})}, True),  # 490 is now another process: the leader is gone
        ({501: (600, 490, {})}, False),  # not reparented
    ],
)
def test_without_proc_a_server_is_suspected_only_when_its_starter_is_gone(
    rows: dict[int, tuple[int, int, dict[str, str]]], suspected: bool
) -> None:
    found = reaper._reparented_findings(Table(rows), claimed=set())
    assert [f.pid for f in found] == ([501] if suspected else [])
    assert all("leader 490" in f.reason and f.needs_confirm for f in found)


# ---- leftover-backend ---------------------------------------------------------------------------


def test_leftover_tagged_backend_is_found_and_killed(procs: Processes, restrict: Callable[..., None]) -> None:
    """The backend tree of a broker that died: tagged, reparented, no broker anywhere above it."""
    leftover = procs.orphan(**{KEY_ENV: "somekey"})
    found = findings_for(*leftover.pids)
    assert set(found) == {leftover.pid}
    assert found[leftover.pid].kind == "leftover-backend" and "somekey" in found[leftover.pid].reason
    assert set(found[leftover.pid].pids) == leftover.pids
    restrict(leftover.pid)
    assert [row["pid"] for row in reap(dry_run=False)] == [leftover.pid]
    assert not alive(leftover.pid) and not alive(leftover.child)


def test_a_live_answering_broker_and_its_backend_are_left_alone(procs: Processes) -> None:
    broker = procs.broker("a" * 20, "answer")
    assert findings_for(*broker.pids) == {}


# ---- stale-state and hung-broker ----------------------------------------------------------------


def test_stale_state_of_a_dead_broker_is_removed_but_not_its_lock(
    procs: Processes, restrict: Callable[..., None]
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    key = "d" * 20
    paths = KeyPaths(key)
    state = write_state(key, dead.pid)
    Path(paths.sock).touch()
    Path(paths.lock).touch()
    found = findings_for(dead.pid)
    assert found[dead.pid].kind == "stale-state" and found[dead.pid].pids == []
    restrict(dead.pid)
    assert reap(dry_run=True)[0]["action"] == "would remove" and state.exists()
    rows = reap(dry_run=False)
    assert [(row["pid"], row["action"]) for row in rows] == [(dead.pid, "removed")]
    assert not state.exists() and not os.path.exists(paths.sock)
    assert os.path.exists(paths.lock)


def only_stale_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let run_reap act on this home's files only: this machine may have real orphans that are not ours."""
    find = reaper.find_reapable
    monkeypatch.setattr(reaper, "find_reapable", lambda: [f for f in find() if f.kind == "stale-state"])


def test_the_files_of_ended_isolated_keys_are_removed_and_a_shared_key_keeps_its_own(
    home: Path, fake_server: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19 row 17: 10 isolated sessions left 10 `.lock` and 10 `.log` files forever."""
    shared = RawClient(shim(fake_server, "--linger", "0"))
    shared.initialize()
    for _ in range(10):
        session = RawClient(shim(fake_server, "--scope", "isolated"))
        session.initialize()
        assert session.close() == 0
    assert shared.close() == 0
    assert wait_for(lambda: not processes_of(home), timeout=20), "every broker exits with its last session"
    # the one broker: one lock (its own, no per-key lock); a log per key (10 isolated, 1 shared) and its own
    assert [path.name for path in (home / "run").glob("*.lock")] == ["broker.lock"]
    assert len(list((home / "logs").glob("*.log"))) == 12
    only_stale_state(monkeypatch)
    rows = reap(dry_run=False)
    assert [row["action"] for row in rows] == ["removed"] * 10
    assert all("isolated key" in row["reason"] for row in rows)
    assert [path.name for path in (home / "run").glob("*.lock")] == ["broker.lock"]
    assert len(list((home / "logs").glob("*.log"))) == 2, "the shared key's log and the broker's stay"
    assert reap(dry_run=False) == [], "the shared key's files stay: it runs again with its next session"


def test_a_killed_isolated_broker_leaves_nothing_after_reap(
    procs: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    key = "i" * 20
    paths = KeyPaths(key)
    state = write_state(key, dead.pid, scope="isolated")
    for path in (paths.sock, paths.lock):
        Path(path).touch()
    os.makedirs(os.path.dirname(paths.log()), exist_ok=True)
    Path(paths.log()).write_text(f"t broker {dead.pid} started for fake ({key}), scope isolated, linger 0s\n")
    only_stale_state(monkeypatch)
    [row] = reap(dry_run=False)
    assert (row["pid"], row["action"]) == (dead.pid, "removed")
    assert not any(os.path.exists(path) for path in (state, paths.sock, paths.lock, paths.log()))


def test_an_isolated_log_without_its_lock_is_removed_and_a_dry_run_makes_no_lock(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a reboot empties /run/user/UID, the logs of ended isolated keys remain alone."""
    paths = KeyPaths("j" * 20)
    os.makedirs(os.path.dirname(paths.log()), exist_ok=True)
    Path(paths.log()).write_text(f"t broker 1 started for fake ({paths.key}), scope isolated, linger 0s\n")
    os.makedirs(runtime_dir(), mode=0o700, exist_ok=True)
    only_stale_state(monkeypatch)
    assert [row["action"] for row in reap(dry_run=True)] == ["would remove"]
    assert not os.path.exists(paths.lock) and os.path.exists(paths.log())
    assert [row["action"] for row in reap(dry_run=False)] == ["removed"]
    assert not os.path.exists(paths.lock) and not os.path.exists(paths.log())


@pytest.mark.parametrize("mode", ["silent", "no-socket"])
def test_a_hung_broker_is_killed_with_its_tree_and_its_state_removed(
    procs: Processes, restrict: Callable[..., None], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setattr(reaper, "UNREACHABLE_GRACE", 0.3)
    key = "h" * 20
    broker = procs.broker(key, mode)
    found = findings_for(*broker.pids)
    assert set(found) == {broker.pid}
    assert found[broker.pid].kind == "hung-broker" and "alive" in found[broker.pid].reason
    assert set(found[broker.pid].pids) == broker.pids
    restrict(broker.pid)
    assert [row["action"] for row in reap(dry_run=False)] == ["killed"]
    assert not alive(broker.pid) and not alive(broker.child)
    assert not os.path.exists(KeyPaths(key).state) and os.path.exists(KeyPaths(key).lock)


# ---- ls --all -----------------------------------------------------------------------------------


def test_unmanaged_servers_are_grouped_with_their_savings(procs: Processes) -> None:
    first, second = procs.live(), procs.live()
    tagged = procs.live(**{KEY_ENV: "somekey"})
    groups = [g for g in unmanaged.find_unmanaged_servers() if {first.pid, second.pid} & set(g["pids"])]
    assert len(groups) == 1
    group = groups[0]
    assert group["managed"] is False
    assert group["command"] == [os.path.basename(sys.executable), str(procs.script)]
    assert {first.pid, second.pid} <= set(group["pids"]) and tagged.pid not in group["pids"]
    assert group["count"] == len(group["pids"]) >= 2
    assert 0 < group["savable_bytes"] < group["memory_bytes"]
    listed = {pid for g in unmanaged.find_unmanaged_servers() for pid in g["pids"]}
    assert first.child not in listed and tagged.pid not in listed


SECRET_ARGS = ("--api-key", "sk-reap-s3cret", "TOKEN=tok-s3cret")


def test_reap_and_ls_all_never_show_a_secret_in_another_program_s_command(
    procs: Processes, restrict: Callable[..., None]
) -> None:
    """`ls` masks secret-named values in the commands it shows; `reap` and `ls --all` showed other
    programs' commands as they ran, `--api-key` values included."""
    orphan, live = procs.orphan(args=SECRET_ARGS), procs.live(args=SECRET_ARGS)
    restrict(orphan.pid, live.pid)
    (row,) = reap(dry_run=True, confirm=True)  # confirmed: without /proc (portable mode) it is a suspect
    assert row["pid"] == orphan.pid and row["command"][-3:] == ["--api-key", "***", "TOKEN=***"]
    (group,) = [g for g in unmanaged.find_unmanaged_servers() if live.pid in g["pids"]]
    assert group["command"][-3:] == ["--api-key", "***", "TOKEN=***"]
    text = io.StringIO()
    reaper.run_reap(dry_run=True, as_json=False, confirm=True, out=text)
    assert "s3cret" not in text.getvalue() + json.dumps(row) + json.dumps(group)
