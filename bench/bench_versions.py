"""Two installs of mcpsingleton side by side, interleaved: did a change cost per-message time, broker
memory or warm attach?

    .venv/bin/python bench/bench_versions.py --before /path/to/other/.venv/bin/mcpsingleton [--quick]

`--before` is any other install (e.g. a worktree of an older commit with its own .venv); "after" is
this repo's. Each gets its own private home and broker on `bench/fast_server.py` (a server that answers
at once, so the broker's cost is not hidden); every measurement alternates between the two.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench_latency import cpu_seconds, roundtrips, time_attach, time_bare
from common import (
    ECHO_CALL,
    Home,
    RawClient,
    census,
    entry_interpreter,
    entry_point,
    log,
    machine,
    machine_line,
    role,
    server_cmd,
    summary,
    write_result,
)


def shim(entry: str, server: list[str]) -> list[str]:
    return [entry, "run", "--", *server]


def measure(entries: dict[str, str], runs: int, calls: int, block: int, sessions: int) -> dict[str, Any]:
    server = server_cmd("fast")
    homes = {name: Home() for name in entries}
    holders: dict[str, list[RawClient]] = {}
    try:
        for name, entry in entries.items():  # a warm broker per install, with `sessions` attached
            holders[name] = [RawClient(shim(entry, server), homes[name].env) for _ in range(sessions)]
            for client in holders[name]:
                client.initialize(timeout=60)
        time.sleep(2)  # settle before memory is read
        result: dict[str, Any] = {"broker_pss_mib": {}, "attach_added_ms": {}, "roundtrip_us": {}, "broker_cpu_us": {}}
        for name in entries:
            (broker,) = census(homes[name].path)["broker"]
            result["broker_pss_mib"][name] = round(broker["pss"] / 2**20, 2)
        attach: dict[str, list[float]] = {name: [] for name in entries}
        for index in range(runs):
            order = list(entries) if index % 2 == 0 else list(reversed(entries))
            for name in order:
                bare = time_bare([entry_interpreter(entries[name]), "-c", "pass"], homes[name].env)
                elapsed, _ = time_attach(shim(entries[name], server), homes[name].env)
                attach[name].append(elapsed - bare)
        result["attach_added_ms"] = {name: summary(values)["p50"] for name, values in attach.items()}
        trips: dict[str, list[float]] = {name: [] for name in entries}
        cpu = dict.fromkeys(entries, 0.0)
        brokers = {name: next(p for p in homes[name].processes() if role(p) == "broker") for name in entries}
        for index in range(max(1, calls // block)):
            order = list(entries) if index % 2 == 0 else list(reversed(entries))
            for name in order:
                before = cpu_seconds(brokers[name])
                trips[name] += roundtrips(holders[name][0], *ECHO_CALL["fast"], block)
                cpu[name] += cpu_seconds(brokers[name]) - before
        result["roundtrip_us"] = {name: summary(values, 1)["p50"] for name, values in trips.items()}
        result["broker_cpu_us"] = {name: round(cpu[name] / len(trips[name]) * 1e6, 1) for name in entries}
        return result
    finally:
        for clients in holders.values():
            for client in clients:
                client.close()
        for home in homes.values():
            home.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the other install's mcpsingleton executable")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="versions")
    args = parser.parse_args()
    runs, calls = (20, 2000) if args.quick else (60, 10000)
    info = machine()
    log(machine_line(info))
    result = measure({"before": args.before, "after": entry_point()}, runs, calls, 100, 5)
    for metric, values in result.items():
        log(f"{metric}: before {values['before']}, after {values['after']}")
    write_result(args.out, {"machine": info, **result})


if __name__ == "__main__":
    main()
