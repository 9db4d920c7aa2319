"""What `ls` shows: every broker's backends with their trees' memory, as a table fitted to the terminal
or as the `ls --json` array (the fields are a contract: docs/ARCHITECTURE.md, "Status record"), and with
`--all` the MCP servers mcpsingleton did not start. `explain` shares its account of the env rule.
"""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from typing import Any

import click

from ..common import processes
from ..shim.keys import reads_client_environ
from . import control, table

STRIPPED_HOME = "started by clients that do not pass MCPSINGLETON_HOME on"
"""Why a broker runs under the default location while MCPSINGLETON_HOME is set here (see control.stripped_home_dir)."""


def _with_memory(record: control.BackendStatus, parents: dict[int, int]) -> dict[str, Any]:
    """A broker's record as `ls --json` prints it: with the memory and process count of the backend's tree."""
    from ..common.proctree import tree_memory, tree_process_count

    entry = record.to_json()
    backend_pid = record.backend_pid
    entry["memory_bytes"] = tree_memory(backend_pid, parents) if backend_pid else 0
    entry["processes"] = tree_process_count(backend_pid, parents) if backend_pid else 0
    entry["managed"] = True
    return entry


def human_bytes(count: int) -> str:
    """1536 -> `1.5 KiB`: how `ls`, the dashboard's alerts and budgets show sizes."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _uptime(started_at: str) -> str:
    try:
        seconds = int((datetime.now(UTC) - datetime.fromisoformat(started_at)).total_seconds())
    except (TypeError, ValueError):
        return "?"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _sessions_cell(clients: list[dict[str, Any]]) -> str:
    names: dict[str, int] = {}
    for client in clients:
        label = client.get("client") or "?"
        names[label] = names.get(label, 0) + 1
    detail = ", ".join(f"{label}×{count}" if count > 1 else label for label, count in names.items())
    return f"{len(clients)}" + (f" ({detail})" if detail else "")


def render_table(backends: list[dict[str, Any]], width: int | None = None) -> str:
    """The `ls` table within `width` columns: the policy cut first, then the sessions' and the servers' names;
    on a narrow terminal the key, uptime, backend pid and scope are left out (`ls --json` has them all)."""
    from .metrics import broker_budgets

    header = ["NAME", "SCOPE", "SHARING", "STATE", "SESSIONS", "BACKEND", "MEMORY", "UPTIME", "RESTARTS", "KEY"]
    header.append("POLICY")
    rows = [header] + [
        [
            str(b.get("name")),
            str(b.get("scope")),
            str(b.get("sharing")),
            str(b.get("state")),
            _sessions_cell(b.get("clients", [])),
            str(b.get("backend_pid") or "-"),
            human_bytes(b.get("memory_bytes", 0)),
            _uptime(b.get("started_at", "")),
            str(b.get("restarts", 0)),
            str(b.get("key", ""))[:12],
            str(b.get("policy", "")),
        ]
        for b in backends
    ]
    lines = table.render(rows, width, ("POLICY", "SESSIONS", "NAME", "SHARING"), ("KEY", "UPTIME", "BACKEND", "SCOPE"))
    lines += [budget_line(budget) for budget in broker_budgets(backends).values()]
    errors = sorted({str(b["config_error"]) for b in backends if b.get("config_error")})
    notes = [f"config.toml was ignored when deciding: {error}" for error in errors]
    if backends and processes.memory_measure() == "RSS":
        notes.append("MEMORY is RSS: shared pages count in each process (no PSS on this OS)")
    return "\n".join(lines + notes)


def budget_line(budget: dict[str, int | None]) -> str:
    """`budget: 3 of 8 backends, 1.2 GiB of 4.0 GiB`: the broker's own count and measure (`budget` records)."""
    backends, max_backends = budget.get("backends") or 0, budget.get("max_backends")
    count = f"{backends} of {max_backends} backends" if max_backends else f"{backends} backend" + "s" * (backends != 1)
    parts = [count]
    memory, max_memory = budget.get("memory_bytes"), budget.get("max_memory_bytes")
    if memory is not None and max_memory:
        parts.append(f"{human_bytes(memory)} of {human_bytes(max_memory)}")
    return "budget: " + ", ".join(parts)


def _unmanaged_lines(groups: list[dict[str, Any]]) -> list[str]:
    if not groups:
        return ["No unmanaged MCP servers found."]
    lines = ["", "Unmanaged MCP servers (not started by mcpsingleton):"]
    for group in groups:
        command = " ".join(group["command"]) if isinstance(group["command"], list) else group["command"]
        lines.append(f"  {group['count']}× {command}  {human_bytes(group['memory_bytes'])}")
    savable = sum(group.get("savable_bytes", 0) for group in groups)
    lines.append(f"Sharing them through `mcpsingleton run` would save about {human_bytes(savable)}.")
    return lines


def collect(include_unmanaged: bool, directory: str | None = None) -> list[dict[str, Any]]:
    """The backends of the brokers in `directory` (else the runtime dir), and with `include_unmanaged` the
    MCP servers mcpsingleton did not start."""
    from ..common.proctree import parent_map

    parents = parent_map()  # one process snapshot for every backend's tree
    backends = [_with_memory(record, parents) for record in control.running_backends(directory)]
    if include_unmanaged:
        from .unmanaged import find_unmanaged_servers

        backends += find_unmanaged_servers()
    return backends


def render_ls(as_json: bool, include_unmanaged: bool) -> str:
    entries = collect(include_unmanaged)
    elsewhere = control.stripped_home_dir()
    others = collect(False, elsewhere) if elsewhere else []
    if as_json:
        if others:
            note = more_elsewhere(others, elsewhere)
            click.echo(f"mcpsingleton: {note}; unset MCPSINGLETON_HOME to list them", err=True)
        return json.dumps(entries, indent=2)
    managed = [e for e in entries if e.get("managed")]
    width = table.terminal_width()
    text = render_table(managed, width) if managed else "No shared backends are running."
    if others:
        text += f"\n\nAlso running under {elsewhere}, {STRIPPED_HOME}:\n" + render_table(others, width)
    if managed and env_rule() == "secrets":
        text += "\n" + (textwrap.fill(WEAKER_ENV_RULE, width) if width else WEAKER_ENV_RULE)
    if include_unmanaged:
        text += "\n" + "\n".join(_unmanaged_lines([e for e in entries if not e.get("managed")]))
    return text


def more_elsewhere(others: list[Any], elsewhere: str | None) -> str:
    return f"{len(others)} more backend(s) run under {elsewhere}, {STRIPPED_HOME}"


WEAKER_ENV_RULE = (
    "warning: the client's environment cannot be read on this system, so configs differing only in a variable"
    " that is not secret-named (e.g. DATABASE_URL) share a backend; add --env-key VAR to keep them apart"
)


def env_rule() -> str:
    """Which variables separate keys here: `full` (config-set ones count) or `secrets` (client env unreadable)."""
    return "full" if reads_client_environ() else "secrets"
