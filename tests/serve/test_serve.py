"""Issue 23: `mcpsingleton serve` over real HTTP: the token, Host and Origin checks, the APIs, health, its end."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install -e '.[serve]'")

from helpers import RawClient, mcpsingleton_exe, result_text, shim, wait_for
from serve_harness import Serve


@pytest.fixture
def served(home: Path) -> Iterator[Serve]:
    server = Serve()
    yield server
    server.stop()


def server_named(serve: Serve, name: str) -> dict | None:
    return next((entry for entry in serve.state()["servers"] if entry["name"] == name), None)


def test_first_line_is_the_url_and_the_token_is_required(served: Serve) -> None:
    assert served.get("/api/state", auth=False)[0] == 401
    assert served.get("/api/state", headers={"Authorization": "Bearer not-the-token"}, auth=False)[0] == 401
    assert served.get("/", auth=False)[0] == 401
    status, _, response = served.request("GET", f"/?token={served.token}", auth=False)
    assert status == 303 and response.getheader("location") == "/", "the token leaves the address bar"
    cookie = response.getheader("set-cookie").split(";")[0]
    assert "HttpOnly" in response.getheader("set-cookie")
    status, page = served.get("/", headers={"Cookie": cookie}, auth=False)
    assert status == 200 and "<html" in page
    assert served.get("/api/health", headers={"Cookie": cookie}, auth=False)[0] in (200, 503)


def test_the_token_file_is_private_and_goes_with_serve(home: Path) -> None:
    (home / "state" / "discovery").mkdir(parents=True)  # as a broker's discovery cache leaves it: state/ 0755
    server = Serve()
    assert (home / "state" / "serve" / "history.sqlite3").stat().st_mode & 0o777 == 0o600
    record = home / "run" / "serve.url.json"
    assert record.stat().st_mode & 0o777 == 0o600 and server.token in record.read_text()
    second = subprocess.run(
        [mcpsingleton_exe(), "serve", "--port", "0", "--no-browser"], capture_output=True, text=True, timeout=30
    )
    assert second.returncode == 1 and second.stderr.startswith("mcpsingleton: serve already runs (pid ")
    assert server.token not in second.stderr
    server.stop()
    assert server.process.returncode == 0
    assert not record.exists()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "attacker.localhost"])
def test_a_forged_host_is_refused(served: Serve, host: str) -> None:
    """DNS rebinding: a page of another site whose name resolves to 127.0.0.1 sends its own name as Host."""
    status, body = served.get("/api/state", headers={"Host": host.format(port=served.port)})
    assert status == 403 and "Host refused" in body


def test_a_foreign_origin_cannot_act(served: Serve, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--name", "guarded"))
    client.initialize()
    assert wait_for(lambda: server_named(served, "guarded"))
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{served.port + 1}"):
        status, _ = served.post("/api/servers/guarded/stop", headers={"Origin": origin})
        assert status == 403
    assert served.get("/api/servers/guarded/stop")[0] == 405, "state changes are POST only"
    assert client.call("echo", {"text": "still here"})["result"], "nothing was stopped"
    status, body = served.post("/api/servers/guarded/stop", headers={"Origin": f"http://127.0.0.1:{served.port}"})
    assert status == 200 and body["stop"][0]["ended"]
    assert client.read(timeout=10) is None and client.process.wait(timeout=10) == 0


def test_state_lists_servers_sessions_and_totals(served: Serve, fake_server: list[str], tmp_path: Path) -> None:
    clients = [RawClient(shim(fake_server, "--name", "shared-one"), cwd=str(tmp_path)) for _ in range(2)]
    for number, client in enumerate(clients):
        client.initialize(name=f"client-{number}")
    assert wait_for(lambda: len((server_named(served, "shared-one") or {}).get("clients", [])) == 2)
    assert wait_for(lambda: served.state()["totals"]["memory_bytes"] > 0, timeout=20)
    state = served.state()
    entry = server_named(served, "shared-one")
    assert entry is not None
    for field in ("key", "scope", "sharing", "policy", "state", "backend_pid", "restarts", "errors", "cpu_percent"):
        assert field in entry
    assert sorted(c["client"] for c in entry["clients"]) == ["client-0", "client-1"]
    assert {c["cwd"] for c in entry["clients"]} == {str(tmp_path)}
    totals = state["totals"]
    assert totals["sessions"] == 2 and totals["backends"] == 1 and totals["processes"] >= 1
    assert totals["direct_bytes"] == 2 * entry["memory_bytes"]
    assert totals["saved_bytes"] == totals["direct_bytes"] - totals["memory_bytes"] - totals["overhead_bytes"]
    assert state["serve"]["memory_bytes"] > 0, "serve reports its own PSS"
    for client in clients:
        client.close()


def test_restart_hands_sessions_over_and_unknown_targets_are_404(served: Serve, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--name", "renewed"))
    client.initialize()
    assert wait_for(lambda: server_named(served, "renewed"))
    backend = server_named(served, "renewed")["backend_pid"]  # type: ignore[index]
    status, body = served.post("/api/servers/renewed/restart", {})
    assert status == 200 and body["restart"][0]["ended"]
    assert result_text(client.call("echo", {"text": "on the next backend"})) == "on the next backend"
    # the one broker goes on: the server restarted within it, on a fresh backend
    assert wait_for(lambda: (server_named(served, "renewed") or {}).get("backend_pid") not in (None, backend))
    assert served.post("/api/servers/nothing-like-this/stop", {})[0] == 404
    assert served.post("/api/servers/renewed/explode", {})[0] == 404
    client.close()


def test_reap_shows_the_dry_run_first(served: Serve) -> None:
    """A leftover backend (tagged, no broker owns it) is listed with its reason and left alone without confirm.

    (Reaping for real is not tested here: on a shared machine it would also take other test runs' leftovers.)"""
    planted = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "API_TOKEN=hunter2"],
        env={**os.environ, "MCPSINGLETON_KEY": "0123456789abcdef0123"},
    )
    try:
        status, body = served.post("/api/reap", {"confirm": False})
        assert status == 200 and body["confirmed"] is False
        (found,) = [f for f in body["findings"] if f["pid"] == planted.pid]
        assert found["action"] == "would kill" and "no live mcpsingleton broker owns it" in found["reason"]
        assert found["command"][-1] == "API_TOKEN=***", "commands are masked as ls masks them"
        assert planted.poll() is None, "a dry run kills nothing"
        assert served.post("/api/reap", "not an object")[0] == 400
    finally:
        planted.kill()
        planted.wait()


