"""`mcpsingleton reap`: stop what must not be running, each time with evidence, never on a guess.

- stale-state: a `broker.json` (the one broker) or `<key>.json` (a per-key broker of the previous version)
  whose broker is gone. Brokers hold their `.lock` for life, so a free lock proves it; the json and socket
  go, the lock file stays (docs/ARCHITECTURE.md, "Election") — unless the key was isolated: every session,
  even one re-attaching, computes a fresh isolated key, so nothing can run under an ended one again, and its
  lock and log go too (found by the log's start line when its server ended in order and left no json, and no
  live broker hosts it).
- hung-broker: the lock is held by a live broker that does not answer `status` on its socket.
- leftover-backend: a process tagged MCPSINGLETON_KEY that no live mcpsingleton process owns (a backend
  or grandchild of a broker that died).
- orphan-server: an MCP server not started by us whose stdin can never deliver another message. On
  Linux that is proved: the other end of its stdin pipe (or Unix socket) is held by no process outside
  its own tree, checked against every /proc/*/fd and confirmed by the kernel where it can tell.
  Elsewhere (macOS, BSD, and MCPSINGLETON_PORTABLE=1) psutil's open_files and net_connections list
  neither pipes nor who holds their other end, so no proof is possible without libproc's per-fd pipe info
  (PROC_PIDFDPIPEINFO), which psutil does not expose. A server there is only a suspect, acted on when the
  user confirms, and only with evidence that whatever started it is gone (`_why_suspected`): on macOS
  every launchd agent and Dock-launched app has parent pid 1 too, so that alone says nothing.
  Leftover backends are found the same way everywhere: their key tag, via psutil.

What a process is (an MCP server? ours?) and the one look at the process table: `unmanaged.py`.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..broker.backend import is_ours
from ..common import processes
from ..common.atomic import write_atomically
from ..common.errors import stderr_line
from ..common.logfile import START_LINE_WITHIN
from ..common.paths import BROKER, KeyPaths, ensure_private_dir, log_dir, runtime_dir
from ..common.proctree import terminate_tree
from ..common.stdin_peers import FdHolders, stdin_peer
from ..common.wire import ISOLATED, KEY_ENV, STATUS, decode_status
from ..shim.election import try_lock
from ..shim.keys import redacted_argv
from .control import TIMEOUT as CONTROL_TIMEOUT
from .control import ask, ask_broker, state_files
from .unmanaged import Processes

UNREACHABLE_GRACE = 3.0
"""How long a live broker may have no listening socket (starting, or stopping its backend) before it counts
as not answering."""


@dataclass
class Finding:
    """Something reap stops or cleans up, and the evidence for it."""

    pid: int
    command: list[str] | str
    reason: str
    kind: str  # stale-state | hung-broker | leftover-backend | orphan-server | suspected-orphan
    pids: list[int] = field(default_factory=list)
    """The whole tree to stop, top first; empty when only files are stale."""
    key: str | None = None
    """Set when the key's state files are to be removed once no broker holds the lock."""
    needs_confirm: bool = False
    """A heuristic rather than a proof: acted on only with the user's confirmation."""
    ended: bool = False
    """The key was isolated: it can never run again, so its lock and log are removed with its state."""


# ---- stale-state and hung-broker --------------------------------------------------------------------


@contextlib.contextmanager
def _lock_if_free(key: str) -> Iterator[bool]:
    """Take `<key>.lock` for the duration if no broker holds it, yielding whether it was free.

    Brokers hold it for life, so free means dead; holding it keeps a new broker from starting meanwhile.
    """
    fd = try_lock(KeyPaths(key).lock)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def _why_unresponsive(state: dict[str, Any]) -> str | None:
    """Why the live broker behind a state file cannot serve anyone, or None if it answers.

    Any answer at all counts: a broker that is busy or out of file descriptors still answers, and a
    full listen backlog or a missing socket (the broker starts or stops) only counts once it lasts."""
    paths = KeyPaths(state["key"], os.path.dirname(state["state_file"]))
    deadline = time.monotonic() + UNREACHABLE_GRACE
    while True:
        has_socket = os.path.exists(paths.sock)
        if has_socket and ask_broker(state, STATUS, timeout=CONTROL_TIMEOUT) is not None:
            return None
        if time.monotonic() >= deadline:
            if has_socket:
                return f"is alive but does not answer on its socket within {UNREACHABLE_GRACE:g} s"
            return f"is alive but has had no socket for {UNREACHABLE_GRACE:g} s"
        time.sleep(0.1)


def _state_findings(procs: Processes) -> list[Finding]:
    findings = []
    states = state_files()
    for state in states:
        key = state["key"]
        recorded = state.get("broker_pid")
        pid = recorded if isinstance(recorded, int) else 0
        if _broker_gone(key):
            ended = state.get("scope") == ISOLATED
            files = "json, socket, lock and log" if ended else "json and socket"
            reason = f"broker {pid} is gone (its lock is free); stale {key} {files}"
            findings.append(Finding(pid, state.get("command") or "?", reason, "stale-state", key=key, ended=ended))
        elif pid in procs.own and is_ours(procs.own[pid]) and (problem := _why_unresponsive(state)):
            reason = f"broker of {key} {problem}"
            findings.append(Finding(pid, procs.own[pid], reason, "hung-broker", procs.tree(pid), key))
    return findings + _ended_isolated_findings({state["key"] for state in states})


