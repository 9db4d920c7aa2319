"""`mcpsingleton run`: the per-session shim a client config starts instead of the server.

It is the per-session cost of the whole product, so the warm path is lean: standard library
modules that are cheap to import, no click/asyncio/psutil. It computes the key, connects to
the user's one broker (`broker.sock`), hands over the client's stdin/stdout/stderr with SCM_RIGHTS, and once
welcomed execs into a POSIX `sh` that only waits on the socket (same pid, well under 1 MiB). It never
touches a message. Only when no broker answers, or the broker asks for the server's spec (a key it does not
host yet), does it import the cold path (`election`).

Upgrade path: a per-key broker of the previous version (protocol 1, at `KEY1.sock`) is tried first, with
the protocol-1 key of the same inputs: sessions keep attaching to it until `mcpsingleton restart --all`.
That costs one more hash and one failed connect (ENOENT).
"""

import _signal  # type: ignore[import-not-found]  # likewise, `signal` builds enums at import
import _socket  # the `socket` wrapper module imports enum & co.; the C module is all we need here
import os
import sys
import time

from ..common import wire
from ..common.cmdline import default_name
from ..common.errors import SetupError, UsageError, stderr_line
from ..common.options import parse_run_args as parse_args
from ..common.paths import BROKER, KeyPaths, check_socket_path, ensure_private_dir, runtime_dir
from ..common.platform import socket_buffers
from ..common.wire import LEGACY_PROTOCOL, PROTOCOL
from .keys import client_environ, key_of, key_parts, user_salt
from .sharing import resolve_scope

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing on the warm path
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

WAITER = (
    "q() { printf 'x %s\\n' $1 2>/dev/null >&3; exit $1; }; trap 'q 143' TERM; trap 'q 130' INT; trap 'q 129' HUP; "
    "printf r >&3; while IFS= read -r line <&3; do case $line in "
    '"exit "*) exit ${line#exit };; "msg "*) printf "%s\\n" "${line#msg }" >&2;; '
    '"state "*) MCPSINGLETON_STATE=${line#state };; reattach) MCPSINGLETON_HANDOVER=1; export MCPSINGLETON_HANDOVER; '
    "break;; esac; done; "
    'exec 3>&-; export MCPSINGLETON_STATE; exec "$2" -I -S -c "$3" mcpsingleton-session "$1"'
)
"""The waiter the shim becomes: prints `msg` lines, exits with the broker's `exit N`, 128+N on signal N
(and then tells the broker `x 128+N`, for its log). It keeps the last `state` line in its environment.

It exits from inside the trap: bash (3.2 is macOS's /bin/sh; 5 does the same) runs a trap during `read` and
then restarts the `read`, so a flag checked after it would wait for the broker's next line
(tests/common/test_waiter_shells.py runs it under dash, bash 5 and bash 3.2).

It says `r` once its traps are set; only then does the broker start reading the session, so a signal
can never find the session served but the waiter not yet able to exit with 128+N.

When the broker goes away without an `exit N` (killed, crashed: end of file on fd 3, a half-read line
dropped with it) or says `reattach` (a restart), it becomes Python again (same pid, the client's stdin,
stdout and stderr still its own) and re-attaches to the next broker: `resume`. Only after `reattach` does it
set MCPSINGLETON_HANDOVER: an orderly handover is no crash, and the crash-loop guard does not count it."""

RESUME = (
    "import ast,os,sys;s=ast.literal_eval(os.environ['MCPSINGLETON_SESSION']);sys.path[:]=s['path'];"
    "from mcpsingleton.shim import resume;sys.exit(resume(s))"
)
"""What the waiter runs to re-attach: the session's `run` arguments and sys.path come from its environment
(private to the user, unlike argv, which `ps` shows to everyone). Its argv ends `mcpsingleton-session NAME`:
`ps` shows what it is, and a new broker's sweep of leftovers knows it for one of ours."""
SESSION_ENV = "MCPSINGLETON_SESSION"
STATE_ENV = "MCPSINGLETON_STATE"
REATTACHES_ENV = "MCPSINGLETON_REATTACHES"
HANDOVER_ENV = "MCPSINGLETON_HANDOVER"
CRASH_LOOP = (3, 60.0)
"""More than 3 re-attaches after a crash within 60 s: the broker itself keeps dying, and the session ends with an
error. Re-attaches after an orderly handover (`restart`, SIGTERM: the broker said `reattach`) do not count: a
user may restart as often as they like."""

ATTACH_TIMEOUT = 5.0
BACKLOG_BACKOFF = 0.05
STARTUP_DEADLINE = 15.0


CLIENT_FDS = (0, 1, 2)
"""What a shim hands over: stderr too, as an isolated backend's stderr goes to the client, as a direct server's."""


