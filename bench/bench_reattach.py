"""Sessions that outlive their broker: what a broker's death costs a session, and what `restart` costs.

    .venv/bin/python bench/bench_reattach.py [--quick] [--runs 5] [--sessions 20]

kill      3 sessions on bench/fast_server.py; the broker is SIGKILLed (or SIGTERMed: a handover) and each
          session sends a request at once: ms from the signal to the first answer and to the last.
restart   --sessions sessions; `mcpsingleton restart NAME`: ms the command takes (it returns once the old
          broker has exited) and ms from its start until every session has had an answer from the new backend.
overlap   how long the old backend and the new one ran at once: the old backend's exit (seen by a 2 ms poll)
          minus the new backend's start time (the kernel's, 10 ms resolution); 0 or less: never together.
Writes bench/results/reattach.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading
import time
from typing import Any

import psutil
from common import ECHO_CALL, Home, RawClient, entry_point, fast_cmd, log, machine, shim_cmd, summary, write_result

CALL = ECHO_CALL["fast"]


def broker_and_backend(home: Home) -> tuple[int, int]:
    out = subprocess.run([entry_point(), "ls", "--json"], env=home.env, capture_output=True, text=True, check=True)
    (entry,) = json.loads(out.stdout)
    return entry["broker_pid"], entry["backend_pid"]


def open_sessions(home: Home, count: int) -> list[RawClient]:
    clients = [RawClient(shim_cmd(fast_cmd()), home.env) for _ in range(count)]
    for client in clients:
        client.initialize()
        client.request(*CALL)
    return clients


def answered_after(clients: list[RawClient], started: float) -> list[float]:
    """Each session sends one request at once (one thread each): ms from `started` to each answer."""
    times: list[float] = [0.0] * len(clients)

    def one(index: int) -> None:
        clients[index].request(*CALL, timeout=30)
        times[index] = (time.perf_counter() - started) * 1000

    threads = [threading.Thread(target=one, args=(index,)) for index in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


class ExitWatch:
    """Polls a pid every 2 ms; `gone_at`: the wall-clock time it was first seen exited (or a zombie)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.gone_at: float | None = None
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while self.gone_at is None:
            try:
                if psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE:
                    self.gone_at = time.time()
            except psutil.NoSuchProcess:
                self.gone_at = time.time()
            time.sleep(0.002)

    def overlap_ms(self, new_backend: int) -> float:
        self.thread.join(10)
        assert self.gone_at is not None, "the old backend never exited"
        return round((self.gone_at - psutil.Process(new_backend).create_time()) * 1000, 1)


def one_death(signum: int, sessions: int) -> dict[str, float]:
    with Home() as home:
        clients = open_sessions(home, sessions)
        broker, backend = broker_and_backend(home)
        watch = ExitWatch(backend)
        started = time.perf_counter()
        os.kill(broker, signum)
        times = answered_after(clients, started)
        overlap = watch.overlap_ms(broker_and_backend(home)[1])
        for client in clients:
            client.close()
        return {"first_ms": min(times), "last_ms": max(times), "overlap_ms": overlap}


def one_restart(sessions: int) -> dict[str, float]:
    with Home() as home:
        clients = open_sessions(home, sessions)
        _, backend = broker_and_backend(home)
        watch = ExitWatch(backend)
        started = time.perf_counter()
        subprocess.run([entry_point(), "restart", "--all"], env=home.env, capture_output=True, check=True)
        command = (time.perf_counter() - started) * 1000
        times = answered_after(clients, started)
        overlap = watch.overlap_ms(broker_and_backend(home)[1])
        for client in clients:
            client.close()
        return {"command_ms": command, "all_answered_ms": max(times), "overlap_ms": overlap}


def collect(runs: list[dict[str, float]]) -> dict[str, Any]:
    return {field: summary([run[field] for run in runs], 1) for field in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--out", default="reattach")
    args = parser.parse_args()
    runs = 2 if args.quick else args.runs
    info = machine()
    kill: list[dict[str, float]] = []
    term: list[dict[str, float]] = []
    restart: list[dict[str, float]] = []
    for run in range(runs):  # interleaved: the machine's load drifts
        log(f"run {run + 1}/{runs}")
        kill.append(one_death(signal.SIGKILL, 3))
        term.append(one_death(signal.SIGTERM, 3))
        restart.append(one_restart(args.sessions))
    result = {
        "machine": info,
        "kill9_3_sessions": collect(kill),
        "sigterm_3_sessions": collect(term),
        f"restart_{args.sessions}_sessions": collect(restart),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    write_result(args.out, result)


if __name__ == "__main__":
    main()
