"""The real MCP server process: spawn it in its own process group, and make sure it dies with us.

Layers (DESIGN §7): stdin EOF when the broker goes, PR_SET_PDEATHSIG on Linux for the leader, and a
keeper — a tiny `sh` holding a pipe whose only writer is the broker — that kills the whole process
group (npx → npm exec → node grandchildren included) when that pipe reaches EOF, however the broker
died. Every backend carries MCPSINGLETON_KEY so leftovers can be found with certainty.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from .eventloop import Callback, EventLoop
from .keys import KEY_ENV

KEEPER_SCRIPT = (
    "pg=''; while IFS= read -r line; do case $line in done) pg='';; *) pg=$line;; esac; done; "
    '[ -n "$pg" ] || exit 0; kill -TERM -"$pg" 2>/dev/null; sleep 1; kill -KILL -"$pg" 2>/dev/null; exit 0'
)
"""Reads the current backend pgid (or `done`) per line; on EOF — the broker is gone — kills that group."""


PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_libc = None  # resolved once in the broker, so the forked child only makes the call


def _prctl(option: int, value: int) -> None:
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.prctl(option, value, 0, 0, 0)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGTERM the backend's leader when the broker thread that forked it dies."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def become_subreaper() -> None:
    """Linux: orphaned descendants of the backend reparent to the broker, which reaps them."""
    if sys.platform.startswith("linux"):
        _prctl(PR_SET_CHILD_SUBREAPER, 1)


def kill_leftovers(key: str) -> list[int]:
    """Processes tagged with our key that no broker owns any more (their broker was SIGKILLed and
    something escaped its keeper): under the key's lock they can only be leftovers, so they go."""
    if not os.path.isdir("/proc"):
        return []
    tag = f"{KEY_ENV}={key}".encode()
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                tagged = tag in handle.read().split(b"\0")
        except OSError:
            continue
        if tagged:
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
            except OSError:
                pass
    return killed


class Keeper:
    """One per broker: kills the current backend group if the broker dies without saying `done`."""

    def __init__(self) -> None:
        read_end, self._write_end = os.pipe()
        os.set_inheritable(self._write_end, False)
        self.process = subprocess.Popen(
            ["/bin/sh", "-c", KEEPER_SCRIPT, "mcpsingleton-keeper"],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        os.close(read_end)

    def guard(self, pgid: int) -> None:
        self._say(f"{pgid}\n")

    def release(self) -> None:
        self._say("done\n")

    def close(self) -> None:
        """Orderly exit: the group is already stopped, so the keeper ends without killing anything."""
        self.release()
        os.close(self._write_end)
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def _say(self, line: str) -> None:
        try:
            os.write(self._write_end, line.encode())
        except OSError:
            pass


class Backend:
    """A spawned backend: its pid (= pgid) and the broker's ends of its stdio pipes."""

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str], key: str) -> None:
        child_env = {**env, KEY_ENV: key}
        linux = sys.platform.startswith("linux")
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=child_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,
            close_fds=True,
            preexec_fn=_die_with_parent if linux else None,
        )
        self.pid = self.process.pid
        self.pgid = self.pid
        self.started = time.monotonic()
        self.exit_status: int | None = None
        assert self.process.stdin and self.process.stdout and self.process.stderr
        self.stdin = self.process.stdin.fileno()
        self.stdout = self.process.stdout.fileno()
        self.stderr = self.process.stderr.fileno()
        for fd in (self.stdin, self.stdout, self.stderr):
            os.set_blocking(fd, False)

    def close_stdin(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass

    def close_pipes(self) -> None:
        self.close_stdin()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None and not stream.closed:
                stream.close()

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def mark_exited(self, status: int) -> None:
        self.exit_status = status
        self.process.returncode = status  # we reap it ourselves; keep Popen from waiting on it


def stop_ladder(loop: EventLoop, backend: Backend, reap: Callback, done: Callback, grace: float = 1.0) -> None:
    """The spec's shutdown, without blocking the loop: close stdin, wait; SIGTERM the group, wait; SIGKILL."""
    backend.close_stdin()
    signals = (None, signal.SIGTERM, signal.SIGKILL)

    def check(step: int, deadline: float) -> None:
        reap()
        if not backend.group_alive():
            done()
        elif time.monotonic() < deadline:
            loop.call_later(0.02, lambda: check(step, deadline))
        elif step + 1 < len(signals):
            backend.signal_group(signals[step + 1])
            loop.call_later(0.005, lambda: check(step + 1, time.monotonic() + grace))
        else:
            done()  # survived SIGKILL (uninterruptible sleep): nothing more can be done

    check(0, time.monotonic() + grace)
