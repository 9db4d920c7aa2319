"""Which servers may be shared, and why (cold path: `sharing` caches what this decides).

First match wins: an explicit `--scope` → the user's config.toml → what the running server declares
or its tools look like (decided in the broker, see `runtime_decision`) → the built-in catalog
(`catalog.toml`, one entry per well-known server with the source reading behind it) → shared per
directory. Catalog and config.toml name a server by a MATCH: its `--name` or a package or executable
name found in the command line, however it is launched (`match_names`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from typing import Any

from ..common.cmdline import LAUNCHERS, server_words, word_names
from ..common.decision import Decision, explicit_decision
from ..common.errors import UsageError
from ..common.options import SCOPES, parse_duration, parse_size
from ..common.paths import CATALOG_PATH, config_path
from ..common.wire import ISOLATED, SHARED


def normalize(name: str) -> str:
    """Case and `_`/`-` do not distinguish package names (PyPI normalizes them; npm names are lower case)."""
    return name.strip().lower().replace("_", "-")


def match_names(command: list[str], name: str | None = None) -> list[str]:
    """Every MATCH this command answers to, most specific first: `--name`, then the names of its words in
    order, as `cmdline` reads them (the reader `ls` names servers by), links into node_modules followed."""
    found: list[str] = [name] if name else []
    for word, _ in server_words(command):
        found += word_names(word, follow_links=True)
    return list(dict.fromkeys(normalize(n) for n in found if n and n not in LAUNCHERS))


class ServerTable:
    """A `[servers."MATCH"]` table (catalog or config.toml), looked up by any name a command answers to."""

    def __init__(self, servers: dict[str, dict[str, Any]]) -> None:
        self.tables = servers  # by MATCH as written (serve exposes those with a `command`)
        self.budget: tuple[int | None, int | None] = (None, None)
        self.entries: dict[str, dict[str, Any]] = {}
        for canonical, entry in servers.items():
            for alias in [canonical, *entry.get("aliases", [])]:
                self.entries.setdefault(normalize(alias), entry)

    def find(self, names: list[str]) -> dict[str, Any] | None:
        return next((self.entries[candidate] for candidate in names if candidate in self.entries), None)


def load_table(path: str) -> ServerTable:
    """Parse a `[servers."MATCH"]` file; raises ValueError with a one-line reason when it is broken."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return ServerTable({})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(str(exc)) from exc
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise ValueError("nested too deeply to read") from None
    servers = data.get("servers", {})
    if not isinstance(servers, dict) or not all(isinstance(entry, dict) for entry in servers.values()):
        raise ValueError('expected [servers."NAME"] tables')
    for match, entry in servers.items():
        scope = entry.get("scope", "auto")
        if scope not in SCOPES:
            raise ValueError(f'[servers."{match}"] scope = {scope!r}: choose from {", ".join(SCOPES)}')
        if entry.get("sharing", SHARED) not in (SHARED, ISOLATED):
            raise ValueError(f'[servers."{match}"] sharing must be "shared" or "isolated"')
        if not isinstance(entry.get("lazy", False), bool):
            raise ValueError(f'[servers."{match}"] lazy must be true or false')
        if "idle" in entry:
            _checked(parse_duration, str(entry["idle"]), f'[servers."{match}"] idle')
        aliases = entry.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(alias, str) for alias in aliases):
            raise ValueError(f'[servers."{match}"] aliases must be a list of names')
    table = ServerTable(servers)
    table.budget = _budget(data.get("budget", {}))
    return table


def _budget(table: object) -> tuple[int | None, int | None]:
    """`[budget]`: at most `max_backends` backends, `max_memory` (PSS of their trees) for the whole user."""
    if not isinstance(table, dict):
        raise ValueError("[budget] must be a table")
    count, memory = table.get("max_backends"), table.get("max_memory")
    if count is not None and (type(count) is not int or count < 1):
        raise ValueError(f"[budget] max_backends = {count!r}: a positive whole number")
    size = None if memory is None else _checked(parse_size, str(memory), "[budget] max_memory")
    return count, size


def _checked(convert: Callable[[str], Any], text: str, where: str) -> Any:
    """`convert(text)`, its UsageError said as a broken config.toml (one line, where it is)."""
    try:
        return convert(text)
    except UsageError as exc:
        raise ValueError(f"{where}: {exc}") from None


def unread_xdg_config() -> str | None:
    """A config.toml under $XDG_CONFIG_HOME that is not the one read (see `common/paths.config_path`), or None."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "").strip()
    candidate = os.path.join(xdg, "mcpsingleton", "config.toml") if xdg else ""
    if candidate and os.path.isfile(candidate) and os.path.realpath(candidate) != os.path.realpath(config_path()):
        return candidate
    return None


def _from_config(found: dict[str, Any] | None) -> Decision | None:
    if found is None or found.get("scope", "auto") == "auto":
        return None
    scope = found["scope"]
    return Decision(scope, ISOLATED if scope == ISOLATED else SHARED, "config.toml", final=True)


def _from_catalog(entry: dict[str, Any] | None) -> Decision:
    if entry is None:
        return Decision("cwd", None, "default: no catalog entry; shared per directory")
    policy = f"catalog: {entry['reason']}"
    if entry.get("sharing", SHARED) == ISOLATED:
        return Decision(ISOLATED, ISOLATED, policy)
    return Decision(entry.get("scope", "cwd"), SHARED, policy)


def decide(requested: str, command: list[str], name: str | None = None) -> Decision:
    """The decision for `run --scope requested … -- command`, without starting anything.

    An explicit scope decides the sharing alone; what config.toml says besides (lazy, idle, the budget,
    whether it is broken) holds either way."""
    names = match_names(command, name)
    try:
        config = load_table(config_path())
        found, budget, error = config.find(names), config.budget, None
    except ValueError as exc:
        found, budget, error = None, (None, None), " ".join(str(exc).split())
    if requested != "auto":
        decision = explicit_decision(requested)
    else:
        decision = _from_config(found) or _from_catalog(load_table(CATALOG_PATH).find(names))
    decision.config_error = error
    decision.lazy = found.get("lazy") if found else None
    decision.idle = str(found["idle"]) if found and "idle" in found else None
    decision.budget = budget
    return decision
