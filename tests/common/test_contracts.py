"""The lifecycle table and the wire contracts, in-process: what every process relies on."""

from __future__ import annotations

import json

import pytest

from mcpsingleton.broker import lifecycle
from mcpsingleton.broker.lifecycle import IllegalTransition, Lifecycle
from mcpsingleton.common import wire


def test_lifecycle_follows_the_table_and_refuses_the_rest() -> None:
    life = Lifecycle()
    for event, state in [("spawned", "starting"), ("ready", "running"), ("lost", "restarting"), ("ready", "running")]:
        assert life.fire(event) == state
    with pytest.raises(IllegalTransition):
        life.fire("spawned")  # a running backend is never spawned again without being lost first
    assert life.fire("stop") == "stopping"
    with pytest.raises(IllegalTransition):
        life.fire("ready")
    assert life.fire("stopped") == "stopped"


def test_a_backend_that_never_worked_fails_and_one_that_did_restarts() -> None:
    never = Lifecycle()
    never.fire("spawned")
    assert never.lost(0.1) == "failed" and never.restarts == 0
    worked = Lifecycle()
    worked.fire("spawned")
    worked.fire("ready")
    assert worked.lost(0.1) == "restarting" and worked.restarts == 1


def test_a_reclaimed_backend_is_idle_until_it_wakes_and_a_crash_then_is_a_restart_not_a_failure() -> None:
    life = Lifecycle()
    for event, state in [("spawned", "starting"), ("ready", "running"), ("reclaim", "reclaiming")]:
        assert life.fire(event) == state
    assert life.live and life.shown(True) == "idle"
    with pytest.raises(IllegalTransition):
        life.fire("spawned")  # not before the idle one's tree is gone
    assert life.fire("stopped") == "reclaimed" and life.shown(True) == "idle"
    assert life.fire("spawned") == "waking" and life.shown(True) == "starting" and life.initializing
    assert life.fire("ready") == "running"
    life.fire("reclaim")
    life.fire("stopped")
    life.fire("spawned")
    assert life.lost(0.1) == "restarting" and life.restarts == 1  # it has worked: backoff, never fatal
    for state in ("reclaiming", "reclaimed", "waking"):
        life.state = state
        assert life.fire("stop") == "stopping"
    with pytest.raises(IllegalTransition):
        Lifecycle().fire("reclaim")  # only a running backend is reclaimed


def test_backoff_doubles_within_a_streak_up_to_the_cap_and_resets_after_a_long_life() -> None:
    life = Lifecycle()
    life.fire("spawned")
    life.fire("ready")
    delays = []
    for _ in range(10):
        life.lost(1.0)
        delays.append(life.restart_delay())
        life.fire("spawned")
    assert delays[:4] == [0.25, 0.5, 1.0, 2.0] and delays[-1] == lifecycle.MAX_DELAY
    life.fire("ready")
    life.lost(lifecycle.STREAK_RESET + 1)
    assert life.restart_delay() == 0.0


def test_shown_states_are_the_ls_contract() -> None:
    life = Lifecycle()
    shown = {life.shown(True)}
    life.fire("spawned")
    shown.add(life.shown(True))
    life.fire("ready")
    shown |= {life.shown(True), life.shown(False)}
    life.lost(1.0)
    shown.add(life.shown(True))
    life.fire("stop")
    shown.add(life.shown(True))
    assert shown == set(lifecycle.SHOWN_STATES)


def test_status_record_round_trip_keeps_every_ls_field() -> None:
    record = wire.BackendStatus(key="k", name="n", broker_pid=7, clients=[{"pid": 1, "client": "c"}], restarts=2)
    (back,) = wire.decode_status(wire.encode_status([record])) or []
    fields = back.to_json()
    for name in ("key", "name", "command", "cwd", "scope", "broker_pid", "backend_pid", "clients", "state"):
        assert name in fields
    assert fields["sharing"] == "shared" and fields["restarts"] == 2
    assert fields["clients"] == [{"pid": 1, "client": "c"}]


def test_status_from_an_older_broker_or_a_confused_one() -> None:
    flat = json.dumps({"key": "old", "name": "x", "restarts": "many", "linger_seconds": 5}).encode()
    (old,) = wire.decode_status(flat) or []
    assert old.key == "old" and old.restarts == 0 and old.linger_seconds == 5  # wrong types take the default
    assert wire.decode_status(b"not json") is None
    assert wire.decode_status(b"[1, 2]") is None


def test_hello_round_trip() -> None:
    assert wire.parse_hello(wire.hello(wire.ATTACH, "abc")) == ["attach", "abc"]
    assert wire.parse_hello(b"MCPS0 attach abc\n") is None
    assert wire.refusal("two\nlines").count(b"\n") == 1
