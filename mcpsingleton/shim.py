"""`mcpsingleton run`: the per-session shim a client config starts instead of the server.

It is the per-session cost of the whole product, so the warm path is lean: standard library
modules that are cheap to import, no click/asyncio/psutil. It computes the key, connects to
the broker's socket, hands over the client's stdin/stdout/stderr with SCM_RIGHTS, and once welcomed execs
into a POSIX `sh` that only waits on the socket (same pid, well under 1 MiB). It never touches a
message. Only when no broker answers does it import the cold path (`election`) to start one.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # likewise, `signal` builds enums at import
import _socket  # the `socket` wrapper module imports enum & co.; the C module is all we need here
import os
import sys
import time

from . import wire
from .keys import (
    KeyPaths,
    SetupError,
    UsageError,
    check_socket_path,
    client_environ,
    compute_key,
    default_name,
    ensure_private_dir,
    log_dir,
    runtime_dir,
    stderr_line,
    user_salt,
)
from .options import parse_run_args as parse_args
from .options import usage
from .sharing import resolve_scope

WAITER = (
    "s=0; trap 's=143' TERM; trap 's=130' INT; trap 's=129' HUP; printf r >&3; "
    "while [ $s = 0 ] && IFS= read -r line <&3; do case $line in "
    '"exit "*) exit ${line#exit };; "msg "*) printf "%s\\n" "${line#msg }" >&2;; esac; done; '
    "[ $s = 0 ] || { printf 'x %s\\n' $s >&3; exit $s; }; "
    'echo "mcpsingleton: the broker for $1 went away; the next session starts a new one" >&2; exit 1'
)
"""The waiter the shim becomes: prints `msg` lines, exits with the broker's `exit N`, 128+N on signal N
(and then tells the broker `x 128+N`, for its log).

It says `r` once its traps are set; only then does the broker start reading the session, so a signal
can never find the session served but the waiter not yet able to exit with 128+N."""

ATTACH_TIMEOUT = 5.0
BACKLOG_BACKOFF = 0.05
STARTUP_DEADLINE = 15.0


def try_attach(paths: KeyPaths) -> _socket.socket | None:
    """Connect and hand over stdin/stdout; the connection once the broker has welcomed us, else None.

    None means "try again": no broker, one shutting down, or its listen backlog is full (a storm of
    sessions at once). A broker that refuses us (out of file descriptors) is a SetupError."""
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.settimeout(ATTACH_TIMEOUT)
        conn.connect(paths.sock)
        fds = (0, 1, 2)  # stderr too: an isolated backend's stderr goes to the client, as a direct server's
        conn.sendmsg([wire.hello(wire.ATTACH, paths.key)], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _pack_fds(fds))])
        welcome = conn.recv(1024)
    except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
        conn.close()
        return None
    except BlockingIOError:  # the backlog is full: the broker is busy accepting others
        conn.close()
        time.sleep(BACKLOG_BACKOFF)
        return None
    except TimeoutError:
        conn.close()
        raise SetupError(f"the broker at {paths.sock} does not answer; run `mcpsingleton reap`") from None
    if welcome.startswith(wire.REFUSAL):
        conn.close()
        raise SetupError(welcome[len(wire.REFUSAL) :].decode("utf-8", "replace").strip())
    if welcome != wire.WELCOME:
        conn.close()
        return None  # the broker is shutting down: start over against the next one
    return conn


def _pack_fds(fds: tuple[int, ...]) -> bytes:
    return b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)


def become_waiter(conn: _socket.socket, name: str) -> None:
    """Give up the client's pipes (the broker has them now) and exec into the waiter, same pid."""
    conn.setblocking(True)  # a timeout leaves O_NONBLOCK set, and sh's read would fail with EAGAIN
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(conn.fileno(), 3)
    os.set_inheritable(3, True)
    try:
        os.execv("/bin/sh", ["mcpsingleton-session", "-c", WAITER, "mcpsingleton-session", name])
    except OSError:
        pass
    _wait_in_python(conn)  # no /bin/sh: do the same job here, just heavier


def _wait_in_python(conn: _socket.socket) -> None:
    conn.settimeout(None)
    conn.sendall(b"r")
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("msg "):
            sys.stderr.write(line[4:] + "\n")
        elif line.startswith("exit "):
            sys.exit(int(line[5:]))
    stderr_line("the broker went away; the next session starts a new one")
    sys.exit(1)


def exit_on_signals() -> None:
    """Until the waiter takes over: a session's signal ends this shim with 128+N, nothing more."""
    for signum in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP):
        _signal.signal(signum, lambda number, _frame: os._exit(128 + number))


def run(argv: list[str]) -> int:
    exit_on_signals()
    options = parse_args(argv)
    directory = ensure_private_dir(runtime_dir())
    cwd = os.getcwd()
    env = dict(os.environ)
    salt = user_salt(directory)
    # The one place where the scope is decided; the broker records the decided scope, never `auto`.
    decision = resolve_scope(options.scope, options.command, options.name, directory, salt)
    key = compute_key(options.command, decision.scope, cwd, env, options.env_keys, salt, client_environ())
    paths = KeyPaths(key, directory)
    check_socket_path(paths)
    name = options.name or default_name(options.command)
    deadline = time.monotonic() + STARTUP_DEADLINE
    while True:
        conn = try_attach(paths)
        if conn is not None:
            become_waiter(conn, name)
        from . import election  # cold path only

        ensure_private_dir(log_dir())
        election.start_broker(paths, options, decision, name, cwd, env)
        if time.monotonic() > deadline:
            raise SetupError(f"timed out starting the broker for {name}; see `mcpsingleton logs {name}`")


def main(argv: list[str]) -> int:
    try:
        return run(argv)
    except UsageError as exc:
        sys.stderr.write(f"{usage()}\nmcpsingleton: {exc}\n")
        return 2
    except SetupError as exc:
        stderr_line(str(exc))
        return 1
