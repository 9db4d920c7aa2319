"""Big lines pass through the mux with only their id spliced (the envelope fast path), and nothing a
session, the backend or the mux's state can see differs from the full path.

Differential: the same inputs (the fuzz suite's worlds) through a mux that tries the fast path on every
line and one that never does give the same messages, logs, counters and bookkeeping. Then, with the
default threshold, big messages of each shape that qualifies take it (counted in `stats["fast_path"]`)
and each shape that needs the full path does not.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mux_harness import Harness, is_request
from mux_world import SESSION_METHODS, World, capabilities, line_of, ops, replies, results, values

from mcpsingleton.mux import Mux, ToBackend, ToSession, eras, jsonrpc
from mcpsingleton.mux.actions import Spliced
from mcpsingleton.mux.fast_path import FAST_PATH_FROM, fast_path_threshold

BIG = "x" * (2 * FAST_PATH_FROM)
BIG_TEXT = {"content": [{"type": "text", "text": BIG + ' "quoted" \\ é \u2028'}]}


def state(mux: Mux) -> dict[str, Any]:
    """Everything the mux remembers between lines, comparable across two muxes."""
    return {
        "stats": {name: count for name, count in mux.stats.items() if name != "fast_path"},
        "pending": {
            backend_id: (p.session, p.original_id, p.method, p.token, p.stateless, p.log_level, p.on_reply is None)
            for backend_id, p in mux.requests.pending.items()
        },
        "abandoned": list(mux.requests.abandoned),
        "inflight": {sid: dict(session.inflight) for sid, session in mux.sessions.items()},
        "outstanding": {
            our_id: (o.session, o.backend_id, o.method) for our_id, o in mux.server_requests.outstanding.items()
        },
        "by_backend": dict(mux.server_requests.by_backend),
        "progress": dict(mux.progress.owners),
        "tasks": (dict(mux.tasks.owner), dict(mux.tasks.token)),
        "batches": {sid: sorted(map(repr, index)) for sid, index in mux.batches.expected.items()},
    }


def seen(world: World) -> tuple[Any, ...]:
    """What every peer received (as decoded JSON) and what was logged."""
    return world.h.backend, dict(world.h.inbox), world.h.logs


PLAIN_REQUESTS = st.tuples(
    st.just("request"),
    st.integers(0, 3),
    st.tuples(st.sampled_from(SESSION_METHODS), st.one_of(values, st.just({}), st.none()), st.just(False), st.none()),
)
ERRORS = st.fixed_dictionaries({"code": st.integers(), "message": st.text(max_size=5)}, optional={"data": values})
PLAIN_ANSWERS = st.tuples(
    st.just("answer"),
    st.integers(0, 9),
    st.one_of(
        st.fixed_dictionaries({"result": results}),
        st.fixed_dictionaries({"error": ERRORS}),
        replies,
    ),
)
SESSION_ANSWERS = st.tuples(st.just("reply"), st.integers(0, 3), results)
MOSTLY_PLAIN = st.one_of(PLAIN_REQUESTS, PLAIN_ANSWERS, SESSION_ANSWERS, ops)
"""The fuzz suite's operations, with plain requests and replies (the shapes the fast path takes) added."""


class AnsweringWorld(World):
    """The fuzz world, where a session can also answer the newest request the broker sent it."""

    def run(self, op: tuple[str, int, Any]) -> None:
        name, index, value = op
        sid = self.sid(index)
        if name != "reply":
            super().run(op)
        elif sid is not None and (asked := [m for m in self.h.inbox[sid] if is_request(m)]):
            reply = {"jsonrpc": "2.0", "id": asked[-1]["id"], "result": value}
            self.perform(self.h.mux.from_session(sid, line_of(reply)))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    st.lists(st.one_of(ops, MOSTLY_PLAIN), min_size=5, max_size=40),
    st.lists(capabilities, min_size=1, max_size=3),
    st.booleans(),
    st.lists(replies, min_size=1, max_size=4),
)
def test_fast_path_on_every_line_changes_nothing_anyone_sees(
    steps: list[tuple[str, int, Any]], sessions: list[Any], ready_first: bool, answers: list[dict[str, Any]]
) -> None:
    fast, full = AnsweringWorld(answers, fast_path_from=0), AnsweringWorld(answers)
    for world in (fast, full):
        for declared in sessions:
            world.open_session(declared)
        if ready_first:
            world.drain_once()
    for step in steps:
        for world in (fast, full):
            world.run(step)
        assert state(fast.h.mux) == state(full.h.mux), step
        assert seen(fast) == seen(full), step
    for world in (fast, full):
        world.drain()
    assert state(fast.h.mux) == state(full.h.mux)
    assert seen(fast) == seen(full)
    assert full.h.mux.stats["fast_path"] == 0
    event(f"lines spliced: {min(fast.h.mux.stats['fast_path'], 5)}+")


