"""One `serve` per user (per runtime dir): a lock held for its life, and its URL in a 0600 file beside it.

`dashboard` reads the file to open the running one; the lock proves whether the file is current (a
`serve` killed by SIGKILL leaves a file but frees the lock). The URL carries the token, so the file is
private, in the private runtime dir, and removed at exit.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from ..common.atomic import write_atomically
from ..common.paths import ensure_private_dir, runtime_dir
from ..shim.election import try_lock


def lock_path() -> str:
    return os.path.join(ensure_private_dir(runtime_dir()), "serve.lock")


def record_path() -> str:
    return os.path.join(ensure_private_dir(runtime_dir()), "serve.url.json")


def running() -> dict[str, Any] | None:
    """The running serve's record ({pid, url, port, host}), or None when none runs."""
    fd = try_lock(lock_path())
    if fd is not None:  # nobody holds it: nothing runs, whatever the file says
        os.close(fd)
        return None
    try:
        with open(record_path()) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None  # starting: locked, not yet written
    return record if isinstance(record, dict) and isinstance(record.get("url"), str) else None


class AlreadyRunning(Exception):
    def __init__(self, record: dict[str, Any] | None) -> None:
        super().__init__("serve already runs")
        self.record = record


@contextlib.contextmanager
def hold() -> Iterator[None]:
    """Be the one serve; raises AlreadyRunning otherwise. The record is removed on the way out."""
    fd = try_lock(lock_path())
    if fd is None:
        raise AlreadyRunning(running())
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(record_path())
        os.close(fd)


def publish(url: str, host: str, port: int) -> None:
    data = json.dumps({"pid": os.getpid(), "url": url, "host": host, "port": port}).encode()
    write_atomically(record_path(), data, mode=0o600)
