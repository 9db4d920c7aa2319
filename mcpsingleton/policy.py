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
from typing import Any

from .keys import LAUNCHERS
from .sharing import CATALOG_PATH, ISOLATED, SHARED, Decision, config_path, explicit_decision

SCOPE_CHOICES = ("auto", "cwd", "global", "isolated")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


VALUE_OPTIONS = _words(
    # docker run / podman run
    "-e --env --env-file -v --volume --mount -w --workdir --name --network --net -p --publish -u --user"
    " --entrypoint --platform -l --label --memory --cpus --pull --add-host --hostname --cap-add --cap-drop"
    " --security-opt"
    # npx / npm exec / pnpm dlx / bunx / uvx / uv run / pipx run
    " --registry --cache --prefix --userconfig --python --with --with-requirements --index-url"
    " --extra-index-url --index --directory --project --spec"
    # python / node
    " -X -W -r --require --import --loader"
)
"""Launcher options whose value is not a server name (a port, a path, an env var)."""

PACKAGE_OPTIONS = frozenset({"--package", "--from"})
"""Launcher options whose value names the server's package (`npx --package pkg bin`, `uvx --from pkg bin`)."""

BUILD_DIRS = frozenset({"dist", "build", "bin", "src", "lib", "out", "cjs", "esm", "scripts"})
ENTRY_FILES = frozenset({"index", "main", "server", "cli", "__main__", "app", "stdio"})
SCRIPT_SUFFIXES = (".js", ".mjs", ".cjs", ".ts", ".py", ".exe", ".cmd", ".bat")


def normalize(name: str) -> str:
    """Case and `_`/`-` do not distinguish package names (PyPI normalizes them; npm names are lower case)."""
    return name.strip().lower().replace("_", "-")


def _strip_version(word: str) -> str:
    """`pkg@1.2`, `@scope/pkg@latest`, `pkg==1.0`, `pkg[extra]`, `image:tag`, `image@sha256:…` → the bare name."""
    at = word.find("@", 1)
    if at > 0:
        word = word[:at]
    for marker in ("==", ">=", "<=", "~=", "!=", "[", ">", "<"):
        word = word.split(marker, 1)[0]
    last_slash = word.rfind("/")
    colon = word.rfind(":")
    if colon > last_slash:
        word = word[:colon]
    return word


def _path_names(word: str) -> list[str]:
    """Names a filesystem path stands for: the package under node_modules, else the program or script.

    A link into node_modules (npm's `node_modules/.bin/NAME`, a global bin dir) also stands for the
    package it points into, so every launch form of a catalog server finds its entry.
    """
    names = _names_in_path(word)
    target = os.path.realpath(os.path.expanduser(word))
    if "/node_modules/" in target and target != os.path.abspath(os.path.expanduser(word)):
        names = _names_in_path(target) + names
    return names


def _names_in_path(word: str) -> list[str]:
    parts = [part for part in word.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    if "node_modules" in parts:
        after = parts[len(parts) - parts[::-1].index("node_modules") :]
        if after[:1] == [".bin"]:
            return after[1:2]  # the bin name; its package comes from the link, where it can be read
        if after:
            return ["/".join(after[:2]) if after[0].startswith("@") and len(after) > 1 else after[0]]
    if not parts:
        return []
    base = parts[-1]
    for suffix in SCRIPT_SUFFIXES:
        base = base.removesuffix(suffix)
    if base in ENTRY_FILES:
        folders = [part for part in parts[:-1] if part not in BUILD_DIRS]
        return [folders[-1]] if folders else []
    return [base]


def _word_names(word: str) -> list[str]:
    """What one command-line word may name: a package (bare, and a registry image's last part) or a path."""
    if word.startswith(("/", "./", "../", "~")) or "\\" in word or word.endswith(SCRIPT_SUFFIXES):
        return _path_names(word)
    bare = _strip_version(word).removeprefix("docker.io/").removeprefix("index.docker.io/")
    if not bare:
        return []
    names = [bare]
    if "/" in bare and not bare.startswith("@"):
        names.append(bare.rsplit("/", 1)[1])  # docker `ghcr.io/org/server` → `server` as well
    return names


def _is_assignment(word: str) -> bool:
    name, equals, _ = word.partition("=")
    return bool(equals) and name.replace("_", "a").isalnum() and not name[:1].isdigit()


def match_names(command: list[str], name: str | None = None) -> list[str]:
    """Every MATCH this command answers to, most specific first: `--name`, then its words in order.

    Launchers (`npx`, `node`, `docker`, …), option values and `VAR=value` words are skipped; a
    `sh -c "…"` script is split into words.
    """
    found: list[str] = [name] if name else []
    skip_next = False
    for word in command:
        if skip_next:
            skip_next = False
            continue
        if " " in word.strip():
            found += match_names(word.split())
            continue
        if word.startswith("-"):
            flag, has_value, value = word.partition("=")
            if flag in PACKAGE_OPTIONS and has_value:
                found += _word_names(value)
            skip_next = flag in VALUE_OPTIONS and not has_value
            continue
        if _is_assignment(word):
            continue
        found += _word_names(word)
    return list(dict.fromkeys(normalize(n) for n in found if n and n not in LAUNCHERS))


class ServerTable:
    """A `[servers."MATCH"]` table (catalog or config.toml), looked up by any name a command answers to."""

    def __init__(self, servers: dict[str, dict[str, Any]]) -> None:
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
        if scope not in SCOPE_CHOICES:
            raise ValueError(f'[servers."{match}"] scope = {scope!r}: choose from {", ".join(SCOPE_CHOICES)}')
        if entry.get("sharing", SHARED) not in (SHARED, ISOLATED):
            raise ValueError(f'[servers."{match}"] sharing must be "shared" or "isolated"')
        if not isinstance(entry.get("lazy", False), bool):
            raise ValueError(f'[servers."{match}"] lazy must be true or false')
        aliases = entry.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(alias, str) for alias in aliases):
            raise ValueError(f'[servers."{match}"] aliases must be a list of names')
    return ServerTable(servers)


def unread_xdg_config() -> str | None:
    """A config.toml under $XDG_CONFIG_HOME that is not the one read (see `sharing.config_path`), or None."""
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
    """The decision for `run --scope requested … -- command`, without starting anything."""
    if requested != "auto":
        return explicit_decision(requested)
    names = match_names(command, name)
    try:
        found = load_table(config_path()).find(names)
        error = None
    except ValueError as exc:
        found, error = None, " ".join(str(exc).split())
    decision = _from_config(found) or _from_catalog(load_table(CATALOG_PATH).find(names))
    decision.config_error = error
    decision.lazy = bool(found and found.get("lazy"))
    return decision
