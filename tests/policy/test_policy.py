"""Issue 12: the sharing decision made before a backend starts, and what a running server can change."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import platformdirs
import pytest
from helpers import RawClient, mcpsingleton_exe, shim

from mcpsingleton.common import paths
from mcpsingleton.common.cmdline import default_name
from mcpsingleton.common.decision import Decision
from mcpsingleton.policy.learnt import declared_sharing, runtime_decision, tool_shape_sharing
from mcpsingleton.policy.rules import decide, match_names
from mcpsingleton.shim.sharing import resolve_scope

SALT = b"s" * 32


def catalog_policy(server: str) -> str:
    """What `policy` says for a catalog entry, from the catalog itself (its wording is the catalog's)."""
    import tomllib

    return "catalog: " + tomllib.loads(Path(paths.CATALOG_PATH).read_text())["servers"][server]["reason"]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["npx", "-y", "@wonderwhy-er/desktop-commander@0.2.52"], "@wonderwhy-er/desktop-commander"),
        (
            ["node", "/x/node_modules/@modelcontextprotocol/server-memory/dist/index.js"],
            "@modelcontextprotocol/server-memory",
        ),
        (["node", "/x/node_modules/desktop-commander/dist/index.js"], "desktop-commander"),
        (["uvx", "mcp-server-time"], "mcp-server-time"),
        (["uvx", "--from", "mcp-server-time==2026.1", "mcp-server-time"], "mcp-server-time"),
        (["uvx", "--from=mcp-server-git", "git-server"], "mcp-server-git"),
        (["/home/me/.venv/bin/mcp-server-time", "--local-timezone", "UTC"], "mcp-server-time"),
        (["python", "-m", "mcp_server_time"], "mcp-server-time"),
        (
            ["docker", "run", "-i", "--rm", "-e", "A=1", "-v", "/a:/b", "ghcr.io/github/github-mcp-server:v1"],
            "github-mcp-server",
        ),
        (["docker", "run", "-i", "mcp/fetch@sha256:abc"], "mcp/fetch"),
        (["pnpm", "dlx", "@playwright/mcp@latest"], "@playwright/mcp"),
        (["bunx", "chrome-devtools-mcp@1"], "chrome-devtools-mcp"),
        (
            ["sh", "-c", "exec npx -y @modelcontextprotocol/server-sequential-thinking"],
            "@modelcontextprotocol/server-sequential-thinking",
        ),
        (["env", "FOO=bar", "node", "/srv/weather/dist/index.js"], "weather"),
    ],
)
def test_match_names_find_the_server_however_launched(command: list[str], expected: str) -> None:
    assert expected in match_names(command)


