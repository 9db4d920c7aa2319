"""Idle reclaim with real brokers and backends (issue 21 point 5): a backend whose state nothing can lose
is stopped after `--idle` and comes back on the next call; one its sessions may still use never is."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import RawClient, backend_roots, key_log, ls_json, result_text, shim, wait_for

pytestmark = pytest.mark.timeout(90)


def backend_pid(client: RawClient) -> int:
    return int(json.loads(result_text(client.call("whoami")))["pid"])


def test_an_idle_stateless_backend_is_stopped_and_comes_back_for_both_sessions(
    home: Path, fake_server: list[str]
) -> None:
    command = shim([*fake_server, "--x-mux=shared"], "--idle", "1s")
    clients = [RawClient(command) for _ in range(2)]
    try:
        for client in clients:
            client.initialize()
        first = {backend_pid(client) for client in clients}
        assert len(first) == 1
        assert wait_for(lambda: backend_roots(home) == [], timeout=15), "an idle stateless backend is reclaimed"
        (row,) = ls_json()
        assert (row["state"], row["backend_pid"], len(row["clients"])) == ("idle", None, 2), row
        assert "stopped: idle for" in key_log(home).read_text()
        assert [result_text(client.call("echo", {"text": f"back {n}"})) for n, client in enumerate(clients)] == [
            "back 0",
            "back 1",
        ]
        again = {backend_pid(client) for client in clients}
        assert len(again) == 1 and again != first and len(backend_roots(home)) == 1
        assert all(client.read(timeout=0.3) is None for client in clients), "no list_changed: the lists are the same"
        assert wait_for(lambda: backend_roots(home) == [], timeout=15), "idle again: reclaimed again"
    finally:
        for client in clients:
            assert client.close() == 0


@pytest.mark.parametrize(
    ("server_flags", "options"),
    [
        ((), ()),  # the server says nothing of its state: its sessions may hold some
        (("--x-mux=shared",), ("--scope", "isolated")),  # isolated: its one session may use what it holds
    ],
)
def test_a_backend_whose_sessions_may_hold_state_is_never_reclaimed(
    home: Path, fake_server: list[str], server_flags: tuple[str, ...], options: tuple[str, ...]
) -> None:
    client = RawClient(shim([*fake_server, *server_flags], "--idle", "1s", *options))
    try:
        client.initialize()
        pid = backend_pid(client)
        time.sleep(3.0)
        assert [root.pid for root in backend_roots(home)] == [pid]
        assert backend_pid(client) == pid
    finally:
        assert client.close() == 0
