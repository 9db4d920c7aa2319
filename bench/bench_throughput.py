"""Throughput: many sessions hammering one broker in front of a trivial, instant backend.

    .venv/bin/python bench/bench_throughput.py [--quick] [--sessions 10] [--seconds 5] [--windows 1,8]

Each session is its own client process (bench/session_client.py) running a closed loop of
`tools/call echo` against bench/fast_server.py, with WINDOW requests in flight (1 = the usual MCP
client, one request at a time). All sessions start together on a `go` line. Reported: aggregate
requests/s, per-session counts (min/max, fairness = min/max), and the broker's and backend's CPU time
per request. Beside it, the same load on one session, and the direct case (every session its own
fast_server, no broker) as the ceiling. Writes bench/results/throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
from typing import Any

import psutil
from bench_sessions import start_clients, stop_clients, wait_ready
from common import ECHO_CALL, Home, base_env, log, machine, role, server_cmd, shim_cmd, write_result


def cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def run_case(mode: str, sessions: int, seconds: float, window: int) -> dict[str, Any]:
    server = server_cmd("fast")
    call = json.dumps(list(ECHO_CALL["fast"]))
    with Home() as home:
        env = home.env if mode == "shared" else base_env()
        argv = shim_cmd(server) if mode == "shared" else server
        clients = start_clients(argv, sessions, {**env, "MCPSINGLETON_HOME": home.path}, [])
        try:
            wait_ready(clients, 120)
            broker = [p for p in home.processes() if role(p) == "broker"]
            backends = [p for p in home.processes() if role(p) == "backend"]
            if mode == "direct":
                backends = [p for c in clients for p in psutil.Process(c.pid).children()]
            before = (cpu(broker), cpu(backends))
            for client in clients:
                client.stdin.write(f"go {seconds} {window} {call}\n".encode())  # type: ignore[union-attr]
                client.stdin.flush()  # type: ignore[union-attr]
            reports = []
            for client in clients:
                ready, _, _ = select.select([client.stdout], [], [], seconds + 60)
                line = client.stdout.readline() if ready else b""  # type: ignore[union-attr]
                if not line:
                    raise RuntimeError(f"load client {client.pid} did not report")
                reports.append(json.loads(line))
            after = (cpu(broker), cpu(backends))
        finally:
            stop_clients(clients)
    counts = [r["count"] for r in reports]
    total = sum(counts)
    elapsed = max(r["seconds"] for r in reports)
    result = {
        "mode": mode, "sessions": sessions, "window": window, "seconds": round(elapsed, 3),
        "requests": total, "requests_per_second": round(total / elapsed),
        "per_session_min": min(counts), "per_session_max": max(counts),
        "fairness_min_over_max": round(min(counts) / max(counts), 3) if max(counts) else 0.0,
        "per_session_counts": counts,
        "backend_cpu_us_per_request": round((after[1] - before[1]) / total * 1e6, 1) if total else None,
    }
    if mode == "shared":
        result["broker_cpu_us_per_request"] = round((after[0] - before[0]) / total * 1e6, 1) if total else None
        result["broker_cpu_share"] = round((after[0] - before[0]) / elapsed, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--windows", default="1,8", help="requests in flight per session")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="throughput")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 2.0
    info = machine()
    cases = []
    for window in (int(w) for w in args.windows.split(",")):
        for mode, sessions in (("shared", args.sessions), ("direct", args.sessions), ("shared", 1), ("direct", 1)):
            log(f"throughput: {mode}, {sessions} session(s), window {window}, {args.seconds}s")
            case = run_case(mode, sessions, args.seconds, window)
            log(f"  {case['requests_per_second']} req/s, "
                f"per session {case['per_session_min']}..{case['per_session_max']}"
                + (f", broker {case['broker_cpu_us_per_request']} µs CPU/request" if mode == "shared" else ""))
            cases.append(case)
            time.sleep(0.5)
    command = " ".join([os.path.relpath(sys.executable), *sys.argv])
    write_result(args.out, {"benchmark": "throughput", "command": command, "machine": info,
                            "backend": "bench/fast_server.py", "cases": cases})


if __name__ == "__main__":
    main()