def try_attach(
    sock: str, hello: bytes, spec: "Callable[[], bytes] | None" = None, fds: tuple[int, ...] = CLIENT_FDS
) -> _socket.socket | None:
    """Connect and hand over `fds` (the session's stdin, stdout[, stderr]); the connection once the broker has
    welcomed us, else None.

    None means "try again": no broker, one shutting down, or its listen backlog is full (a storm of
    sessions at once). A broker that refuses us (out of file descriptors) is a SetupError. A broker that
    does not host our key yet asks for its `spec` (a protocol-1 broker never does: `spec` is None there).
    The hello's STATE: a session re-attaching brings what its previous broker last told its waiter."""
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        socket_buffers(conn)
        conn.settimeout(ATTACH_TIMEOUT)
        conn.connect(sock)
        sent = conn.sendmsg([hello], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _pack_fds(fds))])
        if sent < len(hello):  # a hello with its state can exceed a socket's buffer (8 KiB on macOS)
            conn.sendall(hello[sent:])
        welcome = _broker_line(conn)
        if welcome == wire.SPEC and spec is not None:
            conn.sendall(spec())  # cold path: once per key and broker
            welcome = _broker_line(conn)
    except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError):
        conn.close()
        return None
    except BlockingIOError:  # the backlog is full: the broker is busy accepting others
        conn.close()
        time.sleep(BACKLOG_BACKOFF)
        return None
    except TimeoutError:
        conn.close()
        raise SetupError(f"the broker at {sock} does not answer; run `mcpsingleton reap`") from None
    if welcome.startswith(wire.REFUSAL):
        conn.close()
        raise SetupError(welcome[len(wire.REFUSAL) :].decode("utf-8", "replace").strip())
    if welcome != wire.WELCOME:
        conn.close()
        return None  # the broker is shutting down: start over against the next one
    return conn


def _broker_line(conn: _socket.socket) -> bytes:
    """The broker's answer to a hello, one line and nothing after it: what follows is the waiter's. (A session
    whose backend can never start is told `exit 1` right after `ok`; a larger read took both, found no welcome,
    and the session attached again, starting that backend a second time.)"""
    line = conn.recv(len(wire.WELCOME))  # the usual answer, whole, in one call
    while line and not line.endswith(b"\n"):  # `spec`, or a refusal: rare and short
        more = conn.recv(1)
        if not more:
            break
        line += more
    return line


def attach_hello(key: str, state: str, protocol: str = PROTOCOL) -> bytes:
    words = (key, state) if state else (key,)
    return wire.hello(wire.ATTACH, *words, protocol=protocol)


def _pack_fds(fds: tuple[int, ...]) -> bytes:
    return b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)


def become_waiter(conn: _socket.socket, name: str, argv: list[str], cwd: str) -> "NoReturn":
    """Exec into the waiter, same pid, keeping the client's stdio (a new broker may need it: `resume`)."""
    conn.setblocking(True)  # a timeout leaves O_NONBLOCK set, and sh's read would fail with EAGAIN
    os.environ[SESSION_ENV] = repr(
        {"argv": argv, "path": sys.path, "name": name, "cwd": cwd, "env": stripped_by_sh()}
    )
    try:
        os.getcwd()
    except FileNotFoundError:
        os.chdir("/")  # else sh complains on the client's stderr; the session's directory is in SESSION_ENV
    os.dup2(conn.fileno(), 3)
    os.set_inheritable(3, True)
    try:
        argv0 = "mcpsingleton-session"
        os.execv("/bin/sh", [argv0, "-c", WAITER, argv0, name, sys.executable, RESUME])
    except OSError:
        pass
    _wait_in_python(conn, name)  # no /bin/sh: do the same job here, just heavier


def stripped_by_sh() -> dict[str, str]:
    """The session's variables macOS drops when /bin/sh is executed (SIP strips DYLD_* for protected programs):
    the waiter carries them in its session record, so a re-attach hands a new broker the env the client gave."""
    return {name: value for name, value in os.environ.items() if name.startswith("DYLD_")}


def _wait_in_python(conn: _socket.socket, name: str) -> "NoReturn":
    conn.settimeout(None)
    conn.sendall(b"r")
    data = b""
    while b"\nreattach\n" not in b"\n" + data and (chunk := conn.recv(4096)):
        data += chunk
    if b"\nreattach\n" in b"\n" + data:
        os.environ[HANDOVER_ENV] = "1"
    for line in data.decode("utf-8", "replace").split("\n")[:-1]:  # a half line at end of file is dropped
        if line.startswith("msg "):
            sys.stderr.write(line[4:] + "\n")
        elif line.startswith("exit "):
            sys.exit(int(line[5:]))
        elif line.startswith("state "):
            os.environ[STATE_ENV] = line[6:]
    conn.close()
    os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", RESUME, "mcpsingleton-session", name])


