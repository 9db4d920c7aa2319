"""wrap / unwrap of client configs, on real files in a temporary HOME and project dir."""

from __future__ import annotations

import difflib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import TESTS, mcpsingleton_exe

from mcpsingleton.common.paths import launcher_dir
from mcpsingleton.ops.configs import clients as registry
from mcpsingleton.ops.configs import codex_toml, files, jsonc, run_wrap, wrapping
from mcpsingleton.ops.configs.entries import Document, classify
from mcpsingleton.ops.configs.records import InsertedArgs, records_path
from mcpsingleton.ops.configs.wrapping import Edit, apply
from mcpsingleton.shim import launcher
from mcpsingleton.shim.attach import parse_args

FIXTURES = TESTS / "fixtures" / "configs"
SECRET = "s3cr3t"  # every secret in the fixtures contains this


@dataclass(frozen=True)
class Case:
    fixture: str
    client: str
    location: int  # index into registry.candidates(client)
    crlf: bool = False

    def __str__(self) -> str:
        return self.fixture

    @property
    def path(self) -> Path:
        return Path(registry.candidates(self.client)[self.location].path)

    def install(self) -> bytes:
        data = (FIXTURES / self.fixture).read_bytes()
        if self.crlf:
            data = data.replace(b"\n", b"\r\n")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(data)
        return data

    def load(self, text: str | None = None) -> Document:
        text = self.path.read_bytes().decode("utf-8") if text is None else text
        if self.fixture.endswith(".toml"):
            return codex_toml.load(text)
        return jsonc.load(text, registry.candidates(self.client)[self.location].servers)


CASES = [
    Case("claude_desktop_config.json", "claude-desktop", 0),
    Case("claude.json", "claude-code", 0),
    Case("project.mcp.json", "claude-code", 1),
    Case("cursor.mcp.json", "cursor", 0, crlf=True),
    Case("vscode.settings.json", "vscode", 0),
    Case("vscode.mcp.json", "vscode", 2),
    Case("windsurf.mcp_config.json", "windsurf", 0),
    Case("gemini.settings.json", "gemini", 0),
    Case("codex.config.toml", "codex", 0),
]
CURSOR, CODEX, DESKTOP = CASES[3], CASES[8], CASES[0]


