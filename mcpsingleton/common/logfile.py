"""The broker's log: one file per key, size-capped with one rotation, never a reason to crash.

A full disk or an unwritable file drops log lines (and counts them); it never stops a session.
"""

from __future__ import annotations

import os
import time

MAX_BYTES = 4 * 1024 * 1024
MAX_LINE = 4096
START_LINE_WITHIN = 3
"""The broker's start line is among a log's first lines (`logs NAME` and `reap` look for it there)."""


def utc_iso(seconds: float | None = None) -> str:
    """`2026-12-07T06:55:00+00:00` (datetime's isoformat to the second) for `seconds` since the epoch, else now:
    the broker's timestamps without importing datetime (~70 KiB of every broker's PSS)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(seconds))


class LogFile:
    def __init__(self, path: str, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.dropped = 0
        self._fd = -1
        self._size = 0
        self._open()

    def _open(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            self._size = os.fstat(self._fd).st_size
        except OSError:
            self._fd = -1

    def fileno(self) -> int:
        return self._fd

    def write(self, text: str) -> None:
        """One timestamped line; secrets must never be passed here."""
        if len(text) > MAX_LINE:
            text = text[:MAX_LINE] + f"… ({len(text) - MAX_LINE} more chars)"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
        data = f"{stamp} {text}\n".encode("utf-8", "replace")
        if self._fd < 0:
            self._open()
            if self._fd < 0:
                self.dropped += 1
                return
        if self._size + len(data) > self.max_bytes:
            self._rotate()
        try:
            os.write(self._fd, data)
            self._size += len(data)
        except OSError:
            self.dropped += 1

    def _rotate(self) -> None:
        try:
            os.replace(self.path, self.path + ".1")
        except OSError:
            pass
        self.close()
        self._open()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
