"""Running `serve` in the foreground, and `dashboard`, which opens it (starting it in the background if needed).

serve binds its socket before anything else, so `--port 0` knows its port for the token's URL and the Host
check, and a connection made the moment the URL is printed waits in the backlog. It starts no process:
Ctrl-C or SIGTERM closes the streams, stops the sampling loop and removes its record; nothing is left.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import webbrowser
from typing import Any

from ..common import platform
from ..common.errors import SetupError
from ..common.paths import ensure_private_dir, log_dir
from . import instance
from .auth import Auth

LOOPBACK = "127.0.0.1"
GRACEFUL_SHUTDOWN = 1
START_TIMEOUT = 30.0


def url_host(host: str) -> str:
    """The host part of the URL to open: a wildcard bind is opened on loopback (browsers refuse `0.0.0.0`)."""
    host = {"0.0.0.0": LOOPBACK, "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so, and without it every reply on a
    # kept-alive connection waits ~40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = "pass --port 0 for any free port" if port else "check --host"
        raise SetupError(f"cannot listen on {url_host(host)}:{port}: {exc.strerror}; {hint}") from None
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def run_serve(host: str, port: int, open_browser: bool, routes: Any = ()) -> int:
    """The foreground server: first stdout line the URL with the token, then serve until Ctrl-C/SIGTERM."""
    import uvicorn

    from .app import create_app

    try:
        with instance.hold():
            sock = bind(host, port)
            auth = Auth.for_address(host, sock.getsockname()[1])
            url = f"http://{url_host(host)}:{auth.port}/?token={auth.token}"
            instance.publish(url, host, auth.port)
            print(url, flush=True)
            if open_browser and has_browser():
                threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
            config = uvicorn.Config(
                create_app(auth, routes=routes),
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
                lifespan="on",
            )
            signal.signal(signal.SIGTERM, _exit_quietly)  # uvicorn re-raises it after its graceful shutdown
            try:
                asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
            except (KeyboardInterrupt, SystemExit):
                pass
            finally:
                sock.close()
    except instance.AlreadyRunning as running:
        where = f" (pid {running.record['pid']}, port {running.record['port']})" if running.record else ""
        raise SetupError(f"serve already runs{where}; `mcpsingleton dashboard` opens it") from None
    return 0


def has_browser() -> bool:
    """A graphical browser to open, or BROWSER: without a display, `webbrowser` would start a text browser
    (lynx, w3m) in serve's own terminal."""
    return bool(os.environ.get("BROWSER")) or platform.has_display()


def _exit_quietly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def open_dashboard(open_browser: bool = True) -> str:
    """The running serve's URL (started in the background, detached, when none runs), opened in the browser."""
    record = instance.running() or _start_in_background()
    url = str(record["url"])
    if open_browser and has_browser():
        webbrowser.open(url)
    return url


def _start_in_background() -> dict[str, Any]:
    """Start `serve --port 0 --no-browser` in a session of its own, logging to logs/serve.log; its record."""
    log_path = os.path.join(ensure_private_dir(log_dir()), "serve.log")
    with open(log_path, "ab") as log:
        os.chmod(log_path, 0o600)
        child = subprocess.Popen(
            [sys.executable, "-m", "mcpsingleton", "serve", "--port", "0", "--no-browser"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], START_TIMEOUT)
    first = child.stdout.readline().decode().strip() if ready else ""
    child.stdout.close()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        record = instance.running()  # another `dashboard` may have won the race: its serve is as good
        if record is not None:
            return record
        if not first and child.poll() is not None:
            break
        time.sleep(0.05)
    raise SetupError(f"serve did not start; see {log_path}")
