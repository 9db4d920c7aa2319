"""What the broker tells a session's waiter survives what a waiter's socket does to it: a stopped waiter
(issue 19 row 6), macOS's 8 KiB socket buffers (issue 20 row 4, in portable mode), and a broker killed in the
middle of a reply it was streaming to the client (issue 19 row 4)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import RawClient, ls_json, mcpsingleton_exe, result_text, shim, tap_messages, tapped, wait_for

from mcpsingleton.common import wire
from mcpsingleton.mux import jsonrpc


def uris(count: int) -> list[str]:
    """Long URIs: each one held grows the session's state by ~100 bytes (wire.STATE_LIMIT is 12 KiB)."""
    return [f"file:///{'x' * 90}/{number:03d}" for number in range(count)]


def subscribe_one_by_one(client: RawClient, wanted: list[str]) -> None:
    """Each in its own read of the broker's, so each changes the state the waiter is sent."""
    for uri in wanted:
        assert "result" in client.reply_to(client.request("resources/subscribe", {"uri": uri}))


def subscribe_while_stopped(client: RawClient, wanted: list[str]) -> dict[object, str]:
    """Send the subscriptions without waiting for their replies: {request id: uri}."""
    sent = {}
    for uri in wanted:
        sent[client.request("resources/subscribe", {"uri": uri})] = uri
        time.sleep(0.01)  # each in its own read of the broker's, so each changes the state the waiter is sent
    return sent


def acknowledged(client: RawClient, sent: dict[object, str], timeout: float) -> set[str]:
    """The URIs whose subscriptions were answered within `timeout` of the last answer."""
    acked: set[str] = set()
    while len(acked) < len(sent) and isinstance(message := client.read(timeout), dict):
        if message.get("id") in sent and "result" in message:
            acked.add(sent[message["id"]])
    return acked


def broker_pid() -> int:
    (entry,) = ls_json()
    return entry["broker_pid"]


def kill_broker_and_wait_for_the_next(client: RawClient) -> None:
    old = broker_pid()
    os.kill(old, signal.SIGKILL)
    assert result_text(client.call("echo", {"text": "after"}, timeout=30)) == "after"
    assert broker_pid() != old


def subscribed_by_the_second_backend(tap: Path) -> set[str]:
    read = tap_messages(tap / "in.jsonl")
    inits = [index for index, message in enumerate(read) if message.get("method") == "initialize"]
    if len(inits) < 2:
        return set()
    return {m["params"]["uri"] for m in read[inits[1] :] if m.get("method") == "resources/subscribe"}


def test_a_stopped_waiter_gets_the_latest_state_once_it_runs_again(
    home: Path, fake_server: list[str], tmp_path: Path
) -> None:
    """Row 6: the waiter's socket fills while it is stopped; what the broker could not send then is sent later."""
    client = RawClient(shim(tapped(fake_server, tmp_path)))
    client.initialize()
    wanted = uris(70)  # ~350 KB of state lines in all: more than a Linux socket buffer holds
    os.kill(client.process.pid, signal.SIGSTOP)  # the shim's pid is its waiter's
    try:
        sent = subscribe_while_stopped(client, wanted)
    finally:
        os.kill(client.process.pid, signal.SIGCONT)
    assert acknowledged(client, sent, timeout=10) == set(wanted)
    kill_broker_and_wait_for_the_next(client)  # at once: every acknowledged subscription is the waiter's
    assert wait_for(lambda: subscribed_by_the_second_backend(tmp_path) == set(wanted)), "every subscription re-made"
    assert client.close() == 0


def test_no_acknowledged_subscription_is_lost_when_the_broker_dies_while_the_waiter_is_stopped(
    home: Path, fake_server: list[str], tmp_path: Path
) -> None:
    """Row 6, strictly: a reply acknowledging a state change waits until the waiter has that state."""
    client = RawClient(shim(tapped(fake_server, tmp_path)))
    client.initialize()
    os.kill(client.process.pid, signal.SIGSTOP)
    try:
        sent = subscribe_while_stopped(client, uris(70))
        acked = acknowledged(client, sent, timeout=1)
        assert acked, "answered until the waiter's socket was full"
        os.kill(broker_pid(), signal.SIGKILL)
    finally:
        os.kill(client.process.pid, signal.SIGCONT)
    assert result_text(client.call("echo", {"text": "after"}, timeout=30)) == "after"
    assert wait_for(lambda: acked <= subscribed_by_the_second_backend(tmp_path)), "an acknowledged one was lost"
    assert client.close() == 0


