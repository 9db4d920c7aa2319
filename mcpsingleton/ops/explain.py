"""`mcpsingleton explain COMMAND`: which scope and sharing `run` would use, and why, with the env part of the
key (names and reasons, never values); starts nothing."""

from __future__ import annotations

import json
import os

import click

from ..shim.keys import key_env_names
from .listing import WEAKER_ENV_RULE, env_rule


def explain(as_json: bool, scope: str, name: str | None, command: list[str]) -> None:
    """Print the decision for `command` (`--json`: one object)."""
    from ..common.paths import config_path
    from ..policy.rules import decide, unread_xdg_config

    decision = decide(scope, command, name)
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
        click.echo(json.dumps({**fields, "env_key": separating, "env_rule": env_rule()}))
        return
    sharing = decision.sharing or "decided by the running server (its declaration or its tools), else shared"
    click.echo(f"scope:   {decision.scope}\nsharing: {sharing}\npolicy:  {decision.policy}")
    click.echo(_env_lines(separating))
    if decision.lazy is not None:
        said = "yes" if decision.lazy else "no: the backend starts at once"
        click.echo(f"lazy:    {said} (config.toml)")
    if decision.idle is not None:
        click.echo(f"idle:    {decision.idle} (config.toml)")


def _env_lines(separating: dict[str, str]) -> str:
    """`explain`'s account of the env part of the key: names and reasons, never values."""
    from ..shim.keys import CLIENT_EDITED_VARS, CLIENT_SPAWN_PREFIXES, CLIENT_SPAWN_VARS

    named = ", ".join(f"{name} ({reason})" for name, reason in sorted(separating.items())) or "none"
    never = sorted(CLIENT_SPAWN_VARS | CLIENT_EDITED_VARS) + [prefix + "*" for prefix in CLIENT_SPAWN_PREFIXES]
    lines = [
        f"env:     separate keys here: {named}",
        "         also: --env-key VARs"
        + (", and every variable a client config sets for the server" if env_rule() == "full" else ""),
        f"         never: what clients add or change for every server ({', '.join(never)}), per-terminal values",
    ]
    if separating:
        lines.append(
            "         so clients that strip secret-named variables (Codex, Gemini CLI) do not share with\n"
            "         clients that pass them on (Claude Code) when this is the environment they start in"
        )
    if env_rule() == "secrets":
        lines.append(WEAKER_ENV_RULE)
    return "\n".join(lines)
