"""Reading a config file and replacing it safely: one backup beside it, an atomic rename, its mode kept.

A config that is a symlink (dotfile managers) is written through: the link stays, its target changes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from mcpsingleton.common import atomic
from mcpsingleton.ops.configs.entries import ConfigError

BACKUP_MARK = ".mcpsingleton-backup"
"""The one backup of a config beside it: the file as it was before mcpsingleton last changed it. One, not
one per run: every wrap/unwrap pair would otherwise leave two more files in the user's config dir."""


@dataclass(frozen=True)
class Original:
    """A config file as read: where it really is, its bytes, and its mode and owner to keep."""

    real: str
    raw: bytes
    info: os.stat_result


def read(path: str) -> tuple[Original, str]:
    """The file and its text; ConfigError when it cannot be read or is not UTF-8."""
    real = os.path.realpath(path)
    try:
        with open(real, "rb") as file:
            raw, info = file.read(), os.fstat(file.fileno())
    except OSError as exc:
        raise ConfigError(f"cannot read it ({exc.strerror}); check that it exists and is readable") from exc
    try:
        return Original(real, raw, info), raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start}); save it as UTF-8 and run again") from exc


def backup(original: Original) -> str:
    """Put the original bytes (mode and owner kept) in `<file>.mcpsingleton-backup`, replacing the last one."""
    name = original.real + BACKUP_MARK
    write_atomically(name, original.raw, original.info)
    return name


def replace(original: Original, text: str) -> None:
    """Atomically put `text` in place of the file, unless someone changed the file since we read it."""
    try:
        with open(original.real, "rb") as file:
            unchanged = file.read() == original.raw
    except OSError as exc:
        raise _unwritable(original.real, exc) from exc
    if not unchanged:
        raise ConfigError("it changed while mcpsingleton was editing it; run the command again")
    write_atomically(original.real, text.encode("utf-8"), original.info)


def write_atomically(path: str, data: bytes, like: os.stat_result | None = None) -> None:
    """Write a temp file in the same directory and rename it over `path`: readers see old or new, never half.

    The new file gets the mode (and, where allowed, the owner) of `like`; without it, mode 0600.
    """
    owner = (like.st_uid, like.st_gid) if like is not None else None
    mode = stat.S_IMODE(like.st_mode) if like is not None else 0o600
    try:
        atomic.write_atomically(path, data, mode, owner, durable=True)
    except OSError as exc:
        raise _unwritable(path, exc) from exc


def _unwritable(path: str, exc: OSError) -> ConfigError:
    return ConfigError(f"cannot write {path} ({exc.strerror}); check the permissions of its directory")
