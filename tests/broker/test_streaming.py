"""Big backend replies stream through the broker (mux/streaming.py): the head decides, the rest passes as it
arrives, the id is spliced at the head or read from the end; nothing the session sees differs from the
full path, and every way a stream can go wrong leaves the session with an answer.

Layers: linehead.head / linetail.tail (property tests against json.loads), the mux's streams (sans-IO,
against the full path), LineReader's hand-off, then real sessions through a real broker.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import RawClient, result_text, shim, tapped, wait_for
from hypothesis import event, given, settings
from hypothesis import strategies as st
from mux_harness import Harness

from mcpsingleton.broker.lineio import LineReader
from mcpsingleton.mux import BackendPart, StreamPart, jsonrpc, linehead, linetail, quotes, session_stream
from mcpsingleton.mux.backend_stream import HOLD
from mcpsingleton.mux.streaming import STREAM_FROM

LIMIT = 64 << 20
FILL = 'x " \\ é \u2028 '
RESULT = {"content": [{"type": "text", "text": FILL * (STREAM_FROM // 4)}]}

# ---- linehead.head and linetail.tail: sound for any JSON object ---------------------------------

keys = st.text(min_size=1, max_size=6)
numbers = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3))
objects = st.dictionaries(keys, values, min_size=1, max_size=6)


def dumped(value: Any, spaced: bool) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": ") if spaced else (",", ":")).encode()


@settings(max_examples=300, deadline=None)
@given(objects, st.booleans())
def test_every_member_tail_reports_is_a_top_level_member_with_that_value(value: dict[str, Any], spaced: bool) -> None:
    line = dumped(value, spaced)
    members = linetail.tail(line)
    if members is None:  # a key written with escapes was reached: refused, never guessed
        assert any(b"\\" in dumped(key, False) for key in value)
        return
    for key, (start, end) in members.items():
        assert json.loads(line[start:end]) == value[key]
    last_key = list(value)[-1]
    last = value[last_key]
    if not isinstance(last, list | dict) and b"\\" not in dumped(last, False):
        assert last_key in members  # a simple last member is always found


@settings(max_examples=300, deadline=None)
@given(objects, st.booleans(), st.integers(1, 400))
def test_every_member_head_reports_is_complete_and_the_open_one_is_cut(
    value: dict[str, Any], spaced: bool, cut: int
) -> None:
    line = dumped(value, spaced)
    opened = linehead.head(line[: min(cut, len(line) - 1)])
    if opened is None:
        return
    assert list(opened.members) == list(value)[: len(opened.members)]
    for key, (start, end) in opened.members.items():
        assert json.loads(line[start:end]) == value[key]
    assert opened.open_key in value and opened.open_key not in opened.members


def test_tail_refuses_what_it_cannot_vouch_for() -> None:
    assert linetail.tail(b'"x","id":1') is None  # not the end of an object
    assert linetail.tail(b'a\\"id":7}') is None  # the key's quote is escaped
    assert linetail.tail(b'"id":7}') is None  # the byte before the key is not seen
    assert linetail.tail(b'"a\\"b"}') == {}  # a value with escapes ends the reading
    assert linetail.tail(b'x"},"jsonrpc":"2.0","id":7}\r') == {"id": (25, 26), "jsonrpc": (14, 19)}


def test_head_reads_up_to_the_open_member() -> None:
    line = b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"xxxx'
    opened = linehead.head(line)
    assert opened is not None and list(opened.members) == ["jsonrpc", "id"] and opened.open_key == "result"
    assert opened.body == {} and opened.body_open == "content"
    assert linehead.head(b'{"result":{},"id":1}') is None  # complete: nothing is open
    assert linehead.head(b'{"jsonrpc":"2.0"\x01,"result":{"a":"xx') is None  # a control byte in the head


# ---- the mux's streams ------------------------------------------------------------------------


def fed(stream: Any, line: bytes, cuts: list[int]) -> list[Any]:
    """A line fed to its stream as the broker does: the 64 KiB head, reads ending at `cuts`, the end."""
    bounds = [STREAM_FROM, *sorted(c for c in set(cuts) if STREAM_FROM < c < len(line)), len(line)]
    actions = stream.start(line[:STREAM_FROM])
    for start, end in itertools.pairwise(bounds[:-1]):
        actions += stream.more(line[start:end])
    return actions + stream.end(line[bounds[-2] :] + b"\n")


def reply_line(backend_id: int, result: dict[str, Any], id_last: bool) -> bytes:
    head, body = f'"jsonrpc":"2.0","id":{backend_id}', f'"result":{json.dumps(result)}'
    return ("{" + ",".join((body, head) if id_last else (head, body)) + "}").encode()


def streamed(h: Harness, line: bytes, chunk: int = 50_000) -> dict[int, bytes] | None:
    """Feed `line` to the mux as the broker does when it arrives in `chunk`-sized reads: what each session got."""
    stream = h.mux.stream_from_backend(line[:STREAM_FROM])
    if stream is None:
        return None
    got: dict[int, bytearray] = {}
    actions = fed(stream, line, list(range(STREAM_FROM, len(line), chunk)))
    h.perform([action for action in actions if not isinstance(action, StreamPart)])
    for action in actions:
        if isinstance(action, StreamPart):
            for part in action.parts:
                got.setdefault(action.session, bytearray()).extend(part)
    return {sid: bytes(data) for sid, data in got.items()}


def asked(h: Harness, sid: int, request_id: jsonrpc.Id, arguments: dict[str, Any] | None = None) -> int:
    """A session asks for a big result (what was recorded before is forgotten); the backend's id of it."""
    h.clear()
    h.request(sid, request_id, "tools/call", {"name": "big", "arguments": arguments or {}})
    return h.last_request("tools/call")["id"]


