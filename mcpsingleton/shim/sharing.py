"""The sharing decision on the shim's warm path: read from a tiny cache file, computed only on a miss.

Parsing the catalog and the user's config.toml needs tomllib (~16 ms); the warm attach budget is
5 ms. So the decision for a given (command, --name, config file version, catalog version, package
version) is computed once by `policy` (cold path) and cached in the runtime dir, read here with
plain os calls. The file name is a salted hash (a command line can carry secrets); the content is
only the decision text.
"""

import os

from .. import __version__
from ..common.atomic import write_atomically
from ..common.decision import Decision, explicit_decision
from ..common.errors import stderr_line
from ..common.paths import CATALOG_PATH, config_path
from .keys import sha256


def _file_version(path: str) -> str:
    try:
        info = os.stat(path)
    except OSError:
        return "-"
    return f"{info.st_mtime_ns}:{info.st_size}"


def _digest(salt: bytes, parts: list[str]) -> str:
    digest = sha256(salt)
    for part in parts:
        digest.update(b"\0" + part.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def cache_path(directory: str, command: list[str], name: str | None, salt: bytes) -> str:
    """decisions/GENERATION/COMMAND: the generation changes with the package, catalog or config.toml.

    The command part is salted (a command line can carry secrets); a new generation lets the first
    cold decision after an edit remove every older one. A relative path (`./node_modules/.bin/x`) names
    what the cwd holds, so the cwd is part of such a command's entry.
    """
    generation = _digest(b"", [__version__, _file_version(CATALOG_PATH), _file_version(config_path())])[:16]
    relative = any(word.startswith(("./", "../")) for word in command)
    parts = [name or "", *command, *([os.getcwd()] if relative else [])]
    return os.path.join(directory, "decisions", generation, _digest(salt, parts)[:32])


def _remove_older_generations(current: str) -> None:
    decisions = os.path.dirname(current)
    for generation in os.listdir(decisions):
        old = os.path.join(decisions, generation)
        if old != current:
            for entry in os.listdir(old):
                os.unlink(os.path.join(old, entry))
            os.rmdir(old)


def _read_cached(path: str) -> Decision | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return Decision.from_lines(os.read(fd, 4096).decode("utf-8", "replace"))
    finally:
        os.close(fd)


def _write_cached(path: str, decision: Decision) -> None:
    """Atomically, 0600; a failure only costs the next session a cold decision."""
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        _remove_older_generations(os.path.dirname(path))
        write_atomically(path, decision.as_lines().encode())
    except OSError:
        pass


def resolve_scope(requested: str, command: list[str], name: str | None, directory: str, salt: bytes) -> Decision:
    """The decision `run` uses, through the cached policy chain (config.toml's lazy, idle and budget hold
    with an explicit scope too, which decides the sharing alone); a broken config warns once."""
    path = cache_path(directory, command, name, salt)
    decision = _read_cached(path)
    if decision is None:
        from ..policy.rules import decide  # cold path: parses the catalog and config.toml

        decision = decide("auto", command, name)
        _write_cached(path, decision)
    if requested != "auto":
        decision = explicit_decision(requested, decision)
    if decision.config_error:
        stderr_line(f"ignoring {config_path()}: {decision.config_error}; fix it or remove it")
    return decision
