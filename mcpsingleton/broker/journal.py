"""The in-flight journal: the session requests this broker accepted and has not answered yet, kept on disk.

Why it exists: a broker killed outright (SIGKILL, the OOM killer, a watchdog) answers nothing it owed, and
its sessions re-attach to a new broker that never saw those requests: each client would wait for their
replies forever. So every broker keeps, in a file of its own in the private runtime dir, the pairs
(session pid, request id) it owes: the pid is the session's for its whole life (the waiter keeps the shim's
pid) and the id is the client's own, as JSON text. The waiter's state names the file (`Journal.name`); the
next broker reads the entries of each session that re-attaches with it and answers every one with an error,
before it writes anything else to that client (`owed_by`).

Cheap: an append-only log in a shared memory map (the runtime dir is a tmpfs on Linux): a record is a slice
assignment, no system call, and the kernel keeps the pages when the process dies. When the map is full the
live entries are rewritten to a fresh file that is renamed over the old one (a reader sees either).

Records are ASCII lines: `+PID ID` owed, `-PID ID` answered or cancelled, `oPID` / `cPID` the client's
stdout is left inside a line (a reply half written: its reader is slow) / no longer, `xPID` the session
left (nothing of it is owed any more), `dPID` a later broker answered what PID was owed (appended to a dead
broker's file). The unused, zero-filled part of the map is skipped when reading.
"""

from __future__ import annotations

import atexit
import json
import mmap
import os
import time

PREFIX = "inflight-"
"""Journal files are `inflight-<broker pid>-<start time in ns>` in the runtime dir (a reused pid is a new name)."""
SIZE = 64 * 1024
"""The map's first size; it doubles when the live entries fill half of it."""
LOST = "mcpsingleton: the broker went away before this request was answered; send it again"

_mine: dict[str, Journal] = {}


def of_this_broker(runtime_dir: str) -> Journal:
    """The broker's one journal in `runtime_dir` (the file itself is made at the first request it owes)."""
    journal = _mine.get(runtime_dir)
    if journal is None:
        journal = _mine[runtime_dir] = Journal(runtime_dir)
    return journal


def id_text(request_id: object) -> str:
    """A request id as the journal keeps it: compact JSON, the same text whichever path it came by."""
    return str(request_id) if type(request_id) is int else json.dumps(request_id)


class Journal:
    """This broker's entries: a map of what is owed, mirrored in memory (`owed`) and appended to the file."""

    def __init__(self, runtime_dir: str) -> None:
        self.dir = runtime_dir
        self.name = f"{PREFIX}{os.getpid()}-{time.time_ns()}"
        self.path = os.path.join(runtime_dir, self.name)
        self.owed: dict[int, dict[str, None]] = {}  # session pid → its owed ids, in the order they came
        self.staged: list[tuple[int, str]] = []  # owed since the last `commit`: written only if still owed then
        self.open_lines: set[int] = set()  # sessions whose stdout is left inside a line
        self.map: mmap.mmap | None = None
        self.end = 0  # where the next record goes in the map

    # ---- what the broker records ----------------------------------------------------------------

    def owes(self, pid: int) -> bool:
        return pid in self.owed

    def owe(self, pid: int, request_id: str) -> None:
        """A session request was accepted; it is written at `commit` unless it was answered in between."""
        self.owed.setdefault(pid, {})[request_id] = None
        self.staged.append((pid, request_id))

    def settle(self, pid: int, request_id: str) -> None:
        """Its reply (or an error) was written to the client, or the client cancelled it."""
        owed = self.owed.get(pid)
        if owed is None or request_id not in owed:
            return
        del owed[request_id]
        if not owed:
            del self.owed[pid]
        if self.staged and (pid, request_id) in self.staged:
            self.staged.remove((pid, request_id))  # answered in the turn that accepted it: never written
        else:
            self._append(f"-{pid} {request_id}\n".encode())

    def commit(self) -> None:
        """Write what was accepted and is still owed (called once the line that brought it was handled)."""
        if self.staged:
            staged, self.staged = self.staged, []
            self._append("".join(f"+{pid} {request_id}\n" for pid, request_id in staged).encode())

    def note_line(self, pid: int, open_line: bool) -> None:
        """Whether the session's stdout is left inside a line: a next broker must end it before its errors."""
        if open_line:
            self.open_lines.add(pid)
        else:
            self.open_lines.discard(pid)
        self._append(f"{'o' if open_line else 'c'}{pid}\n".encode())

    def forget(self, pid: int) -> None:
        """The session left for good: nothing of it is owed any more."""
        self.open_lines.discard(pid)
        if self.owed.pop(pid, None) is not None:
            self.staged = [entry for entry in self.staged if entry[0] != pid]
            self._append(f"x{pid}\n".encode())

    def close(self) -> None:
        """At a clean exit: the file goes when nothing is owed; else it stays for the next broker to answer."""
        if self.map is None:
            return
        self.map.close()
        self.map = None
        if not self.owed:
            _unlink(self.path)

    # ---- the file ---------------------------------------------------------------------------------

    def _append(self, record: bytes) -> None:
        if self.map is None or self.end + len(record) > len(self.map):
            self._rewrite(len(record))
        assert self.map is not None
        self.map[self.end : self.end + len(record)] = record
        self.end += len(record)

    def _rewrite(self, room: int) -> None:
        """A fresh map holding only what is owed (and room for more), renamed over the old file."""
        owed = "".join(f"+{pid} {request_id}\n" for pid, ids in self.owed.items() for request_id in ids)
        live = (owed + "".join(f"o{pid}\n" for pid in self.open_lines)).encode()
        size = SIZE
        while size < 2 * (len(live) + room):
            size *= 2
        temp = f"{self.path}.new"
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, size)
            fresh = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        fresh[: len(live)] = live
        os.rename(temp, self.path)
        if self.map is None:
            atexit.register(self.close)
            sweep(self.dir)
        else:
            self.map.close()
        self.map, self.end = fresh, len(live)


