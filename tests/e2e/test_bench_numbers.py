"""The bench tooling a new user runs first: README's numbers are the result files', and the scripts that
make them work on a fresh clone (no package.json in the npm cache, result files of an older layout)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from helpers import ROOT

BENCH = ROOT / "bench"


def bench_module(name: str) -> ModuleType:
    """A bench script as a module (bench/ is a directory of scripts, not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_readme_numbers_are_the_result_files_numbers() -> None:
    numbers = bench_module("readme_numbers")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert numbers.in_readme(readme) == numbers.table(), "run .venv/bin/python bench/readme_numbers.py"


def test_report_renders_older_result_files_and_what_bench_profile_writes_today(tmp_path: Path) -> None:
    """bench_profile no longer measures the live A/B, reads and session endings, and times one message path:
    a fresh profile.json made report.py fail (KeyError: 'broker_live')."""
    for name in ("profile", "latency", "sessions"):
        shutil.copy(BENCH / "results" / f"{name}.json", tmp_path)
    env = {**os.environ, "BENCH_RESULTS": str(tmp_path)}
    report = [sys.executable, str(BENCH / "report.py")]
    older = subprocess.run(report, env=env, capture_output=True, text=True, timeout=60)
    assert older.returncode == 0 and "**Broker live A/B**" in older.stdout and "Reads (µs" in older.stdout
    profile = json.loads((tmp_path / "profile.json").read_text())
    inproc = profile["broker_inprocess"]
    for gone in ("read", "finish_ending_sessions_us"):
        del inproc[gone]
    inproc["message_path"] = next(iter(inproc["message_path"].values()))
    del profile["broker_live"]
    (tmp_path / "profile.json").write_text(json.dumps(profile))

    today = subprocess.run(report, env=env, capture_output=True, text=True, timeout=60)

    assert today.returncode == 0, today.stderr
    assert "message path: ping " in today.stdout and "Broker live" not in today.stdout
    assert (tmp_path / "summary.md").read_text() == today.stdout


@pytest.mark.skipif(shutil.which("npx") is None, reason="needs node's npx")
def test_npx_dirs_need_no_package_json_in_the_npm_cache(tmp_path: Path) -> None:
    """install.sh's `npm install --no-save` writes none; a fresh clone's bench_sessions died copying it."""
    common = bench_module("common")
    directory = common.npx_dir(str(tmp_path / "npx"))
    initialize = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    server = subprocess.Popen(common.npx_cmd(), cwd=directory, env=common.base_env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(initialize + "\n")
        server.stdin.flush()
        assert json.loads(server.stdout.readline())["result"]["serverInfo"]
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # npx, its sh and node
        server.wait(timeout=10)