@pytest.fixture
def exe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A HOME (our state goes under it), a project dir as cwd, and an installed `mcpsingleton` first on PATH;
    the command wrap writes into configs: the launcher for it, under HOME."""
    home, project, bindir = tmp_path / "home", tmp_path / "project", tmp_path / "bin"
    for directory in (home, project, bindir):
        directory.mkdir()
    program = bindir / "mcpsingleton"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MCPSINGLETON_HOME", raising=False)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    for name in ("XDG_CONFIG_HOME", "CODEX_HOME", "APPDATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(project)
    return launcher.launcher_path(launcher_dir(), str(program))


def wrap(
    *clients: str, config: str | None = None, dry_run: bool = False, scope: str | None = None, unwrap: bool = False
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_wrap(list(clients), config, dry_run, scope, unwrap, out, err)
    return code, out.getvalue(), err.getvalue()


def unwrap(*clients: str, **options: object) -> tuple[int, str, str]:
    return wrap(*clients, unwrap=True, **options)


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + files.BACKUP_MARK + "*"))


def stdio_entries(doc: Document) -> dict[tuple[str, ...], dict]:
    return {entry.path: entry.data for entry in doc.entries if classify(entry)[0] == "stdio"}


def outside(doc: Document, paths: set[tuple[str, ...]], added: set[tuple[str, ...]]) -> str:
    """The text with the command and args of the entries at `paths` cut out (args members in `added` too)."""
    edits = []
    for entry in doc.entries:
        if entry.path not in paths:
            continue
        edits.append(Edit(entry.command.start, entry.command.end, "<command>"))
        if entry.path in added:
            edits.append(Edit(entry.slot.pos, entry.args.close + 1, ""))
        elif entry.args:
            edits.append(Edit(entry.args.open - 1, entry.args.close + 1, "<args>"))
    return apply(doc.text, edits)


# --- every format: wrap, idempotence, exact unwrap -------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=str)
def test_wrap_wraps_every_stdio_entry_and_leaves_the_rest_byte_identical(case: Case, exe: str) -> None:
    case.install()
    before = case.load()
    stdio = stdio_entries(before)
    assert stdio, "each fixture has stdio entries"

    code, out, err = wrap(case.client)

    assert (code, err) == (0, "")
    assert f"{case.path} ({case.client}): wrapped {len(stdio)} server" in out
    after = case.load()
    for entry in after.entries:
        old = stdio.get(entry.path)
        if old is None:
            assert entry.data == next(e.data for e in before.entries if e.path == entry.path)
            continue
        env_options = [word for key in old.get("env", {}) for word in ("--env-key", key)]
        assert entry.data["command"] == exe
        assert entry.data["args"] == [
            "run",
            "--name",
            entry.name,
            *env_options,
            old["command"],
            *old.get("args", []),
        ], "no `--`: old MCP Inspector versions split their argv at the first one"
        assert {k: v for k, v in entry.data.items() if k not in ("command", "args")} == {
            k: v for k, v in old.items() if k not in ("command", "args")
        }
    added = {path for path, data in stdio.items() if "args" not in data}
    assert outside(after, set(stdio), added) == outside(before, set(stdio), set())


@pytest.mark.parametrize("case", CASES, ids=str)
def test_wrap_twice_changes_nothing(case: Case, exe: str) -> None:
    case.install()
    assert wrap(case.client)[0] == 0
    wrapped, saved = case.path.read_bytes(), backups(case.path)

    code, out, _ = wrap(case.client)

    assert code == 0
    assert "nothing to wrap (" in out and "already wrapped" in out
    assert case.path.read_bytes() == wrapped
    assert backups(case.path) == saved


@pytest.mark.parametrize("case", CASES, ids=str)
def test_unwrap_restores_the_original_bytes(case: Case, exe: str) -> None:
    original = case.install()
    assert wrap(case.client, scope="global")[0] == 0
    assert case.path.read_bytes() != original

    code, out, err = unwrap(case.client)

    assert (code, err) == (0, "")
    assert "unwrapped" in out
    assert case.path.read_bytes() == original
    assert len(backups(case.path)) == 1
    assert "nothing to unwrap (" in unwrap(case.client)[1]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_dry_run_writes_nothing_and_prints_a_diff(case: Case, exe: str) -> None:
    original = case.install()

    code, out, _ = wrap(case.client, dry_run=True)

    assert code == 0
    assert case.path.read_bytes() == original
    assert backups(case.path) == []
    assert not os.path.exists(records_path())
    assert out.startswith(f"--- {case.path}\n+++ {case.path}\n@@ ")
    assert re.search(rf"^\+.*{re.escape(json.dumps(exe))}", out, re.MULTILINE)
    assert f"would wrap {len(stdio_entries(case.load()))} server" in out


@pytest.mark.parametrize("case", CASES, ids=str)
def test_dry_run_unwrap_writes_nothing_and_prints_a_diff(case: Case, exe: str) -> None:
    case.install()
    wrap(case.client)
    wrapped = case.path.read_bytes()

    code, out, _ = unwrap(case.client, dry_run=True)

    assert code == 0
    assert case.path.read_bytes() == wrapped
    assert len(backups(case.path)) == 1
    assert re.search(rf"^-.*{re.escape(json.dumps(exe))}", out, re.MULTILINE)
    assert "would unwrap" in out


@pytest.mark.parametrize("case", CASES, ids=str)
def test_diffs_never_show_a_secret(case: Case, exe: str) -> None:
    assert SECRET in case.install().decode()
    _, wrap_diff, wrap_err = wrap(case.client, dry_run=True)
    wrap(case.client)
    _, unwrap_diff, unwrap_err = unwrap(case.client, dry_run=True)
    assert "\n@@ " in wrap_diff and "\n@@ " in unwrap_diff
    assert SECRET not in wrap_diff + wrap_err + unwrap_diff + unwrap_err


def test_dry_run_masks_secrets_only(exe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Secret-named values and args (as `ls` masks them) and credentials in URLs are hidden; the rest of
    the env, and the MCPSINGLETON_HOME wrap is about to write, are what the user came to check."""
    home = tmp_path / "ms"
    monkeypatch.setenv("MCPSINGLETON_HOME", str(home))
    gemini = CASES[7]
    gemini.path.parent.mkdir(parents=True)
    env = {"TZ": "UTC", "MEMORY_FILE_PATH": "/data/memory.json", "GITHUB_TOKEN": "ghp_s3cr3t",
           "DATABASE_URL": "postgres://u:s3cr3t@db/app"}
    args = ["--api-key", "s3cr3t_arg", "--port", "8080", "OPENAI_API_KEY=sk-s3cr3t"]
    gemini.path.write_text(json.dumps({"mcpServers": {"m": {"command": "srv", "args": args, "env": env}}}))

    code, out, _ = wrap("gemini", dry_run=True)

    assert code == 0 and SECRET not in out
    shown = ['"TZ": "UTC"', '"MEMORY_FILE_PATH": "/data/memory.json"', f'"MCPSINGLETON_HOME": {json.dumps(str(home))}']
    masked = ['"--api-key", "***", "--port", "8080", "***"', '"GITHUB_TOKEN": "***"', '"DATABASE_URL": "***"']
    assert all(text in out for text in shown + masked)
    added = [line for line in out.splitlines() if line.startswith("+") and '"run"' in line]
    assert added and '"--env-key", "***"' not in added[0], "run's own options name variables: never masked"


