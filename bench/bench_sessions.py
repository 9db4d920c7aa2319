"""Memory of N concurrent MCP sessions: every session starting its own server vs all sharing one
through `mcpsingleton run`.

    .venv/bin/python bench/bench_sessions.py [--sessions 1,10] [--servers everything,time,npx] [--isolated]

Each session is a real client process (bench/session_client.py) that spawns the server command with
pipes, initializes, makes two tool calls and holds. Clients are not counted. At steady state the
benchmark sums the PSS of every process involved:
  direct: each session's server process tree;
  shared: the waiters (what the shims became) + the broker + its keeper + the backend tree.
With --isolated, every case is also run with `--scope isolated` (what the policy gives servers that
keep per-client state: one broker and backend per session). Reports total MiB, per-session marginal
cost ((total(N) - total(1)) / (N - 1)), and the broker's
and a waiter's PSS alone. `npx` is server-everything launched as client configs do
(`npx -y @modelcontextprotocol/server-everything`, offline, from the repo's .cache/npm): a direct
session then costs sh + npm exec + node. Writes bench/results/sessions.json and bench/results/memory_vs_sessions.png.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time
from typing import Any

import psutil
from common import (
    MIB,
    RESULTS,
    SESSION_CLIENT,
    Home,
    client_python,
    kill_tree,
    log,
    machine,
    memory,
    pyplot,
    role,
    save_figure,
    server_cmd,
    server_cwd,
    shim_cmd,
    tree,
    write_result,
)

CALLS = {
    "everything": [["tools/call", {"name": "echo", "arguments": {"message": "hello"}}],
                   ["tools/call", {"name": "get-sum", "arguments": {"a": 1, "b": 2}}]],
    "time": [["tools/call", {"name": "get_current_time", "arguments": {"timezone": "UTC"}}],
             ["tools/call", {"name": "convert_time", "arguments": {
                 "source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"}}]],
}
CALLS["npx"] = CALLS["everything"]
LABELS = {"everything": "server-everything (node)", "time": "mcp-server-time (python)",
          "npx": "server-everything via npx (sh + npm exec + node)"}


def start_clients(argv: list[str], count: int, env: dict[str, str], calls: list, cwd: str | None = None,
                  wait_go: bool = False, server_env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """`count` session client processes (bench/session_client.py) for the server command `argv`, run in `cwd`.
    With wait_go each one prints {"waiting": true} and spawns its server only when it reads a line. server_env:
    variables for the server only (a client config's `env`), not in the client's own environment."""
    options = [word for call in calls for word in ("--call", json.dumps(call))] + (["--wait-go"] if wait_go else [])
    options += [word for name, value in (server_env or {}).items() for word in ("--env", f"{name}={value}")]
    return [subprocess.Popen([client_python(), "-I", str(SESSION_CLIENT), *options, "--", *argv],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=cwd or os.getcwd())
            for _ in range(count)]


def wait_ready(clients: list[subprocess.Popen], timeout: float) -> list[dict[str, Any]]:
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    for client in clients:
        remaining = max(0.1, deadline - time.monotonic())
        ready, _, _ = select.select([client.stdout], [], [], remaining)
        line = client.stdout.readline() if ready else b""  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"session client {client.pid} did not become ready within {timeout:.0f}s")
        report = json.loads(line)
        if not report.get("ready"):
            raise RuntimeError(f"session client {client.pid} failed: {report}")
        reports.append(report)
    return reports


def stop_clients(clients: list[subprocess.Popen]) -> float:
    """Close every client's stdin (they close their servers' stdin); seconds until all have exited."""
    started = time.monotonic()
    pids = [c.pid for c in clients]
    for client in clients:
        client.stdin.close()  # type: ignore[union-attr]
    for client, pid in zip(clients, pids, strict=True):
        try:
            client.wait(15)
        except subprocess.TimeoutExpired:
            kill_tree(pid)
            client.wait(5)
    return time.monotonic() - started


def census_direct(clients: list[subprocess.Popen]) -> dict[str, Any]:
    per_session = []
    processes = 0
    for client in clients:
        members = tree(client.pid)[1:]  # the server tree, without the client itself
        processes += len(members)
        per_session.append(sum(memory(p)["pss"] for p in members))
    uss = sum(memory(p)["uss"] for c in clients for p in tree(c.pid)[1:])
    return {
        "total_pss": sum(per_session),
        "total_uss": uss,
        "processes": processes,
        "per_session_pss_median": statistics.median(per_session),
    }


def census_shared(clients: list[subprocess.Popen], home: Home, brokers: int = 1) -> dict[str, Any]:
    """Everything of ours serving the sessions: one broker when shared, one per session when isolated."""
    roles: dict[str, list[dict[str, int]]] = {}
    for process in home.processes():
        if process.pid in {c.pid for c in clients}:
            continue  # the session clients themselves are not counted
        try:
            kind = role(process)
            mem = memory(process)
        except psutil.Error:
            continue
        roles.setdefault(kind, []).append(mem)
    waiters = roles.get("waiter", [])
    if len(waiters) != len(clients):
        raise RuntimeError(f"expected {len(clients)} waiters, found {len(waiters)}: {sorted(roles)}")
    if len(roles.get("broker", [])) != brokers:
        raise RuntimeError(f"expected {brokers} broker(s), found {len(roles.get('broker', []))}")
    total = {kind: sum(m["pss"] for m in mems) for kind, mems in roles.items()}
    broker = roles["broker"][0]
    return {
        "total_pss": sum(total.values()),
        "total_uss": sum(m["uss"] for mems in roles.values() for m in mems),
        "processes": sum(len(mems) for mems in roles.values()),
        "by_role_pss": total,
        "counts": {kind: len(mems) for kind, mems in roles.items()},
        "broker": broker,
        "keeper": roles.get("keeper", [{}])[0],
        "waiter_pss_median": statistics.median(m["pss"] for m in waiters),
        "waiter_uss_median": statistics.median(m["uss"] for m in waiters),
        "waiter_rss_median": statistics.median(m["rss"] for m in waiters),
    }


def run_case(kind: str, mode: str, count: int, settle: float, timeout: float) -> dict[str, Any]:
    server = server_cmd(kind)
    argv = {"direct": server, "shared": shim_cmd(server), "isolated": shim_cmd(server, "--scope", "isolated")}[mode]
    with Home() as home:
        started = time.monotonic()
        clients = start_clients(argv, count, home.env, CALLS[kind], server_cwd(kind))
        try:
            reports = wait_ready(clients, timeout)
            ready_seconds = time.monotonic() - started
            time.sleep(settle)
            if mode == "direct":
                census = census_direct(clients)
            else:
                census = census_shared(clients, home, brokers=count if mode == "isolated" else 1)
        finally:
            stop_seconds = stop_clients(clients)
    census.update({
        "server": kind, "mode": mode, "sessions": count,
        "all_ready_seconds": round(ready_seconds, 2),
        "init_ms_median": round(statistics.median(r["init_ms"] for r in reports), 1),
        "all_exited_seconds": round(stop_seconds, 2),
    })
    return census


def mib(value: float) -> float:
    return round(value / MIB, 2)


def slope(xs: list[int], ys: list[float]) -> float:
    """Least-squares slope: the per-session cost fitted over every session count (less noisy than two points)."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)


