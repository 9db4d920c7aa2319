"""The folder layout keeps the entry points that running processes of an older layout use, and its package
`__init__`s stay empty, so the shim's warm path pays only for the modules it uses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcpsingleton.common.paths import BROKER, KeyPaths, ensure_private_dir, runtime_dir
from mcpsingleton.shim.election import try_lock

OLD_WAITER_RESUME = (  # what a waiter started by the flat layout runs to re-attach (mcpsingleton/shim.py's RESUME)
    "import ast,os,sys;s=ast.literal_eval(os.environ['MCPSINGLETON_SESSION']);sys.path[:]=s['path'];"
    "from mcpsingleton.shim import resume;sys.exit(resume(s))"
)


def test_a_waiter_of_the_flat_layout_still_resumes() -> None:
    """`from mcpsingleton.shim import resume` reaches the shim's resume: here it ends a crash-looping session
    with its one-line error (no broker needed to prove the entry point is the real one)."""
    session = {"path": sys.path, "name": "demo", "argv": ["--", "true"], "cwd": os.getcwd()}
    now = time.time()
    env = {
        **os.environ,
        "MCPSINGLETON_SESSION": repr(session),
        "MCPSINGLETON_REATTACHES": " ".join(f"{now - i * 0.1:.3f}" for i in range(10)),
    }
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", OLD_WAITER_RESUME, "mcpsingleton-session", "demo"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 1, done.stderr
    assert "mcpsingleton: the broker for demo went away" in done.stderr


@pytest.mark.real_process
def test_python_m_mcpsingleton_broker_starts_a_broker(home: Path) -> None:
    """Elections of this version and the one before start the broker as `python -m mcpsingleton.broker`."""
    paths = KeyPaths(BROKER, ensure_private_dir(runtime_dir()))
    lock_fd = try_lock(paths.lock)
    assert lock_fd is not None
    ours, theirs = socket.socketpair()
    os.set_inheritable(lock_fd, True)
    broker = subprocess.Popen(
        [sys.executable, "-m", "mcpsingleton.broker", str(theirs.fileno()), str(lock_fd)],
        pass_fds=(theirs.fileno(), lock_fd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        theirs.close()
        os.close(lock_fd)
        ours.settimeout(30)
        assert ours.recv(64) == b"ready\n"
        assert os.path.exists(paths.sock)
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(timeout=30)
        ours.close()


def test_package_inits_import_no_modules() -> None:
    """Importing the folders loads nothing else; `common.wire` (the shim's contract module) loads neither the
    broker nor json, re, psutil, click, asyncio or tomllib."""
    code = (
        "import sys; import mcpsingleton.shim, mcpsingleton.broker, mcpsingleton.policy, mcpsingleton.ops,"
        " mcpsingleton.common, mcpsingleton.common.wire;"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('mcpsingleton')"
        " or m in ('json', 're', 'psutil', 'click', 'asyncio', 'tomllib'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30).stdout.split()
    assert loaded == [
        "mcpsingleton", "mcpsingleton.broker", "mcpsingleton.common", "mcpsingleton.common.wire", "mcpsingleton.ops",
        "mcpsingleton.policy", "mcpsingleton.shim",
    ]
