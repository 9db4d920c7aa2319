"""The `[budget]` refusal path with real brokers and backends (issue 21 point 6): a start over the budget
answers the request that needed it with one clear line, counts it, logs it, and the next request asks again."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import RawClient, backend_roots, key_log, ls_json, mcpsingleton_exe, result_text, shim, wait_for

pytestmark = pytest.mark.timeout(90)


def test_a_start_over_max_backends_is_refused_with_one_line_and_asked_again_later(
    home: Path, fake_server: list[str]
) -> None:
    (home / "config.toml").write_text("[budget]\nmax_backends = 1\n")
    command = shim([*fake_server, "--x-mux=isolated"], "--name", "iso")  # one broker, one backend per session
    first = RawClient(command)
    first.initialize()
    second = RawClient(command)  # after the first: it is certain which one the first backend serves
    try:
        assert result_text(first.call("echo", {"text": "one"})) == "one"
        second.initialize()
        refused = second.call("echo", {"text": "two"})
        message = refused["error"]["message"]
        assert message.startswith("mcpsingleton: the [budget] max_backends = 1 leaves no room"), message
        assert "running: iso (pid" in message and "config.toml" in message
        assert len(backend_roots(home)) == 1, "the backend in use is never stopped for the budget"
        assert sum(record["budget_refusals"] for record in ls_json()) == 1
        metrics = subprocess.run([mcpsingleton_exe(), "metrics"], capture_output=True, text=True, timeout=30).stdout
        counted = [line for line in metrics.splitlines() if line.startswith("mcpsingleton_budget_refusals_total{")]
        assert sorted(line.rsplit(" ", 1)[1] for line in counted) == ["0", "1"], counted
        log = key_log(home).read_text()
        assert log.count("not started: the [budget] max_backends = 1") == 1
        assert first.close() == 0
        assert wait_for(lambda: not backend_roots(home)), "the isolated backend ends with its session"
        assert result_text(second.call("echo", {"text": "now"})) == "now"  # not fatal: asked again, admitted
    finally:
        for client in (first, second):
            if client.process.poll() is None:
                assert client.close() == 0


def test_a_start_over_max_memory_is_refused_naming_what_the_running_trees_use(
    home: Path, fake_server: list[str]
) -> None:
    """The memory the refusal names is the one `ls --json` shows as the budget's `memory_bytes`."""
    (home / "config.toml").write_text('[budget]\nmax_memory = "1M"\n')
    command = shim([*fake_server, "--x-mux=isolated"], "--name", "iso")
    first = RawClient(command)
    first.initialize()
    assert result_text(first.call("echo", {"text": "one"})) == "one"  # nothing ran: admitted
    second = RawClient(command)  # after the first: it is certain which one the first backend serves
    try:
        second.initialize()
        message = second.call("echo", {"text": "two"})["error"]["message"]
        assert message.startswith("mcpsingleton: the [budget] max_memory = 1 MiB ("), message
        assert "MiB in use) leaves no room" in message and "running: iso (pid" in message
        (record,) = [record for record in ls_json() if record["backend_pid"]]
        assert record["budget"]["backends"] == 1 and record["budget"]["memory_bytes"] > 1 << 20
        assert record["budget"]["max_backends"] is None
        footer = [line for line in plain_ls().splitlines() if line.startswith("budget: ")]
        assert footer and footer[0].startswith("budget: 1 backend, ") and footer[0].endswith(" of 1.0 MiB"), footer
    finally:
        for client in (first, second):
            if client.process.poll() is None:
                assert client.close() == 0


def answer_roots(client: RawClient, uri: str) -> None:
    """Answer the broker's roots/list to this session (it asks once the session is initialized)."""
    while True:
        message = client.read()
        assert isinstance(message, dict), "the broker never asked this session for its roots"
        if message.get("method") == "roots/list":
            client.send({"jsonrpc": "2.0", "id": message["id"], "result": {"roots": [{"uri": uri}]}})
            return


