"""The MCP clients we know: where each keeps its config files and where in them the servers are.

User files are found under HOME (and the platform's app-data dir); project files relative to the
current directory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

MCP_SERVERS = (("mcpServers",),)
VSCODE_SERVERS = (("servers",),)
VSCODE_SETTINGS = (("mcp", "servers"), ("mcp.servers",))
CLAUDE_CODE_USER = (("mcpServers",), ("projects", "*", "mcpServers"))
CODEX_SERVERS = (("mcp_servers",),)


@dataclass(frozen=True)
class Location:
    """A config file relative to a base dir: home, appdata (desktop apps' config dir), codex, or cwd."""

    base: str
    relative: str
    servers: tuple[tuple[str, ...], ...] = MCP_SERVERS


CLIENTS: dict[str, tuple[Location, ...]] = {
    "claude-desktop": (Location("appdata", "Claude/claude_desktop_config.json"),),
    "claude-code": (Location("home", ".claude.json", CLAUDE_CODE_USER), Location("cwd", ".mcp.json")),
    "cursor": (Location("home", ".cursor/mcp.json"), Location("cwd", ".cursor/mcp.json")),
    "vscode": (
        Location("appdata", "Code/User/settings.json", VSCODE_SETTINGS),
        Location("appdata", "Code/User/mcp.json", VSCODE_SERVERS),
        Location("cwd", ".vscode/mcp.json", VSCODE_SERVERS),
    ),
    "windsurf": (Location("home", ".codeium/windsurf/mcp_config.json"),),
    "gemini": (Location("home", ".gemini/settings.json"), Location("cwd", ".gemini/settings.json")),
    "codex": (Location("codex", "config.toml", CODEX_SERVERS),),
}
CLIENT_NAMES = tuple(CLIENTS)
ANY_JSON_SERVERS = tuple(
    dict.fromkeys(path for locations in CLIENTS.values() for spot in locations for path in spot.servers)
)
"""For a file named with --config: every place any client keeps servers."""


@dataclass(frozen=True)
class ConfigFile:
    """One file to wrap or unwrap, and the client it belongs to ('' when named with --config)."""

    client: str
    path: str
    servers: tuple[tuple[str, ...], ...]


def base_dirs(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> dict[str, str]:
    """The dirs `Location.base` names, from HOME and the platform's conventions."""
    home = os.path.expanduser("~")
    if platform == "darwin":
        appdata = os.path.join(home, "Library", "Application Support")
    elif platform == "win32":
        appdata = environ.get("APPDATA") or os.path.join(home, "AppData", "Roaming")
    else:
        appdata = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    codex = environ.get("CODEX_HOME") or os.path.join(home, ".codex")
    return {"home": home, "appdata": appdata, "codex": codex, "cwd": os.getcwd()}


def candidates(client: str) -> list[ConfigFile]:
    """Every file `client` may keep servers in, whether it exists or not."""
    bases = base_dirs()
    return [
        ConfigFile(client, os.path.join(bases[spot.base], *spot.relative.split("/")), spot.servers)
        for spot in CLIENTS[client]
    ]


def find(clients: list[str]) -> list[ConfigFile]:
    """The existing files of `clients`, each real file once."""
    found: dict[str, ConfigFile] = {}
    for client in clients:
        for candidate in candidates(client):
            if os.path.isfile(candidate.path):
                found.setdefault(os.path.realpath(candidate.path), candidate)
    return list(found.values())


def explicit(path: str, clients: list[str]) -> ConfigFile:
    """A file named with --config; CLIENT arguments, if any, say where in it the servers are."""
    if not clients:
        return ConfigFile("", path, ANY_JSON_SERVERS)
    servers = (route for client in clients for spot in CLIENTS[client] for route in spot.servers)
    return ConfigFile(",".join(clients), path, tuple(dict.fromkeys(servers)))
