"""Cold path of `run`: decide, race-free, who starts the user's one broker, and start it; the spec a broker
asks for when it does not host a key yet.

`broker.lock` is held by the broker for its whole life. A shim that can take it knows no broker runs, so
any socket is stale; it then starts a broker that *inherits* the held lock, so no second shim can slip in
between. A shim that finds the lock held backs off briefly and retries the attach: a broker is starting up
or shutting down. The broker needs no spec to start: it hosts any key, and asks an attaching shim for the
spec of a key it does not host yet (`spec_line`). (`fcntl.flock` directly, not the filelock package:
the held lock must survive fork/exec into the broker, which filelock's lock objects do not model.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from typing import TYPE_CHECKING

from ..common.errors import SetupError
from ..common.options import RunOptions, backend_timing, parse_duration
from ..common.paths import KeyPaths, log_dir
from ..common.wire import KEY_ENV

if TYPE_CHECKING:
    from ..common.decision import Decision

BACKOFF = 0.01
READY_TIMEOUT = 10.0


def start_broker(paths: KeyPaths) -> None:
    """Start the broker unless one is starting or stopping; return when the caller should attach again.

    `paths`: the broker's files (KeyPaths(BROKER))."""
    lock_fd = try_lock(paths.lock)
    if lock_fd is None:
        time.sleep(BACKOFF)
        return
    try:
        launch(lock_fd)
    finally:
        os.close(lock_fd)  # the broker holds its own copy of the locked file description


def try_lock(path: str) -> int | None:
    """The fd holding a key's lock, or None when a broker (or a reaper) holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def spec_line(
    paths: KeyPaths,
    options: RunOptions,
    decision: Decision,
    name: str,
    cwd: str,
    env: dict[str, str],
    discovery_key: str,
) -> bytes:
    """What the broker needs to host the key of `paths`: one JSON line, sent on the shim's own connection
    (peer-uid checked), never written to disk (env holds secrets).

    `discovery_key` names the discovery entry: the key itself, but for an isolated key (unique to its
    session) the key of the same command, env and directory shared per directory, so the next isolated
    session of the server is served what the last one learnt.

    `sharing` is None when the running server decides (see learnt.runtime_decision); `sharing_final`
    when a user decided and nothing learnt at runtime may change it; `config_error` is why the user's
    config.toml was ignored, for `ls`.
    """
    os.makedirs(log_dir(), mode=0o700, exist_ok=True)
    lazy, idle = backend_timing(options, decision.lazy, decision.idle)
    spec = {
        "key": paths.key,
        "name": name,
        "argv": options.command,
        "cwd": backend_dir(cwd, decision.scope),
        "env": env,
        "scope": decision.scope,
        "sharing": decision.sharing,
        "sharing_final": decision.final,
        "policy": decision.policy,
        "config_error": decision.config_error,
        "linger": parse_duration(options.linger),
        "max_memory": options.max_memory,
        "max_procs": options.max_procs,
        "discovery_key": discovery_key,
        "lazy": lazy,
        "idle": idle,
        "budget": {"max_backends": decision.budget[0], "max_memory": decision.budget[1]},
    }
    return json.dumps(spec, separators=(",", ":")).encode() + b"\n"


def backend_dir(cwd: str, scope: str) -> str:
    """Where the backend runs: the session's directory, unless it was deleted (a session re-attaching from it)
    and the directory is no part of the key: the server is shared across directories, any existing one will do."""
    if scope != "global" or os.path.isdir(cwd):
        return cwd
    return os.path.expanduser("~")


def launch(lock_fd: int) -> None:
    """Double-fork a detached broker (never a descendant of this session) and wait until it listens."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child; exercised by every integration test
        _become_broker(theirs.fileno(), lock_fd)
    os.waitpid(pid, 0)
    theirs.close()
    with ours:
        ours.settimeout(READY_TIMEOUT)
        try:
            reply = ours.makefile("rb").readline().decode("utf-8", "replace").strip()
        except OSError:  # timed out
            reply = ""
    if reply == "ready":
        return
    detail = reply.removeprefix("error ") if reply.startswith("error ") else "it exited during startup"
    raise SetupError(f"the broker failed to start ({detail}); see `mcpsingleton logs broker`")


def _become_broker(channel_fd: int, lock_fd: int) -> None:  # pragma: no cover - runs in the forked child
    try:
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.set_inheritable(channel_fd, True)
        os.set_inheritable(lock_fd, True)
        os.chdir("/")
        argv = [sys.executable, "-m", "mcpsingleton.broker", str(channel_fd), str(lock_fd)]
        try:
            os.execve(sys.executable, argv, {k: v for k, v in os.environ.items() if k != KEY_ENV})  # no tag passed on
        except OSError as exc:  # the shim prints it: the broker never got as far as its log
            os.write(channel_fd, f"error cannot execute {sys.executable}: {exc.strerror}\n".encode())
    finally:
        os._exit(127)
