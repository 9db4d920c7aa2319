"""The command line (click). Thin: each command hands over to the module that owns the idea.

`run` never normally reaches this module — `__main__` dispatches it to the lean shim before click
loads; it is declared here so that `mcpsingleton run --help` and completions know about it.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import click

from .. import __version__
from ..common import processes, wire
from ..common.options import RUN_OPTIONS
from ..shim.keys import (
    SCOPES,
    UsageError,
    default_log_dir,
    ensure_private_dir,
    key_env_names,
    log_dir,
    parse_duration,
    reads_client_environ,
    runtime_dir,
)
from . import control, table

ORDERLY_STOP_SECONDS = 10.0
STRIPPED_HOME = "started by clients that do not pass MCPSINGLETON_HOME on"
"""Why a broker runs under the default location while MCPSINGLETON_HOME is set here (see control.stripped_home_dir)."""


def ensure_usable_home() -> None:
    """The one-line SetupError `run` (and every command that reads the runtime dir) gives for a home no
    session can use (`/proc/x`, a dir of another user's), for `wrap`/`unwrap`, which do not read it.
    (`explain` and dry runs write nothing, so they are not asked to make it.)"""
    ensure_private_dir(runtime_dir())


def fail(message: str) -> NoReturn:
    """Errors for people: one line, then exit status 1."""
    click.echo(f"mcpsingleton: {message}", err=True)
    sys.exit(1)


class OneLineUsage(click.Group):
    """Every usage error in one line, `mcpsingleton: what; see mcpsingleton COMMAND --help`, exit status 2,
    whether click found it (an unknown option, a missing argument) or a command did; as `run` says them."""

    def main(self, *args: Any, **kwargs: Any) -> NoReturn:
        kwargs["standalone_mode"] = False
        try:
            status = super().main(*args, **kwargs)  # standalone_mode=False: --help and --version return 0
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "mcpsingleton"
            click.echo(f"mcpsingleton: {usage_message(exc.format_message())}; see {command} --help", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(status if isinstance(status, int) else 0)


def usage_message(message: str) -> str:
    """Click's sentences as one clause: "No such option '--x'." becomes "no such option '--x'"."""
    sentences = [sentence.strip() for sentence in message.strip().rstrip(".?").split(". ")]
    return "; ".join(sentence[:1].lower() + sentence[1:] for sentence in sentences if sentence)


@click.group(cls=OneLineUsage, context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=False)
@click.version_option(__version__, prog_name="mcpsingleton")
def cli() -> None:
    """One shared backend per stdio MCP server across all client sessions; nothing orphaned."""


def _run_options(command: Callable[..., None]) -> Callable[..., None]:
    """Declare `run`'s options from its one table, so help and completions match what the shim parses."""
    for option in reversed(RUN_OPTIONS):
        if option.is_flag:
            command = click.option(option.flag, option.attr, is_flag=True, help=option.help)(command)
            continue
        command = click.option(
            option.flag,
            option.attr,
            metavar=option.metavar,
            type=click.Choice(option.choices) if option.choices else None,
            default=option.default,
            show_default=option.default is not None,
            envvar=option.env,
            show_envvar=option.env is not None,
            multiple=option.repeatable,
            help=option.help,
        )(command)
    return command


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@_run_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def run(**_: Any) -> None:
    """The stdio shim for client configs: mcpsingleton run [OPTIONS] [--] COMMAND [ARG...]

    Options are read only before COMMAND's first word, so the server's own arguments (even -h) are
    passed to it untouched; `--` may separate them.
    """
    from ..shim.attach import main as run_shim

    sys.exit(run_shim(sys.argv[2:]))


def _with_memory(record: control.BackendStatus, parents: dict[int, int]) -> dict[str, Any]:
    """A broker's record as `ls --json` prints it: with the memory and process count of the backend's tree."""
    from ..common.proctree import tree_memory, tree_process_count

    entry = record.to_json()
    backend_pid = record.backend_pid
    entry["memory_bytes"] = tree_memory(backend_pid, parents) if backend_pid else 0
    entry["processes"] = tree_process_count(backend_pid, parents) if backend_pid else 0
    entry["managed"] = True
    return entry


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _uptime(started_at: str) -> str:
    try:
        seconds = int((datetime.now(UTC) - datetime.fromisoformat(started_at)).total_seconds())
    except (TypeError, ValueError):
        return "?"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _sessions_cell(clients: list[dict[str, Any]]) -> str:
    names: dict[str, int] = {}
    for client in clients:
        label = client.get("client") or "?"
        names[label] = names.get(label, 0) + 1
    detail = ", ".join(f"{label}×{count}" if count > 1 else label for label, count in names.items())
    return f"{len(clients)}" + (f" ({detail})" if detail else "")


def render_table(backends: list[dict[str, Any]], width: int | None = None) -> str:
    """The `ls` table within `width` columns: the policy cut first, then the sessions' and the servers' names;
    on a narrow terminal the key, uptime, backend pid and scope are left out (`ls --json` has them all)."""
    from .metrics import broker_budgets

    header = ["NAME", "SCOPE", "SHARING", "STATE", "SESSIONS", "BACKEND", "MEMORY", "UPTIME", "RESTARTS", "KEY"]
    header.append("POLICY")
    rows = [header] + [
        [
            str(b.get("name")),
            str(b.get("scope")),
            str(b.get("sharing")),
            str(b.get("state")),
            _sessions_cell(b.get("clients", [])),
            str(b.get("backend_pid") or "-"),
            _human_bytes(b.get("memory_bytes", 0)),
            _uptime(b.get("started_at", "")),
            str(b.get("restarts", 0)),
            str(b.get("key", ""))[:12],
            str(b.get("policy", "")),
        ]
        for b in backends
    ]
    lines = table.render(rows, width, ("POLICY", "SESSIONS", "NAME", "SHARING"), ("KEY", "UPTIME", "BACKEND", "SCOPE"))
    lines += [budget_line(budget) for budget in broker_budgets(backends).values()]
    errors = sorted({str(b["config_error"]) for b in backends if b.get("config_error")})
    notes = [f"config.toml was ignored when deciding: {error}" for error in errors]
    if backends and processes.memory_measure() == "RSS":
        notes.append("MEMORY is RSS: shared pages count in each process (no PSS on this OS)")
    return "\n".join(lines + notes)


def budget_line(budget: dict[str, int | None]) -> str:
    """`budget: 3 of 8 backends, 1.2 GiB of 4.0 GiB`: the broker's own count and measure (`budget` records)."""
    backends, max_backends = budget.get("backends") or 0, budget.get("max_backends")
    count = f"{backends} of {max_backends} backends" if max_backends else f"{backends} backend" + "s" * (backends != 1)
    parts = [count]
    memory, max_memory = budget.get("memory_bytes"), budget.get("max_memory_bytes")
    if memory is not None and max_memory:
        parts.append(f"{_human_bytes(memory)} of {_human_bytes(max_memory)}")
    return "budget: " + ", ".join(parts)


def _unmanaged_lines(groups: list[dict[str, Any]]) -> list[str]:
    if not groups:
        return ["No unmanaged MCP servers found."]
    lines = ["", "Unmanaged MCP servers (not started by mcpsingleton):"]
    for group in groups:
        command = " ".join(group["command"]) if isinstance(group["command"], list) else group["command"]
        lines.append(f"  {group['count']}× {command}  {_human_bytes(group['memory_bytes'])}")
    savable = sum(group.get("savable_bytes", 0) for group in groups)
    lines.append(f"Sharing them through `mcpsingleton run` would save about {_human_bytes(savable)}.")
    return lines


def collect(include_unmanaged: bool, directory: str | None = None) -> list[dict[str, Any]]:
    """The backends of the brokers in `directory` (else the runtime dir), and with `include_unmanaged` the
    MCP servers mcpsingleton did not start."""
    from ..common.proctree import parent_map

    parents = parent_map()  # one process snapshot for every backend's tree
    backends = [_with_memory(record, parents) for record in control.running_backends(directory)]
    if include_unmanaged:
        from .reaper import find_unmanaged_servers

        backends += find_unmanaged_servers()
    return backends


@cli.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one object per backend.")
@click.option("--all", "include_unmanaged", is_flag=True, help="Also list MCP servers not started by mcpsingleton.")
@click.option("--watch", is_flag=True, help="Refresh in place every 2 seconds until Ctrl-C.")
def ls_command(as_json: bool, include_unmanaged: bool, watch: bool) -> None:
    """Show the shared backends, their sessions and memory."""
    if not watch:
        click.echo(render_ls(as_json, include_unmanaged))
        return
    try:
        while True:
            frame = render_ls(as_json, include_unmanaged)
            click.echo("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ") + "mcpsingleton ls (Ctrl-C to quit)\n" + frame)
            time.sleep(2)
    except KeyboardInterrupt:
        return


