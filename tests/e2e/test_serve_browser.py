"""Issue 23: the dashboard in a real browser (the system Chromium, driven by Playwright).

Set MCPSINGLETON_SCREENSHOTS=DIR to keep screenshots of the page (docs/ holds the ones the README shows).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install -e '.[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")

from helpers import RawClient, result_text, shim, wait_for  # noqa: E402
from serve_harness import Serve  # noqa: E402

CHROMIUM = os.environ.get("MCPSINGLETON_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="no system Chromium (apt-get install chromium, or set MCPSINGLETON_CHROMIUM)"
    ),
    pytest.mark.slow,
]
TIMEOUT_MS = 20_000
sync_api.expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def served(home: Path) -> Iterator[Serve]:
    server = Serve()
    yield server
    server.stop()


@pytest.fixture
def page(browser: Any, served: Serve) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    opened.goto(served.url)
    sync_api.expect(opened.locator("#connection")).to_have_text("live")
    yield opened
    context.close()


def row(page: Any, name: str) -> Any:
    return page.locator(f'#servers tbody tr[data-name="{name}"]')


def screenshot(page: Any, name: str) -> None:
    directory = os.environ.get("MCPSINGLETON_SCREENSHOTS")
    if directory:
        page.screenshot(path=str(Path(directory) / name), full_page=True)


def test_the_page_shows_a_server_and_a_new_session_appears_without_reload(
    page: Any, fake_server: list[str], tmp_path: Path
) -> None:
    first = RawClient(shim(fake_server, "--name", "notes"), cwd=str(tmp_path))
    first.initialize(name="claude-code")
    sync_api.expect(row(page, "notes").locator(".session-count")).to_have_text("1")
    sync_api.expect(row(page, "notes")).to_contain_text("claude-code")
    sync_api.expect(row(page, "notes")).to_contain_text(str(tmp_path))
    page.evaluate("window.loadedOnce = true")
    second = RawClient(shim(fake_server, "--name", "notes"), cwd=str(tmp_path))
    second.initialize(name="cursor")
    sync_api.expect(row(page, "notes").locator(".session-count")).to_have_text("2")
    sync_api.expect(page.locator("#t-sessions")).to_have_text("2")
    assert page.evaluate("window.loadedOnce") is True, "updated in place (Server-Sent Events), not reloaded"
    screenshot(page, "serve-dashboard.png")
    for client in (first, second):
        client.close()


def test_stop_from_the_page_ends_the_backend(page: Any, served: Serve, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--name", "stoppable"))
    client.initialize()
    assert wait_for(lambda: served.state()["servers"])
    backend_pid = served.state()["servers"][0]["backend_pid"]
    row(page, "stoppable").get_by_role("button", name="Stop").click()
    sync_api.expect(page.locator("#confirm")).to_be_visible()
    page.locator("#confirm-ok").click()
    sync_api.expect(row(page, "stoppable")).to_have_count(0)
    assert client.read(timeout=10) is None and client.process.wait(timeout=10) == 0, "the session got end of file"
    assert wait_for(lambda: not psutil.pid_exists(backend_pid)), "the backend ended"
    sync_api.expect(page.locator("#events")).to_contain_text("stop stoppable")


def test_the_log_tail_is_live_and_masks_secrets(page: Any, served: Serve, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--name", "chatty"))
    client.initialize()
    sync_api.expect(row(page, "chatty")).to_have_count(1)
    row(page, "chatty").get_by_role("button", name="Log").click()
    sync_api.expect(page.locator("#log-lines")).to_contain_text("started for chatty")
    client.call("stderr", {"text": "connecting with API_TOKEN=hunter2-secret now"})
    sync_api.expect(page.locator("#log-lines")).to_contain_text("API_TOKEN=*** now")
    assert "hunter2-secret" not in page.locator("#log-lines").inner_text()
    client.close()


def test_the_page_needs_the_token(browser: Any, served: Serve) -> None:
    context = browser.new_context()
    bare = context.new_page()
    response = bare.goto(f"http://127.0.0.1:{served.port}/")
    assert response is not None and response.status == 401
    response = bare.goto(f"http://localhost:{served.port}/?token={served.token}")
    assert response is not None and response.status == 200, "localhost is a loopback name"
    assert bare.url == f"http://localhost:{served.port}/", "the token left the address bar"
    context.close()


def test_a_page_on_another_port_cannot_stop_a_server(
    browser: Any, served: Serve, fake_server: list[str], tmp_path: Path
) -> None:
    """Another local site is the same *site* (ports do not count), so the SameSite cookie goes with its
    requests: only the Origin check stands between it and the actions."""
    client = RawClient(shim(fake_server, "--name", "precious"))
    client.initialize()
    listed = lambda: "precious" in [entry["name"] for entry in served.state()["servers"]]  # noqa: E731
    assert wait_for(listed)
    (tmp_path / "index.html").write_text("<html><body>another local app</body></html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    other_site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other_site.serve_forever, daemon=True).start()
    context = browser.new_context()
    try:
        context.new_page().goto(served.url)  # the user opened the dashboard: the cookie is set
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{other_site.server_address[1]}/index.html")
        page.evaluate(
            """async (port) => { try { await fetch(`http://127.0.0.1:${port}/api/servers/precious/stop`,
                 {method: "POST", mode: "no-cors", credentials: "include"}) } catch (e) {} }""",
            served.port,
        )
        assert result_text(client.call("echo", {"text": "alive"})) == "alive", "the server was not stopped"
        time.sleep(3)  # a sample later
        assert listed()
    finally:
        context.close()
        other_site.shutdown()
        client.close()


def test_health_turns_warning_on_the_page(home: Path, browser: Any, fake_server: list[str]) -> None:
    (home / "config.toml").write_text("[alerts]\nwarn_processes = 2\n[budget]\nmax_backends = 4\n")
    server = Serve()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(server.url)
        client = RawClient(shim([*fake_server, "--grandchild"], "--name", "forking"))
        client.initialize()
        sync_api.expect(page.locator("#health")).to_have_text("warning")
        sync_api.expect(page.locator("#reasons")).to_contain_text("processes 2 ≥ warning 2")
        sync_api.expect(page.locator("#limits")).to_contain_text("budget: 1 of 4 backends")
        sync_api.expect(page.locator("#events")).to_contain_text("warning: processes 2 ≥ warning 2")
        screenshot(page, "serve-warning.png")
        client.close()
    finally:
        context.close()
        server.stop()


def test_the_page_says_when_serve_is_gone_and_when_it_came_back_with_a_new_token(home: Path, browser: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = Serve("--port", str(port))
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(first.url)
        sync_api.expect(page.locator("#connection")).to_have_text("live")
        first.stop()
        sync_api.expect(page.locator("#connection")).to_have_text("reconnecting…")
        assert "stale" in (page.locator("body").get_attribute("class") or ""), "old numbers are greyed out"
        second = Serve("--port", str(port))
        try:
            sync_api.expect(page.locator("#connection")).to_contain_text("serve restarted with a new token")
        finally:
            second.stop()
    finally:
        context.close()
