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
from ..common.errors import stderr_line
from ..common.options import KEY_SCOPES
from ..common.wire import ISOLATED, SHARED
from .keys import sha256

CATALOG_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "policy", "catalog.toml")
"""The built-in catalog: its version is part of a cached decision's generation; `policy/rules.py` reads it."""


class Decision:
    """Where a server may be shared (`scope`), whether at all (`sharing`), and why (`policy`, one line).

    `sharing` is None when only the running server can tell (its declaration or its tools). `final`
    means a user decided (option or config.toml): nothing learnt at runtime overrides it.
    `config_error` is the one-line reason config.toml was ignored, if it was. What config.toml says
    beyond the sharing: `lazy` (True/False, None when it says nothing), `idle` (a duration text, or
    None) and `budget` (the user's `[budget]`: max backends, max memory in bytes; None where unset).
    """

    __slots__ = ("budget", "config_error", "final", "idle", "lazy", "policy", "scope", "sharing")

    def __init__(
        self,
        scope: str,
        sharing: str | None,
        policy: str,
        *,
        final: bool = False,
        config_error: str | None = None,
        lazy: bool | None = None,
        idle: str | None = None,
        budget: tuple[int | None, int | None] = (None, None),
    ) -> None:
        self.scope = scope
        self.sharing = sharing
        self.policy = policy
        self.final = final
        self.config_error = config_error
        self.lazy = lazy
        self.idle = idle
        self.budget = budget

    def __repr__(self) -> str:
        return f"Decision({self.scope!r}, {self.sharing!r}, {self.policy!r}, final={self.final})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and self.as_lines() == other.as_lines()

    def as_lines(self) -> str:
        final = "final" if self.final else ""
        lazy = {True: "lazy", False: "eager", None: ""}[self.lazy]
        budget = " ".join("-" if limit is None else str(limit) for limit in self.budget)
        error, idle = self.config_error or "", self.idle or ""
        fields = (self.scope, self.sharing or "", self.policy, final, error, lazy, idle, budget)
        return "".join(_one_line(field) + "\n" for field in fields)

    @classmethod
    def from_lines(cls, text: str) -> "Decision | None":
        fields = text.split("\n")
        if len(fields) != 9 or fields[0] not in KEY_SCOPES:
            return None
        scope, sharing, policy, final, error, lazy, idle, budget, _ = fields
        limits = [int(word) if word.isdigit() else None for word in budget.split()]
        return cls(
            scope,
            sharing or None,
            policy,
            final=final == "final",
            config_error=error or None,
            lazy={"lazy": True, "eager": False}.get(lazy),
            idle=idle or None,
            budget=(limits[0], limits[1]) if len(limits) == 2 else (None, None),
        )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def explicit_decision(scope: str, config: Decision | None = None) -> Decision:
    """`--scope cwd|global|isolated` given: the user decided; `config`: what config.toml says besides."""
    decision = Decision(scope, ISOLATED if scope == ISOLATED else SHARED, f"--scope {scope}", final=True)
    if config is not None:
        decision.config_error, decision.lazy, decision.idle = config.config_error, config.lazy, config.idle
        decision.budget = config.budget
    return decision


def config_path() -> str:
    """MCPSINGLETON_HOME/config.toml, else the user config dir as platformdirs' defaults name it (no import).

    From the home directory alone, never XDG_CONFIG_HOME: clients strip XDG_* (Codex), and a config
    that only some sessions read would share, in those, a server the user asked to isolate.
    """
    home = os.environ.get("MCPSINGLETON_HOME")
    if home:
        return os.path.join(home, "config.toml")
    if os.uname().sysname == "Darwin":
        base = os.path.expanduser("~/Library/Application Support")
    else:
        base = os.path.expanduser("~/.config")
    return os.path.join(base, "mcpsingleton", "config.toml")


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
