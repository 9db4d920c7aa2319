"""What the page and the APIs show: the `ls --json` entries, measured, with totals and savings.

Asking brokers for their status is cheap (one socket round trip each), measuring memory is not (PSS reads
every process's page map), so the two run at different rates: status every sample, memory, CPU and the
process scan every `MEMORY_EVERY` seconds or as soon as a backend appears. The orphan scan (`reap
--dry-run`) is slower still. Everything here blocks: the monitor runs it in a worker thread.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import psutil

from ..common.proctree import parent_map, process_memory, tree_pids
from ..ops import control, reaper

MEMORY_EVERY = 15.0
ORPHANS_EVERY = 60.0


@dataclass
class Measure:
    """One backend tree's cost at the last memory sample."""

    memory_bytes: int
    processes: int
    cpu_seconds: float
    cpu_percent: float
    at: float


def _tree_cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _session_cwd(pid: int) -> str | None:
    """Where the session's client started it (the waiter keeps the shim's cwd)."""
    try:
        return psutil.Process(pid).cwd()
    except psutil.Error:
        return None


class Sampler:
    """Turns the brokers' records into the state document; keeps the last measures between memory samples."""

    def __init__(self, memory_every: float = MEMORY_EVERY, orphans_every: float = ORPHANS_EVERY) -> None:
        self.memory_every = memory_every
        self.orphans_every = orphans_every
        self._measures: dict[tuple[str, int, int | None], Measure] = {}
        self._overhead = 0
        self._next_memory = 0.0
        self._next_orphans = 0.0
        self._cwds: dict[int, str | None] = {}
        self.orphans: list[dict[str, Any]] = []

    def sample(self) -> dict[str, Any]:
        now = time.monotonic()
        records = [record.to_json() for record in control.running_backends()]
        if now >= self._next_memory or any(_identity(r) not in self._measures for r in records):
            self._measure(records, now)
        if now >= self._next_orphans:
            self.scan_orphans()
        pids = [client["pid"] for record in records for client in record.get("clients", [])]
        self._cwds = {pid: self._cwds.get(pid) or _session_cwd(pid) for pid in pids}  # a pid's cwd read once
        servers = [self._entry(record) for record in records]
        return {
            "taken_at": time.time(),
            "servers": servers,
            "totals": self._totals(servers),
            "orphans": self.orphans,
            "reaped": reaped_record(),
        }

    def force_memory(self) -> None:
        """Measure at the next sample (after an action, the numbers must not lag)."""
        self._next_memory = 0.0

    def scan_orphans(self) -> None:
        """What `reap --dry-run` would act on now, commands masked as `ls` masks them."""
        self._next_orphans = time.monotonic() + self.orphans_every
        self.orphans = [shown_finding(finding) for finding in reaper.find_reapable()]

    def _measure(self, records: list[dict[str, Any]], now: float) -> None:
        parents = parent_map()
        measures = {}
        for record in records:
            identity = _identity(record)
            pid = record.get("backend_pid")
            pids = tree_pids(pid, parents) if pid else []
            cpu = _tree_cpu_seconds(pids)
            before = self._measures.get(identity)
            percent = 0.0
            if before is not None and now > before.at:
                percent = max(0.0, 100.0 * (cpu - before.cpu_seconds) / (now - before.at))
            memory = sum(process_memory(member) for member in pids)
            measures[identity] = Measure(memory, len(pids), cpu, percent, now)
        self._measures = measures
        ours = {record["broker_pid"] for record in records}
        ours |= {client["pid"] for record in records for client in record.get("clients", [])}
        self._overhead = sum(process_memory(pid) for pid in ours if pid)
        self._next_memory = now + self.memory_every

    def _entry(self, record: dict[str, Any]) -> dict[str, Any]:
        measure = self._measures.get(_identity(record)) or Measure(0, 0, 0.0, 0.0, 0.0)
        clients = [{**client, "cwd": self._cwds.get(client.get("pid", 0))} for client in record.get("clients", [])]
        return {
            **record,
            "clients": clients,
            "memory_bytes": measure.memory_bytes,
            "processes": measure.processes,
            "cpu_percent": round(measure.cpu_percent, 1),
            "managed": True,
        }

    def _totals(self, servers: list[dict[str, Any]]) -> dict[str, Any]:
        """What users installed this for: what the same sessions would cost with a backend each, and so
        what sharing saves after paying for our own brokers and waiters."""
        memory = sum(server["memory_bytes"] for server in servers)
        direct = sum(server["memory_bytes"] * len(server["clients"]) for server in servers)
        return {
            "backends": len(servers),
            "sessions": sum(len(server["clients"]) for server in servers),
            "processes": sum(server["processes"] for server in servers),
            "memory_bytes": memory,
            "overhead_bytes": self._overhead,
            "direct_bytes": direct,
            "saved_bytes": direct - memory - self._overhead,
            "orphans": sum(1 for orphan in self.orphans if orphan["kind"] != "stale-state"),
        }


def _identity(record: dict[str, Any]) -> tuple[str, int, int | None]:
    return (str(record.get("key")), int(record.get("slot", 1)), record.get("backend_pid"))


def shown_finding(finding: reaper.Finding) -> dict[str, Any]:
    return {
        "pid": finding.pid,
        "command": reaper.shown_command(finding.command),
        "reason": finding.reason,
        "kind": finding.kind,
    }


def reaped_record() -> dict[str, Any]:
    """How many orphans `reap` killed so far (from the page or the command line) and when it last did."""
    try:
        when: float | None = os.path.getmtime(reaper.reaped_counter_path())
    except OSError:
        when = None
    return {"total": reaper.reaped_total(), "last_at": when}
