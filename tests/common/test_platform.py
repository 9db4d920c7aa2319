"""Issue 13 and issue 10 rows 8-10: the platform module, portable mode, and what must never be left or hit."""

from __future__ import annotations

import errno
import json
import os
import select
import selectors
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import RawClient, backend_roots, kill_quietly, ls_json, mcpsingleton_exe, result_text, shim, wait_for

from mcpsingleton.broker.eventloop import EventLoop
from mcpsingleton.broker.lineio import write_if_room
from mcpsingleton.common import platform, processes

MODES = ["native", "portable"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once with the Linux implementations and once with the macOS/BSD ones."""
    if request.param == "portable":
        monkeypatch.setenv(platform.PORTABLE_ENV, "1")
    else:
        monkeypatch.delenv(platform.PORTABLE_ENV, raising=False)
    return str(request.param)


# ---- the event loop on any system -------------------------------------------------------------------


def test_event_loop_runs_without_pipe2(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS has no os.pipe2: the broker died at startup there."""
    monkeypatch.delattr(os, "pipe2", raising=False)
    loop = EventLoop()
    fired: list[str] = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: (fired.append("signal"), loop.stop()))
    loop.call_later(0, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    loop.run()
    loop.close()
    assert fired == ["signal"]


def test_portable_pipes_are_nonblocking_and_close_on_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(platform.PORTABLE_ENV, "1")
    called = []
    monkeypatch.setattr(os, "pipe2", lambda flags: called.append(flags) or (-1, -1))
    fds = platform.nonblocking_pipe()
    try:
        assert not called, "portable mode never calls pipe2"
        assert all(not os.get_blocking(fd) and not os.get_inheritable(fd) for fd in fds)
    finally:
        for fd in fds:
            os.close(fd)


def selector_kinds() -> list[type[selectors.BaseSelector]]:
    names = ("EpollSelector", "KqueueSelector", "PollSelector", "SelectSelector")
    return [getattr(selectors, name) for name in names if hasattr(selectors, name)]


class RefusingSelector(selectors.PollSelector):
    """Refuses what it is given, as kqueue refuses some devices (EINVAL) and epoll regular files (EPERM)."""

    refused: set[int] = set()

    def register(self, fileobj, events, data=None):  # type: ignore[no-untyped-def]
        if fileobj not in self.refused:
            return super().register(fileobj, events, data)
        raise OSError(22, "Invalid argument")


@pytest.mark.parametrize("selector", [*selector_kinds(), RefusingSelector], ids=lambda kind: kind.__name__)
def test_files_and_dev_null_are_read_to_the_end_under_every_selector(
    selector: type[selectors.BaseSelector], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platform, "new_selector", selector)
    data = tmp_path / "requests.jsonl"
    data.write_bytes(b"x" * 200_000)
    sources = {"file": os.open(data, os.O_RDONLY), "null": os.open(os.devnull, os.O_RDONLY)}
    RefusingSelector.refused = set(sources.values())
    loop = EventLoop()
    read = dict.fromkeys(sources, 0)

    def reader(name: str, fd: int) -> None:
        chunk = os.read(fd, 65536)
        read[name] += len(chunk)
        if not chunk:
            loop.remove_reader(fd)
            os.close(fd)
            del sources[name]
            if not sources:
                loop.stop()

    for name, fd in list(sources.items()):
        loop.add_reader(fd, lambda name=name, fd=fd: reader(name, fd))
    loop.call_later(10, loop.stop)
    loop.run()
    loop.close()
    assert read == {"file": 200_000, "null": 0} and not sources


class TtyRefusingSelector(selectors.PollSelector):
    """Refuses ttys (EINVAL), as macOS's kqueue does for some: the portable selector with kqueue's refusal."""

    def register(self, fileobj, events, data=None):  # type: ignore[no-untyped-def]
        if os.isatty(fileobj):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return super().register(fileobj, events, data)


def test_a_tty_the_selector_refuses_is_polled_on_a_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20 row 10: such a tty counted as always ready, and the loop spun at 100% CPU while it was idle."""
    monkeypatch.setenv(platform.PORTABLE_ENV, "1")
    monkeypatch.setattr(platform, "new_selector", TtyRefusingSelector)
    controller, terminal = os.openpty()
    os.set_blocking(terminal, False)
    loop = EventLoop()
    tries, received = [0], bytearray()

    def reader() -> None:
        tries[0] += 1
        try:
            received.extend(os.read(terminal, 1024))
            loop.stop()
        except BlockingIOError:
            pass

    try:
        loop.add_reader(terminal, reader)
        loop.call_later(0.5, lambda: os.write(controller, b"typed\n"))
        loop.call_later(30, loop.stop)
        loop.run()
    finally:
        loop.close()
        os.close(controller)
        os.close(terminal)
    assert received == b"typed\n", "what the tty delivers is read"
    assert tries[0] < 50, f"{tries[0]} reads in 0.5 s: the loop spun (one per POLL_INTERVAL is ~10)"


class DarwinPoll:
    """select.poll as macOS answers: POLLNVAL for devices other than ttys (XNU's poll is built on kqueue)."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def register(self, fd: int, events: int) -> None:
        self.fds.append(fd)

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        def answer(fd: int) -> int:
            device = stat.S_ISCHR(os.fstat(fd).st_mode) and not os.isatty(fd)
            return select.POLLNVAL if device else select.POLLOUT

        return [(fd, answer(fd)) for fd in self.fds]


def test_dev_null_takes_an_isolated_backends_stderr_under_macos_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 20 row 11: a client whose stderr is /dev/null got every stderr line counted as dropped."""
    monkeypatch.setattr(select, "poll", DarwinPoll)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        assert write_if_room(null, b"a line of stderr\n" * 1000) == 0
    finally:
        os.close(null)


# ---- the broker in both modes -------------------------------------------------------------------------


def broker_log(home: Path) -> str:
    return "".join(path.read_text() for path in (home / "logs").glob("*.log"))


def daemonizer(tmp_path: Path, fake_server: list[str]) -> list[str]:
    """A backend that double-forks a setsid daemon (which leaves the group), then serves."""
    script = tmp_path / "daemonize.py"
    script.write_text(
        "import os, time\n"
        "if os.fork(): os._exit(0)\n"
        "os.setsid()\n"
        "if os.fork(): os._exit(0)\n"
        "time.sleep(300)\n"
    )
    return ["/bin/sh", "-c", f"{sys.executable} {script}; exec {' '.join(fake_server)}"]


def daemons(home: Path) -> list[psutil.Process]:
    """This test's daemons only (they carry its MCPSINGLETON_HOME): other runs may share the machine."""
    found = []
    for process in psutil.process_iter():
        try:
            mine = process.environ().get("MCPSINGLETON_HOME") == str(home)
            runs_it = any(word.endswith("daemonize.py") for word in process.cmdline()[1:2])  # not a waiter named so
            if mine and runs_it and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_portable_mode_is_really_taken(home: Path, fake_server: list[str], tmp_path: Path, mode: str) -> None:
    client = RawClient(shim(daemonizer(tmp_path, fake_server)))
    client.initialize()
    (entry,) = ls_json()
    (daemon,) = wait_for(lambda: daemons(home))
    log = broker_log(home)
    if mode == "portable":
        assert "platform portable: PollSelector, pipe+fcntl, keeper only, subreaper off, scans via psutil" in log
        assert daemon.ppid() != entry["broker_pid"], "no subreaper: the daemon went to init"
    elif hasattr(os, "pipe2"):  # Linux: the native implementations
        assert "EpollSelector, pipe2, pdeathsig+keeper, subreaper on, scans via /proc" in log
        assert daemon.ppid() == entry["broker_pid"], "the broker is the backend's subreaper"
    assert client.close() == 0


def test_ls_says_when_memory_is_rss(home: Path, fake_server: list[str], mode: str) -> None:
    """Issue 20 row 7: without PSS (macOS, portable mode) shared pages count in each process: ls says so."""
    client = RawClient(shim(fake_server))
    client.initialize()
    table = subprocess.run([mcpsingleton_exe(), "ls"], capture_output=True, text=True, timeout=30).stdout
    assert ("MEMORY is RSS" in table) == (processes.memory_measure() == "RSS"), table
    assert client.close() == 0


def test_setsid_daemon_does_not_survive_an_orderly_stop(
    home: Path, fake_server: list[str], tmp_path: Path, mode: str
) -> None:
    """Issue 10 row 10: a process that left the backend's group is stopped with it."""
    client = RawClient(shim(daemonizer(tmp_path, fake_server), "--linger", "0"))
    client.initialize()
    (daemon,) = wait_for(lambda: daemons(home))
    assert os.getpgid(daemon.pid) != backend_roots(home)[0].pid, "it really left the group"
    assert client.close() == 0
    assert wait_for(lambda: not daemons(home), timeout=8), "the daemon survived the broker's stop"
    assert wait_for(lambda: not ls_json(), timeout=5)


def test_sigkill_of_broker_leaves_nothing(home: Path, fake_server: list[str], mode: str) -> None:
    """The orphan guarantee holds with the keeper as the only guard (no pdeathsig, no subreaper)."""
    client = RawClient(shim(["/bin/sh", "-c", f"{' '.join(fake_server)} --grandchild; echo done"]))
    client.initialize()
    (entry,) = ls_json()
    (root,) = backend_roots(home)
    tree = [root, *root.children(recursive=True)]
    assert len(tree) >= 3, "sh, server and grandchild"
    client.process.send_signal(signal.SIGSTOP)  # its session would re-attach and start a broker that sweeps too
    os.kill(entry["broker_pid"], signal.SIGKILL)
    assert wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree), timeout=5)
    client.process.send_signal(signal.SIGCONT)
    assert json.loads(result_text(client.call("whoami")))["pid"] not in {p.pid for p in tree}, "the session goes on"
    assert client.close() == 0