# ---- with the default threshold: which big lines take the fast path ----------------------------


def ready(*sids: int, **options: Any) -> Harness:
    h = Harness(**options)
    for sid in sids:
        h.open(sid, capabilities={"sampling": {}})
    h.clear()
    return h


def test_big_reply_is_spliced_and_its_bookkeeping_done() -> None:
    h = ready(1, 2)
    h.request(1, "call-1", "tools/call", {"name": "echo"})
    backend_id = h.last_request("tools/call")["id"]
    actions = h.answer(h.last_request("tools/call"), BIG_TEXT)
    (sent,) = [a for a in actions if isinstance(a, ToSession)]
    assert isinstance(sent.spliced, Spliced), "the reply was decoded and re-encoded"
    assert h.take(1) == [{"jsonrpc": "2.0", "id": "call-1", "result": BIG_TEXT}]
    assert h.mux.stats["fast_path"] == 1
    assert backend_id not in h.mux.requests.pending and not h.mux.busy(1)
    assert h.take(2) == []


def test_spliced_reply_bytes_are_the_backends_with_the_askers_id() -> None:
    h = ready(1)
    h.request(1, "é\ud800", "tools/call", {"name": "echo"})
    backend_id = h.last_request("tools/call")["id"]
    line = b'{ "result" : %s , "id" : %d, "jsonrpc":"2.0" }' % (json.dumps(BIG_TEXT).encode(), backend_id)
    (sent,) = h.mux.from_backend(line)
    assert isinstance(sent, ToSession)
    written = b"".join(sent.parts())
    assert written == line.replace(b'"id" : %d' % backend_id, b'"id" : "\\u00e9\\ud800"') + b"\n"
    assert json.loads(written)["id"] == "é\ud800"


def test_big_error_reply_is_spliced_and_counted_as_an_error() -> None:
    h = ready(1)
    h.request(1, 7, "tools/call")
    errors = h.mux.stats["errors"]
    reply = jsonrpc.error(h.last_request("tools/call")["id"], -32000, "too big", {"dump": BIG})
    h.from_backend(reply)
    assert h.take(1) == [{**reply, "id": 7}]
    assert h.mux.stats["fast_path"] == 1 and h.mux.stats["errors"] == errors + 1


def test_big_request_is_spliced_under_a_new_backend_id() -> None:
    h = ready(1)
    requests = h.mux.stats["requests"]
    actions = h.request(1, "w", "tools/call", {"name": "write", "arguments": {"text": BIG}})
    (sent,) = [a for a in actions if isinstance(a, ToBackend)]
    assert isinstance(sent.spliced, Spliced)
    forwarded = h.last_request("tools/call")
    assert forwarded["params"]["arguments"]["text"] == BIG and type(forwarded["id"]) is int
    assert h.mux.requests.pending[forwarded["id"]].original_id == "w"
    assert h.mux.stats["fast_path"] == 1 and h.mux.stats["requests"] == requests + 1
    h.answer(forwarded, {"ok": True})
    assert h.take(1) == [{"jsonrpc": "2.0", "id": "w", "result": {"ok": True}}]


def test_big_answer_to_a_server_request_goes_back_under_the_backends_id() -> None:
    h = ready(1)
    h.request(1, 1, "tools/call")
    h.from_backend(jsonrpc.request("s-9", "sampling/createMessage", {"messages": []}))
    (asked,) = h.requests_to(1, "sampling/createMessage")
    h.reply(1, asked, {"content": {"type": "text", "text": BIG}})
    (answer,) = h.backend_responses()
    assert answer["id"] == "s-9" and answer["result"]["content"]["text"] == BIG
    assert h.mux.stats["fast_path"] == 1
    assert h.mux.server_requests.outstanding == {} and h.mux.server_requests.by_backend == {}


