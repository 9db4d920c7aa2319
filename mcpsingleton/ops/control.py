"""Client side of the brokers' control socket: find brokers, ask their live status, stop or restart them.

A broker is found by its state file in the runtime dir: `broker.json` for the user's one broker (protocol 2,
every server inside), `<key>.json` for a per-key broker of the previous version (protocol 1: the upgrade path).
Each is asked in its own protocol.
"""

from __future__ import annotations

import glob
import json
import os
import socket
from typing import Any

from ..common import wire
from ..common.paths import (
    BROKER,
    KeyPaths,
    default_runtime_dir,
    ensure_private_dir,
    home_override,
    is_private_and_ours,
    runtime_dir,
)
from ..common.wire import LEGACY_PROTOCOL, BackendStatus

TIMEOUT = 2.0


def ask(
    paths: KeyPaths, command: str, *args: str, timeout: float = TIMEOUT, protocol: str = wire.PROTOCOL
) -> bytes | None:
    """Send one control command; the broker's whole reply, or None when nobody answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(paths.sock)
            conn.sendall(wire.hello(command, *args, protocol=protocol))
            chunks = []
            while chunk := conn.recv(1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
    except OSError:
        return None


def state_files(directory: str | None = None) -> list[dict[str, Any]]:
    """Every broker state file in the runtime dir (live or stale), parsed; the one broker's first.

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
    return sorted(found, key=lambda state: not is_user_broker(state))


def is_user_broker(state: dict[str, Any]) -> bool:
    """The one broker (every key inside), not a per-key broker of the previous version."""
    return state.get("key") == BROKER


def ask_broker(state: dict[str, Any], command: str, *args: str, timeout: float = TIMEOUT) -> bytes | None:
    """Ask the broker behind a state file, in its own protocol (a protocol-1 broker's files have none)."""
    protocol = state.get("protocol")
    protocol = protocol if isinstance(protocol, str) else LEGACY_PROTOCOL
    paths = KeyPaths(state["key"], os.path.dirname(state["state_file"]))
    return ask(paths, command, *args, timeout=timeout, protocol=protocol)


def live_status(state: dict[str, Any]) -> list[BackendStatus] | None:
    """The broker's own account of its backends, or None when it does not answer."""
    reply = ask_broker(state, wire.STATUS)
    return wire.decode_status(reply) if reply else None


def live_records(directory: str | None = None) -> list[tuple[dict[str, Any], BackendStatus]]:
    """Every backend of every broker (in `directory`, else the runtime dir) that answers, with the state file
    of the broker it came from."""
    return [(state, record) for state in state_files(directory) for record in live_status(state) or []]


def running_backends(directory: str | None = None) -> list[BackendStatus]:
    """Live status of every backend of every broker (in `directory`, else the runtime dir) that answers."""
    return [record for _, record in live_records(directory)]


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


def command(state: dict[str, Any], verb: str, key: str | None) -> bool:
    """`stop`/`restart` one server (KEY) of the one broker, or everything of a broker (KEY None; a protocol-1
    broker holds one key, so it is always asked without one). False when it does not answer (or is too old)."""
    args = (key,) if key is not None and is_user_broker(state) else ()
    return ask_broker(state, verb, *args) == wire.WELCOME


def still_hosted(key: str, broker_pid: int, directory: str | None = None) -> bool:
    """Whether a server asked to stop or restart still runs in the broker it ran in: the one broker hosts it
    while its records say `stopping` (a restarted key runs on in a fresh server); a per-key broker of the
    previous version as long as its process runs."""
    try:
        os.kill(broker_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    for state in state_files(directory):
        if state.get("broker_pid") == broker_pid and is_user_broker(state):
            return any(record.key == key and record.state == "stopping" for record in live_status(state) or [])
    return True
