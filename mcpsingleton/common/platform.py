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
| a client's environment  | /proc/PID/environ (`ProcFiles`)| sysctl KERN_PROCARGS2 (`ProcArgs`; Linux has none:|
|                         |                               | portable mode there falls back to secrets)        |
| Unix socket buffers     | ~208 KiB                      | 8 KiB on macOS; set to 8 KiB in portable mode     |

Why the keeper and not kqueue's EVFILT_PROC/NOTE_EXIT on macOS: NOTE_EXIT still needs a process that
outlives the broker to watch it, i.e. a keeper anyway, and that keeper would have to be Python (~10 MiB)
instead of `sh` (~1 MiB). The keeper's pipe reaches EOF however the broker dies, with no pid to go stale.

Only `os` and `sys` are imported here at module level: the shim's warm path checks `unsupported_reason`.
"""

import os
import sys

TYPE_CHECKING = False  # as typing.TYPE_CHECKING: the shim imports this module, and collections.abc costs ~2 ms
if TYPE_CHECKING:
    import _socket
    import selectors
    import socket
    from collections.abc import Callable

    from .processes import ProcArgs

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


def new_selector() -> "selectors.BaseSelector":
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


def socket_buffers(sock: "_socket.socket") -> None:
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


def _prctl() -> "Callable[..., int] | None":
    """libc's prctl where it exists (Linux) and portable mode is off."""
    if portable():
        return None
    import ctypes

    return getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


def backend_setup_hook() -> "Callable[[], None] | None":
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


def peer_credentials(conn: "socket.socket") -> tuple[int, int]:
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


def describe(selector: "selectors.BaseSelector", subreaper: bool) -> str:
    """One line for the broker's log: which implementations this process really uses."""
    from .processes import proc_environ_readable

    pipes = "pipe2" if hasattr(os, "pipe2") and not portable() else "pipe+fcntl"
    guards = "pdeathsig+keeper" if _prctl() is not None else "keeper only"
    mode = "portable" if portable() else sys.platform
    return (
        f"platform {mode}: {type(selector).__name__}, {pipes}, {guards}, "
        f"subreaper {'on' if subreaper else 'off'}, scans via {'/proc' if proc_environ_readable() else 'psutil'}"
    )


def user_state_home() -> str:
    """Where the OS puts a user's lasting app state, from the home directory alone (never from variables a
    client may strip): macOS's ~/Library/Application Support, else XDG's default ~/.local/state.

    A convention of the OS, not a capability: the one place that asks which OS this is by name."""
    if sys.platform == "darwin":
        return os.path.join(os.path.expanduser("~"), "Library", "Application Support")
    return os.path.join(os.path.expanduser("~"), ".local", "state")


def user_config_home() -> str:
    """Where the OS puts a user's configuration, as platformdirs' defaults name it, from the home directory
    alone: macOS's ~/Library/Application Support, else XDG's default ~/.config."""
    if sys.platform == "darwin":
        return os.path.join(os.path.expanduser("~"), "Library", "Application Support")
    return os.path.join(os.path.expanduser("~"), ".config")


def has_display() -> bool:
    """A window system to open a browser on: macOS always has one; elsewhere a display variable says so."""
    return sys.platform == "darwin" or any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY"))


def user_log_home() -> str | None:
    """Where the OS wants apps' logs, when it has such a place: macOS's ~/Library/Logs (users and Console.app
    look there); None elsewhere (logs then go beside the state)."""
    return os.path.join(os.path.expanduser("~"), "Library", "Logs") if sys.platform == "darwin" else None


# ---- another process's name, parent and environment (the env rule; the shim reads its client's) ----


def _read_proc(pid: int, field: str) -> bytes | None:
    try:
        fd = os.open(f"/proc/{pid}/{field}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


class ProcFiles:
    """Linux: a process's name, parent and starting environment, read from /proc (no import, a few reads)."""

    @staticmethod
    def program(pid: int) -> str | None:
        comm = _read_proc(pid, "comm")
        return None if comm is None else comm.strip().decode("utf-8", "replace")

    @staticmethod
    def parent(pid: int) -> int:
        stat_line = _read_proc(pid, "stat") or b""
        fields = stat_line[stat_line.rfind(b")") + 2 :].split()  # the name may hold spaces and parentheses
        return int(fields[1]) if len(fields) > 1 else 0

    @staticmethod
    def environ(pid: int) -> dict[str, str] | None:
        raw = _read_proc(pid, "environ")
        return None if raw is None else parse_environ(raw.split(b"\0"))


def parse_environ(entries: list[bytes]) -> dict[str, str]:
    """`NAME=value` byte strings as a process's environment (empty or malformed entries skipped)."""
    pairs = (entry.partition(b"=") for entry in entries)
    return {
        name.decode("utf-8", "surrogateescape"): value.decode("utf-8", "surrogateescape")
        for name, equals, value in pairs
        if name and equals
    }


def process_reader() -> "type[ProcFiles] | type[ProcArgs]":
    """/proc where it is readable (and portable mode is off), else macOS's sysctl (`processes.ProcArgs`)."""
    if not portable() and os.path.exists("/proc/self/environ"):
        return ProcFiles
    from .processes import ProcArgs  # only where there is no /proc: it imports ctypes (a few ms)

    return ProcArgs
