"""The platform layer's process half: finding, watching and measuring processes, and reading another
process's start-up environment where there is no /proc (macOS). `platform.py` is the rest of the layer (fds,
pipes, sockets, signals, limits, and the /proc reader the shim uses); the rule is the same: chosen by what
the system offers, the macOS/BSD implementation taken on Linux too with MCPSINGLETON_PORTABLE=1.

Only `os` and `sys` at module level; psutil and ctypes where they are needed (the broker scans with /proc).
"""

from __future__ import annotations

import os
import sys

from .platform import parse_environ, portable

TYPE_CHECKING = False  # as typing.TYPE_CHECKING
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

CTL_KERN, KERN_ARGMAX, KERN_PROCARGS2 = 1, 8, 49  # macOS <sys/sysctl.h>
PROC_PIDTBSDINFO, PROC_BSDINFO_SIZE, PBI_PPID_OFFSET = 3, 136, 16  # <sys/proc_info.h>: struct proc_bsdinfo


def proc_environ_readable() -> bool:
    return not portable() and os.path.exists(f"/proc/{os.getpid()}/environ")


def launchd_label(environ: dict[str, str]) -> str | None:
    """The launchd job a macOS process belongs to, from the XPC_SERVICE_NAME launchd gives each job (and its
    descendants inherit); None elsewhere, in Terminal ("0") and in apps ("application.<bundle id>.…"),
    whose children are clients' servers like any other."""
    label = environ.get("XPC_SERVICE_NAME", "0")
    return None if label in ("", "0") or label.startswith("application.") else label


def memory_measure() -> str:
    """"PSS" where the kernel splits shared pages between sharers (Linux's /proc smaps), else "RSS".

    Elsewhere psutil's USS comes from task_for_pid, which macOS denies to users (and which can block
    for a long time on a headless Mac): RSS is what can be read there, cheaply, for every own process.
    """
    return "PSS" if not portable() and os.path.exists(f"/proc/{os.getpid()}/smaps_rollup") else "RSS"


def proves_orphans() -> bool:
    """Whether `reap` can prove a server's stdin dead: needs /proc/PID/fd and fdinfo (Linux)."""
    return not portable() and os.path.isdir(f"/proc/{os.getpid()}/fdinfo")


def tagged_processes(name: str, value: str) -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of the other processes whose environment has `name=value` (only ours are readable).

    /proc where it exists (no psutil import in the broker), psutil elsewhere.
    """
    if proc_environ_readable():
        yield from _tagged_from_proc(f"{name}={value}".encode())
        return
    import psutil

    for proc in psutil.process_iter(["cmdline", "environ"]):
        if proc.pid != os.getpid() and (proc.info["environ"] or {}).get(name) == value:
            yield proc.pid, proc.info["cmdline"] or []


def _tagged_from_proc(tag: bytes) -> Iterator[tuple[int, list[str]]]:
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if tag not in handle.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = [word.decode("utf-8", "replace") for word in handle.read().split(b"\0")[:-1]]
        except OSError:
            continue  # exited meanwhile, or not ours to read
        yield int(entry), argv


def children_of(pid: int) -> list[tuple[int, list[str]]]:
    """(pid, argv) of `pid`'s children: the orphans a subreaper adopted among them."""
    import psutil

    found = []
    try:
        for child in psutil.Process(pid).children():
            try:
                found.append((child.pid, child.cmdline()))
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie runs no code; its parent reaps it)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_runs_code(pgid: int) -> bool:
    """Whether a process of group `pgid` is alive and not a zombie: for when kill(-pgid, 0) says EPERM,
    which macOS answers for a group of zombies only, as everywhere for a group holding another user's process.
    A whole scan, but only on that rare answer."""
    import psutil

    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                return True
        except OSError:
            continue  # exited meanwhile
    return False


# ---- another process's environment (the env rule, macOS/BSD) ------------------------------------


