"""`mcpsingleton wrap` / `unwrap`: point MCP client configs at `mcpsingleton run`, and back, exactly.

clients    which files, per client and scope
jsonc      JSON with comments → entries.Document        codex_toml  Codex's TOML → entries.Document
wrapping   the text edits, and the unwrap scheme        records     the one fact the text cannot hold
files      backup + atomic replace, mode kept           diff        dry-run diffs with secrets masked

Every edit is checked before anything is written: the edited text must parse, and to exactly the old
data with only the intended command/args changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import TextIO

from mcpsingleton.common.errors import SetupError
from mcpsingleton.common.options import SCOPES
from mcpsingleton.common.paths import HOME_ENV, home_override, launcher_dir
from mcpsingleton.ops.configs import clients as registry
from mcpsingleton.ops.configs import codex_toml, diff, files, jsonc
from mcpsingleton.ops.configs.clients import CLIENT_NAMES, ConfigFile
from mcpsingleton.ops.configs.entries import ConfigError, Document
from mcpsingleton.ops.configs.records import InsertedArgs
from mcpsingleton.ops.configs.wrapping import Plan, apply, plan_unwrap, plan_wrap
from mcpsingleton.shim import launcher

__all__ = ["CLIENT_NAMES", "run_wrap"]

FILTERING_CLIENTS = frozenset({"codex", "gemini"})
"""Clients that start servers with a filtered environment: a MCPSINGLETON_HOME set for wrap is written into
each entry's env, or their sessions would look for brokers and logs elsewhere than the user's shell."""


def run_wrap(
    clients: list[str],
    config: str | None,
    dry_run: bool,
    scope: str | None,
    unwrap: bool,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Wrap (or unwrap) the configs of `clients` (none: every client with a file), or the file `config`.

    Prints one line per file to `out` (and the diff, with `dry_run`); problems go to `err` as
    `mcpsingleton: <file>: what; what to do`. Returns 0, 1 when a file was malformed or unwritable
    (it is left untouched; the others are still done), or 2 for an unknown client or scope.
    `out`/`err` default to the sys streams at call time, so click's test runner captures them.
    """
    out, err = out or sys.stdout, err or sys.stderr
    problem = _usage_problem(clients, scope)
    if problem:
        err.write(f"mcpsingleton: {problem}; see mcpsingleton {'unwrap' if unwrap else 'wrap'} --help\n")
        return 2
    targets = [registry.explicit(config, clients)] if config else _discover(clients, out)
    executable = "" if unwrap else mcpsingleton_executable(dry_run, err)
    job = _Job(unwrap, dry_run, scope, out, err, executable=executable, home=home_override())
    return max((job.run(target) for target in targets), default=0)


def mcpsingleton_executable(dry_run: bool = False, err: TextIO | None = None) -> str:
    """Absolute path for client configs (desktop clients do not start servers through the shell's PATH):
    the `-I -S` launcher, written now (each session then starts ~10 ms sooner than through the console
    script, see mcpsingleton.shim.launcher), or the console script when the launcher cannot be written."""
    found = shutil.which("mcpsingleton")
    console_script = os.path.abspath(found) if found else os.path.realpath(sys.argv[0])
    directory = launcher_dir()
    planned = launcher.launcher_path(directory, console_script)
    if dry_run or planned == console_script:  # a dry run writes nothing; PATH may name the launcher itself
        return planned
    try:
        return launcher.write_launcher(directory, console_script)
    except (OSError, subprocess.SubprocessError, SetupError) as exc:  # SetupError: a dir others may write
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        (err or sys.stderr).write(
            f"mcpsingleton: cannot write the launcher in {directory} ({why}); configs name {console_script}"
            " instead, which starts each session ~10 ms later\n"
        )
        return console_script


def _usage_problem(clients: list[str], scope: str | None) -> str:
    unknown = [client for client in clients if client not in CLIENT_NAMES]
    if unknown:
        return f"unknown client {unknown[0]!r}; choose from {', '.join(CLIENT_NAMES)}"
    if scope is not None and scope not in SCOPES:
        return f"unknown scope {scope!r}; choose from {', '.join(SCOPES)}"
    return ""


