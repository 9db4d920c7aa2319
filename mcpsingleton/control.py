"""Client side of the brokers' control socket: find brokers, ask their live status, stop or restart them."""

from __future__ import annotations

import glob
import json
import os
import socket
from typing import Any

from . import wire
from .keys import KeyPaths, default_runtime_dir, ensure_private_dir, home_override, is_private_and_ours, runtime_dir
from .wire import BackendStatus

TIMEOUT = 2.0


def ask(paths: KeyPaths, command: str, timeout: float = TIMEOUT) -> bytes | None:
    """Send one control command; the broker's whole reply, or None when nobody answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(paths.sock)
            conn.sendall(wire.hello(command))
            chunks = []
            while chunk := conn.recv(1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
    except OSError:
        return None


def state_files(directory: str | None = None) -> list[dict[str, Any]]:
    """Every broker state file in the runtime dir (live or stale), parsed.

    The runtime dir is checked (and made) as `run` does, so a home no session can use is the same one
    line for every command as for `run`, never an empty listing."""
    found = []
    for path in sorted(glob.glob(os.path.join(directory or ensure_private_dir(runtime_dir()), "*.json"))):
        try:
            with open(path) as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and isinstance(state.get("key"), str):
            state["state_file"] = path
            found.append(state)
    return found


def live_status(state: dict[str, Any]) -> list[BackendStatus] | None:
    """The broker's own account of its backends, or None when it does not answer."""
    reply = ask(KeyPaths(state["key"], os.path.dirname(state["state_file"])), wire.STATUS)
    return wire.decode_status(reply) if reply else None


def running_backends(directory: str | None = None) -> list[BackendStatus]:
    """Live status of every backend of every broker (in `directory`, else the runtime dir) that answers."""
    return [record for state in state_files(directory) for record in live_status(state) or []]


def stripped_home_dir() -> str | None:
    """Where the sessions of clients that do not pass MCPSINGLETON_HOME on (Codex, Gemini CLI) run while it
    is set here: the default runtime dir, when it exists (ours and private); None without MCPSINGLETON_HOME."""
    if not home_override():
        return None
    directory = default_runtime_dir()
    return directory if directory != runtime_dir() and is_private_and_ours(directory) else None


def matches(status: dict[str, Any] | BackendStatus, target: str) -> bool:
    """`stop`/`logs` accept a name or a key (or a unique key prefix)."""
    name: object
    key: object
    if isinstance(status, BackendStatus):
        name, key = status.name, status.key
    else:
        name, key = status.get("name"), status.get("key")
    return target in (name, key) or (len(target) >= 6 and str(key or "").startswith(target))


def stop(key: str, directory: str | None = None) -> bool:
    return ask(KeyPaths(key, directory), wire.STOP) == wire.WELCOME


def restart(key: str, directory: str | None = None) -> bool:
    """Ask a broker to hand its sessions over to the next one; False when it does not answer (or is too old)."""
    return ask(KeyPaths(key, directory), wire.RESTART) == wire.WELCOME
