"""A broker's log, live, for the page: the last lines, then each new one; secrets masked as `ls` masks them.

The log rotates (logfile.py: one `.1` generation): a file that shrank or was replaced is reopened from its
start. Polling the file's size twice a second costs nothing next to a stream of lines.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator

from ..shim.keys import redacted_argv

TAIL_BYTES = 64 * 1024
TAIL_LINES = 200
POLL = 0.5
_SPACES = re.compile(r"(\s+)")


def mask(line: str) -> str:
    """Each word as `ls` shows a command's: `TOKEN=…`, `--api-key …`, `--token=…` values become `***`."""
    parts = _SPACES.split(line)
    words = parts[::2]
    shown = redacted_argv(words)
    parts[::2] = shown
    return "".join(parts)


def last_lines(path: str, count: int = TAIL_LINES) -> tuple[list[str], int, int]:
    """The last `count` complete lines (masked), the offset read up to, and the file's inode."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        start = max(0, size - TAIL_BYTES)
        handle.seek(start)
        data = handle.read(size - start)
        inode = os.fstat(handle.fileno()).st_ino
    end = data.rfind(b"\n") + 1
    lines = data[:end].decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first one is cut
    return [mask(line) for line in lines[-count:]], start + end, inode


async def follow(path: str, poll: float = POLL) -> AsyncIterator[list[str]]:
    """Batches of masked lines: the tail first, then whatever is appended, until the caller stops."""
    lines, offset, inode = await asyncio.to_thread(last_lines, path)
    yield lines
    while True:
        await asyncio.sleep(poll)
        try:
            info = os.stat(path)
        except OSError:
            continue  # between the rotation's rename and the broker's reopen
        if info.st_ino != inode or info.st_size < offset:
            inode, offset = info.st_ino, 0
        if info.st_size == offset:
            continue
        fresh, offset = await asyncio.to_thread(_read_from, path, offset)
        if fresh:
            yield fresh


def _read_from(path: str, offset: int) -> tuple[list[str], int]:
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(TAIL_BYTES)
    end = data.rfind(b"\n") + 1
    return [mask(line) for line in data[:end].decode("utf-8", "replace").splitlines()], offset + end