def opened_reply() -> tuple[Harness, bytes, Any]:
    """Session 1 asked (id "mine"); the backend's big reply, its id last, and the stream opened for it."""
    h = Harness()
    h.open(1)
    line = reply_line(asked(h, 1, "mine"), RESULT, True)
    stream = h.mux.stream_from_backend(line[:STREAM_FROM])
    assert stream is not None
    return h, line, stream


@pytest.mark.parametrize("id_last", [False, True])
def test_a_big_reply_streams_to_its_asker_under_its_own_id(id_last: bool) -> None:
    h = Harness()
    h.open(1)
    h.open(2)
    backend_id = asked(h, 1, "mine")
    got = streamed(h, reply_line(backend_id, RESULT, id_last))
    assert got is not None and list(got) == [1]
    assert got[1].endswith(b"\n") and got[1].count(b"\n") == 1
    assert json.loads(got[1]) == {"jsonrpc": "2.0", "id": "mine", "result": RESULT}
    assert h.mux.requests.pending == {} and h.mux.sessions[1].inflight == {}
    assert h.mux.stats["streamed"] == 1 and not h.mux.busy(1)


def test_a_progress_token_is_released_when_the_streamed_reply_ends() -> None:
    h = Harness()
    h.open(1)
    h.request(1, 5, "tools/call", {"name": "big", "_meta": {"progressToken": "p"}})
    backend_id = h.last_request("tools/call")["id"]
    assert h.mux.progress.owners
    assert streamed(h, reply_line(backend_id, RESULT, True)) is not None
    assert h.mux.progress.owners == {}


def test_with_the_id_last_only_a_backend_owing_one_request_streams() -> None:
    h = Harness()
    h.open(1)
    h.open(2)
    first = asked(h, 1, 1)
    asked(h, 2, 1)
    assert streamed(h, reply_line(first, RESULT, True)) is None  # two owed: the asker is known only at the end
    assert streamed(h, reply_line(first, RESULT, False)) is not None  # the id at the head names it


def test_a_cancelled_request_of_another_session_stops_streams_whose_id_comes_last() -> None:
    h = Harness()
    h.open(1)
    h.open(2)
    asked(h, 2, 1)
    h.notify(2, "notifications/cancelled", {"requestId": 1})
    mine = asked(h, 1, 1)
    assert streamed(h, reply_line(mine, RESULT, True)) is None  # it could be session 2's late reply
    assert streamed(h, reply_line(mine, RESULT, False)) is not None


@pytest.mark.parametrize(
    "line",
    [
        b'{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"' + b"x" * STREAM_FROM,
        b'{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"' + b"x" * STREAM_FROM,
        b'{"jsonrpc":"2.0","id":1,"result":"' + b"x" * STREAM_FROM,  # a result that is not an object
        b'{"jsonrpc":"2.0","id":1,"result":{"task":{"taskId":"t"},"x":"' + b"x" * STREAM_FROM,
        b'{"jsonrpc":"1.0","id":1,"result":{"x":"' + b"x" * STREAM_FROM,
        b'{"jsonrpc":"2.0","id":99,"result":{"x":"' + b"x" * STREAM_FROM,  # nobody asked 99
        b'[{"jsonrpc":"2.0","id":1,"result":{"x":"' + b"x" * STREAM_FROM,
    ],
)
def test_lines_that_need_the_full_path_do_not_stream(line: bytes) -> None:
    h = Harness()
    h.open(1)
    asked(h, 1, 1)
    assert h.mux.stream_from_backend(line[:STREAM_FROM]) is None


def test_the_brokers_own_requests_and_batches_do_not_stream() -> None:
    h = Harness()
    h.open(1)
    h.perform(h.mux.ask_tools(lambda tools: []))
    own = h.last_request("tools/list")["id"]
    assert streamed(h, reply_line(own, RESULT, False)) is None
    h.send(1, [jsonrpc.request(7, "tools/call", {"name": "big"}), jsonrpc.request(8, "tools/call", {"name": "b"})])
    batched = h.last_request("tools/call")["id"]
    assert streamed(h, reply_line(batched, RESULT, False)) is None


def test_a_reply_that_does_not_end_with_its_id_fails_its_request_and_a_late_reply_is_dropped() -> None:
    h = Harness()
    h.open(1)
    backend_id = asked(h, 1, "mine")
    wrong = reply_line(backend_id + 1000, RESULT, True)
    got = streamed(h, wrong)
    assert got is not None and got[1] == wrong + b"\n"  # as the backend wrote it
    (error,) = h.replies(1)
    assert error["id"] == "mine" and error["error"]["code"] == jsonrpc.INTERNAL_ERROR
    h.clear()
    h.from_backend(reply_line(backend_id, {"content": []}, False))
    assert h.take(1) == [] and h.mux.stats["internal_errors"] == 0