@pytest.mark.parametrize(
    "command",
    [
        ["./node_modules/.bin/playwright-mcp"],
        ["./node_modules/.bin/mcp-server-playwright", "--headless"],
        ["docker", "run", "-i", "--rm", "--init", "mcp/playwright"],
        ["docker", "run", "-i", "--rm", "docker.io/mcp/playwright:latest"],
        ["podman", "run", "-i", "mcr.microsoft.com/playwright/mcp"],
    ],
)
def test_every_launch_form_of_playwright_gets_its_catalog_decision(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Issue 19 row 18: a `.bin` link or a Docker Hub image was no catalog match, so sessions shared one browser."""
    package = tmp_path / "node_modules" / "@playwright" / "mcp"
    package.mkdir(parents=True)
    (package / "cli.js").write_text("")
    bins = tmp_path / "node_modules" / ".bin"
    bins.mkdir()
    (bins / "playwright-mcp").symlink_to("../@playwright/mcp/cli.js")
    (bins / "mcp-server-playwright").symlink_to("../@playwright/mcp/cli.js")
    monkeypatch.chdir(tmp_path)
    decision = decide("auto", command)
    assert (decision.sharing, decision.policy) == ("isolated", catalog_policy("@playwright/mcp"))


def test_a_relative_bin_link_is_decided_per_directory_by_what_it_points_into(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decision cache must not carry one project's `./node_modules/.bin/srv` over to another's."""
    for project, package in (("a", "weather-mcp"), ("b", "@playwright/mcp")):
        (tmp_path / project / "node_modules" / package).mkdir(parents=True)
        (tmp_path / project / "node_modules" / package / "cli.js").write_text("")
        (tmp_path / project / "node_modules" / ".bin").mkdir()
        (tmp_path / project / "node_modules" / ".bin" / "srv").symlink_to(f"../{package}/cli.js")
    directory = str(home / "run")
    os.makedirs(directory, mode=0o700)
    monkeypatch.chdir(tmp_path / "a")
    assert resolve_scope("auto", ["./node_modules/.bin/srv"], None, directory, SALT).sharing is None
    monkeypatch.chdir(tmp_path / "b")
    assert resolve_scope("auto", ["./node_modules/.bin/srv"], None, directory, SALT).sharing == "isolated"


def test_a_bin_link_answers_to_the_package_it_points_into(tmp_path: Path) -> None:
    package = tmp_path / "node_modules" / "@acme" / "weather-mcp" / "dist"
    package.mkdir(parents=True)
    (package / "index.js").write_text("")
    (tmp_path / "node_modules" / ".bin").mkdir()
    link = tmp_path / "node_modules" / ".bin" / "weather"
    link.symlink_to("../@acme/weather-mcp/dist/index.js")
    assert match_names([str(link)]) == ["@acme/weather-mcp", "weather"]
    assert match_names([str(tmp_path / "node_modules/.bin/not-installed")]) == ["not-installed"]


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["node", "/x/my-server/scripts/index.js"], "my-server"),  # issue 22: `ls` said `scripts`
        (["python", "/x/weather/stdio.py"], "weather"),  # issue 22: `ls` said `stdio`
        (["uvx", "mcp-server-time"], "mcp-server-time"),
        (["bash", "-lc", "TOKEN=x exec npx -y chrome-devtools-mcp@1"], "chrome-devtools-mcp"),
        (["docker", "run", "-i", "--rm", "-e", "TOKEN", "docker.io/mcp/playwright:1"], "playwright"),
        (["deno", "run", "-A", "npm:@playwright/mcp@1"], "mcp"),
    ],
)
def test_ls_names_a_server_by_what_the_policy_matches_it_as(command: list[str], name: str) -> None:
    """One reader of the command line (`cmdline`): the name `ls` shows is the last part of the first MATCH."""
    assert default_name(command) == name
    assert match_names(command)[0].rsplit("/", 1)[-1] == name


def test_a_url_with_a_token_names_nothing() -> None:
    names = match_names(["uvx", "--from", "git+https://tok3n@host/r.git", "mcp-x"])
    assert names == ["mcp-x"]


def test_match_names_skip_launchers_option_values_and_assignments() -> None:
    names = match_names(["docker", "run", "-e", "secret-ish", "--name", "box", "TOKEN=abc", "image"], name="mine")
    assert names == ["mine", "image"]


def test_catalog_decides_isolated_and_shared_servers(home: Path) -> None:
    commander = decide("auto", ["npx", "-y", "@wonderwhy-er/desktop-commander@latest"])
    assert (commander.scope, commander.sharing) == ("isolated", "isolated")
    assert commander.policy == catalog_policy("@wonderwhy-er/desktop-commander")
    time_server = decide("auto", ["uvx", "mcp-server-time"])
    assert (time_server.scope, time_server.sharing) == ("global", "shared")


def test_unknown_server_is_left_to_the_running_server(home: Path) -> None:
    decision = decide("auto", ["node", "/srv/weather/dist/index.js"])
    assert (decision.scope, decision.sharing) == ("cwd", None)
    assert decision.policy == "default: no catalog entry; shared per directory"


