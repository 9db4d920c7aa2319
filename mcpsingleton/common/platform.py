"""Everything that differs between operating systems, behind one small interface.

Each capability has a Linux implementation and a macOS/BSD one, chosen by what the system offers
(`hasattr(os, "pipe2")`, a libc `prctl`, a readable /proc), never by its name. With
MCPSINGLETON_PORTABLE=1 in the environment the broker and the CLI take the macOS/BSD implementation
wherever Linux has that call too, so the test suite exercises it on Linux (the shim and the keeper have
no OS-specific call of their own; the variable reaches every process through the environment):

| capability              | Linux                         | macOS/BSD (and portable mode)                     |
|-------------------------|-------------------------------|---------------------------------------------------|
| non-blocking pipes      | pipe2(O_NONBLOCK|O_CLOEXEC)   | pipe + fcntl                                      |
| parent-death signal     | prctl(PR_SET_PDEATHSIG)       | none: the keeper is the only orphan guard         |
| child subreaper         | prctl(PR_SET_CHILD_SUBREAPER) | none: escapees are found by their key tag         |
| peer credentials        | SO_PEERCRED                   | LOCAL_PEERCRED + LOCAL_PEERPID (Linux lacks them: |
|                         |                               | portable mode there still uses SO_PEERCRED)       |
| process scans           | /proc/*/environ               | psutil                                            |
| event-loop selector     | epoll (DefaultSelector)       | kqueue on macOS; PollSelector in portable mode    |
| memory of a process     | PSS (/proc smaps)             | RSS (USS would need task_for_pid)                 |
| a client's environment  | /proc/PID/environ (`keys`)    | sysctl KERN_PROCARGS2 (`ProcArgs`; Linux has none:|
|                         |                               | portable mode there falls back to secrets)        |
| Unix socket buffers     | ~208 KiB                      | 8 KiB on macOS; set to 8 KiB in portable mode     |

Why the keeper and not kqueue's EVFILT_PROC/NOTE_EXIT on macOS: NOTE_EXIT still needs a process that
outlives the broker to watch it, i.e. a keeper anyway, and that keeper would have to be Python (~10 MiB)
instead of `sh` (~1 MiB). The keeper's pipe reaches EOF however the broker dies, with no pid to go stale.

Only `os` and `sys` are imported here at module level: the shim's warm path checks `unsupported_reason`.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the shim imports this module, and collections.abc costs ~2 ms
if TYPE_CHECKING:
    import _socket
    import selectors
    import socket
    from collections.abc import Callable, Iterator
    from typing import Any

PORTABLE_ENV = "MCPSINGLETON_PORTABLE"
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SOL_LOCAL = 0  # macOS <sys/un.h>
LOCAL_PEERCRED = 0x001
LOCAL_PEERPID = 0x002
XUCRED_SIZE = 76  # u_int version, uid_t uid, short ngroups, gid_t groups[16]
CTL_KERN, KERN_ARGMAX, KERN_PROCARGS2 = 1, 8, 49  # macOS <sys/sysctl.h>
PROC_PIDTBSDINFO, PROC_BSDINFO_SIZE, PBI_PPID_OFFSET = 3, 136, 16  # <sys/proc_info.h>: struct proc_bsdinfo


def portable() -> bool:
    """MCPSINGLETON_PORTABLE=1: use the macOS/BSD implementation wherever this system has it too."""
    return os.environ.get(PORTABLE_ENV) == "1"


def unsupported_reason() -> str | None:
    """Why `mcpsingleton` cannot run here, or None. Sessions are handed over as fds on a Unix socket."""
    import _socket

    if hasattr(_socket, "AF_UNIX") and hasattr(_socket, "SCM_RIGHTS") and hasattr(os, "killpg"):
        return None
    if os.name == "nt":
        return "Windows is not supported yet; run it under WSL"
    return "this system cannot pass file descriptors over Unix sockets; it is not supported"


# ---- pipes and selectors -------------------------------------------------------------------------


def nonblocking_pipe() -> tuple[int, int]:
    """A non-blocking, close-on-exec pipe: one pipe2 call where it exists, pipe + fcntl elsewhere."""
    if hasattr(os, "pipe2") and not portable():
        return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    read_end, write_end = os.pipe()  # Python creates both ends close-on-exec already
    for fd in (read_end, write_end):
        os.set_blocking(fd, False)
    return read_end, write_end


def new_selector() -> selectors.BaseSelector:
    """epoll on Linux, kqueue on macOS/BSD; poll(2) in portable mode (what kqueue-less BSDs would use)."""
    import selectors

    if portable():
        return selectors.PollSelector()
    return selectors.DefaultSelector()


def watchable(fd: int) -> bool:
    """Whether a selector reports this fd's readiness truthfully on every system.

    Pipes, sockets and ttys yes. Regular files and other devices (/dev/null) no: epoll refuses them
    (EPERM), kqueue refuses devices (EINVAL) and never signals a regular file at its end, macOS poll
    answers POLLNVAL. They never block, so the event loop treats them as always ready instead.
    """
    import stat

    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return True  # closed: let the selector raise as it would for any bad fd
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))


SMALL_SOCKET_BUFFER = 8 * 1024
"""macOS's Unix-socket buffer size: a hello with its state, or a state line, does not fit in one write."""


