"""Process trees: what a server really costs, and how to stop all of it.

A server launched through `npx` or `uvx` is several processes (sh → npm exec → node); measuring or
killing only the top one undercounts memory and leaves grandchildren behind, so everything here works
on the whole tree. Processes come and go while we look: a vanished process simply stops counting.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import psutil

from . import processes
from .stopping import stop_blocking


def parent_map() -> dict[int, int]:
    """pid → ppid for every process visible now: one consistent snapshot to walk trees in."""
    return {proc.pid: proc.info["ppid"] or 0 for proc in psutil.process_iter(["ppid"])}


def tree_pids(pid: int, parents: Mapping[int, int] | None = None) -> list[int]:
    """`pid` and all its descendants, parents before children; [] if `pid` is gone."""
    parents = parent_map() if parents is None else parents
    if pid not in parents:
        return []
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        if child != parent:
            children.setdefault(parent, []).append(child)
    tree = [pid]
    for current in tree:  # grows while we walk it: breadth-first
        tree.extend(children.get(current, ()))
    return tree


def process_memory(pid: int) -> int:
    """PSS where the OS has it (shared pages split fairly between sharers), else RSS (processes.memory_measure).

    Never USS: it needs task_for_pid on macOS, which is denied to users and can block the broker's loop."""
    try:
        proc = psutil.Process(pid)
        if processes.memory_measure() == "PSS":
            try:
                return int(proc.memory_full_info()._asdict()["pss"])  # a field on Linux only
            except psutil.AccessDenied:  # another user's process, or hardened /proc: RSS is still public
                pass
        return int(proc.memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def tree_memory(pid: int, parents: Mapping[int, int] | None = None) -> int:
    """Memory of the whole tree in bytes (see process_memory); 0 if it is gone."""
    return sum(process_memory(member) for member in tree_pids(pid, parents))


def tree_process_count(pid: int, parents: Mapping[int, int] | None = None) -> int:
    return len(tree_pids(pid, parents))


def terminate_tree(pids: Iterable[int], grace: float = 3.0) -> list[int]:
    """Stop an arbitrary set of processes with the stop ladder (SIGTERM all, wait `grace`, SIGKILL survivors).

    Group leaders also get their group signalled, which catches members that already left the tree
    by reparenting. Our own process and group are never signalled. Returns the pids still alive at
    the end (uninterruptible sleep, or not ours to signal).
    """
    target = ProcessSet(pids)
    stop_blocking(target, grace)
    return [proc.pid for proc in _alive(target.procs)]


class ProcessSet:
    """Processes that are not our children, as the stop ladder's target (they have no stdin of ours)."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.procs = _processes(pids)

    def close_input(self) -> bool:
        return False

    def send(self, signum: int) -> None:
        for proc in _alive(self.procs):
            _signal(proc, signum)

    def alive(self) -> bool:
        return bool(_alive(self.procs))


def _processes(pids: Iterable[int]) -> list[psutil.Process]:
    """Handles that remember each start time, so a pid recycled while we wait is never signalled."""
    procs = []
    for pid in dict.fromkeys(pids):
        if pid in (os.getpid(), 0, 1):
            continue
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return procs


def _signal(proc: psutil.Process, signum: int) -> None:
    try:
        if not proc.is_running():
            return
        if os.getpgid(proc.pid) == proc.pid and proc.pid != os.getpgrp():
            os.killpg(proc.pid, signum)
        proc.send_signal(signum)
    except (psutil.Error, OSError):
        pass  # gone meanwhile, or not ours to signal: the caller sees it among the survivors


def _is_gone(proc: psutil.Process) -> bool:
    """Exited, or a zombie waiting for a parent that may never reap it: either way it runs no code."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [proc for proc in procs if not _is_gone(proc)]
