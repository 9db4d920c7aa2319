"""The discovery cache on disk: one file per key holding what its server said about itself last time.

A file holds the server's InitializeResult and its first-page list results (tools, prompts,
resources, resource templates): what mux/discovery.py serves to a session while the backend starts.
It lives in the state dir (it should survive a reboot), 0600 in a 0700 dir, written atomically. The
file is named by the key, which already hashes the command and the env that must match; the env
itself is never written, and an entry that happens to contain the value of a secret-looking
variable (a server echoing its token in a description) is not written at all.

An isolated key is cached too, so that its sessions need no backend until they call a tool. Its
discovery might depend on the session, so only what its backends said to the broker's own initialize
and lists is stored (mux/discovery.py: `own_lists_only`), never a session's list results; the next
isolated session of the same key (same command, same env that matters) is served that entry.
"""

from __future__ import annotations

import json
import os

from ..common.atomic import write_atomically
from ..common.errors import SetupError
from ..common.paths import ensure_private_dir, state_dir
from ..shim.keys import is_secret_name

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

FORMAT = 1
"""Bumped when the file's shape changes; a file of another format is ignored (and replaced)."""
MIN_SECRET_LENGTH = 6
"""Shorter env values (`1`, `true`, a port) are too common to say anything when found in a result."""


def entry_key(spec: dict[str, Any]) -> str:
    """Whose entry this broker reads and writes: its key, or for an isolated key (one per session) the key
    the same command, env and directory would have if shared (election.discovery_key)."""
    return spec.get("discovery_key") or spec["key"]


def path_for(key: str) -> str:
    return os.path.join(state_dir(), "discovery", f"{key}.json")


def checked_path_for(key: str) -> str:
    """`path_for`, once its dir is checked to be ours and private: a planted entry would reach the model."""
    path = path_for(key)
    ensure_private_dir(os.path.dirname(path))
    return path


def load(spec: dict[str, Any]) -> dict[str, Any]:
    """The entry for the mux: {} when nothing usable is stored."""
    try:
        with open(checked_path_for(entry_key(spec)), encoding="utf-8") as handle:
            stored = json.load(handle)
    except (OSError, ValueError, SetupError, RecursionError):  # SetupError: `store` says why in the log;
        # RecursionError: a file nested too deeply (not one we wrote) reads as none
        return {}
    if not isinstance(stored, dict) or stored.get("format") != FORMAT or stored.get("key") != entry_key(spec):
        return {}
    entry = stored.get("entry")
    return entry if isinstance(entry, dict) else {}


def store(spec: dict[str, Any], entry: dict[str, Any] | None) -> str:
    """Write (or, for None, remove) the key's entry; the line for the broker's log."""
    try:
        path = checked_path_for(entry_key(spec))
    except SetupError as exc:
        return f"discovery: not cached: {exc}"
    refusal = _refusal(spec, entry) if entry is not None else None
    if entry is None or refusal is not None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            return f"discovery: cannot remove {path}: {exc.strerror}"
        return refusal or "discovery: cache entry removed"
    text = json.dumps({"format": FORMAT, "key": entry_key(spec), "entry": entry}, separators=(",", ":"))
    try:
        write_atomically(path, text.encode("utf-8"))
    except OSError as exc:
        return f"discovery: cannot write {path}: {exc.strerror}; sessions wait for the backend next time"
    return f"discovery: cached what the server said about itself ({len(text)} bytes)"


def _refusal(spec: dict[str, Any], entry: dict[str, Any]) -> str | None:
    """Why this entry must not be written, or None: a secret value inside, or nesting too deep to write."""
    try:
        text = json.dumps(entry, ensure_ascii=False)
    except (RecursionError, ValueError, TypeError) as exc:  # the mux caches only what it can write; belt and braces
        return f"discovery: not cached: the entry cannot be written ({type(exc).__name__})"
    for name, value in spec.get("env", {}).items():
        if is_secret_name(name) and len(value) >= MIN_SECRET_LENGTH and value in text:
            return f"discovery: not cached: it contains the value of ${name}"
    return None