def test_secrets_on_a_changed_line_are_masked(exe: str) -> None:
    """In a one-line file the changed line holds the env too: an unmasked diff would leak it."""
    case = CASES[6]
    original = case.install().decode()
    wrap(case.client)
    raw_diff = "".join(difflib.unified_diff([original], [case.path.read_text(encoding="utf-8")]))
    assert SECRET in raw_diff
    case.install()

    _, out, _ = wrap(case.client, dry_run=True)

    assert SECRET not in out
    assert '"STRIPE_SECRET_KEY":"***"' in out


# --- file safety ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "content", "what"),
    [
        (
            CURSOR,
            '{"mcpServers": {"a": {"command": "x",,}}}',
            "not valid JSON (line 1, column 38: expected a quoted key",
        ),
        (CURSOR, '{"mcpServers": {"a": {"command": "x"}', "not valid JSON (line 1, column 38: expected"),
        (CASES[4], '{\n  "mcp": {} /* never closed\n}', "not valid JSON (line 2"),
        (DESKTOP, '{"mcpServers": {"a": {"command": "x\ny"}}}', "not valid JSON (line 1"),
        (DESKTOP, '{"mcpServers": {}} trailing', "not valid JSON (line 1, column 20: unexpected text after"),
        (CODEX, '[mcp_servers.a]\ncommand = "x\n', "not valid TOML"),
        (CODEX, "[mcp_servers.a]\ncommand = 1\ncommand = 2\n", "not valid TOML"),
        (CASES[7], b'\xff\xfe{"mcpServers": {}}', "not UTF-8 text"),
    ],
    ids=[
        "double-comma",
        "truncated",
        "open-comment",
        "newline-in-string",
        "trailing-text",
        "toml-string",
        "toml-duplicate",
        "utf16",
    ],
)
def test_malformed_file_is_reported_in_one_line_and_left_untouched(
    case: Case, content: str | bytes, what: str, exe: str
) -> None:
    case.path.parent.mkdir(parents=True, exist_ok=True)
    raw = content if isinstance(content, bytes) else content.encode()
    case.path.write_bytes(raw)

    code, out, err = wrap(case.client)

    assert code == 1
    assert "wrapped" not in out
    assert err.count("\n") == 1
    assert err.startswith(f"mcpsingleton: {case.path}: {what}")
    assert "; " in err
    assert case.path.read_bytes() == raw
    assert backups(case.path) == []


def test_a_malformed_file_does_not_stop_the_others(exe: str) -> None:
    CURSOR.path.parent.mkdir(parents=True)
    CURSOR.path.write_text("{")
    original = CODEX.install()

    code, out, err = wrap()

    assert code == 1
    assert f"mcpsingleton: {CURSOR.path}: not valid JSON" in err
    assert CODEX.path.read_bytes() != original
    assert f"{CODEX.path} (codex): wrapped" in out


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_permissions_are_kept_on_the_file_and_its_backup(mode: int, exe: str) -> None:
    CURSOR.install()
    CURSOR.path.chmod(mode)

    wrap("cursor")

    assert stat.S_IMODE(CURSOR.path.stat().st_mode) == mode
    assert [stat.S_IMODE(b.stat().st_mode) for b in backups(CURSOR.path)] == [mode]


def test_backup_holds_the_original_beside_the_file(exe: str) -> None:
    original = CODEX.install()

    _, out, _ = wrap("codex")

    [saved] = backups(CODEX.path)
    assert saved.name == "config.toml.mcpsingleton-backup"
    assert saved.read_bytes() == original
    assert f"backup: {saved}" in out


def test_each_change_replaces_the_one_backup(exe: str) -> None:
    """Wrap and unwrap again and again: one backup, holding the file as it was before the latest change."""
    CODEX.install()
    for _ in range(3):
        wrap("codex")
        wrapped = CODEX.path.read_bytes()
        unwrap("codex")
    assert [saved.read_bytes() for saved in backups(CODEX.path)] == [wrapped]