def _ended_isolated_findings(keys_with_state: set[str]) -> list[Finding]:
    """Logs of isolated keys whose broker exited in order (no json left) and is gone, and that the one broker
    does not host: lock and log go. Nothing when a live one broker does not say what it hosts."""
    findings = []
    logs = sorted(glob.glob(os.path.join(log_dir(), "*.log")))
    hosted = _hosted_keys()  # asked after the logs were listed: a server whose log is listed is hosted by now
    if hosted is None:
        return []
    for log in logs:
        key = os.path.basename(log)[: -len(".log")]
        name = _isolated_start_name(log)
        no_lock = not os.path.exists(KeyPaths(key).lock)  # gone with a reboot's tmpfs: no broker; none made here
        if name is not None and key not in keys_with_state | hosted and (no_lock or _broker_gone(key)):
            reason = f"isolated key {key} of {name} ended: nothing can run under it again; its lock and log"
            findings.append(Finding(0, name, reason, "stale-state", key=key, ended=True))
    return findings


def _hosted_keys() -> set[str] | None:
    """The keys the user's one broker hosts (none when no broker runs); None when it runs but does not answer."""
    if _broker_gone(BROKER):
        return set()
    reply = ask(KeyPaths(BROKER), STATUS)
    records = decode_status(reply) if reply else None
    return None if records is None else {record.key for record in records}


def _isolated_start_name(log: str) -> str | None:
    """The server's name when the log's broker started an isolated key (see `Broker.run`'s start line)."""
    try:
        with open(log, encoding="utf-8", errors="replace") as handle:
            head = [handle.readline() for _ in range(START_LINE_WITHIN)]
    except OSError:
        return None
    for line in head:
        _, started, rest = line.partition(" started for ")
        name, _, details = rest.rpartition(" (")
        if started and f"), scope {ISOLATED}," in details:
            return name
    return None


def _broker_gone(key: str) -> bool:
    with _lock_if_free(key) as free:
        return free


def _remove_stale_state(key: str, ended: bool) -> bool:
    """Remove `<key>.json` and `<key>.sock` under the lock, so a broker starting meanwhile keeps its own;
    for an `ended` key its log and (still held, so last) its lock too."""
    paths = KeyPaths(key)
    ended_files = (paths.log(), paths.log() + ".1", paths.lock) if ended else ()
    with _lock_if_free(key) as free:
        if free:
            for path in (paths.state, paths.sock, *ended_files):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        return free


# ---- leftover-backend -------------------------------------------------------------------------------


def _leftover_findings(procs: Processes, claimed: set[int]) -> list[Finding]:
    suspects = [pid for pid, argv in procs.own.items() if pid not in claimed and not is_ours(argv)]
    tags = {pid: tag for pid in suspects if not procs.under_ours(pid) and (tag := procs.key_tag(pid))}
    reason = "tagged {}={} but no live mcpsingleton broker owns it"
    return [
        Finding(pid, procs.own[pid], reason.format(KEY_ENV, tags[pid]), "leftover-backend", procs.tree(pid))
        for pid in procs.topmost(tags)
    ]


# ---- orphan-server: proof from /proc and the kernel (Linux: `common/stdin_peers.py`) ----------------------


def _orphan_reason(pid: int, tree: set[int], holders: FdHolders) -> str | None:
    """Why `pid`'s stdin can never deliver another message, or None if it might."""
    peer = stdin_peer(pid)
    if peer is None:
        return None
    held_by = holders.of(peer.link)
    if held_by - tree:
        return None  # someone outside the server's tree can still talk to it
    if peer.open is False:
        return f"its stdin {peer.kind} is closed at the other end (kernel): no message can ever arrive"
    if not holders.complete or (peer.open and not held_by):
        return None  # a holder we cannot see (hidden /proc, fd in flight, another namespace)
    if held_by:
        return f"the other end of its stdin {peer.kind} is held only inside its own tree ({sorted(held_by)})"
    return f"no process holds the other end of its stdin {peer.kind}"


def _orphan_findings(procs: Processes, claimed: set[int]) -> list[Finding]:
    candidates = {pid: argv for pid, argv in procs.unmanaged_servers().items() if pid not in claimed}
    if not candidates:
        return []
    holders = FdHolders.scan()
    found = {}
    for pid, argv in candidates.items():
        tree = procs.tree(pid)
        reason = _orphan_reason(pid, set(tree), holders)
        if reason:
            found[pid] = Finding(pid, argv, reason, "orphan-server", tree)
    return [found[pid] for pid in procs.topmost(found)]