def render_ls(as_json: bool, include_unmanaged: bool) -> str:
    entries = collect(include_unmanaged)
    elsewhere = control.stripped_home_dir()
    others = collect(False, elsewhere) if elsewhere else []
    if as_json:
        if others:
            note = _more_elsewhere(others, elsewhere)
            click.echo(f"mcpsingleton: {note}; unset MCPSINGLETON_HOME to list them", err=True)
        return json.dumps(entries, indent=2)
    managed = [e for e in entries if e.get("managed")]
    width = table.terminal_width()
    text = render_table(managed, width) if managed else "No shared backends are running."
    if others:
        text += f"\n\nAlso running under {elsewhere}, {STRIPPED_HOME}:\n" + render_table(others, width)
    if managed and _env_rule() == "secrets":
        text += "\n" + (textwrap.fill(WEAKER_ENV_RULE, width) if width else WEAKER_ENV_RULE)
    if include_unmanaged:
        text += "\n" + "\n".join(_unmanaged_lines([e for e in entries if not e.get("managed")]))
    return text


def _more_elsewhere(others: list[Any], elsewhere: str | None) -> str:
    return f"{len(others)} more backend(s) run under {elsewhere}, {STRIPPED_HOME}"


@cli.command()
@click.argument("target", required=False)
@click.option("--all", "stop_all", is_flag=True, help="Stop every server, and the broker.")
def stop(target: str | None, stop_all: bool) -> None:
    """Stop a server's backends (by NAME or KEY) in order; its sessions get end of file."""
    _stop_servers(target, stop_all, wire.STOP, "stopped", "run `mcpsingleton reap`")


