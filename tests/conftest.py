"""Fixtures and marker hooks only (helpers live in helpers.py): a private MCPSINGLETON_HOME per test, the real
servers tests run, and the `real_process` marker for every test that uses one of them."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import EVERYTHING_JS, FAKE_SERVER, processes_of

PROCESS_FIXTURES = frozenset(
    {"home", "bare_home", "fake_server", "everything", "time_server", "procs", "started", "family"}
)
"""Fixtures that start, or isolate, real processes (shim, broker, servers): a test using one is marked
`real_process`, and shell/test.sh runs those again in portable mode. Others that start processes are marked
by hand."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_process)


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short private state dir (sockets need short paths); everything it started is killed after."""
    directory = Path(tempfile.mkdtemp(prefix="ms-", dir="/tmp"))
    monkeypatch.setenv("MCPSINGLETON_HOME", str(directory))
    monkeypatch.delenv("MCPSINGLETON_LINGER", raising=False)
    yield directory
    for process in processes_of(directory):
        try:
            process.kill()
        except psutil.Error:
            pass
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def everything() -> list[str]:
    """argv of @modelcontextprotocol/server-everything over stdio (installed by .ci/run)."""
    if not EVERYTHING_JS.exists():
        pytest.fail(f"server-everything is not installed at {EVERYTHING_JS}; run `bash .ci/run` once")
    return [shutil.which("node") or "node", str(EVERYTHING_JS), "stdio"]


@pytest.fixture(scope="session")
def time_server() -> list[str]:
    """argv of mcp-server-time (PyPI), from this environment."""
    found = shutil.which("mcp-server-time", path=os.path.dirname(sys.executable))
    if not found:
        pytest.fail("mcp-server-time is not installed; run `pip install -e .[test]`")
    return [found]


@pytest.fixture(scope="session")
def fake_server() -> list[str]:
    return [sys.executable, str(FAKE_SERVER)]
