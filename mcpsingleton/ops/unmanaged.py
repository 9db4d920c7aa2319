"""MCP servers mcpsingleton did not start: one look at this user's process table (`Processes`, shared by
every decision of a `reap` run), how an MCP server is recognized by its command line, and `ls --all`'s
groups of unmanaged servers with what sharing them would save.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

import psutil

from ..broker.backend import is_ours
from ..common.cmdline import is_launcher
from ..common.proctree import tree_memory, tree_pids
from ..common.wire import KEY_ENV
from ..shim.keys import redacted_argv

MCP_WORD = re.compile(r"mcp|modelcontextprotocol|server-everything", re.IGNORECASE)
"""Names MCP servers go by: mcp-server-*, *-mcp, fastmcp, mcp_server_time, @modelcontextprotocol/*."""


def looks_like_mcp_server(argv: list[str]) -> bool:
    """An MCP server by its name: the program's own name, or — for launchers and interpreters (npx, uvx,
    node, python, sh -c, docker …) — any argument, since that is where they name the server."""
    if not argv or is_ours(argv):
        return False
    program = os.path.basename(argv[0])
    words = [program, *argv[1:]] if is_launcher(program) else [program]
    return any(MCP_WORD.search(word) for word in words)


class Processes:
    """One look at the process table, so every decision in a run sees the same world."""

    def __init__(self) -> None:
        self.parents: dict[int, int] = {}
        self.own: dict[int, list[str]] = {}
        """This user's living processes (real and effective uid) → argv; nothing else is ever signalled."""
        uid = os.getuid()
        for proc in psutil.process_iter(["ppid", "uids", "cmdline", "status"]):
            info = proc.info
            self.parents[proc.pid] = info["ppid"] or 0
            uids = info["uids"]
            alive = info["status"] != psutil.STATUS_ZOMBIE
            if uids and uids.real == uids.effective == uid and alive and info["cmdline"]:
                self.own[proc.pid] = info["cmdline"]  # kernel threads have no cmdline: never ours to signal

    def tree(self, pid: int) -> list[int]:
        return [member for member in tree_pids(pid, self.parents) if member in self.own]

    def ancestors(self, pid: int) -> list[int]:
        chain: list[int] = []
        parent = self.parents.get(pid, 0)
        while parent > 1 and parent not in chain and parent != pid:
            chain.append(parent)
            parent = self.parents.get(parent, 0)
        return chain

    def environ(self, pid: int) -> dict[str, str]:
        try:
            return psutil.Process(pid).environ()
        except psutil.Error:
            return {}

    def key_tag(self, pid: int) -> str | None:
        return self.environ(pid).get(KEY_ENV)

    def group_of(self, pid: int) -> int | None:
        try:
            return os.getpgid(pid)
        except OSError:
            return None

    def under_ours(self, pid: int) -> bool:
        """Owned by a live broker (or shim): its descendants are the broker's to manage, not ours to reap."""
        return any(is_ours(self.own.get(parent, [])) for parent in self.ancestors(pid))

    def unmanaged_servers(self) -> dict[int, list[str]]:
        """MCP servers of this user that mcpsingleton neither started nor wraps."""
        return {
            pid: argv
            for pid, argv in self.own.items()
            if looks_like_mcp_server(argv)
            and not self.under_ours(pid)
            and not any(is_ours(self.own[member]) for member in self.tree(pid)[1:])
            and self.key_tag(pid) is None
        }

    def topmost(self, pids: Iterable[int]) -> list[int]:
        """Those of `pids` with no ancestor among them: stopping their trees covers the rest."""
        chosen = set(pids)
        return [pid for pid in chosen if not chosen.intersection(self.ancestors(pid))]


def find_unmanaged_servers() -> list[dict[str, Any]]:
    """MCP servers running without mcpsingleton, grouped by command: what sharing each would save."""
    procs = Processes()
    servers = procs.unmanaged_servers()
    groups: dict[tuple[str, ...], list[int]] = {}
    for pid in procs.topmost(servers):
        argv = servers[pid]
        groups.setdefault((os.path.basename(argv[0]), *argv[1:]), []).append(pid)
    result = []
    for command, pids in groups.items():
        sizes = [tree_memory(pid, procs.parents) for pid in pids]
        result.append(
            {
                "managed": False,
                "command": redacted_argv(list(command)),
                "count": len(pids),
                "pids": sorted(pids),
                "memory_bytes": sum(sizes),
                "savable_bytes": sum(sizes) - max(sizes),  # sharing keeps one instance: assume the largest
            }
        )
    return sorted(result, key=lambda group: -group["memory_bytes"])