# ---- a dead broker's journal, read by the next one ------------------------------------------------------


def owed_by(runtime_dir: str, name: str, pid: int) -> tuple[list[str], bool]:
    """What the broker that kept journal `name` owed session `pid`, once (the file notes it was answered): the
    ids, and whether it left the client's stdout inside a line. `name` comes from the session's waiter (client
    data): anything but a journal's name is ignored."""
    if not _is_journal_name(name) or _broker_pid(name) == os.getpid():
        return [], False
    path = os.path.join(runtime_dir, name)
    entries = _read(path)
    if entries is None:
        return [], False
    owed, answered, open_lines = entries
    if pid in answered:
        return [], False
    ids = list(owed.get(pid, {}))
    if ids or pid in open_lines:
        _note(path, f"d{pid}\n".encode())
    if all(other == pid or other in answered or not _alive(other) for other in owed):
        _unlink(path)  # nobody else can still claim anything of it
    return ids, pid in open_lines


def sweep(runtime_dir: str) -> None:
    """Remove the journals of dead brokers that no living session can claim any more."""
    try:
        names = [name for name in os.listdir(runtime_dir) if _is_journal_name(name)]
    except OSError:
        return
    for name in names:
        if _alive(_broker_pid(name)):
            continue
        path = os.path.join(runtime_dir, name)
        entries = _read(path)
        if entries is None:
            continue
        owed, answered, _ = entries
        if not any(_alive(pid) for pid in owed if pid not in answered):
            _unlink(path)


def _read(path: str) -> tuple[dict[int, dict[str, None]], set[int], set[int]] | None:
    """(owed ids per session pid, sessions a later broker answered already, sessions whose stdout was left
    inside a line) of a journal; None: unreadable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read().replace(b"\0", b"")
    except OSError:
        return None
    owed: dict[int, dict[str, None]] = {}
    answered: set[int] = set()
    open_lines: set[int] = set()
    for line in data.decode("utf-8", "replace").splitlines():
        kind, _, rest = line.partition(" ")
        if not kind[1:].isdigit():
            continue
        pid = int(kind[1:])
        if kind[0] == "+" and rest:
            owed.setdefault(pid, {})[rest] = None
        elif kind[0] == "-":
            owed.get(pid, {}).pop(rest, None)
        elif kind[0] == "o":
            open_lines.add(pid)
        elif kind[0] == "c":
            open_lines.discard(pid)
        elif kind[0] == "x":
            owed.pop(pid, None)
            open_lines.discard(pid)
        elif kind[0] == "d":
            answered.add(pid)
    return {pid: ids for pid, ids in owed.items() if ids}, answered, open_lines


def _note(path: str, record: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        os.write(fd, record)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_journal_name(name: str) -> bool:
    parts = name[len(PREFIX) :].split("-") if name.startswith(PREFIX) else []
    return len(parts) == 2 and all(part.isascii() and part.isdigit() for part in parts)


def _broker_pid(name: str) -> int:
    return int(name[len(PREFIX) :].split("-")[0])


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process: alive, just not ours to signal
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
