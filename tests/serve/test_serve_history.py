"""serve's history (SQLite, retention, ranges), alert rules and crossings, and the shipped Prometheus rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import ROOT

from mcpsingleton.ops.metrics import PER_BACKEND, render
from mcpsingleton.serve.alerts import CRITICAL, OK, WARNING, Crossings, Thresholds, evaluate, load_limits, status_of
from mcpsingleton.serve.history import POINTS, RECORD_EVERY, History

TOTALS = {"backends": 2, "sessions": 5, "processes": 4, "memory_bytes": 300 << 20, "saved_bytes": 200 << 20}


def test_history_survives_a_restart_and_forgets_past_retention(tmp_path: Path) -> None:
    path = str(tmp_path / "history.sqlite3")
    now = 1_800_000_000.0
    history = History(path, retention=3600)
    assert history.record(TOTALS, now - 4000)
    assert not history.record(TOTALS, now - 4000 + RECORD_EVERY / 2), "one row per RECORD_EVERY"
    history.event("alert", "warning: processes 31 ≥ warning 30", now - 10)
    history.close()
    reopened = History(path, retention=3600)  # serve restarted
    assert reopened.series("week", now)["points"][0]["sessions"] == 5
    assert reopened.events()[0]["text"].startswith("warning: processes")
    assert reopened.record({**TOTALS, "sessions": 7}, now)
    points = reopened.series("week", now)["points"]
    assert [point["sessions"] for point in points] == [7], "the row past retention is gone"
    assert oct(Path(path).stat().st_mode & 0o777) == "0o600"


def test_a_range_is_averaged_into_at_most_points_buckets(tmp_path: Path) -> None:
    history = History(str(tmp_path / "h.sqlite3"))
    now = 1_800_000_000.0
    for step in range(400):
        history.record({**TOTALS, "processes": step % 2 * 10}, now - 3600 + step * RECORD_EVERY / 3.3)
    hour = history.series("hour", now)
    assert 1 < len(hour["points"]) <= POINTS
    assert all(0 <= point["processes"] <= 10 for point in hour["points"])
    assert history.series("nonsense", now)["range"] == "hour"


@pytest.mark.parametrize(
    ("processes", "memory", "expected"),
    [(3, 1 << 30, OK), (30, 1 << 30, WARNING), (3, 3 << 30, WARNING), (60, 1 << 30, CRITICAL), (3, 5 << 30, CRITICAL)],
)
def test_thresholds(processes: int, memory: int, expected: str, tmp_path: Path) -> None:
    limits = load_limits(str(tmp_path / "none.toml"))
    findings = evaluate({"processes": processes, "memory_bytes": memory}, [], limits)
    assert status_of(findings) == expected


def test_a_restarting_backend_and_orphans_warn(tmp_path: Path) -> None:
    limits = load_limits(str(tmp_path / "none.toml"))
    servers = [{"key": "k", "name": "flaky", "state": "restarting"}]
    reasons = [f.reason for f in evaluate({"orphans": 2}, servers, limits)]
    assert reasons == ["flaky is restarting", "2 orphaned MCP process(es): reap them"]


def test_config_alerts_and_budget(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[alerts]\nwarn_memory = "1G"\ncritical_processes = 9\n[budget]\nmax_memory = "4G"\n')
    limits = load_limits(str(config))
    assert limits.thresholds == Thresholds(warn_memory=1 << 30, critical_processes=9)
    assert limits.budget == {"max_backends": None, "max_memory": 4 << 30} and limits.error is None
    config.write_text('[alerts]\nwarn_memory = "lots"\n')
    broken = load_limits(str(config))
    assert broken.thresholds == Thresholds() and "lots" in str(broken.error)
    config.write_text("not toml [")
    assert load_limits(str(config)).error


def test_a_crossing_is_reported_once_each_way(tmp_path: Path) -> None:
    limits = load_limits(str(tmp_path / "none.toml"))
    crossings = Crossings()
    high = evaluate({"processes": 31}, [], limits)
    assert crossings.update(high) == ["warning: processes 31 ≥ warning 30"]
    assert crossings.update(evaluate({"processes": 33}, [], limits)) == []
    assert crossings.update(evaluate({"processes": 61}, [], limits)) == ["critical: processes 61 ≥ critical 60"]
    assert crossings.update([]) == ["ok again: processes"]
    assert crossings.update([]) == []


def test_the_prometheus_rules_use_our_metrics_and_default_thresholds(home: Path) -> None:
    rules = (ROOT / "docs" / "prometheus-alerts.yml").read_text()
    exposed = set(re.findall(r"^# TYPE (\w+) ", render([{"name": "x", "key": "k"}]), re.MULTILINE))
    assert {name for name, *_ in PER_BACKEND} <= exposed
    used = set(re.findall(r"\bmcpsingleton_\w+", rules))
    assert used and used <= exposed, used - exposed
    defaults = Thresholds()
    assert f"sum(mcpsingleton_backend_processes) >= {defaults.warn_processes}\n" in rules
    assert f"sum(mcpsingleton_backend_processes) >= {defaults.critical_processes}\n" in rules
    assert f">= {defaults.warn_memory >> 30} * 1024 * 1024 * 1024\n" in rules
    assert f">= {defaults.critical_memory >> 30} * 1024 * 1024 * 1024\n" in rules