def test_macos_sized_socket_buffers_carry_a_big_state_both_ways_and_the_exit_after_it(
    home: Path, fake_server: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20 row 4: state lines and a re-attaching hello over 8 KiB, then `exit 0` right after a big state."""
    monkeypatch.setenv("MCPSINGLETON_PORTABLE", "1")  # 8 KiB Unix socket buffers, as on macOS
    client = RawClient(shim(tapped(fake_server, tmp_path)))
    client.initialize()
    wanted = uris(70)
    assert len(wire.state_line({"subscriptions": wanted})) > 9 * 1024
    subscribe_one_by_one(client, wanted)
    kill_broker_and_wait_for_the_next(client)  # the waiter's state, and the hello that brings it back, > 8 KiB
    assert wait_for(lambda: subscribed_by_the_second_backend(tmp_path) == set(wanted)), "every subscription re-made"
    client.reply_to(client.request("resources/unsubscribe", {"uri": wanted[0]}))  # a new big state line…
    stop = subprocess.run([mcpsingleton_exe(), "stop", "--all"], capture_output=True, text=True, timeout=30)
    assert stop.returncode == 0, stop.stderr
    assert client.process.wait(timeout=10) == 0, "…and the exit after it: the session ends, it does not re-attach"
    assert wait_for(lambda: not ls_json(), timeout=5), "no broker was started again"


@pytest.mark.parametrize("id_last", [False, True], ids=["id-first", "id-last"])
def test_a_reply_cut_by_a_dead_broker_is_ended_and_answered_before_anything_else(
    home: Path, fake_server: list[str], tmp_path: Path, id_last: bool
) -> None:
    """Row 4: kill -9 of the broker while a 2 MB reply streams to the client."""
    client = RawClient(shim(fake_server))
    client.initialize()
    gate = tmp_path / "gate"  # the backend writes half of the reply, then waits (and dies with the broker)
    request_id = client.request(
        "tools/call", {"name": "big", "arguments": {"size": 2 << 20, "gate": str(gate), "id_last": id_last}}
    )
    assert wait_for(lambda: received(client) >= 512 * 1024), "the reply streams"
    os.kill(broker_pid(), signal.SIGKILL)
    echo_id = client.request("tools/call", {"name": "echo", "arguments": {"text": "after"}})
    lines = raw_lines_until(client, b'"after"')
    assert len(lines) == 3, [line[:100] + b"..." + line[-100:] for line in lines]
    cut, answered, after = lines
    assert len(cut) >= 512 * 1024 and not cut.endswith(b"}"), "the cut line, ended where it was cut"
    error = json.loads(answered)
    assert error["id"] == request_id and error["error"]["code"] == jsonrpc.INTERNAL_ERROR
    assert "broker went away" in error["error"]["message"]
    assert json.loads(after)["id"] == echo_id
    assert result_text(client.call("echo", {"text": "and on"})) == "and on"
    assert client.close() == 0


def received(client: RawClient) -> int:
    """Read what the client's stdout has now (kept in its buffer); how much it holds."""
    import select

    assert client.process.stdout is not None
    fd = client.process.stdout.fileno()
    while select.select([fd], [], [], 0.05)[0]:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        client.buffer += chunk
    return len(client.buffer)


def raw_lines_until(client: RawClient, until: bytes, timeout: float = 30.0) -> list[bytes]:
    """The raw lines of the client's stdout up to the first holding `until`."""
    deadline = time.monotonic() + timeout
    while until not in client.buffer and time.monotonic() < deadline:
        received(client)
    assert until in client.buffer, f"no {until!r} in time"
    head, _, client.buffer = client.buffer.partition(until)
    rest, _, client.buffer = client.buffer.partition(b"\n")
    return (head + until + rest).split(b"\n")


def test_a_stopped_waiter_still_gets_its_exit_when_the_broker_stops(
    home: Path, fake_server: list[str], tmp_path: Path
) -> None:
    """Row 6: `stop` while the waiter is stopped behind a full socket: the broker waits (briefly) until the
    waiter has taken its `exit 0`, else the waiter would see only end of file and start a new broker."""
    client = RawClient(shim(fake_server, "--name", "stopped"))
    client.initialize()
    os.kill(client.process.pid, signal.SIGSTOP)
    try:
        subscribe_while_stopped(client, uris(70))
        stop = subprocess.Popen([mcpsingleton_exe(), "stop", "--all"], stdout=subprocess.DEVNULL)
        assert wait_for(lambda: "detached" in log_text("stopped")), "the session was ended"
    finally:
        os.kill(client.process.pid, signal.SIGCONT)
    assert client.process.wait(timeout=10) == 0
    assert stop.wait(timeout=30) == 0
    assert wait_for(lambda: not ls_json(), timeout=5), "no broker was started again"


def log_text(name: str) -> str:
    return subprocess.run([mcpsingleton_exe(), "logs", name], capture_output=True, text=True).stdout


def test_a_reply_the_client_had_not_read_yet_is_still_ended_after_a_dead_broker(
    home: Path, fake_server: list[str]
) -> None:
    """Row 4, its common case: the backend finished a 2 MB reply, but most of it still waits in the broker for a
    client that has not read it; the broker dies: the line is cut in the client's pipe all the same."""
    client = RawClient(shim(fake_server))
    client.initialize()
    request_id = client.request("tools/call", {"name": "big", "arguments": {"size": 2 << 20}})
    time.sleep(3)  # lets the backend write it all (the client reads nothing); either way the line is cut below
    os.kill(broker_pid(), signal.SIGKILL)
    echo_id = client.request("tools/call", {"name": "echo", "arguments": {"text": "after"}})
    cut, answered, after = raw_lines_until(client, b'"after"')
    assert not cut.endswith(b"}") and json.loads(answered)["id"] == request_id
    assert json.loads(after)["id"] == echo_id
    assert client.close() == 0
