"""The text wrap added besides its args prefix, so unwrap removes exactly that and never what the user wrote.

Wrapping an entry without `args` must add one, and the wrapped text cannot show whether `args` was
absent or `[]`; likewise the MCPSINGLETON_HOME wrap adds to the env of clients that filter the
environment. Each record is (config file, entry path, the exact text inserted). Unwrap deletes that text
where it is still there unchanged; where a client rewrote the file (reformatted it), the record still
says what wrap added, and unwrap removes that member instead. A lost record costs only byte-identity:
the entry comes back with `args: []` (which every client reads as no arguments), or keeps the variable.

One file serves every config, and two `wrap` runs may update it at once: each change is a
read-modify-write under an exclusive lock, so neither run's records are lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator

from mcpsingleton.common.paths import state_dir
from mcpsingleton.ops.configs.entries import ConfigError
from mcpsingleton.ops.configs.files import write_atomically

Record = tuple[str, tuple[str, ...], str]


def records_path() -> str:
    """Beside the rest of mcpsingleton's state."""
    return os.path.join(state_dir(), "wrapped-args.json")


class InsertedArgs:
    """The set of records, read afresh for every question and every change (another run may have changed it)."""

    def __init__(self) -> None:
        self.path = records_path()

    def texts(self, config: str, entry: tuple[str, ...]) -> frozenset[str]:
        """What wrap inserted at `entry` of `config` (and has not been taken out since)."""
        return frozenset(text for file, path, text in self._read() if (file, path) == (config, entry))

    def add(self, config: str, inserted: list[tuple[tuple[str, ...], str]]) -> None:
        if inserted:
            with self._locked():
                self._write(self._read() | {(config, entry, text) for entry, text in inserted})

    def remove(self, config: str, removed: list[tuple[tuple[str, ...], str]]) -> None:
        if removed:
            with self._locked():
                self._write(self._read() - {(config, entry, text) for entry, text in removed})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the records' lock file (beside them; the records file itself is replaced by rename)."""
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot create {self.path}.lock ({exc.strerror}); check HOME") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> set[Record]:
        try:
            with open(self.path, encoding="utf-8") as file:
                rows = json.load(file)["records"]
            return {(row["file"], tuple(row["entry"]), row["text"]) for row in rows}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"cannot read {self.path} ({exc}); delete it (unwrap then leaves an empty args)"
            ) from exc

    def _write(self, records: set[Record]) -> None:
        rows = [{"file": file, "entry": list(entry), "text": text} for file, entry, text in sorted(records)]
        write_atomically(self.path, json.dumps({"version": 1, "records": rows}, indent=1).encode("utf-8"))