def test_a_stream_cut_short_ends_the_line_and_the_lost_backend_fails_the_request() -> None:
    h, line, stream = opened_reply()
    parts = stream.start(line[:STREAM_FROM]) + stream.more(line[STREAM_FROM : STREAM_FROM + 5000]) + stream.abort()
    sent = b"".join(bytes(part) for action in parts for part in action.parts)
    assert sent == line[: STREAM_FROM + 5000 - HOLD] + b"\n"  # not the held bytes: the line ends before them
    assert parts[-1].done and stream.abort() == [] and stream.more(b"late") == []
    assert h.mux.busy(1)
    h.crash()
    assert h.only_reply(1)["error"]["code"] == jsonrpc.INTERNAL_ERROR


def test_a_failure_inside_a_stream_ends_the_line_and_answers_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    h, line, stream = opened_reply()
    monkeypatch.setattr(linetail, "tail", lambda line: 1 / 0)
    actions = stream.start(line[:STREAM_FROM]) + stream.end(line[STREAM_FROM:] + b"\n")
    assert [a.done for a in actions if isinstance(a, StreamPart)][-1]
    h.perform([a for a in actions if not isinstance(a, StreamPart)])
    assert h.only_reply(1)["error"]["code"] == jsonrpc.INTERNAL_ERROR
    assert h.mux.stats["internal_errors"] == 1 and not h.mux.busy(1)


def test_held_bytes_are_only_the_last_ones() -> None:
    _, line, stream = opened_reply()
    out = b"".join(bytes(p) for a in stream.start(line[:STREAM_FROM]) for p in a.parts)
    assert out == line[: STREAM_FROM - HOLD]


def test_the_fast_path_setting_off_turns_streaming_off() -> None:
    h = Harness(fast_path_from=float("inf"))
    h.open(1)
    backend_id = asked(h, 1, 1)
    assert streamed(h, reply_line(backend_id, RESULT, False)) is None


# ---- LineReader hands the rest of a line to its sink ----------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.ended: bytes | None = None
        self.aborted = False

    def more(self, data: bytes) -> None:
        self.data += data

    def end(self, data: bytes) -> None:
        self.ended = bytes(data)

    def abort(self) -> None:
        self.aborted = True


def test_line_reader_streams_the_rest_of_a_line_and_splits_what_follows() -> None:
    read_end, write_end = os.pipe()
    try:
        reader = LineReader(read_end, 1 << 31)
        sink = Sink()
        offered: list[bytes] = []
        assert reader.feed(b'{"a":1}\n{"big":"' + b"y" * 100) == ([b'{"a":1}'], False)
        reader.stream(1000, lambda head: offered.append(head) or sink)  # too short yet: not offered
        assert offered == []
        reader.feed(b"y" * 2000)
        reader.stream(1000, lambda head: offered.append(head) or sink)
        assert len(offered) == 1 and offered[0].startswith(b'{"big"')
        assert reader.feed(b"z" * 10) == ([], False) and sink.data == b"z" * 10
        lines, _ = reader.feed(b'zz"}\n{"b":2}\n')
        assert sink.ended == b'zz"}\n' and lines == [b'{"b":2}']
        declined = LineReader(read_end, 1 << 31)
        declined.feed(b"q" * 2000)
        declined.stream(1000, lambda head: None)
        declined.stream(1000, lambda head: pytest.fail("offered twice"))
        assert declined.feed(b"\n") == ([b"q" * 2000], False)
        cut = LineReader(read_end, 1 << 31)
        cut.feed(b"r" * 2000)
        cut_sink = Sink()
        cut.stream(1000, lambda head: cut_sink)
        os.close(write_end)
        write_end = -1
        assert cut.read() == ([], False, True) and cut_sink.aborted
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


# ---- real sessions through a real broker ------------------------------------------------------


def raw_lines(client: RawClient, until: bytes, timeout: float = 20.0) -> list[bytes]:
    """Raw lines from the client's stdout up to and including the first that contains `until`."""
    assert client.process.stdout is not None
    fd, lines, deadline = client.process.stdout.fileno(), [], time.monotonic() + timeout
    while True:
        while b"\n" in client.buffer:
            line, client.buffer = client.buffer.split(b"\n", 1)
            lines.append(line)
            if until in line:
                return lines
        assert select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0], f"no {until!r} in time"
        chunk = os.read(fd, 1 << 20)
        assert chunk, "the session's stdout closed"
        client.buffer += chunk


def received_before(client: RawClient, count: int, timeout: float = 20.0) -> int:
    """Read raw bytes until `count` arrived (kept in the buffer); how many did."""
    assert client.process.stdout is not None
    fd, deadline = client.process.stdout.fileno(), time.monotonic() + timeout
    while len(client.buffer) < count and select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
        client.buffer += os.read(fd, 1 << 20)
    return len(client.buffer)


