"""The waiter and keeper scripts under every `/bin/sh` they meet: dash (Debian), bash 5, and bash 3.2 (macOS).

bash 3.2 is not packaged anywhere CI can reach: build GNU or Apple bash 3.2.57 from source and point
MCPSINGLETON_TEST_BASH32 at the binary to run these tests under it too (issue 20, row 3). Apple's
bash-140 tree builds on Linux with bison, CFLAGS="-std=gnu99 -fcommon -DEBADEXEC=ENOEXEC", an xlocale.h
that includes locale.h, and a declared stub for BSD's fmtcheck (return its first argument)."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import kill_quietly, wait_for

from mcpsingleton.broker.backend import KEEPER_SCRIPT
from mcpsingleton.shim import attach as shim
from mcpsingleton.shim.attach import WAITER

BASH32_ENV = "MCPSINGLETON_TEST_BASH32"
SHOW_STATE = "import os, sys; print(os.environ.get('MCPSINGLETON_STATE'), sys.argv[1:])"


def shells() -> Iterator[object]:
    for name in ("dash", "bash"):
        found = shutil.which(name)
        yield pytest.param(found, id=name, marks=pytest.mark.skipif(not found, reason=f"{name} is not installed"))
    bash32 = os.environ.get(BASH32_ENV)
    reason = f"set {BASH32_ENV} to a bash 3.2.57 built from source (macOS's /bin/sh) to run these under it"
    yield pytest.param(bash32, id="bash3.2", marks=pytest.mark.skipif(not bash32, reason=reason))


@pytest.fixture(params=list(shells()))
def shell(request: pytest.FixtureRequest) -> str:
    return request.param


class Waiter:
    """The WAITER script in `shell`, with fd 3 a socket whose other end is `self.broker` (as the shim leaves it)."""

    def __init__(self, shell: str, resume: str = SHOW_STATE) -> None:
        self.broker, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [shell, "-c", WAITER, "mcpsingleton-session", "fake", sys.executable, resume],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: os.dup2(theirs.fileno(), 3),
            close_fds=False,  # fd 3, set up by preexec_fn, stays open
        )
        theirs.close()
        self.broker.settimeout(5)
        assert self.broker.recv(1) == b"r", "the waiter says it is ready once its traps are set"

    def said(self) -> bytes:
        """Everything the waiter wrote to the socket after `r`, up to its end of file."""
        data = b""
        while chunk := self.broker.recv(4096):
            data += chunk
        return data

    def close(self) -> None:
        kill_quietly(self.process.pid)
        self.process.wait(timeout=5)
        self.broker.close()


@pytest.fixture
def waiter(shell: str) -> Iterator[Waiter]:
    started = Waiter(shell)
    yield started
    started.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"])
def test_an_idle_waiter_exits_on_the_clients_signal(waiter: Waiter, signum: int) -> None:
    """bash 3.2 restarts a `read` after its trap ran: the waiter must leave from the trap, not after the read."""
    time.sleep(0.1)  # the waiter is blocked in `read`, as an idle session's is
    os.kill(waiter.process.pid, signum)
    assert wait_for(lambda: waiter.process.poll() is not None, timeout=5), "the waiter ignored the signal"
    assert waiter.process.returncode == 128 + signum
    assert waiter.said() == f"x {128 + signum}\n".encode(), "it told the broker how the session ended"


def test_the_waiter_prints_messages_and_exits_with_the_brokers_status(waiter: Waiter) -> None:
    waiter.broker.sendall(b"msg mcpsingleton: one line\nstate abc\nexit 7\n")
    assert waiter.process.wait(timeout=5) == 7
    assert waiter.process.stderr is not None
    assert waiter.process.stderr.read() == b"mcpsingleton: one line\n"


@pytest.mark.parametrize("ending", [b"reattach\n", b""], ids=["reattach", "broker-died"])
def test_the_waiter_reattaches_with_the_last_state(waiter: Waiter, ending: bytes) -> None:
    waiter.broker.sendall(b"state first\nstate second\n" + ending + b"state half-writt")
    waiter.broker.shutdown(socket.SHUT_WR)
    assert waiter.process.wait(timeout=10) == 0
    assert waiter.process.stdout is not None
    shown = waiter.process.stdout.read().decode()
    assert shown == "second ['mcpsingleton-session', 'fake']\n", "a half-read line is dropped with its broker"


@pytest.mark.parametrize(("ending", "marked"), [(b"reattach\n", "1"), (b"", "None")], ids=["reattach", "broker-died"])
def test_only_an_orderly_handover_is_marked_for_the_crash_loop_guard(shell: str, ending: bytes, marked: str) -> None:
    """`reattach` is a handover in good order: the Python it execs must know, or `restart`s count as crashes."""
    waiter = Waiter(shell, f"import os; print(os.environ.get({shim.HANDOVER_ENV!r}))")
    try:
        waiter.broker.sendall(b"state s\n" + ending)
        waiter.broker.shutdown(socket.SHUT_WR)
        assert waiter.process.wait(timeout=10) == 0
        assert waiter.process.stdout is not None
        assert waiter.process.stdout.read().decode() == marked + "\n"
    finally:
        waiter.close()


def test_the_keeper_stops_the_groups_it_guards_when_the_broker_goes(shell: str) -> None:
    guarded = subprocess.Popen(["sleep", "60"], start_new_session=True)
    forgotten = subprocess.Popen(["sleep", "60"], start_new_session=True)
    keeper = subprocess.Popen([shell, "-c", KEEPER_SCRIPT, "mcpsingleton-keeper"], stdin=subprocess.PIPE)
    try:
        assert keeper.stdin is not None
        keeper.stdin.write(f"+{guarded.pid}\n+{forgotten.pid}\n-{forgotten.pid}\n".encode())
        keeper.stdin.flush()
        time.sleep(0.2)
        assert keeper.poll() is None and guarded.poll() is None, "nothing happens while the broker lives"
        keeper.stdin.close()  # the broker is gone
        assert keeper.wait(timeout=10) == 0
        assert guarded.wait(timeout=5) == -signal.SIGTERM
        assert forgotten.poll() is None, "a group said to be gone is never signalled"
    finally:
        for process in (guarded, forgotten, keeper):
            kill_quietly(process.pid)
            process.wait(timeout=5)


def test_a_stopped_waiter_reads_what_queued_meanwhile(waiter: Waiter) -> None:
    """SIGSTOP/SIGCONT (a suspended client) interrupts no read for good: the lines that came meanwhile are read."""
    os.kill(waiter.process.pid, signal.SIGSTOP)
    waiter.broker.sendall(b"msg while stopped\n")
    os.kill(waiter.process.pid, signal.SIGCONT)
    assert waiter.process.stderr is not None
    ready, _, _ = select.select([waiter.process.stderr], [], [], 5)
    assert ready and waiter.process.stderr.readline() == b"while stopped\n"
    assert waiter.process.poll() is None


SPY = (
    "import os, sys; open(sys.argv[1], 'w').write(os.environ.get(sys.argv[2], '-')); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[3:]])"
)
"""A backend that records one variable of its environment, then runs the fake server."""


def test_what_macos_strips_from_the_waiters_env_comes_back_on_reattach(
    home: Path, fake_server: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20 row 15: SIP strips DYLD_* when /bin/sh is executed. The waiter here starts as SIP leaves it:
    the session record the shim wrote, the variable itself gone. Its broker goes away, the session re-attaches,
    and the new broker's backend must see the variable the client set."""
    name, value, seen = "DYLD_FALLBACK_LIBRARY_PATH", "/opt/client/lib", tmp_path / "seen"
    run_args = ["--", sys.executable, "-c", SPY, str(seen), name, *fake_server[1:]]
    monkeypatch.setenv(name, value)
    record = {"argv": run_args, "path": sys.path, "name": "spy", "env": shim.stripped_by_sh()}
    monkeypatch.delenv(name)
    monkeypatch.setenv(shim.SESSION_ENV, repr(record))
    broker, theirs = socket.socketpair()
    waiter = subprocess.Popen(
        ["/bin/sh", "-c", WAITER, "mcpsingleton-session", "spy", sys.executable, shim.RESUME],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: os.dup2(theirs.fileno(), 3),
        close_fds=False,
    )
    theirs.close()
    try:
        broker.settimeout(5)
        assert broker.recv(1) == b"r"
        broker.close()  # the broker went away: the waiter re-attaches, and a new broker starts the backend
        assert wait_for(seen.exists, timeout=20), "the session re-attached and its backend started"
        assert seen.read_text() == value
    finally:
        kill_quietly(waiter.pid)
        waiter.wait(timeout=5)
