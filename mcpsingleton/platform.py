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

PORTABLE_ENV = "MCPSINGLETON_PORTABLE"
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SOL_LOCAL = 0  # macOS <sys/un.h>
LOCAL_PEERCRED = 0x001
LOCAL_PEERPID = 0x002
XUCRED_SIZE = 76  # u_int version, uid_t uid, short ngroups, gid_t groups[16]


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


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE towards FD_LIMIT, within the hard limit: launchd starts processes with 256."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_LIMIT if hard == resource.RLIM_INFINITY else min(hard, FD_LIMIT)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        pass  # kept as it was: the listener refuses newcomers clearly when it runs out


# ---- process control -----------------------------------------------------------------------------


def _prctl() -> Callable[..., int] | None:
    """libc's prctl where it exists (Linux) and portable mode is off."""
    if portable():
        return None
    import ctypes

    return getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


def die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec function making the child get SIGTERM when the broker dies, or None where there is none.

    prctl is resolved here, in the broker, so the forked child only makes the call.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    import signal

    sigterm = int(signal.SIGTERM)

    def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
        prctl(PR_SET_PDEATHSIG, sigterm, 0, 0, 0)

    return die_with_parent


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


def describe(selector: selectors.BaseSelector, subreaper: bool) -> str:
    """One line for the broker's log: which implementations this process really uses."""
    pipes = "pipe2" if hasattr(os, "pipe2") and not portable() else "pipe+fcntl"
    guards = "pdeathsig+keeper" if _prctl() is not None else "keeper only"
    mode = "portable" if portable() else sys.platform
    return (
        f"platform {mode}: {type(selector).__name__}, {pipes}, {guards}, "
        f"subreaper {'on' if subreaper else 'off'}, scans via {'/proc' if _proc_environ_readable() else 'psutil'}"
    )
