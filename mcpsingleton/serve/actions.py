"""What the page may change: stop or restart a server, reap orphans. The same calls as the CLI's commands.

Each one blocks (a stop waits for the broker to exit, as `mcpsingleton stop` does): the app runs them in
a worker thread.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

from ..ops import control
from ..ops.reaper import run_reap

ORDERLY_STOP_SECONDS = 10.0


class NotFound(LookupError):
    pass


def act_on_server(target: str, verb: str) -> list[dict[str, Any]]:
    """`stop` or `restart` the servers matching NAME or KEY (a server with several backends is asked once).

    Returns who was asked and whether they ended in time; raises NotFound when nothing matches."""
    chosen = [(state, record) for state, record in control.live_records() if control.matches(record, target)]
    if not chosen:
        raise NotFound(target)
    servers = {record.key: (state, record.name, record.broker_pid) for state, record in chosen}
    answered = {key: control.command(state, verb, key) for key, (state, _, _) in servers.items()}
    deadline = time.monotonic() + ORDERLY_STOP_SECONDS
    pending = {key for key, ok in answered.items() if ok}
    while pending and time.monotonic() < deadline:
        pending = {key for key in pending if control.still_hosted(key, servers[key][2])}
        time.sleep(0.05)
    return [
        {"key": key, "name": name, "answered": answered[key], "ended": answered[key] and key not in pending}
        for key, (_, name, _) in servers.items()
    ]


def reap(confirm: bool) -> list[dict[str, Any]]:
    """Without `confirm`, what `reap --dry-run` would do; with it, do it (the user saw the dry run and said yes,
    so suspects this OS cannot prove orphaned are included, as `reap --yes` does)."""
    out = io.StringIO()
    run_reap(dry_run=not confirm, as_json=True, confirm=True, out=out)
    return json.loads(out.getvalue() or "[]")  # commands masked by `reap` itself, as `ls` masks them