def resume(session: "dict[str, Any]") -> int:
    """The waiter's broker went away: attach the same client to the next broker, with the session's state.

    What the previous broker owed the session (replies to requests it had read) is answered by the next one
    (its journal). A broker that keeps dying ends the session with an error instead of an endless respawn."""
    os.closerange(3, 4)  # the old broker's socket, should the waiter have kept it
    state = os.environ.get(STATE_ENV, "")  # the next waiter keeps it until the next broker says otherwise
    os.environ.pop(SESSION_ENV, None)
    orderly = os.environ.pop(HANDOVER_ENV, "") == "1"
    earlier = [float(t) for t in os.environ.pop(REATTACHES_ENV, "").split() if t.replace(".", "", 1).isdigit()]
    recent = crashes_within_window(earlier, time.time(), orderly)
    name = session.get("name", "?")
    if len(recent) > CRASH_LOOP[0]:
        stderr_line(
            f"the broker for {name} went away {len(recent)} times within {CRASH_LOOP[1]:.0f}s; "
            f"this session ends; see `mcpsingleton logs {name}`"
        )
        return 1
    if state == wire.NO_STATE:
        stderr_line(
            f"the broker for {name} went away and this session's state was too large to carry over; "
            "restart the server in your client"
        )
        return 1
    os.environ[REATTACHES_ENV] = " ".join(f"{t:.3f}" for t in recent)
    carried = session.get("env")
    if isinstance(carried, dict):
        os.environ.update({k: v for k, v in carried.items() if isinstance(k, str) and isinstance(v, str)})
    exit_on_signals()
    return main(session["argv"], state, session.get("cwd"))


def crashes_within_window(earlier: list[float], now: float, orderly: bool) -> list[float]:
    """The re-attaches the crash-loop guard counts: the crashes of the last CRASH_LOOP seconds, and this one
    unless the broker handed the session over in good order."""
    recent = [t for t in earlier if now - t < CRASH_LOOP[1]]
    return recent if orderly else [*recent, now]


def exit_on_signals() -> None:
    """Until the waiter takes over: a session's signal ends this shim with 128+N, nothing more."""
    for signum in (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP):
        _signal.signal(signum, lambda number, _frame: os._exit(128 + number))


def working_dir(started_in: str | None) -> str:
    """The session's directory, a key input: a re-attaching session's is where it started (the waiter keeps
    it: the directory may have been deleted since); a new session cannot start from a deleted directory."""
    if started_in is not None:
        return started_in
    try:
        return os.getcwd()
    except FileNotFoundError:
        raise SetupError("the current directory no longer exists; start the session from an existing one") from None


def run(argv: list[str], state: str = "", started_in: str | None = None) -> int:
    """`started_in`: where a re-attaching session was started (the waiter keeps it)."""
    exit_on_signals()
    waiter_env = {name: os.environ.pop(name) for name in (STATE_ENV, REATTACHES_ENV) if name in os.environ}
    env = dict(os.environ)  # without the waiter's own variables: they are no part of the server's environment
    conn, name, cwd = connect(argv, env, client_environ(), state, started_in)
    os.environ.update(waiter_env)
    become_waiter(conn, name, argv, cwd)


def connect(
    argv: list[str],
    env: dict[str, str],
    client_env: dict[str, str] | None,
    state: str = "",
    started_in: str | None = None,
    fds: tuple[int, ...] = CLIENT_FDS,
) -> tuple[_socket.socket, str, str]:
    """Attach a session to the broker for `run` arguments `argv`, starting one if needed: (the welcomed
    connection, the server's name, the session's directory). `fds` are the session's stdin, stdout[, stderr];
    `client_env`: the environment of whatever configured the server (what `env` adds to it is part of the key).
    Shims and `serve`'s HTTP sessions both attach through here."""
    options = parse_args(argv)
    directory = ensure_private_dir(runtime_dir())
    cwd = working_dir(started_in)
    salt = user_salt(directory)
    # The one place where the scope is decided; the broker records the decided scope, never `auto`.
    decision = resolve_scope(options.scope, options.command, options.name, directory, salt)
    parts = key_parts(options.command, decision.scope, cwd, env, options.env_keys, salt, client_env)
    key = key_of(parts)
    check_socket_path(KeyPaths(key, directory))
    broker = KeyPaths(BROKER, directory)
    # an isolated key is new every time: no broker of the previous version can have it
    legacy = None if decision.scope == "isolated" else KeyPaths(key_of(parts, LEGACY_PROTOCOL), directory)
    name = options.name or default_name(options.command)

    def spec() -> bytes:
        from . import election  # cold path only

        shared = parts  # an isolated key's discovery entry: the key its command would have per directory
        if decision.scope == "isolated":
            shared = key_parts(options.command, "cwd", cwd, env, options.env_keys, salt, client_env)
        return election.spec_line(KeyPaths(key, directory), options, decision, name, cwd, env, key_of(shared))

    deadline = time.monotonic() + STARTUP_DEADLINE
    while True:
        conn = try_attach(legacy.sock, attach_hello(legacy.key, state, LEGACY_PROTOCOL), None, fds) if legacy else None
        conn = conn or try_attach(broker.sock, attach_hello(key, state), spec, fds)
        if conn is not None:
            return conn, name, cwd
        from . import election  # cold path only

        election.start_broker(broker)
        if time.monotonic() > deadline:
            raise SetupError(f"timed out starting the broker for {name}; see `mcpsingleton logs broker`")


def main(argv: list[str], state: str = "", started_in: str | None = None) -> int:
    try:
        return run(argv, state, started_in)
    except UsageError as exc:
        stderr_line(f"{exc}; see mcpsingleton run --help")
        return 2
    except SetupError as exc:
        stderr_line(str(exc))
        return 1