class ProcArgs:
    """macOS: what a process was started with (exec path, environment) from one sysctl KERN_PROCARGS2, its
    parent from libproc's proc_pidinfo. Cheap enough for a session start (no child process, no psutil);
    None/0 where the calls do not exist (Linux: `platform.ProcFiles` reads its /proc) or refuse (not ours)."""

    @staticmethod
    def program(pid: int) -> str | None:
        started = _procargs(pid)
        return None if started is None else os.path.basename(started[0])

    @staticmethod
    def parent(pid: int) -> int:
        import ctypes

        proc_pidinfo = _libc_function(
            "proc_pidinfo", ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int
        )
        info = ctypes.create_string_buffer(PROC_BSDINFO_SIZE)
        try:
            if proc_pidinfo is None or proc_pidinfo(pid, PROC_PIDTBSDINFO, 0, info, PROC_BSDINFO_SIZE) != len(info):
                return 0
        except (OSError, ValueError, ctypes.ArgumentError):  # a call that does not behave as documented
            return 0
        return int.from_bytes(info.raw[PBI_PPID_OFFSET : PBI_PPID_OFFSET + 4], sys.byteorder)

    @staticmethod
    def environ(pid: int) -> dict[str, str] | None:
        started = _procargs(pid)
        return None if started is None else started[1]


def _libc_function(name: str, *argtypes: Any) -> Callable[..., int] | None:
    """A libc function with its argument types declared (size_t and uint64_t must not pass as int)."""
    import ctypes

    function = getattr(ctypes.CDLL(None, use_errno=True), name, None)
    if function is not None:
        function.argtypes = argtypes
    return function


_started: dict[int, tuple[str, dict[str, str]] | None] = {}
"""What `_procargs` read, by pid: the shim asks for a process's program and then its environment."""


def _procargs(pid: int) -> tuple[str, dict[str, str]] | None:
    import ctypes

    if pid not in _started:
        try:
            _started[pid] = _sysctl_procargs(pid)
        except (OSError, ValueError, ctypes.ArgumentError):  # a call that does not behave as documented: weaker rule
            _started[pid] = None
    return _started[pid]


def _sysctl_procargs(pid: int) -> tuple[str, dict[str, str]] | None:
    import ctypes

    size_p = ctypes.POINTER(ctypes.c_size_t)
    int_p = ctypes.POINTER(ctypes.c_int)
    sysctl = _libc_function("sysctl", int_p, ctypes.c_uint, ctypes.c_void_p, size_p, ctypes.c_void_p, ctypes.c_size_t)
    if sysctl is None:
        return None
    argmax, size = ctypes.c_int(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_int))
    if sysctl((ctypes.c_int * 2)(CTL_KERN, KERN_ARGMAX), 2, ctypes.byref(argmax), ctypes.byref(size), None, 0):
        return None
    buffer, size = ctypes.create_string_buffer(argmax.value), ctypes.c_size_t(argmax.value)
    if sysctl((ctypes.c_int * 3)(CTL_KERN, KERN_PROCARGS2, pid), 3, buffer, ctypes.byref(size), None, 0):
        return None
    return parse_procargs(buffer.raw[: size.value])


def parse_procargs(raw: bytes) -> tuple[str, dict[str, str]] | None:
    """KERN_PROCARGS2's layout: int argc, the exec path, NUL padding, argc argument strings, then the
    environment strings up to an empty one (the `apple` strings after it are not environment)."""
    if len(raw) < 4:
        return None
    argc = int.from_bytes(raw[:4], sys.byteorder)
    path, _, rest = raw[4:].partition(b"\0")
    words = rest.lstrip(b"\0").split(b"\0")
    if not path or len(words) <= argc:
        return None
    environment = words[argc:]
    end = environment.index(b"") if b"" in environment else len(environment)
    return path.decode("utf-8", "surrogateescape"), parse_environ(environment[:end])