def test_metrics_is_the_prometheus_exposition(served: Serve, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--name", "metered"))
    client.initialize()
    assert wait_for(lambda: server_named(served, "metered"))
    status, text = served.get("/metrics")
    assert status == 200
    assert re.search(r'^mcpsingleton_sessions\{name="metered",key="\w+",slot="1"\} 1$', text, re.MULTILINE)
    assert "mcpsingleton_orphans_reaped_total" in text
    client.close()


def test_health_turns_warning_when_a_threshold_is_crossed(home: Path, fake_server: list[str]) -> None:
    (home / "config.toml").write_text('[alerts]\nwarn_processes = 2\ncritical_processes = 50\nwarn_memory = "8G"\n')
    served = Serve()
    try:
        _, health = served.get("/api/health")
        assert not any(reason.startswith("processes") for reason in health.get("reasons", []))
        client = RawClient(shim([*fake_server, "--grandchild"], "--name", "forking"))
        client.initialize()
        crossed = "processes 2 ≥ warning 2"
        assert wait_for(lambda: crossed in served.get("/api/health")[1].get("reasons", []), timeout=20)
        status, health = served.get("/api/health")
        assert status == 503 and health["status"] == "warning"
        assert served.state()["limits"]["alerts"]["warn_processes"] == 2
        client.close()
    finally:
        log = served.stop()
    assert log.count("warning: processes 2 ≥ warning 2") == 1, "a crossing is logged once, not every sample"


def test_a_broken_config_never_breaks_serve(home: Path) -> None:
    (home / "config.toml").write_text("[alerts]\nwarn_processes = 'many'\n")
    served = Serve()
    try:
        limits = served.state()["limits"]
        assert "warn_processes" in limits["config_error"] and limits["alerts"]["warn_processes"] == 30
    finally:
        served.stop()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_nothing_of_serve_outlives_it(home: Path, signum: int) -> None:
    served = Serve()
    with socket.create_connection(("127.0.0.1", served.port)) as stream:  # an open stream must not hold the exit up
        stream.sendall(
            f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {served.token}\r\n\r\n".encode()
        )
        assert stream.recv(4096).startswith(b"HTTP/1.1 200")
        served.stop(signum)
    assert served.process.returncode == 0
    assert not (home / "run" / "serve.url.json").exists()


def test_dashboard_starts_one_serve_and_reuses_it(home: Path) -> None:
    env = {**os.environ, "BROWSER": "true"}  # webbrowser runs `true URL`: nothing opens
    first = subprocess.run([mcpsingleton_exe(), "dashboard"], capture_output=True, text=True, timeout=60, env=env)
    assert first.returncode == 0, first.stderr
    record = home / "run" / "serve.url.json"
    import json

    pid = json.loads(record.read_text())["pid"]
    try:
        assert re.match(r"^http://127\.0\.0\.1:\d+/\?token=\S+$", first.stdout.strip())
        second = subprocess.run([mcpsingleton_exe(), "dashboard"], capture_output=True, text=True, timeout=60, env=env)
        assert second.stdout == first.stdout, "the running serve is reused"
        assert json.loads(record.read_text())["pid"] == pid
        os.kill(pid, signal.SIGKILL)  # its record stays behind, its lock does not
        assert wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
        third = subprocess.run([mcpsingleton_exe(), "dashboard"], capture_output=True, text=True, timeout=60, env=env)
        assert third.returncode == 0 and third.stdout != first.stdout, "a stale record is not taken for a live serve"
        pid = json.loads(record.read_text())["pid"]
    finally:
        os.kill(pid, signal.SIGTERM)
    assert wait_for(lambda: not record.exists(), timeout=15)


def test_sessions_and_brokers_never_import_serve() -> None:
    """serve is optional: the shim's and the broker's modules load neither it nor its web stack."""
    code = (
        "import sys, mcpsingleton.__main__, mcpsingleton.shim.attach, mcpsingleton.broker.process,"
        " mcpsingleton.ops.cli;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'anyio')"
        " or m.split('.')[:2] == ['mcpsingleton', 'serve']))"  # not broker.server (a key in the broker)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS always has its window server")
def test_the_browser_is_opened_only_where_there_is_one_to_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a display `webbrowser` would start a text browser in serve's own terminal."""
    from mcpsingleton.serve.server import has_browser

    for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        monkeypatch.delenv(name, raising=False)
    assert not has_browser()
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    assert has_browser()
    monkeypatch.delenv("WAYLAND_DISPLAY")
    monkeypatch.setenv("BROWSER", "firefox")
    assert has_browser()
