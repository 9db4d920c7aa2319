"""Issue 19 soak / issue 21 point 3: the requests in flight when the broker dies get an error reply each,
never silence, and exactly one (the in-flight journal, journal.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import RawClient, ls_json, result_text, shim, wait_for

from mcpsingleton.broker import journal

SESSIONS = 3


def journals(home: Path) -> list[Path]:
    return sorted((home / "run").glob(f"{journal.PREFIX}*"))


def owed_on_disk(home: Path, broker_pid: int) -> dict[int, set[str]]:
    """What the broker's journal file says it owes, per session pid."""
    found: dict[int, set[str]] = {}
    for path in journals(home):
        if path.name.startswith(f"{journal.PREFIX}{broker_pid}-"):
            entries = journal._read(str(path))
            if entries is not None:
                found.update({pid: set(ids) for pid, ids in entries[0].items()})
    return found


def replies_until_quiet(client: RawClient, quiet: float = 1.0) -> list[dict]:
    """Every message the client gets until none comes for `quiet` seconds."""
    seen = []
    while (message := client.read(quiet)) is not None:
        assert isinstance(message, dict)
        seen.append(message)
    return seen


def test_calls_in_flight_at_kill_9_get_one_error_each(home: Path, fake_server: list[str]) -> None:
    clients = [RawClient(shim(fake_server)) for _ in range(SESSIONS)]
    try:
        for client in clients:
            client.initialize()
        (entry,) = ls_json()
        broker = entry["broker_pid"]
        in_flight: list[list[object]] = []
        for number, client in enumerate(clients):
            ids: list[object] = [
                client.request("tools/call", {"name": "slow", "arguments": {"seconds": 60}}, request_id=f"slow {n}")
                for n in range(2)
            ]
            ids.append(client.request("tools/call", {"name": "slow", "arguments": {"seconds": 60}}, 100 + number))
            in_flight.append(ids)
        pairs = zip(clients, in_flight, strict=True)
        expected = {client.process.pid: {journal.id_text(i) for i in ids} for client, ids in pairs}
        assert wait_for(lambda: owed_on_disk(home, broker) == expected), "the broker journaled what it owes"
        os.kill(broker, signal.SIGKILL)
        for client, ids in zip(clients, in_flight, strict=True):
            after = client.call("echo", {"text": "after"}, timeout=30)
            assert result_text(after) == "after", "the session goes on with the next broker"
            answers = [message for message in client.seen if message.get("id") in ids]
            assert sorted(map(str, (m["id"] for m in answers))) == sorted(map(str, ids)), "one reply per request"
            for answer in answers:
                assert answer["error"]["code"] == -32603
                assert "send it again" in answer["error"]["message"]
        for client in clients:
            assert replies_until_quiet(client) == [], "nothing else, and never a second answer"
        dead = [path for path in journals(home) if path.name.startswith(f"{journal.PREFIX}{broker}-")]
        assert dead == [], "the dead broker's journal is gone once every session took its entries"
    finally:
        for client in clients:
            client.close()


def raw_lines(client: RawClient, until: float = 2.0) -> list[bytes]:
    """Every line the client gets until none comes for `until` seconds, undecoded."""
    import select

    assert client.process.stdout is not None
    fd = client.process.stdout.fileno()
    while select.select([fd], [], [], until)[0] and (chunk := os.read(fd, 1 << 20)):
        client.buffer += chunk
    *lines, client.buffer = client.buffer.split(b"\n")
    return lines


def test_a_reply_half_written_at_kill_9_is_ended_and_answered_once(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server))
    try:
        client.initialize()
        (entry,) = ls_json()
        broker = entry["broker_pid"]
        text = "x" * 50_000  # each reply fits in a pipe; together they fill it, and the client does not read
        ids = [client.request("tools/call", {"name": "echo", "arguments": {"text": text}}) for _ in range(40)]
        # a short last one: owed once read, and read whole (a big line is owed from its head, read in part or not)
        ids.append(client.request("tools/call", {"name": "echo", "arguments": {"text": "last"}}))

        def stuck() -> bool:
            for path in journals(home):
                entries = journal._read(str(path)) if path.name.startswith(f"{journal.PREFIX}{broker}-") else None
                owed, _, open_lines = entries if entries is not None else ({}, set(), set())
                if client.process.pid in open_lines and journal.id_text(ids[-1]) in owed.get(client.process.pid, {}):
                    return True  # (the short last request read: none is cut in two by the kill)
            return False

        assert wait_for(stuck), "the broker noted the client's stdout is left inside a line"
        os.kill(broker, signal.SIGKILL)
        after = client.request("tools/call", {"name": "echo", "arguments": {"text": "after"}})
        answered: dict[object, list[dict]] = {}
        broken = 0
        for line in raw_lines(client, until=5.0):
            try:
                message = json.loads(line)
            except ValueError:
                broken += 1
                continue
            answered.setdefault(message.get("id"), []).append(message)
        assert broken == 1, "the half-written reply is one broken line, ended before anything else"
        assert sorted(answered, key=str) == sorted([*ids, after], key=str), "every request answered"
        assert all(len(messages) == 1 for messages in answered.values()), "and only once"
        errors = [m for m in (ms[0] for ms in answered.values()) if "error" in m]
        assert errors and all("send it again" in m["error"]["message"] for m in errors)
        assert "result" in answered[after][0]
    finally:
        client.close()


