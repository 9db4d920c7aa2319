"""Client side of the brokers' control socket: find brokers, ask their live status, stop them."""

from __future__ import annotations

import glob
import json
import os
import socket
from typing import Any

from .keys import PROTOCOL, KeyPaths, runtime_dir

TIMEOUT = 2.0


def ask(paths: KeyPaths, command: str, timeout: float = TIMEOUT) -> bytes | None:
    """Send one control command; the broker's whole reply, or None when nobody answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(paths.sock)
            conn.sendall(f"MCPS{PROTOCOL} {command}\n".encode())
            chunks = []
            while chunk := conn.recv(1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
    except OSError:
        return None


def state_files(directory: str | None = None) -> list[dict[str, Any]]:
    """Every broker state file in the runtime dir (live or stale), parsed."""
    found = []
    for path in sorted(glob.glob(os.path.join(directory or runtime_dir(), "*.json"))):
        try:
            with open(path) as handle:
                state = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and isinstance(state.get("key"), str):
            state["state_file"] = path
            found.append(state)
    return found


def live_status(state: dict[str, Any]) -> dict[str, Any] | None:
    """The broker's own account of itself, or None when it does not answer."""
    reply = ask(KeyPaths(state["key"], os.path.dirname(state["state_file"])), "status")
    if not reply:
        return None
    try:
        status = json.loads(reply)
    except ValueError:
        return None
    return status if isinstance(status, dict) else None


def running_brokers() -> list[dict[str, Any]]:
    """Live status of every broker that answers."""
    return [status for state in state_files() if (status := live_status(state)) is not None]


def matches(status: dict[str, Any], target: str) -> bool:
    """`stop`/`logs` accept a name or a key (or a unique key prefix)."""
    return target in (status.get("name"), status.get("key")) or (
        len(target) >= 6 and str(status.get("key", "")).startswith(target)
    )


def stop(status: dict[str, Any]) -> bool:
    paths = KeyPaths(status["key"])
    return ask(paths, "stop") == b"ok\n"