def test_dev_null_and_tty_stdin_never_crash_the_broker(home: Path, fake_server: list[str], mode: str) -> None:
    """Selectors refuse or misreport such fds in different ways; the session is served and the broker lives."""
    anchor = RawClient(shim(fake_server))
    anchor.initialize()
    empty = subprocess.run(shim(fake_server), stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert empty.returncode == 0, empty.stderr
    controller, terminal = os.openpty()
    tty = subprocess.Popen(shim(fake_server), stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(terminal)
    request = b'{"jsonrpc":"2.0","id":7,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
    os.write(controller, request + b'"capabilities":{},"clientInfo":{"name":"tty","version":"1"}}}\n')
    assert tty.stdout is not None and b'"id":7' in tty.stdout.readline()
    os.close(controller)  # hang up: the session ends
    tty.wait(timeout=10)
    assert result_text(anchor.call("echo", {"text": "alive"})) == "alive"
    assert anchor.close() == 0


def test_keeper_stops_only_the_groups_it_still_guards(started: list[subprocess.Popen[bytes]]) -> None:
    """The keeper's list: `+G` guards a group, `-G` forgets it; on EOF only guarded groups are stopped."""
    from mcpsingleton.broker.backend import Keeper

    guarded, forgotten, never = (subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(3))
    started.extend([guarded, forgotten, never])
    keeper = Keeper()
    keeper.guard(forgotten.pid)
    keeper.guard(guarded.pid)
    keeper.guard(guarded.pid)
    keeper.forget(forgotten.pid)
    keeper.forget(never.pid)
    keeper.close()  # EOF, as when the broker dies
    assert guarded.wait(timeout=5) == -signal.SIGTERM
    assert forgotten.poll() is None and never.poll() is None


@pytest.mark.real_process
@pytest.mark.parametrize("member", ["zombie", "running"])
def test_eperm_from_a_group_of_zombies_is_not_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member: str
) -> None:
    """Issue 20 row 9: XNU answers kill(-pgid, 0) with EPERM when the group holds only zombies (Linux says
    yes): a real group, with that one answer of macOS's put in its place."""
    from mcpsingleton.broker.backend import Backend

    backend = Backend(["sleep", "0" if member == "zombie" else "60"], str(tmp_path), dict(os.environ), "row9")
    real_killpg = os.killpg

    def xnu_killpg(pgid: int, signum: int) -> None:
        if signum == 0 and pgid == backend.pgid:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
        real_killpg(pgid, signum)

    try:
        if member == "zombie":
            assert wait_for(lambda: psutil.Process(backend.pid).status() == psutil.STATUS_ZOMBIE, timeout=10)
        monkeypatch.setattr(os, "killpg", xnu_killpg)
        assert backend.group_alive() is (member == "running")
    finally:
        monkeypatch.undo()
        kill_quietly(backend.pid)
        backend.process.wait()
        backend.close_pipes()


# ---- nested use and recycled ids (issue 10 rows 8 and 9) ---------------------------------------------------


def test_nested_broker_survives_the_outer_keys_leftover_sweep(home: Path, fake_server: list[str]) -> None:
    """A backend running `mcpsingleton run` inherits the outer key's tag; its broker must not be swept."""
    nested = [mcpsingleton_exe(), "run", "--name", "inner", "--", *fake_server]
    first = RawClient(shim(nested, "--name", "outer"))
    first.initialize()
    inner_backend = result_text(first.call("whoami"))
    inner = next(entry for entry in ls_json() if entry["name"] == "inner")
    subprocess.run([mcpsingleton_exe(), "stop", "outer"], check=True, capture_output=True, timeout=30)
    first.process.wait(timeout=10)
    second = RawClient(shim(nested, "--name", "outer"))
    second.initialize()  # a new outer broker: it swept the outer key's leftovers before starting
    broker = psutil.Process(inner["broker_pid"])
    assert broker.is_running() and broker.status() != psutil.STATUS_ZOMBIE, "the inner key's live broker was killed"
    assert result_text(second.call("whoami")) == inner_backend, "still served by the same inner backend"
    assert second.close() == 0


def pid_as(target: int, attempts: int = 200) -> subprocess.Popen[bytes] | None:
    """A new session leader whose pid (and so pgid) is `target`: a recycled group id, made on purpose."""
    for _ in range(attempts):
        try:
            with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
                handle.write(str(target - 1))
        except OSError:
            return None
        process = subprocess.Popen(["sleep", "60"], start_new_session=True)
        if process.pid == target:
            return process
        process.kill()
        process.wait()
    return None


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        kill_quietly(process.pid)
        process.wait()


def test_keeper_never_signals_a_recycled_group(
    home: Path, fake_server: list[str], started: list[subprocess.Popen[bytes]]
) -> None:
    """Issue 10 row 9: the backend crashed (no restart yet: restarts are on demand), its group id is reused,
    then the broker is SIGKILLed. The keeper must not signal the group that now has that id."""
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("needs a writable /proc/sys/kernel/ns_last_pid (root, Linux) to recycle a pid on purpose")
    client = RawClient(shim(fake_server))
    client.initialize()
    (entry,) = ls_json()
    (root,) = backend_roots(home)
    old_group = root.pid
    assert client.call("crash")["error"]["code"] == -32603
    assert wait_for(lambda: not psutil.pid_exists(old_group), timeout=5)
    decoy = pid_as(old_group)
    if decoy is None:
        pytest.skip("could not get the old pid back (busy machine)")
    started.append(decoy)
    keeper = next(p for p in psutil.Process(entry["broker_pid"]).children() if "mcpsingleton-keeper" in p.cmdline())
    os.kill(entry["broker_pid"], signal.SIGKILL)
    assert wait_for(lambda: not keeper.is_running() or keeper.status() == psutil.STATUS_ZOMBIE, timeout=5)
    time.sleep(0.2)  # a signal sent by the keeper has been delivered by now
    assert decoy.poll() is None, "the keeper signalled a group that only reused the dead backend's id"


# ---- Windows ------------------------------------------------------------------------------------------------


WINDOWS_LIKE = (
    "import _socket, os, sys\n"
    "del _socket.SCM_RIGHTS\n"  # no fd passing, as on Windows
    "os.name = 'nt'\n"
    "sys.modules['fcntl'] = None\n"  # importing fcntl fails, as on Windows
    "sys.argv = ['mcpsingleton', *sys.argv[1:]]\n"
    "from mcpsingleton.__main__ import main\n"
    "main()\n"
)


@pytest.mark.parametrize("args", [["run", "--", "npx", "server"], ["ls"]])
def test_windows_gets_one_line_and_status_one(args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", WINDOWS_LIKE, *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr == "mcpsingleton: Windows is not supported yet; run it under WSL\n"
    assert out.stdout == ""