def test_a_backend_no_session_holds_is_reclaimed_to_make_room_before_anything_is_refused(
    home: Path, fake_server: list[str], tmp_path: Path
) -> None:
    """Two backends of one stateless server (a session with other roots needs its own); with room for one,
    the second starts once the first has no session left: that one is stopped for it, not the request."""
    (home / "config.toml").write_text("[budget]\nmax_backends = 1\n")
    command = shim([*fake_server, "--x-mux=shared"], "--name", "roots")
    first = RawClient(command)
    first.initialize()  # no roots capability: its backend is answered no roots
    result_text(first.call("roots"))  # the backend asked for roots: other roots need another backend now
    second = RawClient(command)
    try:
        second.initialize(capabilities={"roots": {}})
        answer_roots(second, tmp_path.as_uri())
        assert wait_for(lambda: len(ls_json()) == 2), "the second session got a backend slot of its own"
        assert len(backend_roots(home)) == 1, "not started: the first backend serves a session"
        assert first.close() == 0
        assert result_text(second.call("echo", {"text": "room"})) == "room"
        assert len(backend_roots(home)) == 1
        log = key_log(home).read_text()
        assert "stopped: the budget needs room for another backend" in log
    finally:
        for client in (first, second):
            if client.process.poll() is None:
                assert client.close() == 0


def plain_ls() -> str:
    out = subprocess.run([mcpsingleton_exe(), "ls"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def budget_gauges() -> dict[str, float]:
    """`metrics`' budget gauges (limit and used) by name; one broker: one sample each, labelled by its pid."""
    text = subprocess.run([mcpsingleton_exe(), "metrics"], capture_output=True, text=True, timeout=30).stdout
    gauges: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name.startswith("mcpsingleton_budget_") and not name.endswith("_total"):
            assert rest.startswith('broker_pid="') and name not in gauges, line
            gauges[name] = float(rest.rsplit(" ", 1)[1])
    return gauges


def test_ls_ls_json_and_metrics_show_the_budget_and_what_the_broker_counts_of_it(
    home: Path, fake_server: list[str]
) -> None:
    (home / "config.toml").write_text('[budget]\nmax_backends = 3\nmax_memory = "4G"\n')
    command = shim([*fake_server, "--x-mux=isolated"], "--name", "iso")  # one backend per session
    clients = [RawClient(command), RawClient(command)]
    try:
        for number, client in enumerate(clients):
            client.initialize()
            assert result_text(client.call("echo", {"text": str(number)})) == str(number)
        assert wait_for(lambda: len(backend_roots(home)) == 2)
        records = ls_json()
        budgets = [record["budget"] for record in records]
        assert len(records) == 2 and budgets[0] == budgets[1], budgets
        budget = budgets[0]
        assert (budget["max_backends"], budget["max_memory_bytes"], budget["backends"]) == (3, 4 << 30, 2)
        measured = sum(record["memory_bytes"] for record in records)  # the CLI's own measure of the same trees
        assert measured / 2 < budget["memory_bytes"] < measured * 2, (budget, measured)
        footer = [line for line in plain_ls().splitlines() if line.startswith("budget: ")]
        assert len(footer) == 1 and footer[0].startswith("budget: 2 of 3 backends, "), footer
        assert footer[0].endswith(" MiB of 4.0 GiB"), footer
        gauges = budget_gauges()
        assert gauges["mcpsingleton_budget_max_backends"] == 3
        assert gauges["mcpsingleton_budget_backends"] == 2
        assert gauges["mcpsingleton_budget_max_memory_bytes"] == 4 << 30
        assert measured / 2 < gauges["mcpsingleton_budget_memory_bytes"] < measured * 2
        assert clients[1].close() == 0
        assert wait_for(lambda: [record["budget"]["backends"] for record in ls_json()] == [1])
    finally:
        for client in clients:
            if client.process.poll() is None:
                assert client.close() == 0


def test_without_a_budget_ls_and_metrics_show_none(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--name", "plain"))
    try:
        client.initialize()
        assert result_text(client.call("echo", {"text": "x"})) == "x"
        assert [record["budget"] for record in ls_json()] == [None]
        assert "budget:" not in plain_ls()
        assert budget_gauges() == {}
    finally:
        assert client.close() == 0