def test_a_file_changed_while_editing_is_not_overwritten(exe: str, monkeypatch: pytest.MonkeyPatch) -> None:
    CURSOR.install()
    real_backup = files.backup

    def backup_then_client_writes(original: files.Original) -> str:
        saved = real_backup(original)
        with open(CURSOR.path, "a", encoding="utf-8") as file:
            file.write("\n")
        return saved

    monkeypatch.setattr(files, "backup", backup_then_client_writes)

    code, _, err = wrap("cursor")

    changed = CURSOR.path.read_bytes()
    assert code == 1
    assert "changed while mcpsingleton was editing it; run the command again" in err
    assert changed.endswith(b"\n\n")
    assert b"mcpsingleton" not in changed


def test_an_unwritable_file_is_reported_and_untouched(exe: str, monkeypatch: pytest.MonkeyPatch) -> None:
    original = CURSOR.install()

    real_replace = os.replace

    def refuse(source: str, target: str) -> None:
        if os.fspath(target) == str(CURSOR.path):
            raise PermissionError(13, "Permission denied")
        real_replace(source, target)  # the launcher

    monkeypatch.setattr(os, "replace", refuse)

    code, _, err = wrap("cursor")

    assert code == 1
    assert (
        err == f"mcpsingleton: {CURSOR.path}: cannot write {CURSOR.path} (Permission denied); "
        "check the permissions of its directory\n"
    )
    assert CURSOR.path.read_bytes() == original
    assert [p.name for p in CURSOR.path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_configs_name_the_console_script_when_the_launcher_cannot_be_written(exe: str) -> None:
    Path(exe).parent.parent.mkdir(parents=True)
    Path(exe).parent.write_text("a file where the launcher's directory should be")
    CURSOR.install()
    code, _, err = wrap("cursor")
    assert code == 0
    assert err.startswith(f"mcpsingleton: cannot write the launcher in {Path(exe).parent} (")
    console_script = shutil.which("mcpsingleton")
    assert json.loads(CURSOR.path.read_text())["mcpServers"]["time"]["command"] == console_script
    assert console_script != exe


def test_a_symlinked_config_stays_a_link(exe: str, tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    target = dotfiles / "mcp.json"
    target.write_bytes((FIXTURES / CURSOR.fixture).read_bytes())
    CURSOR.path.parent.mkdir(parents=True)
    CURSOR.path.symlink_to(target)

    assert wrap("cursor")[0] == 0

    assert CURSOR.path.is_symlink()
    assert json.loads(target.read_text())["mcpServers"]["time"]["command"] == exe


# --- the wrapped entry ---------------------------------------------------------------------------


def test_wrapped_args_parse_back_to_options_then_the_original_command(exe: str) -> None:
    """`run`'s own parser reads the wrapped args: the options wrap wrote, then the original command line."""
    CURSOR.install()
    wrap("cursor", scope="global")
    entry = json.loads(CURSOR.path.read_text(encoding="utf-8"))["mcpServers"]["brave-search"]

    assert entry["command"] == exe
    assert entry["args"][0] == "run" and "--" not in entry["args"]
    options = parse_args(entry["args"][1:])
    assert (options.scope, options.name, options.env_keys) == ("global", "brave-search", ["BRAVE_API_KEY"])
    assert options.command == ["npx", "-y", "@modelcontextprotocol/server-brave-search"]


@pytest.mark.parametrize("name", ["--", "a, b", 'say "hi"', "ünïcødé", "-x"])
def test_unusual_entry_names_round_trip(name: str, exe: str) -> None:
    CURSOR.path.parent.mkdir(parents=True)
    original = json.dumps({"mcpServers": {name: {"command": "srv", "args": ["--", "a"]}}}, indent=2)
    CURSOR.path.write_text(original, encoding="utf-8")

    wrap("cursor")
    entry = json.loads(CURSOR.path.read_text(encoding="utf-8"))["mcpServers"][name]
    assert entry["args"] == ["run", "--name", name, "srv", "--", "a"]
    unwrap("cursor")

    assert CURSOR.path.read_text(encoding="utf-8") == original


@pytest.mark.parametrize("case", [CODEX, CASES[7]], ids=str)
def test_clients_that_filter_the_environment_get_mcpsingleton_home_in_each_entry_s_env(
    case: Case, exe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Codex and Gemini CLI pass servers a filtered env: a MCPSINGLETON_HOME set for wrap must reach `run`."""
    monkeypatch.setenv("MCPSINGLETON_HOME", str(tmp_path / "ms"))
    original = case.install()
    stdio = stdio_entries(case.load())

    code, _, err = wrap(case.client)

    assert (code, err) == (0, "")
    after = {entry.path: entry.data for entry in case.load().entries}
    for path, old in stdio.items():
        assert after[path]["env"] == {"MCPSINGLETON_HOME": str(tmp_path / "ms"), **old.get("env", {})}
        assert "MCPSINGLETON_HOME" not in after[path]["args"], "our own variable is never an --env-key"
    wrapped = case.path.read_bytes()
    assert wrap(case.client)[0] == 0 and case.path.read_bytes() == wrapped, "wrap twice changes nothing"

    code, _, err = unwrap(case.client)

    assert (code, err) == (0, "")
    assert case.path.read_bytes() == original


def test_an_env_wrap_cannot_extend_is_named_with_what_to_add_by_hand(
    exe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCPSINGLETON_HOME", str(tmp_path / "ms"))
    CODEX.path.parent.mkdir(parents=True)
    CODEX.path.write_text('[mcp_servers.t]\ncommand = "srv"\nenv.REGION = "eu"\n', encoding="utf-8")

    code, out, err = wrap("codex")

    assert code == 0 and "wrapped 1 server (t)" in out
    assert err == (f"mcpsingleton: {CODEX.path}: server 't': add MCPSINGLETON_HOME = {tmp_path / 'ms'} to its env "
                   "by hand (this client does not pass it on by itself)\n")


def test_clients_that_pass_the_environment_on_get_no_env_added(exe: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCPSINGLETON_HOME", str(tmp_path / "ms"))
    CURSOR.install()
    wrap("cursor")
    assert all("MCPSINGLETON_HOME" not in (entry.data.get("env") or {}) for entry in CURSOR.load().entries)


def test_a_command_that_starts_with_a_dash_is_wrapped_after_a_separator(exe: str) -> None:
    CURSOR.path.parent.mkdir(parents=True)
    original = json.dumps({"mcpServers": {"odd": {"command": "-srv", "args": ["-h"]}}}, indent=2)
    CURSOR.path.write_text(original, encoding="utf-8")

    wrap("cursor")
    args = json.loads(CURSOR.path.read_text(encoding="utf-8"))["mcpServers"]["odd"]["args"]
    assert args == ["run", "--name", "odd", "--", "-srv", "-h"]
    assert parse_args(args[1:]).command == ["-srv", "-h"]
    unwrap("cursor")

    assert CURSOR.path.read_text(encoding="utf-8") == original


@pytest.mark.parametrize("case", CASES, ids=str)
def test_entries_wrapped_with_a_separator_by_the_previous_version_unwrap_exactly(
    case: Case, exe: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The previous version wrote `run [OPTIONS] -- COMMAND`; unwrap must still restore those byte for byte."""
    original = case.install()
    current = wrapping.wrap_prefix
    with monkeypatch.context() as previous_version:
        previous_version.setattr(wrapping, "wrap_prefix", lambda entry, scope: [*current(entry, scope), "--"])
        assert wrap(case.client)[0] == 0
    wrapped = [entry.data["args"] for entry in case.load().entries if classify(entry)[0] == "wrapped"]
    assert wrapped and all("--" in args for args in wrapped)

    assert unwrap(case.client)[0] == 0

    assert case.path.read_bytes() == original


@pytest.mark.parametrize(
    "args",
    [
        '["run", "--linger", "0", "--scope", "global", "--", "uvx", "mcp-server-time"]',
        '["run", "--name=t", "uvx", "mcp-server-time"]',
    ],
)
def test_entries_wrapped_by_hand_are_left_alone_and_unwrap(args: str, exe: str) -> None:
    CURSOR.path.parent.mkdir(parents=True)
    text = f'{{"mcpServers": {{"t": {{"command": "/opt/bin/mcpsingleton", "args": {args}}}}}}}'
    CURSOR.path.write_text(text)

    assert "nothing to wrap (1 already wrapped)" in wrap("cursor")[1]
    assert CURSOR.path.read_text() == text
    unwrap("cursor")

    assert CURSOR.path.read_text() == '{"mcpServers": {"t": {"command": "uvx", "args": ["mcp-server-time"]}}}'


def test_an_entry_running_mcpsingleton_without_a_command_is_skipped_with_a_warning(exe: str) -> None:
    CURSOR.path.parent.mkdir(parents=True)
    text = '{"mcpServers": {"t": {"command": "mcpsingleton", "args": ["ls"]}}}'
    CURSOR.path.write_text(text)

    code, out, err = wrap("cursor")

    assert code == 0
    assert "nothing to wrap (1 skipped)" in out
    assert err.startswith(f"mcpsingleton: {CURSOR.path}: server 't' left as is (runs mcpsingleton but not")
    assert CURSOR.path.read_text() == text


@pytest.mark.parametrize(
    ("case", "edits"),
    [
        (
            CURSOR,
            [
                ('"BSA_s3cr3t"', '"BSA_rotated"'),
                ('"--local-timezone=Europe/Zürich" ]', '"--local-timezone=Europe/Zürich", "--added" ]'),
                ('"mcpServers": {', '"mcpServers": {\r\n        "new": {"command": "fresh"},'),
            ],
        ),
        (
            CODEX,
            [
                ("startup_timeout_sec = 20", "startup_timeout_sec = 30  # slower"),
                ("'''/home/dev/src/ré''',", "'''/home/dev/src/ré''',\n    \"--verbose\","),
                ("[profiles.fast]", '[mcp_servers.extra]\ncommand = "extra"\n\n[profiles.fast]'),
            ],
        ),
        (DESKTOP, [('"globalShortcut": "Ctrl+Space"', '"globalShortcut": "Alt+Space"')]),
    ],
    ids=str,
)
def test_unwrap_keeps_edits_made_after_wrap(case: Case, edits: list[tuple[str, str]], exe: str) -> None:
    expected = case.install().decode()
    wrap(case.client)
    text = case.path.read_bytes().decode()
    for old, new in edits:
        assert text.count(old) == expected.count(old) == 1
        text, expected = text.replace(old, new), expected.replace(old, new)
    case.path.write_bytes(text.encode())

    assert unwrap(case.client)[0] == 0

    assert case.path.read_bytes().decode() == expected


def test_an_args_member_the_user_changed_after_wrap_is_kept(exe: str) -> None:
    """The inserted args of an entry that had none is removed only while it is exactly as wrap wrote it."""
    DESKTOP.install()
    wrap("claude-desktop")
    text = DESKTOP.path.read_text(encoding="utf-8")
    sqlite = '"/opt/homebrew/bin/mcp-server-sqlite"'
    DESKTOP.path.write_text(text.replace(sqlite + "]", sqlite + ', "--db", "x.db"]'), encoding="utf-8")

    unwrap("claude-desktop")

    sqlite = json.loads(DESKTOP.path.read_text(encoding="utf-8"))["mcpServers"]["sqlite"]
    assert sqlite == {"command": "/opt/homebrew/bin/mcp-server-sqlite", "args": ["--db", "x.db"]}


def test_unwrap_after_the_client_rewrote_the_file_removes_exactly_what_wrap_added(
    exe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gemini CLI saves its settings in its own layout (JSON.stringify, 2 spaces): the texts wrap recorded
    are gone, yet the args and env members (and the variable in the user's env) it added still go."""
    monkeypatch.setenv("MCPSINGLETON_HOME", str(tmp_path / "ms"))
    gemini = CASES[7]
    gemini.path.parent.mkdir(parents=True)
    servers = {
        "bare": {"command": "srv"},
        "own-env": {"command": "srv", "args": ["-v"], "env": {"TZ": "UTC"}},
        "empty-env": {"env": {}, "command": "srv"},
    }
    gemini.path.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    assert wrap("gemini")[:2] == (0, f"{gemini.path} (gemini): wrapped 3 servers (bare, own-env, empty-env); "
                                     f"backup: {backups(gemini.path)[0]}\n")
    rewritten = json.loads(gemini.path.read_text(encoding="utf-8"))
    rewritten["theme"] = "Dark"
    rewritten["mcpServers"]["own-env"]["env"]["DEBUG"] = "1"
    gemini.path.write_text(json.dumps(rewritten, indent=2), encoding="utf-8")

    code, _, err = unwrap("gemini")

    assert (code, err) == (0, "")
    servers["own-env"]["env"]["DEBUG"] = "1"
    assert json.loads(gemini.path.read_text(encoding="utf-8")) == {"mcpServers": servers, "theme": "Dark"}
    assert json.loads(Path(records_path()).read_text())["records"] == []


def codex_layout(data: dict) -> str:
    """config.toml as a tool that rebuilds the server tables writes it: `[mcp_servers.NAME]`, env a sub-table."""
    def keyvals(table: dict, leave_out: str) -> list[str]:
        return [f"{key} = {json.dumps(value)}" for key, value in table.items() if key != leave_out]

    lines = keyvals(data, "mcp_servers")
    for name, server in data["mcp_servers"].items():
        lines += ["", f"[mcp_servers.{name}]", *keyvals(server, "env")]
        if "env" in server:
            lines += ["", f"[mcp_servers.{name}.env]", *keyvals(server["env"], "")]
    return "\n".join(lines) + "\n"


def test_unwrap_after_codex_rebuilt_its_server_tables_removes_exactly_what_wrap_added(
    exe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCPSINGLETON_HOME", str(tmp_path / "ms"))
    CODEX.path.parent.mkdir(parents=True)
    CODEX.path.write_text(
        'model = "o3"\n'
        'mcp_servers.bare = { command = "srv" }\n'
        '[mcp_servers.own-env]\ncommand = "srv"\nargs = ["-v"]\nenv = { TZ = "UTC" }\n'
        '[mcp_servers.grows]\ncommand = "srv"\n',
        encoding="utf-8",
    )
    original = tomllib.loads(CODEX.path.read_text(encoding="utf-8"))
    assert wrap("codex")[0] == 0
    rebuilt = tomllib.loads(CODEX.path.read_text(encoding="utf-8"))
    rebuilt["mcp_servers"]["grows"]["env"]["DEBUG"] = "1"
    CODEX.path.write_text(codex_layout(rebuilt), encoding="utf-8")

    code, _, err = unwrap("codex")

    assert (code, err) == (0, "")
    original["mcp_servers"]["grows"]["env"] = {"DEBUG": "1"}
    assert tomllib.loads(CODEX.path.read_text(encoding="utf-8")) == original
    assert json.loads(Path(records_path()).read_text())["records"] == []


def test_a_variable_the_user_added_to_the_env_wrap_created_is_kept(
    exe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCPSINGLETON_HOME", str(tmp_path / "ms"))
    gemini = CASES[7]
    gemini.path.parent.mkdir(parents=True)
    gemini.path.write_text(json.dumps({"mcpServers": {"bare": {"command": "srv"}}}), encoding="utf-8")
    wrap("gemini")
    rewritten = json.loads(gemini.path.read_text(encoding="utf-8"))
    rewritten["mcpServers"]["bare"]["env"]["DEBUG"] = "1"
    gemini.path.write_text(json.dumps(rewritten, indent=4), encoding="utf-8")

    assert unwrap("gemini")[0] == 0

    bare = json.loads(gemini.path.read_text(encoding="utf-8"))["mcpServers"]["bare"]
    assert bare == {"command": "srv", "env": {"DEBUG": "1"}}


def test_records_of_two_wrap_runs_at_once_are_both_kept(exe: str) -> None:
    """Each run reads the shared records, then writes them back: the later writer must not drop the other's."""
    first, second = InsertedArgs(), InsertedArgs()
    entry = ("mcpServers", "x")
    assert first.texts("/a.json", entry) == frozenset()  # the first run has read the records
    second.add("/b.json", [(entry, ', "args": ["run", "x"]')])
    first.add("/a.json", [(entry, ', "args": ["run", "y"]')])
    assert InsertedArgs().texts("/b.json", entry) == {', "args": ["run", "x"]'}


def test_concurrent_wraps_of_many_configs_all_unwrap_exactly(exe: str, tmp_path: Path) -> None:
    configs = [tmp_path / f"c{number}.json" for number in range(8)]
    originals = []
    for number, config in enumerate(configs):
        originals.append(json.dumps({"mcpServers": {f"s{number}": {"command": "srv"}}}, indent=2))
        config.write_text(originals[-1], encoding="utf-8")

    def run_all(command: str) -> None:
        runs = [subprocess.Popen([mcpsingleton_exe(), command, "--config", str(config)], stdout=subprocess.DEVNULL)
                for config in configs]
        assert [run.wait(timeout=60) for run in runs] == [0] * len(runs)

    run_all("wrap")
    run_all("unwrap")

    assert [config.read_text(encoding="utf-8") for config in configs] == originals


def test_a_lost_record_unwraps_to_an_empty_args(exe: str) -> None:
    """Without the record, an entry that had no args comes back with `args: []` — the same to every client."""
    original = DESKTOP.install().decode()
    wrap("claude-desktop")
    os.unlink(records_path())

    unwrap("claude-desktop")

    text = DESKTOP.path.read_text(encoding="utf-8")
    sqlite = '"command": "/opt/homebrew/bin/mcp-server-sqlite"'
    assert text == original.replace(sqlite, sqlite + ', "args": []')


def test_a_corrupt_record_file_is_reported_and_nothing_is_written(exe: str) -> None:
    DESKTOP.install()
    wrap("claude-desktop")
    wrapped = DESKTOP.path.read_bytes()
    Path(records_path()).write_text("{")

    code, _, err = unwrap("claude-desktop")

    assert code == 1
    assert err.startswith(f"mcpsingleton: {DESKTOP.path}: cannot read {records_path()} (")
    assert err.endswith("; delete it (unwrap then leaves an empty args)\n")
    assert DESKTOP.path.read_bytes() == wrapped


def test_wrap_records_only_entries_without_args_and_unwrap_forgets_them(exe: str) -> None:
    CODEX.install()
    wrap("codex")
    records = json.loads(Path(records_path()).read_text())["records"]
    assert [(r["entry"], r["text"].split("[")[0]) for r in records] == [
        (["mcp_servers", "docs-ü"], "\n  args = "),
        (["mcp_servers", "time"], ", args = "),
    ]
    assert stat.S_IMODE(os.stat(records_path()).st_mode) == 0o600

    unwrap("codex")

    assert json.loads(Path(records_path()).read_text())["records"] == []


# --- finding files -------------------------------------------------------------------------------


def test_without_clients_every_client_with_a_file_is_found_and_listed(exe: str) -> None:
    originals = {case.path: case.install() for case in CASES}

    code, out, err = wrap()

    assert (code, err) == (0, "")
    for case in CASES:
        assert f"{case.path} ({case.client}): wrapped" in out
    assert len(out.splitlines()) == len(CASES)
    assert unwrap()[0] == 0
    assert {path: path.read_bytes() for path in originals} == originals


def test_a_named_client_without_a_file_says_where_it_looked(exe: str) -> None:
    code, out, _ = wrap("cursor")
    assert code == 0
    home = os.environ["HOME"]
    assert out == f"cursor: no config file (looked for {home}/.cursor/mcp.json, {os.getcwd()}/.cursor/mcp.json)\n"


def test_no_config_anywhere_is_said(exe: str) -> None:
    assert wrap() == (0, "no MCP client config file found; name one with --config PATH\n", "")


@pytest.mark.parametrize(("clients", "scope"), [(["cursorr"], None), (["cursor"], "everywhere")])
def test_unknown_client_or_scope_is_a_usage_error(clients: list[str], scope: str | None, exe: str) -> None:
    code, _, err = wrap(*clients, scope=scope)
    assert code == 2
    assert err.startswith("mcpsingleton: unknown ") and "; choose from " in err


@pytest.mark.parametrize("case", [CURSOR, CASES[4], CODEX], ids=str)
def test_config_path_detects_the_format_from_the_content(case: Case, exe: str, tmp_path: Path) -> None:
    path = tmp_path / "servers.conf"
    original = (FIXTURES / case.fixture).read_bytes()
    path.write_bytes(original)

    code, out, _ = wrap(config=str(path))

    assert code == 0
    assert out.startswith(f"{path}: wrapped")
    assert unwrap(config=str(path))[0] == 0
    assert path.read_bytes() == original


def test_config_path_that_does_not_exist(exe: str, tmp_path: Path) -> None:
    code, _, err = wrap(config=str(tmp_path / "nope.json"))
    assert code == 1
    assert err.startswith(f"mcpsingleton: {tmp_path / 'nope.json'}: cannot read it (No such file")


def test_user_config_dirs_per_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    mac = registry.base_dirs({}, "darwin")["appdata"]
    assert mac == str(tmp_path / "Library" / "Application Support")
    assert registry.base_dirs({"APPDATA": "C:/Users/me/AppData/Roaming"}, "win32")["appdata"].endswith("Roaming")
    assert registry.base_dirs({}, "linux")["appdata"] == str(tmp_path / ".config")
    assert registry.base_dirs({"CODEX_HOME": "/x/codex"}, "linux")["codex"] == "/x/codex"


def test_codex_records_values_inside_inline_tables_and_multiline_arrays(exe: str) -> None:
    doc = codex_toml.load((FIXTURES / CODEX.fixture).read_text(encoding="utf-8"))
    git = next(entry for entry in doc.entries if entry.name == "git")
    assert [doc.text[s.start : s.end] for s in git.args.items] == [
        '"mcp-server-git"',
        '"--repository"',
        "'''/home/dev/src/ré'''",
    ]
    assert tomllib.loads(doc.text)["mcp_servers"]["git"]["args"][2] == "/home/dev/src/ré"
    masked = sorted(doc.text[s.start : s.end] for s in doc.secrets)  # secret-named keys too, to be safe
    assert masked == ['"FIGMA_TOKEN"', '"ghp_s3cr3t_codex"', '"s3cr3t_docs"', '"s3cr3t_fetch"']
