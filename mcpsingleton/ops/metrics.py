"""`mcpsingleton metrics`: the brokers' live state in the Prometheus text exposition format.

Meant for a node_exporter textfile collector (`mcpsingleton metrics > dir/mcpsingleton.prom`) or any
scraper wrapper, so people can alert on memory, restarts and orphans instead of counting with ps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..broker.lifecycle import UP_STATES
from .reaper import reaped_total

Backend = dict[str, Any]
"""A backend as `ls --json` shows it: a wire.BackendStatus record plus memory_bytes and processes."""

PER_BACKEND: list[tuple[str, str, str, Callable[[Backend], float]]] = [
    (
        "mcpsingleton_backend_up",
        "gauge",
        "1 when the backend is running and initialized.",
        lambda b: 1.0 if b.get("state") in UP_STATES else 0.0,
    ),
    ("mcpsingleton_sessions", "gauge", "Client sessions attached to the backend.", lambda b: len(b.get("clients", []))),
    (
        "mcpsingleton_backend_memory_bytes",
        "gauge",
        "PSS (else RSS) of the backend's whole process tree.",
        lambda b: b.get("memory_bytes", 0),
    ),
    ("mcpsingleton_backend_processes", "gauge", "Processes in the backend's tree.", lambda b: b.get("processes", 0)),
    (
        "mcpsingleton_backend_restarts_total",
        "counter",
        "Backend restarts, `restart` handovers to a new broker included.",
        lambda b: b.get("restarts", 0),
    ),
    ("mcpsingleton_requests_total", "counter", "Requests received from sessions.", lambda b: b.get("requests", 0)),
    ("mcpsingleton_errors_total", "counter", "Error replies sent to sessions.", lambda b: b.get("errors", 0)),
    (
        "mcpsingleton_dropped_lines_total",
        "counter",
        "Lines dropped by the multiplexer (unusable backend output, unknown ids).",
        lambda b: b.get("dropped", 0),
    ),
    (
        "mcpsingleton_rejected_lines_total",
        "counter",
        "Session lines refused as malformed (answered -32700/-32600 to that session only).",
        lambda b: b.get("rejected", 0),
    ),
    (
        "mcpsingleton_internal_errors_total",
        "counter",
        "Inputs whose handling raised (answered -32603, logged): each one is a bug.",
        lambda b: b.get("internal_errors", 0),
    ),
    (
        "mcpsingleton_backend_write_failures_total",
        "counter",
        "Times the backend stopped reading its stdin (each ended in a restart).",
        lambda b: b.get("backend_write_failures", 0),
    ),
    (
        "mcpsingleton_spawn_failures_total",
        "counter",
        "Times the backend could not be spawned.",
        lambda b: b.get("spawn_failures", 0),
    ),
    (
        "mcpsingleton_backpressure_pauses_total",
        "counter",
        "Times the sessions were paused because the backend left too much input unread.",
        lambda b: b.get("backpressure_pauses", 0),
    ),
    (
        "mcpsingleton_stderr_dropped_bytes_total",
        "counter",
        "Bytes of an isolated backend's stderr its session was not reading in time, not copied to it.",
        lambda b: b.get("stderr_dropped", 0),
    ),
    (
        "mcpsingleton_budget_refusals_total",
        "counter",
        "Backend starts the [budget] refused (the requests that needed the backend got an error).",
        lambda b: b.get("budget_refusals", 0),
    ),
    (
        "mcpsingleton_sessions_refused_total",
        "counter",
        "Sessions refused because the broker was out of file descriptors.",
        lambda b: b.get("sessions_refused", 0),
    ),
]


BUDGET_GAUGES: list[tuple[str, str, str]] = [
    ("mcpsingleton_budget_max_backends", "max_backends", "The [budget]'s max_backends (set only when configured)."),
    ("mcpsingleton_budget_backends", "backends", "Backends running under the broker, as the [budget] counts them."),
    ("mcpsingleton_budget_max_memory_bytes", "max_memory_bytes", "The [budget]'s max_memory (when configured)."),
    (
        "mcpsingleton_budget_memory_bytes",
        "memory_bytes",
        "PSS of every backend's tree, as the [budget]'s max_memory compares it (only when that is set).",
    ),
]
"""The user's [budget], limit and used, one sample per broker that has one (labelled by its pid)."""


def broker_budgets(backends: list[Backend]) -> dict[int, dict[str, int | None]]:
    """Each broker's [budget] report (`budget` in its records, measured by the broker), by broker pid."""
    found: dict[int, dict[str, int | None]] = {}
    for backend in backends:
        if isinstance(backend.get("budget"), dict):
            found.setdefault(backend.get("broker_pid", 0), backend["budget"])
    return found


def _budget_lines(backends: list[Backend]) -> list[str]:
    budgets = broker_budgets(backends)
    lines: list[str] = []
    for name, field, help_text in BUDGET_GAUGES:
        samples = [
            f'{name}{{broker_pid="{pid}"}} {_number(value)}'
            for pid, budget in budgets.items()
            if (value := budget.get(field)) is not None
        ]
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples] if samples else []
    return lines


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def render(backends: list[Backend]) -> str:
    lines = [
        "# HELP mcpsingleton_backends Shared backends (brokers) running.",
        "# TYPE mcpsingleton_backends gauge",
        f"mcpsingleton_backends {len(backends)}",
    ]
    for name, kind, help_text, value in PER_BACKEND:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for backend in backends:
            labels = f'name="{_label(backend.get("name"))}",key="{_label(backend.get("key"))}"'
            labels += f',slot="{_label(backend.get("slot", 1))}"'
            lines.append(f"{name}{{{labels}}} {_number(value(backend))}")
    lines += _budget_lines(backends)
    lines += [
        "# HELP mcpsingleton_orphans_reaped_total Orphaned MCP servers killed by `mcpsingleton reap`.",
        "# TYPE mcpsingleton_orphans_reaped_total counter",
        f"mcpsingleton_orphans_reaped_total {reaped_total()}",
    ]
    return "\n".join(lines) + "\n"
