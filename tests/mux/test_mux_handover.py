"""Mux.hand_over (sans-IO): when a broker hands its sessions over, the next broker never sees what this one
read, so everything a session still waits for is answered here: forwarded, queued and parked requests."""

from __future__ import annotations

from mux_harness import Harness, parked

from mcpsingleton.mux import jsonrpc

WHY = "the broker restarted (restart requested) before this request was answered; send it again"


def test_every_request_still_owed_is_answered_with_an_error() -> None:
    h = Harness()
    h.open(1)
    parked(h, 2)
    h.clear()
    h.request(1, "forwarded", "tools/call", {"name": "slow"})
    h.request(2, "held", "tools/call", {"name": "echo"})
    h.notify(2, "notifications/other")
    assert h.mux.busy(1) and h.mux.busy(2)
    h.perform(h.mux.hand_over(WHY))
    for sid, request_id in ((1, "forwarded"), (2, "held")):
        reply = h.only_reply(sid)
        assert reply["id"] == request_id
        assert reply["error"] == {"code": jsonrpc.INTERNAL_ERROR, "message": f"mcpsingleton: {WHY}"}
        assert not h.mux.busy(sid)
    assert [m["params"]["name"] for m in h.backend_requests("tools/call")] == ["slow"], "the held one never went"


def test_requests_queued_for_a_backend_still_starting_are_answered_too() -> None:
    h = Harness(auto_initialize=False)
    h.open(1, initialized=False)
    h.request(1, "queued", "tools/list")
    h.perform(h.mux.hand_over(WHY))
    assert {reply["id"] for reply in h.replies(1)} == {0, "queued"}, "its initialize and the queued request"
    assert not h.mux.busy(1)
