"""The one broker per user (issue 21): what it costs per hosted key, and whether one server's traffic delays
another's.

    .venv/bin/python bench/bench_onebroker.py [--quick] [--only keys,isolation] [--keys 50]

keys       1 → N keys (N = 50; bench/fast_server.py, one cwd each, one session attached to each: every key
           active): the broker's PSS at each step, its keeper's, the processes of ours beside backends and
           waiters, and warm attach (spawn → InitializeResult) on the last key beside bare `python -c pass`.
           Goal (issue 21): broker ≤ 12 MiB + 0.3 MiB per active key.
isolation  server A and server B in the same broker: a session of A receives 10 MB replies back to back
           (`blob`, read as fast as the client can) while a session of B makes small round trips; B's round
           trip beside the same without A's traffic, interleaved in blocks. Goal: within a few ms.
Writes bench/results/onebroker.json.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from typing import Any

from bench_latency import roundtrips, time_attach, time_bare
from common import (
    ECHO_CALL,
    MIB,
    Home,
    RawClient,
    census,
    entry_interpreter,
    log,
    machine,
    machine_line,
    server_cmd,
    shim_cmd,
    summary,
    write_result,
)

BIG = 10 << 20


def session_in(home: Home, directory: str) -> RawClient:
    os.makedirs(directory, exist_ok=True)
    client = RawClient(shim_cmd(server_cmd("fast"), "--scope", "cwd"), home.env, cwd=directory)
    client.initialize(timeout=60)
    return client


def ours(home: Home) -> dict[str, Any]:
    """The broker's and the keeper's PSS (MiB), and how many processes of ours run besides backends and waiters."""
    found = census(home.path)
    brokers, keepers = found.get("broker", []), found.get("keeper", [])
    return {
        "broker_pss_mib": round(sum(p["pss"] for p in brokers) / MIB, 2),
        "keeper_pss_mib": round(sum(p["pss"] for p in keepers) / MIB, 2),
        "processes_of_ours": len(brokers) + len(keepers),
    }


def bench_keys(steps: list[int], attach_runs: int) -> dict[str, Any]:
    result: dict[str, Any] = {"steps": {}}
    with Home() as home:
        clients: list[RawClient] = []
        try:
            for step in steps:
                while len(clients) < step:
                    clients.append(session_in(home, os.path.join(home.path, "cwd", str(len(clients)))))
                time.sleep(2)  # settle before memory is read
                result["steps"][step] = ours(home)
                log(f"{step} keys: {result['steps'][step]}")
            first, last = result["steps"][steps[0]], result["steps"][steps[-1]]
            per_key = (last["broker_pss_mib"] - first["broker_pss_mib"]) / max(1, steps[-1] - steps[0])
            result["broker_mib_per_key"] = round(per_key, 3)
            result["goal_mib"] = round(12 + 0.3 * steps[-1], 1)
            interpreter = entry_interpreter()
            directory = os.path.join(home.path, "cwd", "0")
            added = []
            for _ in range(attach_runs):
                bare = time_bare([interpreter, "-c", "pass"], home.env)
                argv = shim_cmd(server_cmd("fast"), "--scope", "cwd")
                old = os.getcwd()
                os.chdir(directory)  # the first key's directory: a warm attach to a hosted key
                try:
                    elapsed, _ = time_attach(argv, home.env)
                finally:
                    os.chdir(old)
                added.append(elapsed - bare)
            result["warm_attach_added_ms"] = summary(added)
            log(f"broker {per_key:.3f} MiB per key; warm attach +{result['warm_attach_added_ms']['p50']} ms")
        finally:
            for client in clients:
                client.close()
    return result


def bench_isolation(blocks: int, block: int) -> dict[str, Any]:
    with Home() as home:
        streaming = session_in(home, os.path.join(home.path, "a"))
        small = session_in(home, os.path.join(home.path, "b"))
        busy = threading.Event()
        stop = threading.Event()
        replies = [0]

        def stream() -> None:
            params = {"name": "blob", "arguments": {"size": BIG}}
            while not stop.is_set():
                busy.wait()
                if stop.is_set():
                    return
                reply = streaming.request("tools/call", params, timeout=60)
                assert "result" in reply, reply
                replies[0] += 1

        worker = threading.Thread(target=stream, daemon=True)
        worker.start()
        samples: dict[str, list[float]] = {"alone": [], "beside 10 MB replies": []}
        try:
            for index in range(blocks):
                for label in (("alone", "beside 10 MB replies") if index % 2 else ("beside 10 MB replies", "alone")):
                    if label == "alone":
                        busy.clear()
                        time.sleep(0.3)  # let a reply in progress finish
                    else:
                        busy.set()
                        time.sleep(0.05)
                    samples[label] += roundtrips(small, *ECHO_CALL["fast"], block)
        finally:
            stop.set()
            busy.set()
            worker.join(timeout=60)
            streaming.close()
            small.close()
    result = {label: summary([value / 1000 for value in values]) for label, values in samples.items()}
    result["replies_of_10mb"] = replies[0]
    for label in samples:
        log(f"B's round trip {label}: {result[label]} ms")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="keys,isolation")
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--out", default="onebroker")
    args = parser.parse_args()
    info = machine()
    log(machine_line(info))
    data: dict[str, Any] = {"machine": info}
    parts = args.only.split(",")
    if "keys" in parts:
        steps = sorted({1, 10, args.keys} if not args.quick else {1, args.keys})
        data["keys"] = bench_keys(steps, 10 if args.quick else 30)
    if "isolation" in parts:
        data["isolation"] = bench_isolation(6 if args.quick else 20, 50)
    write_result(args.out, data)


if __name__ == "__main__":
    main()
