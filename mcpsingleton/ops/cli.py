"""The command line (click). Thin: each command hands over to the module that owns the idea.

`run` never normally reaches this module — `__main__` dispatches it to the lean shim before click
loads; it is declared here so that `mcpsingleton run --help` and completions know about it.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import click

from .. import __version__
from ..common import wire
from ..common.errors import UsageError
from ..common.options import RUN_OPTIONS, SCOPES, parse_duration
from ..common.paths import default_log_dir, ensure_private_dir, log_dir, runtime_dir
from . import control
from .listing import STRIPPED_HOME, collect, more_elsewhere, render_ls

ORDERLY_STOP_SECONDS = 10.0


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
        more = more_elsewhere([record for _, record in others], elsewhere)
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
    from .explain import explain as explain_server

    explain_server(as_json, scope, name, list(command))


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