def analyse(cases: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for kind in sorted({c["server"] for c in cases}):
        rows = []
        counts = sorted({c["sessions"] for c in cases if c["server"] == kind})
        by = {(c["mode"], c["sessions"]): c for c in cases if c["server"] == kind}
        for n in counts:
            direct, shared = by[("direct", n)], by[("shared", n)]
            row = {"sessions": n, "direct_mib": mib(direct["total_pss"]), "shared_mib": mib(shared["total_pss"]),
                   "direct_uss_mib": mib(direct["total_uss"]), "shared_uss_mib": mib(shared["total_uss"]),
                   "direct_processes": direct["processes"], "shared_processes": shared["processes"],
                   "saving_ratio": round(direct["total_pss"] / shared["total_pss"], 2),
                   "broker_pss_mib": mib(shared["broker"]["pss"]), "broker_uss_mib": mib(shared["broker"]["uss"]),
                   "broker_rss_mib": mib(shared["broker"]["rss"]),
                   "broker_pss_anon_mib": mib(shared["broker"].get("pss_anon", 0)),
                   "broker_pss_file_mib": mib(shared["broker"].get("pss_file", 0)),
                   "waiter_pss_mib": mib(shared["waiter_pss_median"]),
                   "waiter_uss_mib": mib(shared["waiter_uss_median"]),
                   "waiter_rss_mib": mib(shared["waiter_rss_median"]),
                   "keeper_pss_mib": mib(shared["keeper"].get("pss", 0)),
                   "backend_pss_mib": mib(shared["by_role_pss"].get("backend", 0))}
            if ("isolated", n) in by:  # one backend per session: no saving, but still orphan-proof
                row["isolated_mib"] = mib(by[("isolated", n)]["total_pss"])
                row["isolated_processes"] = by[("isolated", n)]["processes"]
            if 1 in counts and n > 1:
                for mode in ("direct", "shared"):
                    marginal = (by[(mode, n)]["total_pss"] - by[(mode, 1)]["total_pss"]) / (n - 1)
                    row[f"{mode}_marginal_mib"] = mib(marginal)
                ours = [by[("shared", m)]["total_pss"] - by[("shared", m)]["by_role_pss"].get("backend", 0)
                        for m in (n, 1)]
                row["shared_marginal_excl_backend_mib"] = mib((ours[0] - ours[1]) / (n - 1))
            rows.append(row)
        if len(counts) > 1:
            for mode in ("direct", "shared"):
                rows[-1][f"{mode}_slope_mib_per_session"] = mib(slope(
                    counts, [by[(mode, n)]["total_pss"] for n in counts]))
        table[kind] = rows
    return table


def plot(table: dict[str, Any], path: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    kinds = list(table)
    figure, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.2), squeeze=False)
    for axis, kind in zip(axes[0], kinds, strict=True):
        rows = table[kind]
        xs = [r["sessions"] for r in rows]
        axis.plot(xs, [r["direct_mib"] for r in rows], "o-", color="tab:red", label="direct (one server per session)")
        axis.plot(xs, [r["shared_mib"] for r in rows], "s-", color="tab:blue", label="mcpsingleton (shared)")
        for r in rows[1:] if len(rows) > 1 else rows:  # at 1 session both points sit together
            axis.annotate(f"{r['direct_mib']:.0f}", (r["sessions"], r["direct_mib"]), textcoords="offset points",
                          xytext=(-4, 4), ha="right", fontsize=8, color="tab:red")
            axis.annotate(f"{r['shared_mib']:.0f}", (r["sessions"], r["shared_mib"]), textcoords="offset points",
                          xytext=(0, 6), ha="center", fontsize=8, color="tab:blue")
        axis.set_title(LABELS.get(kind, kind), fontsize=10)
        axis.set_xlabel("concurrent sessions")
        axis.set_ylabel("total PSS (MiB)")
        axis.set_xticks(xs)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left", fontsize=8)
    figure.suptitle("Memory vs sessions: direct vs shared through mcpsingleton")
    return save_figure(plt, figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,10", help="comma-separated session counts (default 1,10)")
    parser.add_argument("--servers", default="everything,time", help="any of everything,time,npx")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to wait at steady state before measuring")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds for all sessions to become ready")
    parser.add_argument("--quick", action="store_true", help="sessions 1,5, shorter settle")
    parser.add_argument("--isolated", action="store_true", help="also measure every session with --scope isolated")
    parser.add_argument("--out", default="sessions", help="result name under bench/results/")
    parser.add_argument("--reanalyse", action="store_true",
                        help="measure nothing: recompute the table and plot from the cases in the results file")
    args = parser.parse_args()
    if args.reanalyse:
        path = RESULTS / f"{args.out}.json"
        data = json.loads(path.read_text())
        data["table"] = analyse(data["cases"])
        plot(data["table"], str(RESULTS / (data.get("plot") or "memory_vs_sessions.png")))
        path.write_text(json.dumps(data, indent=2) + "\n")
        return
    if args.quick:
        args.sessions, args.settle = "1,5", 1.0
    counts = sorted({int(x) for x in args.sessions.split(",")})
    kinds = args.servers.split(",")
    info = machine()
    cases = []
    for kind in kinds:
        for n in counts:
            modes = ("direct", "shared") if n % 2 else ("shared", "direct")  # alternate who goes first
            for mode in (*modes, "isolated") if args.isolated else modes:
                log(f"{kind}: {n} session(s) {mode}")
                case = run_case(kind, mode, n, args.settle, args.timeout)
                log(f"  total PSS {mib(case['total_pss'])} MiB in {case['processes']} processes")
                cases.append(case)
    table = analyse(cases)
    png = str(RESULTS / f"memory_vs_sessions{'' if args.out == 'sessions' else '_' + args.out}.png")
    RESULTS.mkdir(parents=True, exist_ok=True)
    plotted = plot(table, png)
    write_result(args.out, {
        "benchmark": "sessions", "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
        "machine": info, "settle_seconds": args.settle, "client_python": client_python(),
        "table": table, "cases": cases, "plot": os.path.basename(png) if plotted else None,
    })
    for kind, rows in table.items():
        print(f"\n{kind}")
        for row in rows:
            print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