@cli.command()
@click.argument("target", required=False)
@click.option("--all", "restart_all", is_flag=True, help="Restart everything: a fresh broker takes every session.")
def restart(target: str | None, restart_all: bool) -> None:
    """Hand a server's sessions (by NAME or KEY) over to a fresh server; with --all, every session to a fresh
    broker running the installed mcpsingleton (also moving sessions of per-key brokers of an older version).

    Requests in flight finish first (up to a few seconds); the sessions go on, on a new backend."""
    older = "a broker of an older mcpsingleton cannot hand over: `mcpsingleton stop` ends its sessions"
    _stop_servers(target, restart_all, wire.RESTART, "restarted", older)


def _stop_servers(target: str | None, every: bool, verb: str, done: str, unanswered: str) -> None:
    """Ask the brokers of the chosen servers to stop (`stop`) or hand over (`restart`) those servers, or with
    `every` everything (then each broker exits); return once they have.

    A NAME not found here is also looked for where clients that drop MCPSINGLETON_HOME run their sessions."""
    if not target and not every:
        raise click.UsageError("give a NAME or KEY, or --all")
    found = control.live_records()
    chosen = [(state, record) for state, record in found if every or control.matches(record, target or "")]
    elsewhere = control.stripped_home_dir()
    others = control.live_records(elsewhere) if elsewhere else []
    directory = None
    if not chosen and not every:
        chosen = [(state, record) for state, record in others if control.matches(record, target or "")]
        directory = elsewhere if chosen else None
    if every and others:
        more = _more_elsewhere([record for _, record in others], elsewhere)
        click.echo(f"{more}; unset MCPSINGLETON_HOME to include them")
    if not chosen and every:
        click.echo("no backends are running")
    if not chosen and not every:
        fail(f"no running backend matches {target!r}; see `mcpsingleton ls`")
    brokers = {state["state_file"]: state for state, _ in found} if every else {}
    if every:
        for state in control.state_files():  # a broker with no server left is stopped too
            if control.live_status(state) is not None:
                brokers.setdefault(state["state_file"], state)
        for state in brokers.values():
            if not control.command(state, verb, None):
                fail(f"the broker at {state['state_file']} did not answer; {unanswered}")
    names = {record.key: (state, record) for state, record in chosen}  # a server with several backends: once
    if not every:
        for key, (state, record) in names.items():
            if not control.command(state, verb, key):
                fail(f"the broker of {record.name} did not answer; {unanswered}")
    deadline = time.monotonic() + ORDERLY_STOP_SECONDS
    pids = {state["broker_pid"] for state in brokers.values() if isinstance(state.get("broker_pid"), int)}
    keys = {key: record.broker_pid for key, (_, record) in names.items()}
    while (pids or keys) and time.monotonic() < deadline:
        pids = {pid for pid in pids if _runs(pid)}
        keys = {key: pid for key, pid in keys.items() if control.still_hosted(key, pid, directory)}
        time.sleep(0.05)
    where = f" under {directory}, {STRIPPED_HOME}" if directory else ""
    for key, (_, record) in names.items():
        click.echo(f"{done} {record.name} ({key[:12]}){where}")


