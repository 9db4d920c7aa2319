"""The monitor: one sampling loop for everything `serve` shows, so N open pages cost what one does.

Each tick samples in a worker thread (state.Sampler blocks on sockets and /proc), adds health and limits,
records history, logs alert crossings once, and publishes the state to the pages when it changed.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from ..common.proctree import process_memory
from .alerts import Crossings, Limits, evaluate, load_limits, status_of
from .events import Broadcaster
from .history import History
from .state import Sampler

INTERVAL = 2.0


def log_line(text: str) -> None:
    """serve's log: stderr (a terminal in the foreground, logs/serve.log when `dashboard` started it)."""
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")
    sys.stderr.flush()


class Monitor:
    def __init__(
        self,
        sampler: Sampler,
        history: History,
        broadcaster: Broadcaster,
        interval: float = INTERVAL,
        limits: Callable[[], Limits] = load_limits,
        log: Callable[[str], None] = log_line,
    ) -> None:
        self.sampler = sampler
        self.history = history
        self.broadcaster = broadcaster
        self.interval = interval
        self.limits = limits
        self.log = log
        self.latest: dict[str, Any] = {}
        self._crossings = Crossings()
        self._lock = asyncio.Lock()
        self._published = b""
        self._own_memory = 0

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # a failed sample must not end the dashboard: say it, try again next tick
                self.log(f"sampling failed: {exc!r}")
            await asyncio.sleep(self.interval)

    async def refresh(self, memory: bool = False) -> dict[str, Any]:
        """Sample now (after an action, with `memory` measured afresh) and publish; the new state."""
        async with self._lock:
            if memory:
                self.sampler.force_memory()
            snapshot = await asyncio.to_thread(self.sampler.sample)
            self._own_memory = await asyncio.to_thread(process_memory, os.getpid())
            self._complete(snapshot)
        return snapshot

    async def scan_orphans(self) -> None:
        async with self._lock:
            await asyncio.to_thread(self.sampler.scan_orphans)

    def _complete(self, snapshot: dict[str, Any]) -> None:
        limits = self.limits()
        findings = evaluate(snapshot["totals"], snapshot["servers"], limits)
        snapshot["health"] = {"status": status_of(findings), "reasons": [finding.reason for finding in findings]}
        snapshot["limits"] = limits.to_json()
        snapshot["serve"] = {
            "pid": os.getpid(),
            "memory_bytes": self._own_memory,
            "pages": self.broadcaster.subscribers,
        }
        for line in self._crossings.update(findings):
            self.note("alert", line)
        self.history.record(snapshot["totals"])
        self.latest = snapshot
        self.publish_if_changed()

    def publish_if_changed(self) -> None:
        """Only what changed goes out: a quiet system sends the pages nothing but heartbeats."""
        content = json.dumps({k: v for k, v in self.latest.items() if k not in ("taken_at", "serve")}, default=str)
        if content.encode() != self._published:
            self._published = content.encode()
            self.broadcaster.publish("state", self.latest)

    def note(self, kind: str, text: str) -> None:
        """An alert crossing or an action taken from the page: logged, kept in the history, shown on the pages."""
        self.log(text)
        self.history.event(kind, text)
        self.broadcaster.publish("events", self.history.events())
