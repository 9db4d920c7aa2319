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

ROOT = Path(__file__).resolve().parent.parent
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


def test_report_renders_result_files_with_and_without_the_broker_live_section(tmp_path: Path) -> None:
    """bench_profile no longer measures broker_live: a fresh profile.json lacks it (was a KeyError)."""
    for name in ("profile", "latency", "sessions"):
        shutil.copy(BENCH / "results" / f"{name}.json", tmp_path)
    profile = json.loads((tmp_path / "profile.json").read_text())
    assert "broker_live" in profile
    env = {**os.environ, "BENCH_RESULTS": str(tmp_path)}
    report = [sys.executable, str(BENCH / "report.py")]
    assert "**Broker live A/B**" in subprocess.run(report, env=env, capture_output=True, text=True, check=True).stdout
    del profile["broker_live"]
    (tmp_path / "profile.json").write_text(json.dumps(profile))

    done = subprocess.run(report, env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert "### Profile" in done.stdout and "Broker live" not in done.stdout
    assert (tmp_path / "summary.md").read_text() == done.stdout


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
