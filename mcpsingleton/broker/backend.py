"""The real MCP server process: spawn it in its own process group, make sure it dies with us, and the
one stop ladder every stop uses.

Layers (docs/ARCHITECTURE.md, lifecycle): stdin EOF when the broker goes, a parent-death signal where
the OS has one (Linux), and a keeper — a tiny `sh` holding a pipe whose only writer is the broker —
that kills every live backend group (npx → npm exec → node grandchildren included) when that pipe
reaches EOF, however the broker died. Every backend carries MCPSINGLETON_KEY; our own processes never
pass it on, so a process carrying it is a backend of that key or something a backend started.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from ..common import platform, processes
from ..common.stopping import StopLadder
from ..common.wire import KEY_ENV
from .eventloop import Callback, EventLoop

KEEPER_SCRIPT = (
    "g=' '; while IFS= read -r l; do p=${l#?}; case $l in "
    '+*) case $g in *" $p "*) ;; *) g="$g$p ";; esac;; '
    '-*) case $g in *" $p "*) g="${g%% $p *} ${g#* $p }";; esac;; esac; done; '
    '[ -n "${g# }" ] || exit 0; for p in $g; do kill -TERM -"$p" 2>/dev/null; done; sleep 1; '
    'for p in $g; do kill -KILL -"$p" 2>/dev/null; done; exit 0'
)
"""Reads `+PGID` (a backend group to guard) and `-PGID` (that group is gone) lines; on EOF — the broker
is gone — stops every group still guarded. Its own stop ladder: a dead broker cannot run ours."""

OUR_NAME = re.compile(r"^mcpsingleton(?:$|[._-])")
"""Our programs: the mcpsingleton CLI and shim, `-m mcpsingleton.broker`, mcpsingleton-keeper/-session."""


def is_ours(argv: list[str]) -> bool:
    """A broker, shim, keeper or CLI of ours: a word named mcpsingleton, mcpsingleton.*, mcpsingleton-*."""
    return any(OUR_NAME.match(os.path.basename(word)) for word in argv)


def kill_leftovers(key: str) -> list[int]:
    """SIGKILL what a dead broker of this key left behind; run under the key's lock, so no live broker owns it.

    A leftover carries our key and is not one of our own programs: a nested `mcpsingleton run` inside a
    backend inherits the tag, but the broker it starts does not (it is never passed on) and its shim and
    waiter are ours, so a nested key's live broker is never touched.
    """
    return _kill_unless_ours(processes.tagged_processes(KEY_ENV, key))


def kill_orphans() -> list[int]:
    """SIGKILL the broker's children that are not ours: orphans it adopted as subreaper (a backend's daemon that
    left its group and cleared its environment). Only at the broker's exit, once every backend is stopped."""
    return _kill_unless_ours(processes.children_of(os.getpid()))


def _kill_unless_ours(found: Iterable[tuple[int, list[str]]]) -> list[int]:
    """SIGKILL each (pid, argv) that is not one of our own programs; the pids killed."""
    killed = []
    for pid, argv in found:
        if argv and not is_ours(argv):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    return killed


class Keeper:
    """One per broker: stops the live backend groups if the broker dies without saying they are gone."""

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
        self._say(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        """The group is confirmed gone: its number may be reused from now on, so never signal it."""
        self._say(f"-{pgid}\n")

    def close(self) -> None:
        """Orderly exit: every group was stopped and forgotten, so the keeper ends without killing anything."""
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


TYPE_CHECKING = False  # as typing.TYPE_CHECKING: typing costs every broker ~3 ms and memory at import
if TYPE_CHECKING:
    from collections.abc import Iterable

    from ..common.stopping import Stoppable


def stop_in_loop(loop: EventLoop, target: Stoppable, reap: Callback, done: Callback, grace: float = 1.0) -> None:
    """Climb the ladder without blocking the broker's loop; `done` once the target is gone (or survived
    SIGKILL: uninterruptible sleep, nothing more can be done)."""
    ladder = StopLadder(target, grace)

    def climb() -> None:
        wait = ladder.climb()
        if wait is None:
            done()
        else:
            check(time.monotonic() + wait)

    def check(deadline: float) -> None:
        reap()
        if not target.alive():
            done()
        elif time.monotonic() < deadline:
            loop.call_later(0.02, lambda: check(deadline))
        else:
            climb()

    climb()


class Backend:
    """A spawned backend: its pid (= pgid), the broker's ends of its stdio pipes, and how to stop it all."""

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str], key: str, keeper: Keeper | None = None) -> None:
        self.key = key
        self.keeper = keeper
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**env, KEY_ENV: key},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,
            close_fds=True,
            preexec_fn=platform.backend_setup_hook(),
        )
        self.pid = self.process.pid
        self.pgid = self.pid
        if keeper is not None:
            keeper.guard(self.pgid)
        self.started = time.monotonic()
        self.exit_status: int | None = None
        self.group_gone = False
        self.sweep_strays = False
        """Also stop processes that left the group (setsid daemons): set for the broker's final stop."""
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
        """Whether any process is left in the group. Once it was found empty the answer stays no, and the
        keeper forgets it at once: from then on its id may belong to someone else's new group."""
        if self.group_gone:
            return False
        try:
            os.killpg(self.pgid, 0)
            return True
        except ProcessLookupError:
            pass
        except PermissionError:  # another user's process in it, or (macOS) only zombies, which run no code
            if processes.group_runs_code(self.pgid):
                return True
        self.group_gone = True
        if self.keeper is not None:
            self.keeper.forget(self.pgid)
        return False

    def mark_exited(self, status: int) -> None:
        """The broker reaped the leader: the group may be empty from this instant, so look now, not later."""
        self.exit_status = status
        self.process.returncode = status  # we reap it ourselves; keep Popen from waiting on it
        self.group_alive()

    # ---- Stoppable: the group, and with sweep_strays what left it ---------------------------------

    def close_input(self) -> bool:
        self.close_stdin()
        return True

    def send(self, signum: int) -> None:
        if self.group_alive():
            try:
                os.killpg(self.pgid, signum)
            except (ProcessLookupError, PermissionError):
                pass
        if self.sweep_strays:
            for pid in self._strays():
                try:
                    os.kill(pid, signum)
                except OSError:
                    pass

    def alive(self) -> bool:
        return self.group_alive() or (self.sweep_strays and bool(self._strays()))

    def _strays(self) -> list[int]:
        """Live processes that left the group but carry our key. Not the broker's other children: in the one
        broker they are other servers' backends (orphans adopted as subreaper go at its exit: `kill_orphans`)."""
        candidates = processes.tagged_processes(KEY_ENV, self.key)
        return [pid for pid, argv in dict(candidates).items() if argv and not is_ours(argv) and processes.running(pid)]


def stop_ladder(
    loop: EventLoop, backend: Backend, reap: Callback, done: Callback, grace: float = 1.0, strays: bool = False
) -> None:
    """Stop a backend group with the ladder from the broker's loop; `strays` also stops what left the group."""
    backend.sweep_strays = strays
    stop_in_loop(loop, backend, reap, done, grace)
