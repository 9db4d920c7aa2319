"""The format-neutral view of a client config: server entries with the text spans wrap edits.

Both parsers (jsonc, codex_toml) reduce a file to a `Document`; everything after that — deciding what an
entry is, planning edits, checking the result — works on this view and never on format details.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcpsingleton.common.options import command_index
from mcpsingleton.shim.keys import is_secret_name


class ConfigError(Exception):
    """A config file we must leave alone, worded for people: `<file>: what happened; what to do`."""


FIX = "fix the file and run the command again"


@dataclass(frozen=True)
class Span:
    """Characters [start, end) of the file's text."""

    start: int
    end: int


@dataclass(frozen=True)
class ArgsArray:
    """An `args` array as written: where its elements are, so wrap can insert before the first one."""

    open: int  # just after '['
    items: tuple[Span, ...]
    close: int  # at ']'


@dataclass(frozen=True)
class Slot:
    """Where an `args` member goes when an entry has none: `prefix + "[...]"` is inserted at `pos`."""

    pos: int
    prefix: str


@dataclass(frozen=True)
class EnvSpot:
    """Where wrap can add a variable to an entry's env: `before + pair + after` is inserted at `pos`.

    Inside the env mapping when the entry has one, else a whole new `env` member after the command.
    """

    pos: int
    before: str
    after: str


@dataclass(frozen=True)
class ServerEntry:
    """One server entry: its parsed value plus where its `command` and `args` values are written."""

    name: str
    path: tuple[str, ...]  # keys from the document root to the entry, the name last
    data: Any
    command: Span | None  # the command string's token, None when it is not a string
    args: ArgsArray | None  # None when args is absent (or not an array: see classify)
    slot: Slot | None  # None when there is no command token to put args after
    env: EnvSpot | None  # None when no variable can be added (env is not a mapping, or written as dotted keys)


@dataclass(frozen=True)
class Document:
    """A parsed config file: all its data, its server entries, and the spans never to print."""

    text: str
    data: Any
    entries: tuple[ServerEntry, ...]
    secrets: tuple[Span, ...]  # the values `is_secret` says a diff masks
    quote: Callable[[str], str]  # a string literal in this format
    pair: Callable[[str, str], str]  # a `key: "value"` member of a mapping in this format
    drop: Callable[[tuple[str, ...]], Span | None] = lambda path: None
    """The text to delete to take out the member at `path` with one separator (None: this format cannot
    say), so unwrap can remove what wrap added after a client rewrote the file in its own layout."""


REMOTE_KEYS = ("url", "httpUrl", "serverUrl")
REMOTE_TYPES = ("http", "sse", "streamable-http", "streamableHttp")
EXECUTABLE_NAMES = ("mcpsingleton", "mcpsingleton.exe")
HEADER_CONTAINERS = ("headers", "http_headers")
_CREDENTIALS_IN_URL = re.compile(r"://[^/\s@]+@")  # `scheme://user:password@host`


def is_secret(path: tuple[str, ...], value: object) -> bool:
    """Whether a dry-run diff masks the value at `path`: HTTP header values, values of secret-named keys
    (TOKEN, KEY, PASSWORD…, the names `ls` masks) and URLs holding credentials. Other env values (TZ,
    paths, the MCPSINGLETON_HOME wrap adds) stay readable: they are what a user checks in the diff."""
    if len(path) > 1 and path[-2] in HEADER_CONTAINERS:
        return True
    if path and is_secret_name(path[-1]):
        return True
    return isinstance(value, str) and _CREDENTIALS_IN_URL.search(value) is not None


def is_remote(data: dict[str, Any]) -> bool:
    """Remote (HTTP/SSE) entries have no process to share."""
    return any(key in data for key in REMOTE_KEYS) or data.get("type") in REMOTE_TYPES


def _runs_mcpsingleton(command: str) -> bool:
    return re.split(r"[\\/]", command)[-1] in EXECUTABLE_NAMES


def wrapped_command_index(command: str, args: list[str]) -> int | None:
    """Index in `args` of the original command of a `mcpsingleton run [OPTIONS] [--] C A...` entry, else None.

    Read the way `run` reads it (one grammar, in mcpsingleton.common.options), so entries wrapped with or
    without `--`, by any version, unwrap exactly.
    """
    return command_index(args) if _runs_mcpsingleton(command) else None


def classify(entry: ServerEntry) -> tuple[str, str]:
    """('stdio' | 'wrapped' | 'remote' | 'skipped', why it was skipped)."""
    data = entry.data
    if not isinstance(data, dict):
        return "skipped", "not an object"
    if is_remote(data):
        return "remote", ""
    command, args = data.get("command"), data.get("args", [])
    if not isinstance(command, str) or not command or entry.command is None or entry.slot is None:
        return "skipped", "no command string"
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        return "skipped", "args is not a list of strings"
    if wrapped_command_index(command, args) is not None:
        return "wrapped", ""
    if _runs_mcpsingleton(command):
        return "skipped", "runs mcpsingleton but not 'run [OPTIONS] COMMAND'"
    return "stdio", ""