def test_a_clean_handover_leaves_no_journal_and_answers_once(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server))
    try:
        client.initialize()
        (entry,) = ls_json()
        broker = entry["broker_pid"]
        request = client.request("tools/call", {"name": "slow", "arguments": {"seconds": 30}})
        assert wait_for(lambda: owed_on_disk(home, broker) == {client.process.pid: {journal.id_text(request)}})
        os.kill(broker, signal.SIGTERM)  # a handover: the drain ends, the call gets the old broker's error
        answer = client.reply_to(request, timeout=30)
        assert answer["error"]["code"] == -32603 and "restarted" in answer["error"]["message"]
        assert result_text(client.call("echo", {"text": "after"}, timeout=30)) == "after"
        assert [m for m in client.seen + replies_until_quiet(client) if m.get("id") == request] == []
        assert not any(path.name.startswith(f"{journal.PREFIX}{broker}-") for path in journals(home))
    finally:
        client.close()


def test_a_journal_outgrowing_its_map_keeps_only_what_is_owed(tmp_path: Path) -> None:
    kept = journal.Journal(str(tmp_path))
    for n in range(20000):  # ~20 records of 64 KiB over: rewritten many times
        kept.owe(7, journal.id_text(f"request {n}"))
        kept.commit()
        if n % 1000:
            kept.settle(7, journal.id_text(f"request {n}"))
    kept.owe(8, "1")  # staged, then answered at once: never written
    kept.settle(8, "1")
    kept.commit()
    entries = journal._read(kept.path)
    assert entries is not None
    assert entries[0] == {7: {journal.id_text(f"request {n}"): None for n in range(0, 20000, 1000)}}
    assert os.stat(kept.path).st_mode & 0o777 == 0o600
    kept.forget(7)
    kept.close()
    assert not os.path.exists(kept.path), "nothing owed at a clean exit: the file goes"


def test_a_dead_brokers_entries_are_answered_once_then_swept(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    waiter = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        name = f"{journal.PREFIX}{dead_pid}-1"
        records = f'+{waiter.pid} 1\n+{waiter.pid} "two"\n+{dead_pid} 3\n-{waiter.pid} 1\n'.encode()
        (tmp_path / name).write_bytes(records + b"\0" * 100)
        assert journal.owed_by(str(tmp_path), "../etc", waiter.pid) == ([], False), "not a journal's name: ignored"
        assert journal.owed_by(str(tmp_path), name, waiter.pid) == (['"two"'], False)
        assert journal.owed_by(str(tmp_path), name, waiter.pid) == ([], False), "answered once"
        assert not (tmp_path / name).exists(), "no living session can claim the rest"
        (tmp_path / name).write_bytes(records)
        journal.sweep(str(tmp_path))
        assert (tmp_path / name).exists(), "a living session may still re-attach and claim its entries"
    finally:
        waiter.kill()
        waiter.wait()
    journal.sweep(str(tmp_path))
    assert not (tmp_path / name).exists()


def test_the_mux_names_what_it_accepted_and_what_its_session_cancelled() -> None:
    """What the journal is fed: requests (whole, batched, spliced) by session, cancellations; never notifications."""
    from mux_harness import Harness

    h = Harness()
    h.open(1)
    h.mux.owed_changes()
    h.request(1, "a", "tools/call", {"name": "slow"})
    h.send(1, [{"jsonrpc": "2.0", "id": 7, "method": "tools/list"}, {"jsonrpc": "2.0", "method": "notifications/x"}])
    h.send(1, {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"text": "x" * 20_000}})  # spliced
    h.notify(1, "notifications/cancelled", {"requestId": "a"})
    accepted, released = h.mux.owed_changes()
    assert accepted == [(1, "a"), (1, 7), (1, 8)]
    assert released == [(1, "a")]
    assert h.mux.owed_changes() == ([], [])


