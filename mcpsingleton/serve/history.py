"""History: totals over time and what happened (alerts, actions), in SQLite under the state dir.

It survives restarts of `serve`; rows older than `RETENTION` go. One row per `RECORD_EVERY` seconds keeps a
week at ~20k rows; a range is read back averaged into at most `POINTS` buckets, so the page draws the same
number of points for an hour as for a week.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from ..common.paths import ensure_private_dir, state_dir

RECORD_EVERY = 30.0
RETENTION = 8 * 86400.0
POINTS = 120
RANGES = {"hour": 3600.0, "day": 86400.0, "week": 7 * 86400.0}
SERIES = ("memory_bytes", "processes", "sessions", "saved_bytes")
EVENTS_SHOWN = 50

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (at REAL NOT NULL, backends INTEGER, sessions INTEGER, processes INTEGER,
                                    memory_bytes INTEGER, saved_bytes INTEGER);
CREATE INDEX IF NOT EXISTS samples_at ON samples (at);
CREATE TABLE IF NOT EXISTS events (at REAL NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
"""


def default_path() -> str:
    """In a private dir of its own: the state dir itself may be 0755 (made as the parent of another dir)."""
    return os.path.join(ensure_private_dir(os.path.join(state_dir(), "serve")), "history.sqlite3")


class History:
    """Used from the event loop's thread only: each statement takes well under a millisecond."""

    def __init__(self, path: str | None = None, retention: float = RETENTION) -> None:
        self.path = path or default_path()
        self.retention = retention
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # private before sqlite opens it
        os.close(fd)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.executescript(SCHEMA)
        self._last_record = 0.0

    def record(self, totals: dict[str, Any], now: float | None = None) -> bool:
        """Keep one row per RECORD_EVERY seconds (and prune what is past retention); True when it wrote."""
        now = time.time() if now is None else now
        if now - self._last_record < RECORD_EVERY:
            return False
        self._last_record = now
        row = [now, *(int(totals.get(name, 0)) for name in ("backends", "sessions", "processes"))]
        row += [int(totals.get("memory_bytes", 0)), int(totals.get("saved_bytes", 0))]
        self.db.execute("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?)", row)
        self.db.execute("DELETE FROM samples WHERE at < ?", (now - self.retention,))
        self.db.execute("DELETE FROM events WHERE at < ?", (now - self.retention,))
        return True

    def event(self, kind: str, text: str, now: float | None = None) -> None:
        self.db.execute("INSERT INTO events VALUES (?, ?, ?)", (time.time() if now is None else now, kind, text))

    def series(self, name: str, now: float | None = None) -> dict[str, Any]:
        """The totals over one range ("hour", "day", "week"), averaged into at most POINTS buckets."""
        now = time.time() if now is None else now
        span = RANGES.get(name, RANGES["hour"])
        bucket = span / POINTS
        columns = ", ".join(f"AVG({column})" for column in SERIES)
        rows = self.db.execute(
            f"SELECT MIN(at), {columns} FROM samples WHERE at >= ? GROUP BY CAST(at / ? AS INTEGER) ORDER BY 1",
            (now - span, bucket),
        ).fetchall()
        points = [{"at": row[0], **{column: round(row[i + 1]) for i, column in enumerate(SERIES)}} for row in rows]
        return {"range": name if name in RANGES else "hour", "from": now - span, "to": now, "points": points}

    def events(self, limit: int = EVENTS_SHOWN) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT at, kind, text FROM events ORDER BY at DESC LIMIT ?", (limit,)).fetchall()
        return [{"at": at, "kind": kind, "text": text} for at, kind, text in rows]

    def close(self) -> None:
        self.db.close()
