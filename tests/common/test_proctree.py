"""proctree against real processes: trees, memory, and the TERM → KILL ladder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from mcpsingleton.common import platform, proctree

SLEEPER = "import time; time.sleep(60)"
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(child.pid, flush=True)
time.sleep(60)
"""
IGNORE_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture
def family(started: list[subprocess.Popen]) -> Iterator[tuple[int, int]]:
    """A python parent in its own process group with one sleeping child: (parent pid, child pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, SLEEPER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    started.append(proc)
    assert proc.stdout
    child = int(proc.stdout.readline())
    yield proc.pid, child
    if not gone(child):
        os.kill(child, signal.SIGKILL)


def test_tree_pids_lists_parent_then_descendants(family: tuple[int, int]) -> None:
    parent, child = family
    assert proctree.tree_pids(parent) == [parent, child]
    assert proctree.tree_process_count(parent) == 2


def test_tree_of_a_vanished_process_is_empty() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert proctree.tree_pids(proc.pid) == []
    assert proctree.tree_memory(proc.pid) == 0
    assert proctree.process_memory(proc.pid) == 0


def test_tree_memory_sums_the_tree(family: tuple[int, int]) -> None:
    parent, child = family
    assert proctree.process_memory(parent) > 0
    assert proctree.process_memory(child) > 0
    assert proctree.tree_memory(parent) > proctree.process_memory(parent)


def test_memory_falls_back_to_rss_when_pss_is_denied(
    family: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    parent, _ = family

    def denied(self: psutil.Process) -> None:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "memory_full_info", denied)
    assert proctree.process_memory(parent) == psutil.Process(parent).memory_info().rss


def test_without_pss_memory_is_rss_and_never_asks_for_uss(
    family: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20 row 7: USS needs task_for_pid on macOS (denied to users, and it can block the broker's loop)."""
    parent, _ = family
    monkeypatch.setenv(platform.PORTABLE_ENV, "1")

    def task_for_pid(self: psutil.Process) -> None:
        raise AssertionError("memory_full_info: on macOS task_for_pid, denied and possibly blocking")

    monkeypatch.setattr(psutil.Process, "memory_full_info", task_for_pid)
    assert proctree.process_memory(parent) == psutil.Process(parent).memory_info().rss


def test_terminate_tree_stops_parent_and_child(family: tuple[int, int]) -> None:
    parent, child = family
    assert proctree.terminate_tree(proctree.tree_pids(parent), grace=2.0) == []
    assert gone(parent) and gone(child)


def test_terminate_tree_kills_what_ignores_sigterm(started: list[subprocess.Popen]) -> None:
    proc = subprocess.Popen([sys.executable, "-c", IGNORE_TERM], stdout=subprocess.PIPE)
    started.append(proc)
    assert proc.stdout and proc.stdout.readline()  # the handler is installed
    begun = time.monotonic()
    assert proctree.terminate_tree([proc.pid], grace=0.3) == []
    assert proc.wait(timeout=5) == -signal.SIGKILL
    assert time.monotonic() - begun < 3


def test_terminate_tree_signals_the_group_of_a_leader(family: tuple[int, int]) -> None:
    """Only the leader is named; its group member dies too (as a reparented grandchild would)."""
    parent, child = family
    assert proctree.terminate_tree([parent], grace=2.0) == []
    deadline = time.monotonic() + 5
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gone(child)


def test_terminate_tree_never_signals_the_caller() -> None:
    assert proctree.terminate_tree([os.getpid()], grace=0.1) == []