def _discover(clients: list[str], out: TextIO) -> list[ConfigFile]:
    """The existing files of the named clients (or of all); say where we looked when there are none."""
    found = registry.find(clients or list(CLIENT_NAMES))
    for client in clients:
        if not any(target.client == client for target in found):
            looked = ", ".join(candidate.path for candidate in registry.candidates(client))
            out.write(f"{client}: no config file (looked for {looked})\n")
    if not found and not clients:
        out.write("no MCP client config file found; name one with --config PATH\n")
    return found


def load(target: ConfigFile, text: str) -> Document:
    """A client config file's entries, whichever its format."""
    if _is_toml(target.path, text):
        return codex_toml.load(text)
    return jsonc.load(text, target.servers)


def _is_toml(path: str, text: str) -> bool:
    """By the file name, else by the content: JSON starts with '{' (or a comment)."""
    if path.endswith((".toml", ".json", ".jsonc")):
        return path.endswith(".toml")
    return not text.lstrip("\ufeff \t\r\n").startswith(("{", "/"))


@dataclass
class _Job:
    """One wrap or unwrap run over any number of files."""

    unwrap: bool
    dry_run: bool
    scope: str | None
    out: TextIO
    err: TextIO
    executable: str
    home: str | None = None
    records: InsertedArgs = field(default_factory=InsertedArgs)

    @property
    def verb(self) -> str:
        return "unwrap" if self.unwrap else "wrap"

    def _home_for(self, target: ConfigFile) -> str | None:
        """MCPSINGLETON_HOME for the entries of a client that would not pass it on, else None."""
        filtering = FILTERING_CLIENTS.intersection(target.client.split(","))
        return os.path.abspath(self.home) if self.home and filtering else None

    def run(self, target: ConfigFile) -> int:
        """0 when the file was handled, 1 (reported, file untouched) when it could not be."""
        try:
            self._run(target)
        except ConfigError as exc:
            self.err.write(f"mcpsingleton: {target.path}: {exc}\n")
            return 1
        return 0

    def _run(self, target: ConfigFile) -> None:
        original, text = files.read(target.path)
        before = load(target, text)
        if self.unwrap:
            plan = plan_unwrap(before, partial(self.records.texts, original.real))
        else:
            plan = plan_wrap(before, self.executable, self.scope, self._home_for(target))
        where = f"{target.path} ({target.client})" if target.client else target.path
        for name, why in plan.skipped:
            self.err.write(f"mcpsingleton: {target.path}: server {name!r} left as is ({why}); fix it by hand\n")
        for name in plan.env_by_hand:
            self.err.write(f"mcpsingleton: {target.path}: server {name!r}: add {HOME_ENV} = {self.home} to its env "
                           "by hand (this client does not pass it on by itself)\n")
        if not plan.edits:
            self.out.write(f"{where}: nothing to {self.verb}{_summary(plan, self.unwrap)}\n")
            return
        after = _checked(target, plan, text)
        names = f"{len(plan.changed)} server{'s' * (len(plan.changed) != 1)} ({', '.join(plan.changed)})"
        if self.dry_run:
            self.out.write(diff.unified(target.path, before, after))
            self.out.write(f"{where}: would {self.verb} {names}\n")
            self.out.write("".join(f"  {line}\n" for line in plan.policies))
            return
        self.records.add(original.real, plan.inserted)
        saved = files.backup(original)
        files.replace(original, after.text)
        self.records.remove(original.real, plan.removed)
        self.out.write(f"{where}: {self.verb}ped {names}; backup: {saved}\n")


def _checked(target: ConfigFile, plan: Plan, text: str) -> Document:
    """The edited document, refused unless its edits apply and it parses to exactly the data the plan intends."""
    try:
        after = load(target, apply(text, plan.edits))
    except (ConfigError, ValueError):  # ValueError: edits that overlap in a layout we did not foresee
        after = None
    if after is None or after.data != plan.expected:
        raise ConfigError("mcpsingleton could not edit it cleanly and left it as is; please report this")
    return after


def _summary(plan: Plan, unwrap: bool) -> str:
    """Why nothing changed, e.g. ' (2 already wrapped, 1 remote)'."""
    counts = {
        "not wrapped" if unwrap else "already wrapped": plan.kinds["stdio" if unwrap else "wrapped"],
        "remote": plan.kinds["remote"],
        "skipped": plan.kinds["skipped"],
    }
    parts = [f"{count} {what}" for what, count in counts.items() if count]
    return f" ({', '.join(parts)})" if parts else " (no servers)"