@pytest.mark.parametrize("id_last", [False, True])
def test_a_session_gets_a_big_reply_before_the_backend_finished_writing_it(
    home: Path, fake_server: list[str], tmp_path: Path, id_last: bool
) -> None:
    asker, bystander = RawClient(shim(fake_server)), RawClient(shim(fake_server))
    asker.initialize()
    bystander.initialize()
    gate, size = tmp_path / "gate", 4 << 20
    arguments = {"size": size, "gate": str(gate), "id_last": id_last}
    request_id = asker.request("tools/call", {"name": "big", "arguments": arguments})
    arrived = received_before(asker, 1 << 20)
    gate.touch()  # only now does the backend write the second half
    assert arrived >= 1 << 20, "nothing of the reply arrived before its end was written"
    (line,) = raw_lines(asker, b'"jsonrpc"')
    reply = json.loads(line)
    assert reply["id"] == request_id and len(result_text(reply)) == size
    assert result_text(bystander.call("echo", {"text": "and me"})) == "and me"
    assert result_text(asker.call("echo", {"text": "next"})) == "next"
    assert asker.close() == 0 and bystander.close() == 0


def test_a_backend_lost_in_the_middle_of_a_streamed_reply(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server))
    client.initialize()
    request_id = client.request("tools/call", {"name": "half", "arguments": {"size": 1 << 20}})
    cut, error = raw_lines(client, b'"error"')
    assert cut.startswith(b'{"result":{"content":') and len(cut) >= (1 << 20) - HOLD  # ended where it stopped
    reply = json.loads(error)
    assert reply["id"] == request_id and reply["error"]["code"] == jsonrpc.INTERNAL_ERROR
    assert "killed" in reply["error"]["message"] or "exited" in reply["error"]["message"]
    assert result_text(client.call("echo", {"text": "after"})) == "after"  # a new backend
    assert client.close() == 0


# ---- a session's big request streams to the backend ----------------------------------------------


def request_line(request_id: jsonrpc.Id, params: dict[str, Any], id_last: bool, method: str = "tools/call") -> bytes:
    """As the SDKs write a request: Python's id first, TypeScript's last (with `_meta` ending the params)."""
    if id_last:
        return json.dumps({"method": method, "params": params, "jsonrpc": "2.0", "id": request_id}).encode()
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode()


def sent_in(h: Harness, sid: int, line: bytes, chunk: int = 50_000) -> tuple[bytes, list[Any]] | None:
    """Stream a session's line into the mux in `chunk`-sized reads: the bytes the backend got, and the rest."""
    stream = h.mux.stream_from_session(sid, line[:STREAM_FROM], LIMIT)
    if stream is None:
        return None
    actions = fed(stream, line, list(range(STREAM_FROM, len(line), chunk)))
    got = b"".join(bytes(part) for action in actions if isinstance(action, BackendPart) for part in action.parts)
    return got, h.perform([action for action in actions if not isinstance(action, BackendPart)])


def without_meta(params: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if key != "_meta"}