def test_a_big_request_half_read_at_kill_9_is_answered_under_its_id(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server))
    try:
        client.initialize()
        (entry,) = ls_json()
        broker = entry["broker_pid"]
        line = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": "big",
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "y" * 200_000}},
            }
        ).encode()
        client.send_raw(line[:100_000])  # streams to the backend from its head on: the id is known
        assert wait_for(lambda: owed_on_disk(home, broker) == {client.process.pid: {'"big"'}})
        os.kill(broker, signal.SIGKILL)
        client.send_raw(line[100_000:] + b"\n")
        error = client.reply_to("big", timeout=30)
        assert "send it again" in error["error"]["message"]
        assert result_text(client.call("echo", {"text": "after"}, timeout=30)) == "after"
        rest = [m for m in client.seen + replies_until_quiet(client) if m.get("id") == "big"]
        assert rest == [], "answered once (the line's rest gets a -32700 with no id, as any cut line)"
    finally:
        client.close()


def test_a_big_request_with_its_id_last_half_read_at_kill_9_is_answered_under_its_id(
    home: Path, fake_server: list[str]
) -> None:
    """Its id comes after the big string (as TypeScript clients write it), so the dead broker's journal never
    knew it; the next broker reads only the line's rest and answers the parse error under the id at its end."""
    client = RawClient(shim(fake_server))
    try:
        client.initialize()
        (entry,) = ls_json()
        line = json.dumps(
            {
                "jsonrpc": "2.0",
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "y" * 200_000}},
                "id": "last",
            }
        ).encode()
        client.send_raw(line[:100_000])
        time.sleep(0.5)  # the broker reads the first half (if it has not yet, the whole line is answered: once too)
        os.kill(entry["broker_pid"], signal.SIGKILL)
        client.send_raw(line[100_000:] + b"\n")
        answered = client.reply_to("last", timeout=30)
        assert "error" in answered or "result" in answered
        assert result_text(client.call("echo", {"text": "after"}, timeout=30)) == "after"
        rest = [m for m in client.seen + replies_until_quiet(client) if m.get("id") == "last"]
        assert rest == [], "answered once"
        assert not [m for m in client.seen if m.get("id") is None], "no error without an id"
    finally:
        client.close()


def echo_line(request_id: str, size: int) -> bytes:
    """A tools/call echo request whose id comes first, as most clients write it."""
    params = {"name": "echo", "arguments": {"text": "y" * size}}
    message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    return json.dumps(message).encode()


def test_a_request_read_in_part_below_the_streaming_size_at_kill_9_is_answered_under_its_id(
    home: Path, fake_server: list[str]
) -> None:
    """The soak's last unanswered request: the killed broker had read less of it than the 64 KiB from which a line
    streams (and is owed from its head on). Its id was in that part; the next broker reads only the rest, which
    names no id: the dead broker's journal must have owed it."""
    client = RawClient(shim(fake_server))
    try:
        client.initialize()
        (entry,) = ls_json()
        broker = entry["broker_pid"]
        line = echo_line("early", 100_000)
        client.send_raw(line[:30_000])
        assert wait_for(lambda: owed_on_disk(home, broker) == {client.process.pid: {'"early"'}})
        os.kill(broker, signal.SIGKILL)
        client.send_raw(line[30_000:] + b"\n")
        error = client.reply_to("early", timeout=30)
        assert "send it again" in error["error"]["message"]
        assert result_text(client.call("echo", {"text": "after"}, timeout=30)) == "after"
        rest = [m for m in client.seen + replies_until_quiet(client) if m.get("id") == "early"]
        assert rest == [], "answered once (the line's rest gets a -32700 with no id, as any cut line)"
    finally:
        client.close()


def test_a_request_read_in_part_then_in_full_is_owed_until_its_reply_only(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server))
    try:
        client.initialize()
        (entry,) = ls_json()
        broker = entry["broker_pid"]
        line = echo_line("whole", 50_000)
        client.send_raw(line[:20_000])
        assert wait_for(lambda: owed_on_disk(home, broker) == {client.process.pid: {'"whole"'}})
        client.send_raw(line[20_000:] + b"\n")
        assert len(result_text(client.reply_to("whole"))) == 50_000
        assert wait_for(lambda: not owed_on_disk(home, broker).get(client.process.pid)), "settled by its reply"
    finally:
        client.close()