def test_explicit_scope_wins_over_config_and_catalog(home: Path) -> None:
    (home / "config.toml").write_text('[servers."desktop-commander"]\nscope = "global"\n')
    decision = decide("cwd", ["npx", "-y", "@wonderwhy-er/desktop-commander"])
    assert (decision.scope, decision.sharing, decision.policy, decision.final) == ("cwd", "shared", "--scope cwd", True)


def test_config_toml_overrides_catalog_by_name_or_word(home: Path) -> None:
    (home / "config.toml").write_text(
        '[servers."mcp-server-time"]\nscope = "isolated"\n\n[servers."mine"]\nscope = "global"\n'
        '[servers."@wonderwhy-er/desktop-commander"]\nscope = "auto"\n'
    )
    forced = decide("auto", ["/venv/bin/mcp-server-time"])
    assert (forced.scope, forced.sharing, forced.policy, forced.final) == ("isolated", "isolated", "config.toml", True)
    by_name = decide("auto", ["node", "/srv/weather/dist/index.js"], name="mine")
    assert (by_name.scope, by_name.sharing, by_name.policy) == ("global", "shared", "config.toml")
    auto = decide("auto", ["npx", "@wonderwhy-er/desktop-commander"])
    assert auto.policy.startswith("catalog: "), "scope = auto leaves the decision to the built-in policy"


@pytest.mark.parametrize(
    "text",
    [
        '[servers."x"\nscope = "global"\n',
        '[servers."x"]\nscope = "everywhere"\n',
        'servers = "x"\n',
        '[servers."x"]\naliases = "y"\n',
        '[servers."x"]\nlazy = "yes"\n',
        '[servers."x"]\nidle = "soon"\n',
        "[budget]\nmax_backends = 0\n",
        '[budget]\nmax_memory = "lots"\n',
        b"\xff\xfe",
        "a = " + "[" * 2000 + "]" * 2000 + "\n",  # issue 19 row 12: tomllib's RecursionError
    ],
)
def test_broken_config_falls_back_to_builtin_policy_with_its_reason(home: Path, text: str | bytes) -> None:
    path = home / "config.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    decision = decide("auto", ["uvx", "mcp-server-time"])
    assert decision.policy.startswith("catalog: ")
    assert decision.config_error and "\n" not in decision.config_error


