"""The one broker per user (issue 21): what it costs per hosted key, and whether one server's traffic delays
another's.

    .venv/bin/python bench/bench_onebroker.py [--quick] [--only keys,isolation] [--keys 50] [--against DIR]

keys       1 → N keys (N = 50; bench/fast_server.py, one cwd each, one session attached to each: every key
           active): the broker's PSS at each step, its keeper's, the processes of ours beside backends and
           waiters, and warm attach (spawn → InitializeResult) on the last key beside bare `python -c pass`.
           Goal (issue 21): broker ≤ 12 MiB + 0.3 MiB per active key.
isolation  server A and server B in the same broker: a session of A receives 10 MB replies back to back
           (`blob`, read as fast as the client can) while a session of B makes small round trips; B's round
           trip beside the same without A's traffic, interleaved in blocks. Goal: within a few ms.
           --against DIR: the same-broker condition also with another copy of the package (e.g. `git archive
           COMMIT mcpsingleton | tar -x -C DIR`), its broker in a home of its own: two versions in one run.
Writes bench/results/onebroker.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
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


STREAMER = r"""
import json, os, subprocess, sys, time
busy, stop, size, argv = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
server = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
out, inp = server.stdin.fileno(), server.stdout.fileno()
def ask(request_id, method, params):
    os.write(out, json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode() + b"\n")
    received = bytearray()
    while not received.endswith(b"\n"):
        chunk = os.read(inp, 1 << 20)
        if not chunk:
            sys.exit("the session ended")
        received += chunk
    return len(received)
ask(0, "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "a", "version": "1"}})
os.write(out, b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
print("ready", flush=True)
replies = 0
while not os.path.exists(stop):
    if not os.path.exists(busy):
        time.sleep(0.01)
        continue
    assert ask(replies + 1, "tools/call", {"name": "blob", "arguments": {"size": size}}) > size
    replies += 1
print(replies, flush=True)
"""
"""A's client: its own process, receiving `size`-byte replies back to back while the file `busy` exists."""


def start_streamer(home: Home, busy: str, stop: str) -> subprocess.Popen[str]:
    directory = os.path.join(home.path, "a")
    os.makedirs(directory)
    argv = [sys.executable, "-c", STREAMER, busy, stop, str(BIG), *shim_cmd(server_cmd("fast"), "--scope", "cwd")]
    streamer = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=home.env, cwd=directory)
    assert streamer.stdout is not None and streamer.stdout.readline() == "ready\n"
    return streamer


def bench_isolation(blocks: int, block: int, against: str | None = None) -> dict[str, Any]:
    """B's round trips alone, beside a session of server A (same broker) receiving 10 MB replies back to back,
    and beside the same traffic through another broker (another home): the machine's share of the slowdown
    (2 cores: A's server and client compete for them) against the one broker's. A's clients are processes
    of their own (a thread here would share this process's GIL with B's timing). With `against` (a directory
    holding another copy of the package), the same-broker condition runs with that copy's broker too, in a
    home of its own, interleaved with the others: two versions side by side in one run."""
    same, another = "beside 10 MB replies, same broker", "beside 10 MB replies, another broker"
    other_copy = f"{same} ({against})"
    conditions = ("alone", same, another) + ((other_copy,) if against else ())
    with Home() as home, Home() as other, Home() as third:
        if against:
            third.env["PYTHONPATH"] = against
        stop = os.path.join(home.path, "stop")
        homes = {same: home, another: other, other_copy: third}
        busy = {name: os.path.join(homes[name].path, "busy") for name in conditions if name != "alone"}
        streamers = {name: start_streamer(homes[name], path, stop) for name, path in busy.items()}
        small = session_in(home, os.path.join(home.path, "b"))
        smalls = {name: small for name in conditions}
        if against:
            smalls[other_copy] = session_in(third, os.path.join(third.path, "b"))
        samples: dict[str, list[float]] = {condition: [] for condition in conditions}
        busy_seconds = dict.fromkeys(busy, 0.0)
        try:
            for index in range(blocks):
                order = conditions[index % len(conditions) :] + conditions[: index % len(conditions)]
                for condition in order:
                    for path in busy.values():
                        if os.path.exists(path):
                            os.unlink(path)
                    time.sleep(0.5)  # let a reply in progress finish
                    started = time.monotonic()
                    if condition in busy:
                        open(busy[condition], "w").close()
                        time.sleep(0.1)
                    samples[condition] += roundtrips(smalls[condition], *ECHO_CALL["fast"], block)
                    if condition in busy:
                        busy_seconds[condition] += time.monotonic() - started
        finally:
            open(stop, "w").close()
            for path in busy.values():
                open(path, "w").close()
            replies = {name: int(proc.communicate(timeout=120)[0].strip() or 0) for name, proc in streamers.items()}
            for client in set(smalls.values()):
                client.close()
    result: dict[str, Any] = {name: summary([value / 1000 for value in values]) for name, values in samples.items()}
    result["replies_of_10mb"] = replies
    result["mib_per_s_of_10mb_replies"] = {
        name: round(count * BIG / MIB / busy_seconds[name], 1) for name, count in replies.items() if busy_seconds[name]
    }
    for name in conditions:
        log(f"B's round trip {name}: {result[name]} ms")
    log(f"10 MB replies received meanwhile: {replies}; MiB/s while busy: {result['mib_per_s_of_10mb_replies']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="keys,isolation")
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--out", default="onebroker")
    parser.add_argument("--against", help="another copy of the package (a directory holding mcpsingleton/) to compare")
    args = parser.parse_args()
    info = machine()
    log(machine_line(info))
    data: dict[str, Any] = {"machine": info}
    parts = args.only.split(",")
    if "keys" in parts:
        steps = sorted({1, 10, args.keys} if not args.quick else {1, args.keys})
        data["keys"] = bench_keys(steps, 10 if args.quick else 30)
    if "isolation" in parts:
        data["isolation"] = bench_isolation(6 if args.quick else 15, 50, args.against)
    write_result(args.out, data)


if __name__ == "__main__":
    main()
