"""Which servers `serve` exposes at `/mcp/NAME`, and what an HTTP session of each attaches to.

Two sources, config.toml first: `[servers."NAME"]` tables that give a `command = [argv…]` (with optional
`env`; `scope` and the rest apply as they do to every session, through the policy), and the entries `wrap`
manages in client configs (their `args` are `run`'s arguments already). An HTTP session attaches with the
same `run` arguments and environment a stdio session of the same entry would have, so both get the same key:
the same backend.
"""

from __future__ import annotations

import logging
import os
import time

from ..common.paths import config_path
from ..ops.configs import clients as registry
from ..ops.configs import load
from ..ops.configs.entries import ConfigError, classify
from ..policy.rules import load_table
from ..shim.keys import reads_client_environ
from .http_sessions import Target

log = logging.getLogger("mcpsingleton.serve")

FRESH_FOR = 2.0
"""Seconds a reading of the config files is reused: a burst of new sessions reads them once."""


def _strings(value: object) -> list[str] | None:
    return value if isinstance(value, list) and all(isinstance(item, str) for item in value) else None


def _env(value: object) -> dict[str, str]:
    return {k: v for k, v in value.items() if isinstance(v, str)} if isinstance(value, dict) else {}


def _target(argv: list[str], env: dict[str, str]) -> Target:
    """serve's own environment plays the client's: what the entry's `env` adds is the config's part of the key."""
    client_env = dict(os.environ)
    return Target(argv, {**client_env, **env}, client_env if reads_client_environ() else None)


def from_config_toml() -> dict[str, Target]:
    try:
        tables = load_table(config_path()).tables
    except ValueError as exc:
        log.warning("config.toml is ignored (%s)", exc)
        return {}
    found = {}
    for name, table in tables.items():
        command = _strings(table.get("command"))
        if command:
            found[name] = _target(["--name", name, "--", *command], _env(table.get("env")))
    return found


def from_client_configs() -> dict[str, Target]:
    """The entries `wrap` manages (`mcpsingleton run …`), by entry name; the first file naming one wins."""
    found: dict[str, Target] = {}
    for config in registry.find(list(registry.CLIENT_NAMES)):
        try:
            with open(config.path, encoding="utf-8") as handle:
                document = load(config, handle.read())
        except (OSError, UnicodeDecodeError, ConfigError):
            continue
        for entry in document.entries:
            if entry.name not in found and classify(entry)[0] == "wrapped":
                run_args = entry.data["args"][1:]  # after `run`: exactly what its shim parses (the key, the policy)
                found[entry.name] = _target(run_args, _env(entry.data.get("env")))
    return found


class Servers:
    """The known servers by name, read again at most every FRESH_FOR seconds."""

    def __init__(self) -> None:
        self.read_at = -FRESH_FOR
        self.known: dict[str, Target] = {}

    def get(self, name: str) -> Target | None:
        if time.monotonic() - self.read_at > FRESH_FOR:
            self.known = {**from_client_configs(), **from_config_toml()}
            self.read_at = time.monotonic()
        return self.known.get(name)