def socket_buffers(sock: _socket.socket) -> None:
    """Portable mode: give one of our Unix sockets macOS's small buffers, so partial writes happen here too."""
    if not portable():
        return
    import _socket

    for option in (_socket.SO_SNDBUF, _socket.SO_RCVBUF):
        sock.setsockopt(_socket.SOL_SOCKET, option, SMALL_SOCKET_BUFFER)
        if sock.getsockopt(_socket.SOL_SOCKET, option) > SMALL_SOCKET_BUFFER:  # Linux doubles what it is given
            sock.setsockopt(_socket.SOL_SOCKET, option, SMALL_SOCKET_BUFFER // 2)


FD_LIMIT = 10240
"""The soft fd limit a broker raises itself to (each session holds 3-4 fds); macOS refuses more than its
OPEN_MAX (10240) even under an unlimited hard limit."""


_fd_limit_given: tuple[int, int] | None = None
"""The fd limits this broker was started with, when `raise_fd_limit` changed them: its backends get them back."""


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE towards FD_LIMIT, within the hard limit: launchd starts processes with 256."""
    global _fd_limit_given
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_LIMIT if hard == resource.RLIM_INFINITY else min(hard, FD_LIMIT)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return  # kept as it was: the listener refuses newcomers clearly when it runs out
    _fd_limit_given = (soft, hard)


# ---- process control -----------------------------------------------------------------------------


def _prctl() -> Callable[..., int] | None:
    """libc's prctl where it exists (Linux) and portable mode is off."""
    if portable():
        return None
    import ctypes

    return getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


def backend_setup_hook() -> Callable[[], None] | None:
    """A preexec function for a backend, or None when there is nothing to do: the child gets SIGTERM when the
    broker dies (where prctl exists), and the fd limits the broker was started with (it raised its own: a
    server runs with its client's, as it would started directly).

    prctl and setrlimit are resolved here, in the broker, so the forked child only makes the calls.
    """
    prctl, limits = _prctl(), _fd_limit_given
    if prctl is None and limits is None:
        return None
    import resource
    import signal

    sigterm, setrlimit, nofile = int(signal.SIGTERM), resource.setrlimit, resource.RLIMIT_NOFILE

    def setup() -> None:  # pragma: no cover - runs in the child between fork and exec
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if limits is not None:
            setrlimit(nofile, limits)

    return setup


def become_subreaper() -> bool:
    """Linux: orphaned descendants of the backend reparent to us (we reap them, and can find them).
    Elsewhere they reparent to init; the key tag in their environment is how we find them there."""
    prctl = _prctl()
    return prctl is not None and prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def peer_credentials(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a Unix socket (pid 0 where the OS will not say).

    Linux has SO_PEERCRED and no LOCAL_PEERCRED, so portable mode uses SO_PEERCRED there as well.
    """
    import socket
    import struct

    if hasattr(socket, "SO_PEERCRED"):
        pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return pid, uid
    xucred = conn.getsockopt(SOL_LOCAL, getattr(socket, "LOCAL_PEERCRED", LOCAL_PEERCRED), XUCRED_SIZE)
    uid = struct.unpack_from("I", xucred, 4)[0]
    try:
        pid = struct.unpack("i", conn.getsockopt(SOL_LOCAL, LOCAL_PEERPID, 4))[0]
    except OSError:  # FreeBSD has no LOCAL_PEERPID
        pid = 0
    return pid, uid


def _proc_environ_readable() -> bool:
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
    if _proc_environ_readable():
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


def describe(selector: selectors.BaseSelector, subreaper: bool) -> str:
    """One line for the broker's log: which implementations this process really uses."""
    pipes = "pipe2" if hasattr(os, "pipe2") and not portable() else "pipe+fcntl"
    guards = "pdeathsig+keeper" if _prctl() is not None else "keeper only"
    mode = "portable" if portable() else sys.platform
    return (
        f"platform {mode}: {type(selector).__name__}, {pipes}, {guards}, "
        f"subreaper {'on' if subreaper else 'off'}, scans via {'/proc' if _proc_environ_readable() else 'psutil'}"
    )


# ---- another process's environment (the env rule, macOS/BSD) ------------------------------------


class ProcArgs:
    """macOS: what a process was started with (exec path, environment) from one sysctl KERN_PROCARGS2, its
    parent from libproc's proc_pidinfo. Cheap enough for a session start (no child process, no psutil);
    None/0 where the calls do not exist (Linux: its /proc is read in `keys`) or refuse (not our process)."""

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
    from ..shim.keys import parse_environ

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