def _runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_log(target: str, directory: str | None = None, logs_dir: str | None = None) -> str | None:
    """The log of a running broker by name or key, else of an exited one by key or by name in its first line
    (in `directory` and `logs_dir`, else the runtime and log dirs)."""
    for state in control.state_files(directory):
        if control.matches(state, target) and state.get("log"):
            return str(state["log"])
    for record in control.running_backends(directory):  # a server of the one broker: its log, named by its key
        if control.matches(record, target):
            return os.path.join(logs_dir or log_dir(), f"{record.key}.log")
    for path in sorted(glob.glob(os.path.join(logs_dir or log_dir(), "*.log")), key=os.path.getmtime, reverse=True):
        if control.matches({"key": os.path.basename(path)[: -len(".log")]}, target):
            return path
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                if f"started for {target} (" in handle.readline():
                    return path
        except OSError:
            continue
    return None


@cli.command()
@click.argument("target")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
def logs(target: str, follow: bool) -> None:
    """Print the log of a backend's broker (by NAME or KEY)."""
    path = find_log(target)
    elsewhere = control.stripped_home_dir() if path is None else None
    if elsewhere:
        path = find_log(target, elsewhere, default_log_dir())
        if path is not None:
            click.echo(f"mcpsingleton: {target} ran under {elsewhere}, {STRIPPED_HOME}", err=True)
    if path is None:
        fail(f"no log for {target!r}; see `mcpsingleton ls` for names and keys")
    with open(path, encoding="utf-8", errors="replace") as handle:
        click.echo(handle.read(), nl=False)
        while follow:
            line = handle.readline()
            if line:
                click.echo(line, nl=False)
                continue
            try:
                time.sleep(0.2)
            except KeyboardInterrupt:
                return


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only say what would be killed.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of {pid, command, reason}.")
@click.option(
    "--yes", "confirm", is_flag=True, help="Confirm killing reparented servers where no proof exists (non-Linux)."
)
def reap(dry_run: bool, as_json: bool, confirm: bool) -> None:
    """Kill orphaned MCP servers and stale mcpsingleton state."""
    from .reaper import run_reap

    sys.exit(run_reap(dry_run=dry_run, as_json=as_json, confirm=confirm))


@cli.command()
def metrics() -> None:
    """Print metrics in the Prometheus text exposition format."""
    from .metrics import render

    click.echo(render(collect(include_unmanaged=False)), nl=False)


def _config_command(unwrap: bool):
    @click.argument("clients", nargs=-1)
    @click.option("--config", "config", type=click.Path(dir_okay=False), help="Work on this one config file.")
    @click.option("--dry-run", is_flag=True, help="Print a unified diff and write nothing.")
    def command(clients: tuple[str, ...], config: str | None, dry_run: bool, scope: str | None = None) -> None:
        from .configs import run_wrap

        if not dry_run:  # never write into configs a MCPSINGLETON_HOME no session can use
            ensure_usable_home()
        sys.exit(run_wrap(list(clients), config, dry_run, scope, unwrap))

    if not unwrap:
        command = click.option("--scope", type=click.Choice(SCOPES), help="Scope for the wrapped entries.")(command)
    return command