BIG_ARGS = {"name": "echo", "arguments": {"text": FILL * (STREAM_FROM // 2)}}


@pytest.mark.parametrize("id_last", [False, True])
def test_a_big_request_streams_under_a_fresh_backend_id_and_its_reply_comes_back(id_last: bool) -> None:
    h = Harness()
    h.open(1)
    h.open(2)
    h.clear()
    before = h.mux.stats["requests"]
    sent = sent_in(h, 1, request_line("req-1", BIG_ARGS, id_last))
    assert sent is not None
    got, rest = sent
    assert rest == [] and got.endswith(b"\n") and got.count(b"\n") == 1
    forwarded = json.loads(got)
    assert forwarded["params"] == BIG_ARGS and forwarded["method"] == "tools/call"
    (backend_id,) = h.mux.requests.pending
    assert forwarded["id"] == backend_id and h.mux.busy(1) and h.mux.stats["requests"] == before + 1
    h.answer(forwarded, {"content": []})
    assert h.only_reply(1) == {"jsonrpc": "2.0", "id": "req-1", "result": {"content": []}}
    assert h.mux.inbound is None and not h.mux.busy(1)


def test_a_typescript_progress_token_at_the_end_is_rewritten_like_the_full_path_does() -> None:
    h = Harness()
    h.open(1)
    h.clear()
    params = {**BIG_ARGS, "_meta": {"progressToken": 3}}
    sent = sent_in(h, 1, request_line(3, params, id_last=True))
    assert sent is not None
    forwarded = json.loads(sent[0])
    backend_id = forwarded["id"]
    assert forwarded["params"]["_meta"] == {"progressToken": backend_id}
    h.from_backend(jsonrpc.notification("notifications/progress", {"progressToken": backend_id, "progress": 1}))
    (note,) = h.notes_to(1, "notifications/progress")
    assert note["params"]["progressToken"] == 3
    h.answer(forwarded)
    assert h.mux.progress.owners == {}


def mismatched_end(case: str, id_last: bool) -> bytes:
    """A big request whose end says something its head did not (or that only the full path handles)."""
    if case == "meta with more than a token":
        return request_line(9, {**BIG_ARGS, "_meta": {"progressToken": 1, "other": True}}, id_last)
    if case == "escaped meta":
        return request_line(9, {**BIG_ARGS, "_meta": 1}, id_last).replace(b'"_meta"', b'"\\u005fmeta"')
    second = {"second id": b', "id": 5}', "second method": b', "method": "initialize"}'}[case]
    return request_line(9, BIG_ARGS, id_last)[:-1] + second  # the backend's parser keeps the last one


@pytest.mark.parametrize("case", ["meta with more than a token", "escaped meta", "second id", "second method"])
@pytest.mark.parametrize("id_last", [False, True])
def test_an_end_that_does_not_match_the_head_never_reaches_the_backend_whole(case: str, id_last: bool) -> None:
    h = Harness()
    h.open(1)
    h.clear()
    line = mismatched_end(case, id_last)
    sent = sent_in(h, 1, line)
    assert sent is not None
    got, _ = sent
    for piece in got.split(b"\n")[:-1]:  # what the backend had of the line: never a whole request
        with pytest.raises(ValueError):
            json.loads(piece)
    assert any("not passed on as it came" in text for text in h.logs)
    reference = Harness(fast_path_from=float("inf"))  # the full path, for the same line
    reference.open(1)
    reference.clear()
    reference.send(1, line)
    assert backend_ids_out(h.backend) == backend_ids_out(reference.backend)
    assert h.take(1) == reference.take(1)


def test_meta_inside_the_big_string_is_text_not_a_key() -> None:
    h = Harness()
    h.open(1)
    h.clear()
    params = {"name": "echo", "arguments": {"text": BIG_TEXT + ' "_meta": {"progressToken": 1}, \\u005f '}}
    sent = sent_in(h, 1, request_line(4, params, id_last=True))
    assert sent is not None and not any("not passed on" in text for text in h.logs)
    assert json.loads(sent[0])["params"] == params and h.mux.progress.owners == {}


@pytest.mark.parametrize(
    "line",
    [
        request_line(1, {"_meta": {"progressToken": 1}, **BIG_ARGS}, id_last=False),  # `_meta` first: full path
        request_line(1, BIG_ARGS, id_last=False, method="resources/subscribe"),  # the router answers it
        request_line(1, BIG_ARGS, id_last=False, method="initialize"),
        json.dumps({"jsonrpc": "2.0", "method": "notifications/roots/list_changed", "params": BIG_ARGS}).encode(),
        json.dumps({"jsonrpc": "2.0", "id": True, "method": "tools/call", "params": BIG_ARGS}).encode(),
        json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": BIG_ARGS}]).encode(),
    ],
)
def test_requests_the_router_must_read_whole_do_not_stream(line: bytes) -> None:
    h = Harness()
    h.open(1)
    assert h.mux.stream_from_session(1, line[:STREAM_FROM], LIMIT) is None


def test_one_request_streams_at_a_time_and_a_parked_session_or_a_backend_not_ready_waits() -> None:
    h = Harness()
    h.open(1)
    h.open(2)
    line = request_line(1, BIG_ARGS, id_last=False)
    first = h.mux.stream_from_session(1, line[:STREAM_FROM], LIMIT)
    assert first is not None and h.mux.stream_from_session(2, line[:STREAM_FROM], LIMIT) is None
    first.abort()
    assert h.mux.stream_from_session(2, line[:STREAM_FROM], LIMIT) is not None
    waiting = Harness(auto_initialize=False)
    waiting.perform(waiting.mux.open_session(1))
    assert waiting.mux.stream_from_session(1, line[:STREAM_FROM], LIMIT) is None


def test_a_request_whose_id_never_comes_is_sent_in_full() -> None:
    h = Harness()
    h.open(1)
    h.clear()
    line = json.dumps({"method": "notifications/custom", "params": BIG_ARGS, "jsonrpc": "2.0"}).encode()
    sent = sent_in(h, 1, line)
    assert sent is not None and h.backend_notes("notifications/custom") and h.mux.requests.pending == {}


def test_a_session_that_leaves_mid_request_cuts_the_backends_line_and_is_forgotten() -> None:
    h = Harness()
    h.open(1)
    line = request_line(1, BIG_ARGS, id_last=False)
    stream = h.mux.stream_from_session(1, line[:STREAM_FROM], LIMIT)
    assert stream is not None
    parts = stream.start(line[:STREAM_FROM]) + stream.abort()
    assert isinstance(parts[-2], BackendPart) and parts[-2].parts == (b"\n",) and parts[-2].done
    assert h.mux.requests.pending == {} and not h.mux.busy(1) and h.mux.inbound is None


@pytest.mark.parametrize("id_last", [False, True])
def test_a_backend_lost_mid_request_sends_it_to_the_next_backend_in_full(id_last: bool) -> None:
    h = Harness()
    h.open(1)
    h.clear()
    line = request_line("r", BIG_ARGS, id_last)
    stream = h.mux.stream_from_session(1, line[:STREAM_FROM], LIMIT)
    assert stream is not None
    first = stream.start(line[:STREAM_FROM])
    assert first and all(isinstance(action, BackendPart) for action in first)
    h.crash()
    assert h.take(1) == []  # nothing failed: the request was never whole at the lost backend
    h.start()  # a new backend, ready
    later = stream.more(line[STREAM_FROM:-10]) + stream.end(line[-10:] + b"\n")
    assert not any(isinstance(action, BackendPart) for action in later)  # nothing of it reaches the new one
    h.perform(later)
    (resent,) = h.backend_requests("tools/call")
    assert resent["params"] == BIG_ARGS
    h.answer(resent)
    assert h.only_reply(1) == {"jsonrpc": "2.0", "id": "r", "result": {}}


def test_a_backend_gets_a_big_request_before_the_session_finished_writing_it(
    home: Path, fake_server: list[str], tmp_path: Path
) -> None:
    client = RawClient(shim(tapped(fake_server, tmp_path)))
    client.initialize()
    text = "y" * (4 << 20)
    line = request_line(77, {"name": "echo", "arguments": {"text": text}}, id_last=False) + b"\n"
    client.send_raw(line[: 2 << 20])
    received = wait_for(lambda: (tmp_path / "in.jsonl").stat().st_size > (1 << 20), timeout=20)
    client.send_raw(line[2 << 20 :])
    assert received, "nothing of the request reached the backend before its end was written"
    reply = client.reply_to(77, timeout=30)
    assert result_text(reply) == text
    assert client.close() == 0


def test_a_typescript_request_with_a_progress_token_at_the_end_gets_its_progress(
    home: Path, fake_server: list[str]
) -> None:
    client, bystander = RawClient(shim(fake_server)), RawClient(shim(fake_server))
    client.initialize()
    bystander.initialize()
    params = {"name": "progress", "arguments": {"steps": 2, "pad": "z" * (1 << 20)}, "_meta": {"progressToken": "t"}}
    client.send_raw(request_line("ts-1", params, id_last=True) + b"\n")
    reply = client.reply_to("ts-1", timeout=30)
    assert result_text(reply) == "2 steps"
    progress = [m for m in client.seen if m.get("method") == "notifications/progress"]
    assert [m["params"]["progressToken"] for m in progress] == ["t", "t"]
    assert result_text(bystander.call("echo", {"text": "unaffected"})) == "unaffected"
    assert client.close() == 0 and bystander.close() == 0


def test_a_session_that_dies_mid_request_costs_the_others_nothing(home: Path, fake_server: list[str]) -> None:
    dying, bystander = RawClient(shim(fake_server)), RawClient(shim(fake_server))
    dying.initialize()
    bystander.initialize()
    line = request_line(5, {"name": "echo", "arguments": {"text": "q" * (2 << 20)}}, id_last=True)
    dying.send_raw(line[: 1 << 20])
    time.sleep(0.2)  # the first MiB is on its way to the backend
    dying.process.kill()
    dying.process.wait()
    assert result_text(bystander.call("echo", {"text": "still here"}, timeout=20)) == "still here"
    assert bystander.close() == 0


# ---- differential: streamed or not, every peer sees the same messages --------------------------------

BIG_TEXT = "b" * STREAM_FROM
small_values = st.one_of(st.integers(-5, 5), st.text(max_size=4), st.booleans(), st.none())
ids = st.one_of(st.integers(0, 10**6), st.text(min_size=1, max_size=6))
metas = st.one_of(
    st.none(),
    st.fixed_dictionaries({"progressToken": ids}),
    st.fixed_dictionaries({"progressToken": ids, "other": small_values}),
    st.fixed_dictionaries({"note": small_values}),
)


def shuffled(draw: st.DrawFn, members: dict[str, Any]) -> dict[str, Any]:
    order = draw(st.permutations(list(members)))
    return {key: members[key] for key in order}


@st.composite
def big_requests(draw: st.DrawFn) -> dict[str, Any]:
    params: dict[str, Any] = {"name": "echo", "arguments": {"text": BIG_TEXT, "n": draw(small_values)}}
    meta = draw(metas)
    if meta is not None:
        params["_meta"] = meta
    top = {"jsonrpc": "2.0", "id": draw(ids), "method": "tools/call", "params": shuffled(draw, params)}
    if draw(st.booleans()):
        top["x"] = draw(small_values)
    return shuffled(draw, top)


@st.composite
def big_results(draw: st.DrawFn) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": BIG_TEXT}]}
    if draw(st.booleans()):
        result["isError"] = draw(st.booleans())
    return shuffled(draw, result)


def backend_ids_out(messages: list[Any]) -> list[Any]:
    """Messages as the backend got them, the broker's own ids and tokens (which differ by path) blanked."""
    out = []
    for message in messages:
        message = json.loads(json.dumps(message))
        if isinstance(message, dict) and "id" in message:
            message["id"] = "<backend id>"
        meta = message.get("params", {}).get("_meta") if isinstance(message, dict) else None
        if isinstance(meta, dict) and "progressToken" in meta:
            meta["progressToken"] = "<token>"
        out.append(message)
    return out


def stream_in(h: Harness, line: bytes, cuts: list[int]) -> None:
    """A session line as the broker handles it: streamed when the mux offers, else whole."""
    stream = h.mux.stream_from_session(1, line[:STREAM_FROM], LIMIT)
    if stream is None:
        h.send(1, line)
        return
    actions = fed(stream, line, cuts)
    h.perform([a for a in actions if not isinstance(a, BackendPart)])
    written = b"".join(bytes(p) for a in actions if isinstance(a, BackendPart) for p in a.parts)
    for part in written.split(b"\n")[:-1]:
        try:
            h.backend.append(json.loads(part))
        except ValueError:
            assert any("not passed on as it came" in text for text in h.logs)  # only a cut-off copy


def stream_out(h: Harness, line: bytes, cuts: list[int]) -> None:
    """A backend line as the broker handles it: streamed when the mux offers, else whole."""
    stream = h.mux.stream_from_backend(line[:STREAM_FROM])
    if stream is None:
        h.from_backend(line)
        return
    actions = fed(stream, line, cuts)
    for sid in {a.session for a in actions if isinstance(a, StreamPart)}:
        written = b"".join(bytes(p) for a in actions if isinstance(a, StreamPart) and a.session == sid for p in a.parts)
        h.inbox[sid] += [json.loads(part) for part in written.split(b"\n")[:-1]]
    h.perform([a for a in actions if not isinstance(a, StreamPart)])


@settings(max_examples=int(os.environ.get('STREAM_EXAMPLES', 60)), deadline=None)
@given(big_requests(), big_results(), st.booleans(), st.lists(st.integers(0, 3 * STREAM_FROM), max_size=4))
def test_streamed_or_not_the_backend_and_the_session_see_the_same(
    request: dict[str, Any], result: dict[str, Any], id_last: bool, cuts: list[int]
) -> None:
    worlds = (Harness(), Harness(fast_path_from=float("inf")))
    line = json.dumps(request).encode()
    for h in worlds:
        h.open(1)
        h.open(2)
        h.clear()
        stream_in(h, line, cuts)
    streamed, full = worlds
    rewritten = any("not passed on as it came" in text for text in streamed.logs)
    event("request streamed" if streamed.mux.stats["streamed"] and not rewritten else "request sent whole")
    assert backend_ids_out(streamed.backend) == backend_ids_out(full.backend)
    for h in worlds:
        (forwarded,) = h.backend_requests("tools/call")
        reply = {"jsonrpc": "2.0", "id": forwarded["id"], "result": result}
        ordered = {"result": result, "jsonrpc": "2.0", "id": forwarded["id"]} if id_last else reply
        stream_out(h, json.dumps(ordered).encode(), cuts)
    event(f"streams: {streamed.mux.stats['streamed']}")
    assert streamed.take(1) == full.take(1) and streamed.take(2) == full.take(2) == []
    for h in worlds:
        assert h.mux.requests.pending == {} and h.mux.progress.owners == {} and not h.mux.busy(1)
        assert h.mux.inbound is None and h.mux.stats["internal_errors"] == 0


def test_a_streamed_request_cut_short_is_answered_with_a_parse_error() -> None:
    h = Harness()
    h.open(1)
    h.clear()
    whole = request_line(8, BIG_ARGS, id_last=False)
    assert sent_in(h, 1, whole + b"   \r") is not None and h.mux.requests.pending  # whitespace after it: fine
    h.clear()
    h.mux.requests.pending.clear()
    h.mux.sessions[1].inflight.clear()
    sent = sent_in(h, 1, whole[:-40])  # ends inside its big string
    assert sent is not None
    with pytest.raises(ValueError):
        json.loads(sent[0])  # the backend's copy is cut off
    (error,) = h.replies(1)
    assert error["error"]["code"] == jsonrpc.PARSE_ERROR
    assert h.mux.requests.pending == {} and not h.mux.busy(1)


def test_a_streamed_request_over_the_line_limit_is_cut_off_and_refused() -> None:
    h = Harness()
    h.open(1)
    h.clear()
    line = request_line(3, {"name": "echo", "arguments": {"text": "v" * (3 * STREAM_FROM)}}, id_last=False)
    stream = h.mux.stream_from_session(1, line[:STREAM_FROM], 2 * STREAM_FROM)
    assert stream is not None
    actions = fed(stream, line, list(range(STREAM_FROM, len(line), 20_000)))
    written = b"".join(bytes(p) for a in actions if isinstance(a, BackendPart) for p in a.parts)
    assert written.endswith(b"\n") and len(written) <= 2 * STREAM_FROM + 20_000 + 1
    with pytest.raises(ValueError):
        json.loads(written)
    h.perform([a for a in actions if not isinstance(a, BackendPart)])
    (refusal,) = h.replies(1)
    assert refusal["error"]["code"] == jsonrpc.PARSE_ERROR and "longer than" in refusal["error"]["message"]
    assert h.mux.requests.pending == {} and h.mux.inbound is None and stream.kept == []


def test_a_stalled_request_is_cut_off_and_sent_in_full_at_its_end() -> None:
    h = Harness()
    h.open(1)
    h.clear()
    line = request_line(6, BIG_ARGS, id_last=False)
    stream = h.mux.stream_from_session(1, line[:STREAM_FROM], LIMIT)
    assert stream is not None
    first = stream.start(line[:STREAM_FROM])
    stalled = stream.stalled()
    assert isinstance(stalled[0], BackendPart) and stalled[0].parts == (b"\n",) and stalled[0].done
    assert h.mux.inbound is None and h.mux.requests.pending == {} and stream.stalled() == []
    rest = stream.more(line[STREAM_FROM:]) + stream.end(b"\n")
    assert not any(isinstance(a, BackendPart) for a in rest) and first
    h.perform(rest)
    (resent,) = h.backend_requests("tools/call")
    assert resent["params"] == BIG_ARGS


def test_a_streamed_request_moves_only_as_its_state_table_allows() -> None:
    """The states a streamed request goes through, and that the backend has part of the line (and the stream
    is the mux's `inbound`) exactly while it is passing or holding."""
    h = Harness()
    h.open(1)
    h.clear()
    line = request_line(8, BIG_ARGS, id_last=False)
    stream = h.mux.stream_from_session(1, line[:STREAM_FROM], LIMIT)
    assert stream is not None and stream.state == session_stream.PASSING and h.mux.inbound is stream
    quote = line.rindex(b'"}}')  # the big string's closing quote
    stream.start(line[:STREAM_FROM])
    stream.more(line[STREAM_FROM:quote])
    assert stream.state == session_stream.PASSING
    stream.more(line[quote : quote + 2])
    assert stream.state == session_stream.HOLDING and h.mux.inbound is stream
    (cut,) = [a for a in stream.stalled() if isinstance(a, BackendPart)]
    assert cut.done and stream.state == session_stream.DIVERTED and h.mux.inbound is None
    with pytest.raises(RuntimeError):
        stream._move(session_stream.PASSING)  # a diverted line never passes again
    stream.end(line[quote + 2 :] + b"\n")
    assert stream.state == session_stream.ENDED and stream.finished and stream.more(b"x") == []
    moves = session_stream.MOVES
    assert set(moves) == {*(to for targets in moves.values() for to in targets), session_stream.PASSING}
    assert all(session_stream.ENDED in targets for state, targets in moves.items() if state != session_stream.ENDED)
    assert moves[session_stream.ENDED] == ()


def test_a_failure_inside_a_streamed_request_ends_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The never-raise wrapper both streams share: the backend's copy is cut off once, the request answered
    -32603, the failure logged and counted, and later pieces dropped."""
    h = Harness()
    h.open(1)
    h.clear()
    line = request_line(9, BIG_ARGS, id_last=False)
    stream = h.mux.stream_from_session(1, line[:STREAM_FROM], LIMIT)
    assert stream is not None
    stream.start(line[:STREAM_FROM])
    monkeypatch.setattr(quotes, "closing_quote", lambda *args: 1 / 0)
    actions = stream.more(line[STREAM_FROM:-10])
    assert [a.done for a in actions if isinstance(a, BackendPart)] == [True]
    assert stream.finished and h.mux.inbound is None and h.mux.stats["internal_errors"] == 1
    assert stream.end(line[-10:] + b"\n") == [] and stream.abort() == []
    h.perform(actions)
    assert h.only_reply(1)["error"]["code"] == jsonrpc.INTERNAL_ERROR and not h.mux.busy(1)
    assert any("internal error while streaming a request of session 1" in text for text in h.logs)


def test_tail_of_any_suffix_reports_only_real_members() -> None:
    @settings(max_examples=300, deadline=None)
    @given(objects, st.booleans(), st.integers(0, 200))
    def check(value: dict[str, Any], spaced: bool, cut: int) -> None:
        line = dumped(value, spaced)
        suffix = line[min(cut, len(line)) :]
        members = linetail.tail(suffix)
        for key, (start, end) in (members or {}).items():
            assert json.loads(suffix[start:end]) == value[key]

    check()
    assert linetail.tail(b'{"a":"x","\xff":2,"id":3}') is None  # a key that is not UTF-8: refused, not raised


def test_a_bystander_is_not_held_up_by_a_session_that_stops_mid_request(home: Path, fake_server: list[str]) -> None:
    writer, bystander = RawClient(shim(fake_server)), RawClient(shim(fake_server))
    writer.initialize()
    bystander.initialize()
    line = request_line(21, {"name": "echo", "arguments": {"text": "w" * (1 << 20)}}, id_last=False) + b"\n"
    writer.send_raw(line[: 1 << 19])  # half of it, then nothing for a while
    time.sleep(0.2)
    assert result_text(bystander.call("echo", {"text": "not held up"}, timeout=10)) == "not held up"
    writer.send_raw(line[1 << 19 :])
    assert len(result_text(writer.reply_to(21, timeout=20))) == 1 << 20  # sent in full at its end
    assert writer.close() == 0 and bystander.close() == 0


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet='ab"\\\n\u00e9', max_size=300),
    st.lists(st.integers(0, 400), max_size=4),
    st.sampled_from([quotes.WINDOW, 2, 3, 5, 8]),
)
def test_closing_quote_finds_a_strings_end_across_any_pieces(text: str, cuts: list[int], window: int) -> None:
    """Pieces cut anywhere (inside a backslash run, between a backslash and its quote), blanked windows of
    any size: one rule, the same answer as the full parser."""
    encoded = json.dumps(text, ensure_ascii=False).encode()
    rest = encoded[1:] + b',"z":"q\\"r"}'  # the content after the opening quote, and what follows
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(rest)), len(rest)]
    escaped, offset = False, 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quotes, "WINDOW", window)
        for start, end in itertools.pairwise(bounds):
            found, escaped = quotes.closing_quote(rest[start:end], 0, escaped)
            if found >= 0:
                assert offset + found == len(encoded) - 2
                return
            offset += end - start
    pytest.fail("the closing quote was not found")