def test_a_reply_to_a_request_with_a_progress_token_is_spliced_and_the_token_released() -> None:
    """One rule for the spliced and the streamed reply (`Requests.as_written`): a progress token asks
    nothing of the reply's bytes, only that the token be released, as the full path does."""
    h = ready(1)
    h.request(1, "p", "tools/call", {"_meta": {"progressToken": "mine"}, "name": "echo"})
    forwarded = h.last_request("tools/call")
    token = forwarded["params"]["_meta"]["progressToken"]
    assert token != "mine" and token in h.mux.progress.owners
    (sent,) = [a for a in h.answer(forwarded, BIG_TEXT) if isinstance(a, ToSession)]
    assert isinstance(sent.spliced, Spliced), "the reply was decoded and re-encoded"
    assert h.take(1) == [{"jsonrpc": "2.0", "id": "p", "result": BIG_TEXT}]
    assert h.mux.progress.owners == {} and h.mux.requests.pending == {} and not h.mux.busy(1)
    h.from_backend(jsonrpc.notification("notifications/progress", {"progressToken": token, "progress": 1}))
    assert h.take(1) == []  # late progress for a released token reaches nobody


def test_big_lines_that_need_rewriting_take_the_full_path() -> None:
    h = ready(1)
    h.request(1, "p", "tools/call", {"_meta": {"progressToken": "mine"}, "big": BIG})  # a token to rewrite
    assert h.last_request("tools/call")["params"]["_meta"]["progressToken"] != "mine"
    assert h.mux.stats["fast_path"] == 0
    h.answer(h.last_request("tools/call"), BIG_TEXT)  # its reply passes as written (the token is released)
    h.request(1, "l", "tasks/list")
    h.answer(h.last_request("tasks/list"), {"tasks": [{"taskId": "not-mine", "pad": BIG}]})  # filtered per owner
    h.request(1, "t", "tools/call", {"task": {}})
    h.answer(h.last_request("tools/call"), {"task": {"taskId": "t-1", "pad": BIG}})  # a task to record
    h.send(1, [jsonrpc.request("b1", "tools/call"), jsonrpc.request("b2", "tools/list")])
    h.answer(h.last_request("tools/call"), BIG_TEXT)  # joined into its batch's array
    h.request(1, "m", "tools/call", {"_meta": {eras.PROTOCOL_VERSION: "2026-07-28"}, "big": BIG})  # stateless era
    h.answer(h.last_request("tools/call"), BIG_TEXT)
    assert h.mux.stats["fast_path"] == 1
    assert h.mux.tasks.owner == {"t-1": 1}
    stateless = h.replies(1)[-1]
    assert stateless["id"] == "m" and stateless["result"]["resultType"] == "complete"
    assert h.replies(1)[1]["id"] == "l" and h.replies(1)[1]["result"]["tasks"] == []


def test_a_failure_on_the_fast_path_answers_its_request_with_an_internal_error() -> None:
    h = ready(1)

    def boom(*args: Any) -> None:
        raise ValueError("injected")

    h.mux.requests.forward_spliced = boom  # type: ignore[method-assign]
    h.request(1, 3, "tools/call", {"text": BIG})
    reply = h.only_reply(1)
    assert reply["id"] == 3 and reply["error"]["code"] == jsonrpc.INTERNAL_ERROR
    assert h.mux.stats["internal_errors"] == 1 and not h.mux.busy(1)


def test_threshold_setting() -> None:
    assert fast_path_threshold(None) == FAST_PATH_FROM
    assert fast_path_threshold("0") == 0
    assert fast_path_threshold("off") == float("inf")
    assert fast_path_threshold("lots") == FAST_PATH_FROM


def test_an_envelope_reader_that_raises_leaves_the_line_to_the_full_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_scan(line: bytes) -> None:
        raise MemoryError("injected")

    monkeypatch.setattr("mcpsingleton.mux.fast_path.scan", broken_scan)
    h = ready(1)
    h.request(1, "big", "tools/call", {"text": BIG})
    h.answer(h.last_request("tools/call"), BIG_TEXT)
    assert h.take(1) == [{"jsonrpc": "2.0", "id": "big", "result": BIG_TEXT}]
    assert h.mux.stats["fast_path"] == 0 and h.mux.stats["internal_errors"] == 0