cli.command(name="wrap", help="Rewrite client configs so every stdio server runs through mcpsingleton.")(
    _config_command(unwrap=False)
)
cli.command(name="unwrap", help="Restore client configs exactly as they were before wrap.")(
    _config_command(unwrap=True)
)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--json", "as_json", is_flag=True, help="Print one object: scope, sharing (or null), policy.")
@click.option("--scope", type=click.Choice(("auto", *SCOPES)), default="auto", show_default=True)
@click.option("--name", help="The --name the server would run with (a config.toml MATCH).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def explain(as_json: bool, scope: str, name: str | None, command: tuple[str, ...]) -> None:
    """Which scope and sharing `run` would use for COMMAND, and why; starts nothing."""
    from ..policy.rules import decide, unread_xdg_config
    from ..shim.sharing import config_path

    decision = decide(scope, list(command), name)
    if decision.config_error:
        click.echo(f"mcpsingleton: ignoring {config_path()}: {decision.config_error}; fix it or remove it", err=True)
    if unread := unread_xdg_config():
        click.echo(
            f"mcpsingleton: ignoring {unread}: clients strip XDG_CONFIG_HOME, so the config is read from"
            f" {config_path()} only; move it there",
            err=True,
        )
    # this environment as a client that passes everything on would hand it to the server: nothing config-set
    separating = key_env_names(dict(os.environ), [], dict(os.environ))
    if as_json:
        fields = {"scope": decision.scope, "sharing": decision.sharing, "policy": decision.policy}
        click.echo(json.dumps({**fields, "env_key": separating, "env_rule": _env_rule()}))
        return
    sharing = decision.sharing or "decided by the running server (its declaration or its tools), else shared"
    click.echo(f"scope:   {decision.scope}\nsharing: {sharing}\npolicy:  {decision.policy}")
    click.echo(_env_lines(separating))
    if decision.lazy is not None:
        said = "yes" if decision.lazy else "no: the backend starts at once"
        click.echo(f"lazy:    {said} (config.toml)")
    if decision.idle is not None:
        click.echo(f"idle:    {decision.idle} (config.toml)")


WEAKER_ENV_RULE = (
    "warning: the client's environment cannot be read on this system, so configs differing only in a variable"
    " that is not secret-named (e.g. DATABASE_URL) share a backend; add --env-key VAR to keep them apart"
)


def _env_rule() -> str:
    """Which variables separate keys here: `full` (config-set ones count) or `secrets` (client env unreadable)."""
    return "full" if reads_client_environ() else "secrets"


def _env_lines(separating: dict[str, str]) -> str:
    """`explain`'s account of the env part of the key: names and reasons, never values."""
    from ..shim.keys import CLIENT_EDITED_VARS, CLIENT_SPAWN_PREFIXES, CLIENT_SPAWN_VARS

    named = ", ".join(f"{name} ({reason})" for name, reason in sorted(separating.items())) or "none"
    never = sorted(CLIENT_SPAWN_VARS | CLIENT_EDITED_VARS) + [prefix + "*" for prefix in CLIENT_SPAWN_PREFIXES]
    lines = [
        f"env:     separate keys here: {named}",
        "         also: --env-key VARs"
        + (", and every variable a client config sets for the server" if _env_rule() == "full" else ""),
        f"         never: what clients add or change for every server ({', '.join(never)}), per-terminal values",
    ]
    if separating:
        lines.append(
            "         so clients that strip secret-named variables (Codex, Gemini CLI) do not share with\n"
            "         clients that pass them on (Claude Code) when this is the environment they start in"
        )
    if _env_rule() == "secrets":
        lines.append(WEAKER_ENV_RULE)
    return "\n".join(lines)


def _serve_extra_missing() -> NoReturn:
    fail("serve needs its optional dependencies; install them with `pip install 'mcpsingleton[serve]'`")


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=7865, show_default=True, help="0: any free port.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback unless you say).")
@click.option("--no-browser", is_flag=True, help="Do not open the page in the browser.")
@click.option(
    "--session-ttl",
    default="30m",
    show_default=True,
    metavar="DURATION",
    callback=lambda _ctx, _param, value: _duration(value),
    help="End an MCP-over-HTTP session (/mcp/NAME) idle this long, detaching it from its server.",
)
def serve(port: int, host: str, no_browser: bool, session_ttl: float) -> None:
    """The local dashboard and APIs, in the foreground; the first line printed is its URL with the token.

    Also every known server over MCP Streamable HTTP at /mcp/NAME (config.toml [servers."NAME"] command,
    and the entries wrap manages): each HTTP session shares the backend of the stdio sessions."""
    try:
        from ..serve.mcp_http import McpEndpoint
        from ..serve.server import run_serve
    except ImportError:
        _serve_extra_missing()
    sys.exit(run_serve(host, port, open_browser=not no_browser, routes=McpEndpoint(ttl=session_ttl).routes()))


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except UsageError:
        raise click.BadParameter(f"{text!r} is not a duration: use 90s, 30m, 2h") from None
    if seconds <= 0:
        raise click.BadParameter("a session TTL must be longer than 0")
    return seconds


@cli.command()
def dashboard() -> None:
    """Open the running serve's page (starting serve in the background when none runs)."""
    try:
        from ..serve.server import open_dashboard
    except ImportError:
        _serve_extra_missing()
    click.echo(open_dashboard())