def _why_suspected(procs: Processes, pid: int) -> str | None:
    """Why a server is believed orphaned where its stdin cannot be examined, or None if there is no evidence.

    Parent pid 1 is not enough: launchd is every agent's and app's parent. launchd starts each job as the
    leader of its own session and group; a client's stdio children join the client's group (or a group the
    client led). So: reparented, not a group leader, the leader of its group gone (the client that started
    it exited), and not a descendant of a launchd job (XPC_SERVICE_NAME names the job in their environment).
    """
    group = procs.group_of(pid)
    if procs.parents.get(pid) != 1 or group is None or group == pid:
        return None
    if group in procs.parents and procs.group_of(group) == group:
        return None  # its group leader, probably its client, still runs
    if processes.launchd_label(procs.environ(pid)):
        return None
    return (
        f"reparented to init, and its process group's leader {group} (what started it) is gone;"
        " this OS cannot prove its stdin is dead"
    )


def _reparented_findings(procs: Processes, claimed: set[int]) -> list[Finding]:
    """Without /proc there is no proof: a server whose starter is gone is only a suspect."""
    found = []
    for pid, argv in procs.unmanaged_servers().items():
        if pid not in claimed and (reason := _why_suspected(procs, pid)):
            found.append(Finding(pid, argv, reason, "suspected-orphan", procs.tree(pid), needs_confirm=True))
    return found


# ---- the command ------------------------------------------------------------------------------------


def find_reapable() -> list[Finding]:
    """Everything `reap` would act on, with reasons. Looks only; changes nothing."""
    procs = Processes()
    findings = _state_findings(procs)
    claimed = {os.getpid(), *procs.ancestors(os.getpid())}  # never the reaper or whatever runs it
    for finder in (_leftover_findings, _orphan_findings if processes.proves_orphans() else _reparented_findings):
        claimed.update(pid for finding in findings for pid in finding.pids)
        findings += finder(procs, claimed)
    return findings


def _act(finding: Finding, dry_run: bool) -> str:
    """Do what the finding calls for; the one-word outcome for the report."""
    verb = "kill" if finding.pids else "remove"
    if dry_run:
        return f"would {verb}"
    survivors = terminate_tree(finding.pids)
    removed = finding.key is not None and _remove_stale_state(finding.key, finding.ended)
    if survivors:
        return "survived"
    if finding.pids:
        return "killed"
    return "removed" if removed else "skipped"  # skipped: a new broker took the key meanwhile


def shown_command(command: list[str] | str) -> list[str] | str:
    """A command as `reap` prints it: secret-named values masked, as `ls` does (another program's argv may
    carry `--api-key …`)."""
    return command if isinstance(command, str) else redacted_argv(command)


def _command_text(command: list[str] | str) -> str:
    shown = shown_command(command)
    return shown if isinstance(shown, str) else " ".join(shown)


def _fields(f: Finding) -> dict[str, Any]:
    return {"pid": f.pid, "command": shown_command(f.command), "reason": f.reason, "kind": f.kind, "pids": f.pids}


def _report(done: list[tuple[Finding, str]], as_json: bool, out: TextIO) -> None:
    if as_json:
        rows = [{**_fields(f), "action": action} for f, action in done]
        out.write(json.dumps(rows, indent=2) + "\n")
        return
    if not done:
        out.write("nothing to reap\n")
        return
    out.write(f"{'PID':>7}  {'KIND':<16}  {'ACTION':<12}  {'COMMAND':<40}  REASON\n")
    for f, action in done:
        command = _command_text(f.command)
        command = command if len(command) <= 40 else command[:39] + "…"
        out.write(f"{f.pid:>7}  {f.kind:<16}  {action:<12}  {command:<40}  {f.reason}\n")


def run_reap(dry_run: bool, as_json: bool, confirm: bool, out: TextIO = sys.stdout) -> int:
    """`mcpsingleton reap [--dry-run] [--json] [--yes]`: act on find_reapable's findings, with reasons."""
    done, unconfirmed = [], 0
    for finding in find_reapable():
        if finding.needs_confirm and not confirm:
            unconfirmed += 1
        else:
            done.append((finding, _act(finding, dry_run)))
    _report(done, as_json, out)
    if not dry_run:
        count_reaped(
            sum(
                1
                for finding, action in done
                if action == "killed" and finding.kind in ("orphan-server", "suspected-orphan")
            )
        )
    if unconfirmed:
        stderr_line(f"{unconfirmed} MCP server(s) look orphaned but this OS cannot prove it; add --yes")
    return 0


def reaped_counter_path() -> str:
    return os.path.join(ensure_private_dir(runtime_dir()), "orphans-reaped")


def count_reaped(number: int) -> None:
    """Keep a running total of orphans reaped, for `mcpsingleton metrics`."""
    if number <= 0:
        return
    path = reaped_counter_path()
    total = reaped_total() + number
    write_atomically(path, str(total).encode())


def reaped_total() -> int:
    try:
        with open(reaped_counter_path()) as handle:
            return int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return 0
