"""Issue 4: bad input never crashes anything and only concerns its sender; resource caps hold."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from helpers import RawClient, backend_roots, ls_json, mcpsingleton_exe, result_text, shim, wait_for

PAIR = 2


@pytest.fixture
def pair(home: Path, fake_server: list[str]) -> list[RawClient]:
    """Two initialized sessions on one fake backend: the second one must never notice the first's trouble."""
    clients = [RawClient(shim(fake_server, "--name", "faulty")) for _ in range(PAIR)]
    for client in clients:
        client.initialize()
    yield clients
    for client in clients:
        if client.process.poll() is None:
            client.process.kill()


def log_text() -> str:
    return subprocess.run([mcpsingleton_exe(), "logs", "faulty"], capture_output=True, text=True).stdout


def assert_unaffected(client: RawClient) -> None:
    assert result_text(client.call("echo", {"text": "fine"})) == "fine"


@pytest.mark.parametrize(
    ("line", "code", "reply_id", "logged"),
    [
        (b'{"jsonrpc": "2.0", "id": 5, "method": ', -32700, None, "Parse error"),
        (b'{"jsonrpc":"2.0","id":6,"method":"tools/list","params":{"x":"\xff\xfe"}}', -32700, None, "UTF-8"),
        (b'{"jsonrpc": "1.0", "id": 7, "method": "tools/list"}', -32600, 7, '"jsonrpc" must be "2.0"'),
        (b"[1, 2]", -32600, None, None),
        (b'"just a string"', -32600, None, "must be a JSON object"),
        (b'{"jsonrpc": "2.0", "id": [1], "method": "tools/list"}', -32600, None, '"id" must be'),
        (b'{"jsonrpc": "2.0", "id": 8, "method": 42}', -32600, 8, '"method" must be a string'),
    ],
)
def test_malformed_input_is_answered_to_its_sender_only(
    pair: list[RawClient], line: bytes, code: int, reply_id: object, logged: str | None
) -> None:
    bad, good = pair
    bad.send_raw(line + b"\n")
    reply = bad.read()
    if isinstance(reply, list):  # a batch of invalid items gets one error per item
        assert all(item["error"]["code"] == code for item in reply)
    else:
        assert reply["error"]["code"] == code and reply["id"] == reply_id
    assert_unaffected(bad)
    assert_unaffected(good)
    assert good.read(timeout=0.3) is None, "the other session received nothing"
    if logged:
        assert logged in log_text()


def test_twenty_megabyte_lines(pair: list[RawClient]) -> None:
    bad, good = pair
    big = "x" * (20 * 1024 * 1024)
    assert len(result_text(bad.call("echo", {"text": big}, timeout=60))) == len(big), "a big valid message passes"
    bad.send_raw(b"{" + big.encode() + b"\n")
    assert bad.read(timeout=30)["error"]["code"] == -32700
    assert_unaffected(bad)
    assert_unaffected(good)


def test_responses_with_unknown_ids_are_dropped(pair: list[RawClient]) -> None:
    bad, good = pair
    bad.send({"jsonrpc": "2.0", "id": 424242, "result": {}})
    bad.send({"jsonrpc": "2.0", "id": "nope", "error": {"code": 1, "message": "x"}})
    assert_unaffected(bad)
    assert_unaffected(good)
    assert "response to unknown request 424242" in log_text()


def test_backend_writing_non_json_to_stdout(pair: list[RawClient]) -> None:
    bad, good = pair
    assert result_text(bad.call("garbage")) == "after garbage"
    assert_unaffected(good)
    assert "backend wrote an unusable line" in log_text()


def test_a_client_that_never_reads_does_not_stall_others(pair: list[RawClient]) -> None:
    stuck, good = pair
    chunk = "y" * (4 * 1024 * 1024)
    for _ in range(12):  # ~48 MiB of replies that nobody reads
        stuck.request("tools/call", {"name": "echo", "arguments": {"text": chunk}})
    started = time.monotonic()
    for index in range(20):
        assert result_text(good.call("echo", {"text": str(index)}, timeout=10)) == str(index)
    assert time.monotonic() - started < 10


def test_log_disk_full_never_stops_sessions(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--name", "diskfull"))
    client.initialize()
    (entry,) = ls_json()
    log_path = home / "logs" / f"{entry['key']}.log"
    client.close()
    subprocess.run([mcpsingleton_exe(), "stop", "diskfull"], check=True, capture_output=True)
    assert wait_for(lambda: not ls_json(), timeout=5)
    log_path.unlink()
    log_path.symlink_to("/dev/full")  # every write now fails with ENOSPC
    again = RawClient(shim(fake_server, "--name", "diskfull"))
    again.initialize()
    for index in range(5):
        assert result_text(again.call("echo", {"text": str(index)})) == str(index)
    again.send_raw(b"not json\n")
    assert again.read()["error"]["code"] == -32700
    (entry,) = ls_json()
    assert entry["log_lines_dropped"] > 0
    assert again.close() == 0


def test_max_procs_stops_a_forking_backend(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--max-procs", "4"))
    client.initialize()
    (first,) = backend_roots(home)
    children_before = set()
    client.call("spawn", {"count": 8})
    children_before = {p.pid for p in first.children(recursive=True)}
    assert len(children_before) == 8
    assert wait_for(lambda: not any(psutil.pid_exists(p) for p in children_before | {first.pid}), timeout=6)
    new_pid = json.loads(result_text(client.call("whoami")))["pid"]
    assert new_pid != first.pid
    (entry,) = ls_json()
    assert entry["restarts"] >= 1 and entry["limit_restarts"] >= 1
    assert (
        "--max-procs 4"
        in subprocess.run([mcpsingleton_exe(), "logs", entry["key"]], capture_output=True, text=True).stdout
    )


def test_max_memory_restarts_between_requests(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server, "--max-memory", "80M"))
    client.initialize()
    first_pid = json.loads(result_text(client.call("whoami")))["pid"]
    client.call("grow", {"mib": 120})
    slow = client.request("tools/call", {"name": "slow", "arguments": {"seconds": 1.5}})
    assert result_text(client.reply_to(slow, timeout=10)) == "slow done", "an in-flight request is not cut off"
    assert wait_for(lambda: not psutil.pid_exists(first_pid), timeout=8)
    assert json.loads(result_text(client.call("whoami")))["pid"] != first_pid
    assert (
        "--max-memory 80 MiB"
        in subprocess.run([mcpsingleton_exe(), "logs", ls_json()[0]["key"]], capture_output=True, text=True).stdout
    )


def test_stdin_and_stdout_may_be_regular_files(home: Path, fake_server: list[str], tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "f", "version": "1"}},
    }
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "f"}}}
    requests.write_text(json.dumps(init) + "\n" + json.dumps(call) + "\n")
    replies = tmp_path / "replies.jsonl"
    with requests.open() as stdin, replies.open("w") as stdout:
        code = subprocess.run(shim(fake_server), stdin=stdin, stdout=stdout, timeout=30).returncode
    assert code == 0
    assert {json.loads(line)["id"] for line in replies.read_text().splitlines()} == {1, 2}
