"""Health: thresholds from config.toml `[alerts]`, what crosses them, and each crossing said once.

Processes are the MCP server processes we run (every backend's whole tree); memory is the PSS of those
trees. The defaults follow what users set by hand after a process explosion (field report 004: 12/15
processes, 3/4 GB), with room for the several processes an `npx` launch makes. `[budget]` (the one-broker
issue's limits) is only shown beside them: it is enforced by the brokers, not here.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from typing import Any

from ..common.errors import UsageError
from ..common.options import parse_size
from ..common.paths import config_path
from ..ops.listing import human_bytes
from ..policy.rules import load_table

OK, WARNING, CRITICAL = "ok", "warning", "critical"
LEVELS = (OK, WARNING, CRITICAL)


@dataclass(frozen=True)
class Thresholds:
    warn_processes: int = 30
    critical_processes: int = 60
    warn_memory: int = 3 << 30
    critical_memory: int = 4 << 30


@dataclass(frozen=True)
class Limits:
    """What config.toml asks for: alert thresholds, the budget when set, and why the file was ignored if it was."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    budget: dict[str, Any] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"alerts": asdict(self.thresholds), "budget": self.budget, "config_error": self.error}


def load_limits(path: str | None = None) -> Limits:
    """Never fails: a missing file gives the defaults, a broken one the defaults and the reason.

    `[budget]` is read as the brokers read it (policy.load_table), so the page shows what they enforce."""
    path = path or config_path()
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        return Limits()
    except (OSError, UnicodeDecodeError, RecursionError, tomllib.TOMLDecodeError) as exc:
        return Limits(error=f"{path}: {exc}")
    try:
        thresholds = _thresholds(document.get("alerts", {}))
        max_backends, max_memory = load_table(path).budget
    except (UsageError, TypeError, ValueError) as exc:
        return Limits(error=f"{path}: {exc}")
    budget = {"max_backends": max_backends, "max_memory": max_memory} if "budget" in document else None
    return Limits(thresholds, budget)


def _thresholds(table: object) -> Thresholds:
    if not isinstance(table, dict):
        raise ValueError("[alerts] must be a table")
    defaults = Thresholds()
    values: dict[str, int] = {}
    for name in ("warn_processes", "critical_processes"):
        values[name] = _count(table.get(name, getattr(defaults, name)), name)
    for name in ("warn_memory", "critical_memory"):
        raw = table.get(name, getattr(defaults, name))
        values[name] = raw if isinstance(raw, int) and not isinstance(raw, bool) else parse_size(str(raw))
    return Thresholds(**values)


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"[alerts] {name} must be a positive whole number")
    return value


@dataclass(frozen=True)
class Finding:
    metric: str
    level: str
    reason: str


def evaluate(totals: dict[str, Any], servers: list[dict[str, Any]], limits: Limits) -> list[Finding]:
    """Every problem now: thresholds crossed, backends crash-looping, orphans waiting to be reaped."""
    found = _threshold_finding("processes", totals.get("processes", 0), limits.thresholds, str)
    found += _threshold_finding("memory", totals.get("memory_bytes", 0), limits.thresholds, human_bytes)
    for server in servers:
        if server.get("state") == "restarting":
            found.append(Finding(f"restarting:{server.get('key')}", WARNING, f"{server.get('name')} is restarting"))
    orphans = totals.get("orphans", 0)
    if orphans:
        found.append(Finding("orphans", WARNING, f"{orphans} orphaned MCP process(es): reap them"))
    return found


def _threshold_finding(metric: str, value: int, thresholds: Thresholds, shown: Any) -> list[Finding]:
    warn, critical = getattr(thresholds, f"warn_{metric}"), getattr(thresholds, f"critical_{metric}")
    if value >= critical:
        return [Finding(metric, CRITICAL, f"{metric} {shown(value)} ≥ critical {shown(critical)}")]
    if value >= warn:
        return [Finding(metric, WARNING, f"{metric} {shown(value)} ≥ warning {shown(warn)}")]
    return []


def status_of(findings: list[Finding]) -> str:
    return max((finding.level for finding in findings), key=LEVELS.index, default=OK)


class Crossings:
    """Remembers each metric's level, so a crossing (up or back down) is reported once, not every sample."""

    def __init__(self) -> None:
        self._levels: dict[str, str] = {}

    def update(self, findings: list[Finding]) -> list[str]:
        current = {finding.metric: finding for finding in findings}
        lines = [
            f"{finding.level}: {finding.reason}"
            for metric, finding in current.items()
            if self._levels.get(metric) != finding.level
        ]
        lines += [f"ok again: {metric.split(':')[0]}" for metric in self._levels if metric not in current]
        self._levels = {metric: finding.level for metric, finding in current.items()}
        return lines