def test_config_path_is_platformdirs_default_user_config_dir_whatever_xdg_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 19 row 13: clients strip XDG_* (Codex), so the path must not depend on it."""
    monkeypatch.delenv("MCPSINGLETON_HOME", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    expected = os.path.join(platformdirs.user_config_dir("mcpsingleton"), "config.toml")
    assert paths.config_path() == expected
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert paths.config_path() == expected


def test_a_client_that_strips_xdg_reads_the_same_config_and_explain_names_an_unread_one(tmp_path: Path) -> None:
    """Issue 19 row 13: the isolation asked for in config.toml holds for a client that strips XDG_*."""
    user_config = tmp_path / ".config" / "mcpsingleton"
    user_config.mkdir(parents=True)
    (user_config / "config.toml").write_text('[servers."mcp-server-time"]\nscope = "isolated"\n')
    stripped = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    with_xdg = {**stripped, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    for env in (stripped, with_xdg):
        out = subprocess.run(
            [mcpsingleton_exe(), "explain", "--json", "--", "uvx", "mcp-server-time"],
            capture_output=True, text=True, timeout=30, env=env,
        )
        assert json.loads(out.stdout)["policy"] == "config.toml", out.stderr
        assert out.stderr == ""
    (tmp_path / "xdg" / "mcpsingleton").mkdir(parents=True)
    (tmp_path / "xdg" / "mcpsingleton" / "config.toml").write_text("")
    out = subprocess.run(
        [mcpsingleton_exe(), "explain", "--", "uvx", "mcp-server-time"],
        capture_output=True, text=True, timeout=30, env=with_xdg,
    )
    [line] = out.stderr.splitlines()
    assert line.startswith(f"mcpsingleton: ignoring {tmp_path}/xdg/mcpsingleton/config.toml: ")


def test_decision_cache_is_private_holds_no_argv_and_follows_config_edits(home: Path) -> None:
    directory = str(home / "run")
    os.makedirs(directory, mode=0o700)
    command = ["/venv/bin/mcp-server-time", "--token", "hunter2-secret"]
    first = resolve_scope("auto", command, None, directory, SALT)
    assert first.policy.startswith("catalog: ")
    [cached] = list((home / "run" / "decisions").glob("*/*"))
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert "hunter2" not in cached.name and "hunter2" not in cached.read_text()
    assert resolve_scope("auto", command, None, directory, SALT) == first
    (home / "config.toml").write_text('[servers."mcp-server-time"]\nscope = "isolated"\n')
    assert resolve_scope("auto", command, None, directory, SALT).policy == "config.toml"
    [renewed] = list((home / "run" / "decisions").glob("*/*"))
    assert renewed.parent != cached.parent, "the decisions of the old config.toml are gone"


def test_config_toml_lazy_needs_no_scope_and_survives_the_decision_cache(home: Path) -> None:
    (home / "config.toml").write_text('[servers."mcp-server-time"]\nlazy = true\n[servers."y"]\nscope = "global"\n')
    lazy = decide("auto", ["uvx", "mcp-server-time"])
    assert lazy.lazy and lazy.policy.startswith("catalog: ")  # lazy alone leaves the sharing decision alone
    assert not decide("auto", ["y"]).lazy
    directory = str(home / "run")
    os.makedirs(directory, mode=0o700)
    resolve_scope("auto", ["uvx", "mcp-server-time"], None, directory, SALT)
    assert resolve_scope("auto", ["uvx", "mcp-server-time"], None, directory, SALT).lazy  # read back from the cache


def test_config_toml_eager_idle_and_budget_hold_with_an_explicit_scope_too(home: Path) -> None:
    (home / "config.toml").write_text(
        '[budget]\nmax_backends = 3\nmax_memory = "2G"\n[servers."mcp-server-time"]\nlazy = false\nidle = "30s"\n'
    )
    directory = str(home / "run")
    os.makedirs(directory, mode=0o700)
    for scope in ("auto", "global", "auto"):  # the last one from the decision cache
        decision = resolve_scope(scope, ["uvx", "mcp-server-time"], None, directory, SALT)
        assert (decision.lazy, decision.idle, decision.budget) == (False, "30s", (3, 2 << 30)), scope
    assert resolve_scope("global", ["uvx", "mcp-server-time"], None, directory, SALT).policy == "--scope global"
    other = resolve_scope("auto", ["other"], None, directory, SALT)
    assert (other.lazy, other.idle, other.budget) == (None, None, (3, 2 << 30))  # the budget is the user's


def test_decision_round_trips_through_its_cache_text() -> None:
    decision = Decision("cwd", None, "default: x", config_error="line 1\nline 2")
    again = Decision.from_lines(decision.as_lines())
    assert again is not None and (again.sharing, again.config_error) == (None, "line 1 line 2")
    assert Decision.from_lines("garbage") is None


def test_broken_config_warns_once_and_session_decision_still_made(home: Path, capsys: pytest.CaptureFixture) -> None:
    (home / "config.toml").write_text("[servers\n")
    directory = str(home / "run")
    os.makedirs(directory, mode=0o700)
    decision = resolve_scope("auto", ["mcp-server-time"], None, directory, SALT)
    assert decision.scope == "global"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcpsingleton: ignoring ") and "config.toml" in lines[0]


# ---- runtime layers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capabilities", "expected"),
    [
        ({"x-mux": {"sharing": "isolated"}}, "isolated"),
        ({"experimental": {"x-mux": {"sharing": "shared"}}}, "shared"),
        ({"experimental": {"x-mux": {"sharing": "session-aware"}}}, "shared"),
    ],
)
def test_declared_sharing_reads_x_mux(capabilities: dict, expected: str) -> None:
    sharing_, policy = declared_sharing({"protocolVersion": "2025-06-18", "capabilities": capabilities}) or ("", "")
    assert sharing_ == expected
    assert policy.startswith("server declares x-mux sharing=")


@pytest.mark.parametrize(
    "result",
    [
        {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}},
        {"protocolVersion": "2025-06-18", "capabilities": {"x-mux": {"sharing": "maybe"}}},
        {"protocolVersion": "2025-06-18", "capabilities": {"x-mux": "isolated", "experimental": []}},
        {"capabilities": None},
    ],
)
def test_declared_sharing_ignores_absent_or_malformed_declarations(result: dict) -> None:
    assert declared_sharing(result) is None


def test_stateless_era_server_is_shareable() -> None:
    assert declared_sharing({"protocolVersion": "2026-07-28", "capabilities": {}}) == (
        "shared",
        "server speaks the stateless 2026-07-28 protocol",
    )
    assert declared_sharing({"supportedVersions": ["2025-06-18", "2026-07-28"], "capabilities": {}})


@pytest.mark.parametrize(
    ("names", "culprit"),
    [
        (["get_weather", "browser_navigate", "browser_click"], "browser_navigate"),
        (["list_pages", "new_page"], "new_page"),
        (["read_file", "start_process", "interact_with_process"], "start_process"),
        (["Tab_Open"], "Tab_Open"),
    ],
)
def test_tool_shapes_that_look_session_bound_isolate(names: list[str], culprit: str) -> None:
    assert tool_shape_sharing([{"name": n} for n in names]) == ("isolated", f"tools look session-bound: {culprit}")


def test_stateless_tool_shapes_decide_nothing() -> None:
    assert tool_shape_sharing([{"name": "get_current_time"}, {"name": "convert_time"}, {"nameless": 1}, "x"]) is None


def test_runtime_decision_follows_the_chain_order() -> None:
    isolated_decl = {"capabilities": {"x-mux": {"sharing": "isolated"}}}
    browser_tools = [{"name": "browser_navigate"}]
    assert runtime_decision("shared", True, isolated_decl, browser_tools) is None, "a user decision is final"
    assert runtime_decision("shared", False, isolated_decl, None) == (
        "isolated",
        "server declares x-mux sharing=isolated",
    ), "a declaration outranks the catalog"
    assert runtime_decision("shared", False, {"capabilities": {}}, browser_tools) is None, "catalog outranks tools"
    assert runtime_decision(None, False, {"capabilities": {}}, browser_tools) == (
        "isolated",
        "tools look session-bound: browser_navigate",
    )
    assert runtime_decision(None, False, {"capabilities": {}}, None) is None


# ---- explain ---------------------------------------------------------------------------------------


def _explain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([mcpsingleton_exe(), "explain", *args], capture_output=True, text=True, timeout=30)


def test_explain_json_prints_the_decision(home: Path) -> None:
    out = _explain("--json", "--", "npx", "-y", "@modelcontextprotocol/server-sequential-thinking@2026.8.31")
    assert out.returncode == 0, out.stderr
    fixed = ("scope", "sharing", "policy")  # extra fields (the env part of the key) may follow
    assert {field: json.loads(out.stdout)[field] for field in fixed} == {
        "scope": "isolated",
        "sharing": "isolated",
        "policy": catalog_policy("@modelcontextprotocol/server-sequential-thinking"),
    }
    unknown = json.loads(_explain("--json", "--", "node", "/srv/weather/dist/index.js").stdout)
    assert {field: unknown[field] for field in fixed} == {
        "scope": "cwd",
        "sharing": None,
        "policy": "default: no catalog entry; shared per directory",
    }


def test_explain_shows_config_override_and_reports_a_broken_config(home: Path) -> None:
    (home / "config.toml").write_text('[servers."mcp-server-time"]\nscope = "isolated"\n')
    assert json.loads(_explain("--json", "--", "uvx", "mcp-server-time").stdout)["policy"] == "config.toml"
    (home / "config.toml").write_text("[servers\n")
    out = _explain("--", "uvx", "mcp-server-time")
    assert out.returncode == 0
    assert "policy:  catalog: " in out.stdout
    assert len(out.stderr.splitlines()) == 1 and "config.toml" in out.stderr


def test_a_config_nested_too_deeply_is_one_line_and_sessions_run_on_the_catalog(
    home: Path, fake_server: list[str]
) -> None:
    """Issue 19 row 12: a 2000-deep array killed every `run` and `explain` with a RecursionError traceback."""
    (home / "config.toml").write_text("a = " + "[" * 2000 + "]" * 2000 + "\n")
    out = _explain("--", "uvx", "mcp-server-time")
    assert out.returncode == 0 and "policy:  catalog: " in out.stdout
    [line] = out.stderr.splitlines()
    assert line.startswith(f"mcpsingleton: ignoring {home / 'config.toml'}: ")
    client = RawClient(shim(fake_server))
    try:
        assert "result" in client.initialize()
    finally:
        assert client.close() == 0
    [line] = client.stderr().splitlines()
    assert line.startswith(f"mcpsingleton: ignoring {home / 'config.toml'}: ")


def test_explain_says_when_config_toml_makes_a_server_lazy(home: Path) -> None:
    assert "lazy:" not in _explain("--", "uvx", "mcp-server-time").stdout
    (home / "config.toml").write_text('[servers."mcp-server-time"]\nlazy = true\n')
    assert "lazy:    yes (config.toml)" in _explain("--", "uvx", "mcp-server-time").stdout


def test_explain_starts_nothing(home: Path) -> None:
    assert _explain("--json", "--", "mcp-server-time").returncode == 0
    assert not (home / "run").exists()


def test_wrap_dry_run_shows_the_policy_of_each_entry(home: Path) -> None:
    config = home / "claude.json"
    config.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "commander": {"command": "npx", "args": ["-y", "@wonderwhy-er/desktop-commander@latest"]},
                    "weather": {"command": "node", "args": ["/srv/weather/dist/index.js"]},
                }
            }
        )
    )
    out = subprocess.run(
        [mcpsingleton_exe(), "wrap", "--config", str(config), "--dry-run"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    policy = catalog_policy("@wonderwhy-er/desktop-commander")
    assert f"  commander: scope isolated, isolated ({policy})" in out.stdout
    assert "  weather: scope cwd, decided when it runs (default: no catalog entry; shared per directory)" in out.stdout


def test_warm_attach_reads_the_cached_decision_without_heavy_imports(home: Path, time_server: list[str]) -> None:
    """The second session of a server attaches with the decision from the cache: no tomllib, json, re, …"""
    import sys

    from helpers import RawClient, shim

    first = RawClient(shim(time_server, "--linger", "0"))
    first.initialize()
    second = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mcpsingleton", "run", "--linger", "0", "--", *time_server],
        input=b"",
        capture_output=True,
        timeout=30,
    )
    first.close()
    assert second.returncode == 0, second.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in second.stderr.decode().splitlines() if "|" in line}
    assert "mcpsingleton.shim.sharing" in imported
    heavy = {"tomllib", "json", "re", "click", "asyncio", "psutil", "platformdirs", "mcpsingleton.policy.rules"}
    assert not heavy & imported, heavy & imported
    assert "mcpsingleton.shim.election" not in imported, "attached to the running broker, started none"


def test_a_relative_command_is_matched_from_a_deleted_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`explain` (and a cold decision) in a directory deleted under it: names from the words, no traceback."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert match_names(["./node_modules/.bin/mcp-server-sequential-thinking"]) == ["mcp-server-sequential-thinking"]
