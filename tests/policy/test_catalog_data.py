"""The built-in catalog is data the policy trusts blindly: check its shape and the decisions issue 12 relies on."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from helpers import ROOT

CATALOG = ROOT / "mcpsingleton" / "policy" / "catalog.toml"
FIELDS = {"aliases", "sharing", "scope", "reason", "source"}
# Words a command line is full of: as aliases they would capture unrelated servers.
GENERIC_WORDS = {"mcp", "run", "server", "stdio", "magic", "fetch", "git", "time", "memory", "filesystem", "node"}


def normalized(name: str) -> str:
    return name.strip().lower().replace("_", "-")


@pytest.fixture(scope="module")
def servers() -> dict[str, dict[str, Any]]:
    with CATALOG.open("rb") as handle:
        table: dict[str, dict[str, Any]] = tomllib.load(handle)["servers"]
    return table


def test_every_entry_has_exactly_the_documented_fields(servers: dict[str, dict[str, Any]]) -> None:
    for name, entry in servers.items():
        assert set(entry) == FIELDS, name
        assert entry["sharing"] in ("shared", "isolated"), name
        assert entry["scope"] in ("cwd", "global"), name
        assert isinstance(entry["aliases"], list) and all(isinstance(alias, str) for alias in entry["aliases"]), name
        for text_field in ("reason", "source"):
            assert entry[text_field].strip() and "\n" not in entry[text_field], (name, text_field)


def test_no_name_belongs_to_two_entries_and_none_is_generic(servers: dict[str, dict[str, Any]]) -> None:
    owner: dict[str, str] = {}
    for name, entry in servers.items():
        for alias in [name, *entry["aliases"]]:
            key = normalized(alias)
            assert key not in owner, f"{alias} is listed by both {owner.get(key)} and {name}"
            assert key not in GENERIC_WORDS, alias
            owner[key] = name


@pytest.mark.parametrize(
    ("server", "sharing"),
    [
        ("@wonderwhy-er/desktop-commander", "isolated"),
        ("@modelcontextprotocol/server-sequential-thinking", "isolated"),
        ("mcp-server-sqlite", "isolated"),
        ("@playwright/mcp", "isolated"),
        ("chrome-devtools-mcp", "isolated"),
        ("@modelcontextprotocol/server-puppeteer", "isolated"),
        ("serena", "isolated"),
        ("@modelcontextprotocol/server-filesystem", "shared"),
        ("@modelcontextprotocol/server-memory", "shared"),
        ("@modelcontextprotocol/server-everything", "shared"),
        ("mcp-server-time", "shared"),
        ("mcp-server-fetch", "shared"),
        ("mcp-server-git", "shared"),
        ("@upstash/context7-mcp", "shared"),
    ],
)
def test_decisions_issue_12_depends_on(servers: dict[str, dict[str, Any]], server: str, sharing: str) -> None:
    assert servers[server]["sharing"] == sharing


def test_git_is_shared_per_directory_because_it_acts_on_its_cwd(servers: dict[str, dict[str, Any]]) -> None:
    assert servers["mcp-server-git"]["scope"] == "cwd"
