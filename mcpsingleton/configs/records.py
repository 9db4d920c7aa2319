"""The text wrap added besides its args prefix, so unwrap removes exactly that and never what the user wrote.

Wrapping an entry without `args` must add one, and the wrapped text cannot show whether `args` was
absent or `[]`; likewise the MCPSINGLETON_HOME wrap adds to the env of clients that filter the
environment. Each record is (config file, entry path, the exact text inserted); unwrap deletes the
text only while that exact text is still there. A lost record costs only byte-identity: the entry
comes back with `args: []` (which every client reads as no arguments), or keeps the variable.
"""

from __future__ import annotations

import json
import os

from mcpsingleton.configs.entries import ConfigError
from mcpsingleton.configs.files import write_atomically
from mcpsingleton.keys import state_dir

Record = tuple[str, tuple[str, ...], str]


def records_path() -> str:
    """Beside the rest of mcpsingleton's state."""
    return os.path.join(state_dir(), "wrapped-args.json")


class InsertedArgs:
    """The set of records, read on first use and written back whenever it changes."""

    def __init__(self) -> None:
        self.path = records_path()
        self._records: set[Record] | None = None

    def texts(self, config: str, entry: tuple[str, ...]) -> frozenset[str]:
        """What wrap inserted at `entry` of `config` (and has not been taken out since)."""
        return frozenset(text for file, path, text in self._load() if (file, path) == (config, entry))

    def add(self, config: str, inserted: list[tuple[tuple[str, ...], str]]) -> None:
        if inserted:
            self._save(self._load() | {(config, entry, text) for entry, text in inserted})

    def remove(self, config: str, removed: list[tuple[tuple[str, ...], str]]) -> None:
        if removed:
            self._save(self._load() - {(config, entry, text) for entry, text in removed})

    def _load(self) -> set[Record]:
        if self._records is None:
            try:
                with open(self.path, encoding="utf-8") as file:
                    rows = json.load(file)["records"]
                self._records = {(row["file"], tuple(row["entry"]), row["text"]) for row in rows}
            except FileNotFoundError:
                self._records = set()
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(
                    f"cannot read {self.path} ({exc}); delete it (unwrap then leaves an empty args)"
                ) from exc
        return self._records

    def _save(self, records: set[Record]) -> None:
        rows = [{"file": file, "entry": list(entry), "text": text} for file, entry, text in sorted(records)]
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {os.path.dirname(self.path)} ({exc.strerror}); check HOME") from exc
        write_atomically(self.path, json.dumps({"version": 1, "records": rows}, indent=1).encode("utf-8"))
        self._records = records
