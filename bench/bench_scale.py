"""Scale: many servers, many sessions, many brokers, and a storm of sessions on a cold key.

    .venv/bin/python bench/bench_scale.py [--quick] [--only servers,storm,many,brokers]

servers  8 distinct keys x 7 sessions each, as a developer with a few clients open has them: 3 x
         server-everything (node), 2 x server-everything via npx, 2 x mcp-server-time, 1 x fast_server,
         each key its own cwd (scope cwd). Total PSS through mcpsingleton, split into the 8 backend trees
         and what we add (brokers + keepers + waiters), beside the same 56 sessions each starting its own
         server.
storm    N sessions (50) released at the same instant on a cold key (session clients pre-started and
         blocked on a "go" line): brokers and backends ever started (from the brokers' logs) and alive
         after, and the time from "go" until every session has its InitializeResult; beside N direct
         server starts at once. Rounds interleaved; median over rounds.
many     one broker (server-everything) with 1, 25, 50, 100, 200 sessions attached, then back to 1: the
         broker's PSS and open fds (/proc/PID/fd), a waiter's PSS, and warm attach (spawn → InitializeResult)
         at each step beside bare `python -c pass`.
brokers  50 keys with one session each (fast_server, one cwd each): total and per-broker PSS.
Session clients are bench/session_client.py processes and are never counted (see bench_sessions.py).
Writes bench/results/scale.json and bench/results/scale.png.
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
from bench_latency import time_attach, time_bare
from bench_sessions import CALLS, census_direct, start_clients, stop_clients, wait_ready
from common import (
    MIB,
    RESULTS,
    Home,
    broker_log_counts,
    census,
    client_python,
    entry_interpreter,
    fd_count,
    log,
    machine,
    npx_dir,
    pyplot,
    save_figure,
    server_cmd,
    server_cwd,
    shim_cmd,
    summary,
    tree,
    write_result,
)

CALLS = {**CALLS, "fast": [["tools/call", {"name": "echo", "arguments": {"text": "hello"}}]]}
MIX = ["everything", "everything", "everything", "npx", "npx", "time", "time", "fast"]
"""The 8 servers of the `servers` case (one key each)."""


def mib(value: float) -> float:
    return round(value / MIB, 2)


def settle(seconds: float) -> None:
    time.sleep(seconds)


def shared_totals(roles: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    by_role = {kind: sum(m["pss"] for m in members) for kind, members in roles.items()}
    ours = sum(v for kind, v in by_role.items() if kind != "backend")
    return {"total_mib": mib(sum(by_role.values())), "by_role_mib": {k: mib(v) for k, v in by_role.items()},
            "counts": {k: len(v) for k, v in roles.items()}, "ours_mib": mib(ours)}


# ---- 8 servers x 7 sessions -----------------------------------------------------------------


def servers_case(mode: str, sessions: int, settle_s: float, timeout: float) -> dict[str, Any]:
    with Home() as home:
        groups = []
        for index, kind in enumerate(MIX):
            cwd = os.path.join(home.path, f"s{index}")
            if kind == "npx":
                npx_dir(cwd)
            else:
                os.makedirs(cwd)
            server = server_cmd(kind)
            argv = server if mode == "direct" else shim_cmd(server)
            groups.append((kind, start_clients(argv, sessions, home.env, CALLS[kind], cwd)))
        clients = [c for _, group in groups for c in group]
        try:
            started = time.monotonic()
            wait_ready(clients, timeout)
            ready_s = time.monotonic() - started
            settle(settle_s)
            if mode == "direct":
                per_kind: dict[str, float] = {}
                for kind, group in groups:
                    per_kind[kind] = per_kind.get(kind, 0) + census_direct(group)["total_pss"]
                whole = census_direct(clients)
                result = {"total_mib": mib(whole["total_pss"]), "processes": whole["processes"],
                          "per_kind_mib": {k: mib(v) for k, v in per_kind.items()}}
            else:
                roles = census(home.path, {c.pid for c in clients})
                result = shared_totals(roles)
                result["processes"] = sum(result["counts"].values())
                brokers = roles.get("broker", [])
                result["broker_pss_mib_median"] = mib(statistics.median(m["pss"] for m in brokers))
                result["broker_pss_anon_mib_median"] = mib(statistics.median(m.get("pss_anon", 0) for m in brokers))
                if len(brokers) != len(MIX):
                    raise RuntimeError(f"expected {len(MIX)} brokers, found {len(brokers)}")
        finally:
            stop_clients(clients)
    result.update({"mode": mode, "servers": len(MIX), "sessions_per_server": sessions,
                   "all_ready_seconds": round(ready_s, 2)})
    log(f"servers {mode}: {len(MIX)}×{sessions} total {result['total_mib']} MiB"
        + (f", ours (brokers+keepers+waiters) {result['ours_mib']} MiB" if mode == "shared" else ""))
    return result


def bench_servers(sessions: int, settle_s: float, timeout: float) -> dict[str, Any]:
    shared = servers_case("shared", sessions, settle_s, timeout)
    direct = servers_case("direct", sessions, settle_s, timeout)
    return {"mix": MIX, "sessions_per_server": sessions, "shared": shared, "direct": direct,
            "saving_ratio": round(direct["total_mib"] / shared["total_mib"], 2)}


# ---- cold-start storm -----------------------------------------------------------------------


def read_json_line(client: subprocess.Popen, timeout: float) -> dict[str, Any]:
    ready, _, _ = select.select([client.stdout], [], [], timeout)
    line = client.stdout.readline() if ready else b""  # type: ignore[union-attr]
    if not line:
        raise RuntimeError(f"session client {client.pid} said nothing within {timeout:.0f}s")
    return json.loads(line)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes, including their reaped children (e.g. the shim's first fork);
    a shim's CPU before it exec'ed into the waiter stays on the same pid."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def storm_round(kind: str, mode: str, count: int, timeout: float) -> dict[str, Any]:
    server = server_cmd(kind)
    argv = server if mode == "direct" else shim_cmd(server)
    with Home() as home:  # a cold key: no broker, no salt, nothing
        clients = start_clients(argv, count, home.env, [], server_cwd(kind), wait_go=True)
        try:
            for client in clients:
                if not read_json_line(client, 60).get("waiting"):
                    raise RuntimeError("session client did not wait for go")
            settle(1.0)  # the clients' own start-up is over; they sit in read()
            load = os.getloadavg()[0]
            go = time.monotonic()
            for client in clients:
                client.stdin.write(b"go\n")  # type: ignore[union-attr]
                client.stdin.flush()  # type: ignore[union-attr]
            reports = wait_ready(clients, timeout)
            done = [(r["init_at"] - go) * 1000 for r in reports]
            result: dict[str, Any] = {"all_ms": round(max(done), 1), "median_ms": round(statistics.median(done), 1),
                                      "first_ms": round(min(done), 1), "loadavg": round(load, 2)}
            if mode == "direct":
                result["cpu_s"] = round(cpu_seconds([p.pid for c in clients for p in tree(c.pid)[1:]]), 2)
            if mode == "shared":
                settle(0.3)
                roles = census(home.path, {c.pid for c in clients})
                result["cpu_s"] = round(cpu_seconds([m["pid"] for members in roles.values() for m in members]), 2)
                waiters = [m["pid"] for m in roles.get("waiter", [])]
                result["shim_cpu_ms_median"] = round(statistics.median(cpu_seconds([p]) for p in waiters) * 1000, 1)
                result["alive"] = {k: len(roles.get(k, [])) for k in ("broker", "keeper", "waiter")}
                brokers = {m["pid"] for m in roles.get("broker", [])}
                result["alive"]["backend"] = sum(1 for m in roles.get("backend", []) if m["ppid"] in brokers)
                result.update(broker_log_counts(home.path))
        finally:
            stop_clients(clients)
    return result


def bench_storm(kinds: list[str], count: int, rounds: int, timeout: float) -> dict[str, Any]:
    result: dict[str, Any] = {"sessions": count, "rounds": rounds}
    for kind in kinds:
        runs: dict[str, list[dict[str, Any]]] = {"direct": [], "shared": []}
        for index in range(rounds):
            for mode in (("shared", "direct") if index % 2 == 0 else ("direct", "shared")):
                run = storm_round(kind, mode, count, timeout)
                runs[mode].append(run)
                log(f"storm {kind} {mode} ×{count}: all initialized after {run['all_ms']} ms"
                    + (f"; brokers started {run['brokers_started']}, backends started {run['backends_started']}"
                       if mode == "shared" else ""))
        shared = runs["shared"]
        result[kind] = {
            "direct_all_ms_median": statistics.median(r["all_ms"] for r in runs["direct"]),
            "shared_all_ms_median": statistics.median(r["all_ms"] for r in shared),
            "direct_session_ms_median": statistics.median(r["median_ms"] for r in runs["direct"]),
            "shared_session_ms_median": statistics.median(r["median_ms"] for r in shared),
            "direct_cpu_s_median": statistics.median(r["cpu_s"] for r in runs["direct"]),
            "shared_cpu_s_median": statistics.median(r["cpu_s"] for r in shared),
            "shim_cpu_ms_median": statistics.median(r["shim_cpu_ms_median"] for r in shared),
            "brokers_started_max": max(r["brokers_started"] for r in shared),
            "backends_started_max": max(r["backends_started"] for r in shared),
            "brokers_alive_max": max(r["alive"]["broker"] for r in shared),
            "backends_alive_max": max(r["alive"]["backend"] for r in shared),
            "runs": runs,
        }
        r = result[kind]
        r["speedup"] = round(r["direct_all_ms_median"] / r["shared_all_ms_median"], 2)
        r["ok"] = r["brokers_started_max"] == 1 and r["backends_started_max"] == 1 and r["brokers_alive_max"] == 1
    return result


# ---- many sessions on one broker ------------------------------------------------------------


def attach_samples(env: dict[str, str], runs: int) -> dict[str, Any]:
    """Warm attach beside bare python, interleaved (order alternating)."""
    argv = shim_cmd(server_cmd("everything"))
    bare_argv = [entry_interpreter(), "-c", "pass"]
    attach: list[float] = []
    bare: list[float] = []
    for index in range(runs + 2):
        pair = [("attach", argv), ("bare", bare_argv)]
        for name, command in pair if index % 2 == 0 else pair[::-1]:
            value = time_attach(command, env)[0] if name == "attach" else time_bare(command, env)
            if index >= 2:  # two warm-up rounds
                (attach if name == "attach" else bare).append(value)
    a, b = summary(attach, 2), summary(bare, 2)
    return {"attach_ms": a, "bare_ms": b, "added_ms_p50": round(a["p50"] - b["p50"], 2)}


def many_step(home: Home, clients: list[subprocess.Popen], runs: int, settle_s: float) -> dict[str, Any]:
    settle(settle_s)
    roles = census(home.path, {c.pid for c in clients})
    brokers = roles.get("broker", [])
    if len(brokers) != 1:
        raise RuntimeError(f"expected one broker, found {len(brokers)}")
    broker = brokers[0]
    waiters = roles.get("waiter", [])
    step = {"sessions": len(clients), "broker_pss_mib": mib(broker["pss"]),
            "broker_pss_anon_mib": mib(broker.get("pss_anon", 0)), "broker_uss_mib": mib(broker["uss"]),
            "broker_rss_mib": mib(broker["rss"]), "broker_fds": fd_count(broker["pid"]),
            "waiters": len(waiters), "waiter_pss_mib_median": mib(statistics.median(m["pss"] for m in waiters)),
            "waiters_pss_mib_total": mib(sum(m["pss"] for m in waiters)), "loadavg": round(os.getloadavg()[0], 2),
            "shim_cpu_ms_median": round(statistics.median(cpu_seconds([m["pid"]]) for m in waiters) * 1000, 1)}
    step.update(attach_samples(home.env, runs))
    log(f"many: {step['sessions']} attached: broker PSS {step['broker_pss_mib']} MiB, {step['broker_fds']} fds, "
        f"waiter {step['waiter_pss_mib_median']} MiB, attach p50 {step['attach_ms']['p50']} ms "
        f"(bare {step['bare_ms']['p50']} ms)")
    return step


def bench_many(steps: list[int], runs: int, settle_s: float, timeout: float) -> dict[str, Any]:
    kind = "everything"
    argv = shim_cmd(server_cmd(kind))
    results = []
    with Home() as home:
        clients: list[subprocess.Popen] = []
        try:
            for target in steps:
                more = start_clients(argv, target - len(clients), home.env, CALLS[kind])
                clients += more
                wait_ready(more, timeout)
                results.append(many_step(home, clients, runs, settle_s))
            stop_clients(clients[1:])
            clients = clients[:1]
            after = many_step(home, clients, runs, settle_s)
            after["after_max"] = True
            results.append(after)
        finally:
            stop_clients(clients)
    first, top = results[0], max(results, key=lambda r: r["sessions"])
    span = top["sessions"] - first["sessions"]
    ones = [r for r in results if r["sessions"] == 1]
    return {
        "steps": results,
        "broker_fds_per_session": round((top["broker_fds"] - first["broker_fds"]) / span, 2),
        "broker_pss_kib_per_session": round((top["broker_pss_mib"] - first["broker_pss_mib"]) * 1024 / span, 1),
        "broker_anon_kib_per_session": round((top["broker_pss_anon_mib"] - first["broker_pss_anon_mib"]) * 1024
                                             / span, 1),
        "attach_p50_ms_at_1": round(statistics.median(r["attach_ms"]["p50"] for r in ones), 2),
        "attach_p50_ms_at_max": top["attach_ms"]["p50"],
        "added_ms_p50_at_1": round(statistics.median(r["added_ms_p50"] for r in ones), 2),
        "added_ms_p50_at_max": top["added_ms_p50"],
        "max_sessions": top["sessions"],
    }


# ---- many brokers ---------------------------------------------------------------------------


def bench_brokers(count: int, settle_s: float, timeout: float) -> dict[str, Any]:
    kind = "fast"
    argv = shim_cmd(server_cmd(kind))
    with Home() as home:
        clients = []
        for index in range(count):
            cwd = os.path.join(home.path, f"b{index}")
            os.makedirs(cwd)
            clients += start_clients(argv, 1, home.env, CALLS[kind], cwd)
        try:
            wait_ready(clients, timeout)
            settle(settle_s)
            roles = census(home.path, {c.pid for c in clients})
        finally:
            stop_clients(clients)
    brokers = roles.get("broker", [])
    if len(brokers) != count:
        raise RuntimeError(f"expected {count} brokers, found {len(brokers)}")
    totals = shared_totals(roles)
    result = {
        "brokers": count,
        "broker_pss_mib_total": mib(sum(m["pss"] for m in brokers)),
        "broker_pss_mib_per_broker": mib(statistics.median(m["pss"] for m in brokers)),
        "broker_pss_anon_mib_per_broker": mib(statistics.median(m.get("pss_anon", 0) for m in brokers)),
        "broker_pss_file_mib_per_broker": mib(statistics.median(m.get("pss_file", 0) for m in brokers)),
        "broker_uss_mib_per_broker": mib(statistics.median(m["uss"] for m in brokers)),
        "broker_rss_mib_per_broker": mib(statistics.median(m["rss"] for m in brokers)),
        "keepers_pss_mib_total": totals["by_role_mib"].get("keeper", 0),
        "waiters_pss_mib_total": totals["by_role_mib"].get("waiter", 0),
        "ours_mib_total": totals["ours_mib"],
        "backends_pss_mib_total": totals["by_role_mib"].get("backend", 0),
    }
    log(f"brokers: {count} brokers, {result['broker_pss_mib_total']} MiB in all, "
        f"{result['broker_pss_mib_per_broker']} MiB each (anon {result['broker_pss_anon_mib_per_broker']})")
    return result


# ---- plot -----------------------------------------------------------------------------------


def plot(data: dict[str, Any], path: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    figure, axes = plt.subplots(1, 3, figsize=(16.5, 4.6))
    servers, storm, many = data.get("servers"), data.get("storm"), data.get("many")
    axis = axes[0]
    if servers:
        direct, shared = servers["direct"], servers["shared"]
        bottom = 0.0
        for kind, value in direct["per_kind_mib"].items():
            axis.bar(0, value, bottom=bottom, color="tab:red", alpha=0.35 + 0.15 * list(direct["per_kind_mib"]).index(
                kind), edgecolor="white", label=None)
            if value > 0.04 * direct["total_mib"]:
                axis.text(0, bottom + value / 2, f"{kind} {value:.0f}", ha="center", va="center", fontsize=7)
            bottom += value
        parts = [("backend", "8 backends", "tab:blue"), ("broker", "brokers", "tab:orange"),
                 ("keeper", "keepers", "tab:green"), ("waiter", "waiters", "tab:purple")]
        bottom = 0.0
        for key, label, color in parts:
            value = shared["by_role_mib"].get(key, 0.0)
            axis.bar(1, value, bottom=bottom, color=color, label=f"{label} {value:.1f}")
            bottom += value
        axis.annotate(f"{direct['total_mib']:.0f} MiB", (0, direct["total_mib"]), ha="center", va="bottom")
        axis.annotate(f"{shared['total_mib']:.0f} MiB\n(ours {shared['ours_mib']:.0f})", (1, shared["total_mib"]),
                      ha="center", va="bottom")
        axis.set_xticks([0, 1], [f"direct\n({direct['processes']} processes)",
                                 f"mcpsingleton\n({shared['processes']} processes)"])
        axis.set_ylabel("total PSS (MiB)")
        axis.set_title(f"{servers['shared']['servers']} servers × {servers['sessions_per_server']} sessions",
                       fontsize=10)
        axis.set_ylim(0, direct["total_mib"] * 1.12)
        axis.legend(fontsize=7, loc="upper right")
        axis.grid(alpha=0.3, axis="y")
    axis = axes[1]
    if storm:
        kinds = [k for k in ("everything", "fast") if k in storm]
        for offset, (mode, color) in enumerate((("direct", "tab:red"), ("shared", "tab:blue"))):
            xs = [i * 3 + offset for i in range(len(kinds))]
            values = [storm[k][f"{mode}_all_ms_median"] / 1000 for k in kinds]
            axis.bar(xs, values, color=color, label="direct servers" if mode == "direct" else "mcpsingleton")
            for x, kind in zip(xs, kinds, strict=True):
                points = [r["all_ms"] / 1000 for r in storm[kind]["runs"][mode]]
                axis.plot([x] * len(points), points, "k.", markersize=4)
                axis.annotate(f"{storm[kind][f'{mode}_all_ms_median'] / 1000:.2f} s", (x, max(points)),
                              ha="center", va="bottom", fontsize=8)
        axis.set_xticks([i * 3 + 0.5 for i in range(len(kinds))], kinds)
        axis.set_ylabel("seconds until all sessions initialized")
        axis.set_title(f"cold-start storm: {storm['sessions']} sessions at once (median of {storm['rounds']})",
                       fontsize=10)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3, axis="y")
    axis = axes[2]
    if many:
        steps = [s for s in many["steps"] if not s.get("after_max")]
        xs = [s["sessions"] for s in steps]
        axis.plot(xs, [s["attach_ms"]["p50"] for s in steps], "o-", color="tab:blue", label="warm attach p50")
        axis.plot(xs, [s["bare_ms"]["p50"] for s in steps], "s--", color="tab:gray", label="bare python -c pass p50")
        axis.set_xlabel("sessions attached to one broker")
        axis.set_ylabel("ms")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        after = [s for s in many["steps"] if s.get("after_max")]
        if after:
            axis.plot([1], [after[0]["attach_ms"]["p50"]], "o", mfc="none", color="tab:blue",
                      label=f"warm attach p50, back at 1 after {many['max_sessions']}")
        twin = axis.twinx()
        twin.plot(xs, [s["broker_pss_mib"] for s in steps], "^-", color="tab:orange", label="broker PSS (MiB)")
        twin.plot(xs, [s["broker_fds"] / 100 for s in steps], "v:", color="tab:green", label="broker fds / 100")
        twin.set_ylabel("MiB  |  fds / 100")
        twin.set_ylim(bottom=0)
        lines = axis.get_legend_handles_labels()
        more = twin.get_legend_handles_labels()
        axis.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower right")
        axis.set_title("one broker, many sessions (server-everything)", fontsize=10)
    figure.suptitle("Scale: many servers, a cold-start storm, many sessions on one broker")
    return save_figure(plt, figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="servers,storm,many,brokers")
    parser.add_argument("--per-server", type=int, default=7, help="sessions per server in the servers case")
    parser.add_argument("--storm", type=int, default=50, help="sessions released at once")
    parser.add_argument("--storm-rounds", type=int, default=3)
    parser.add_argument("--storm-servers", default="everything,fast")
    parser.add_argument("--steps", default="1,25,50,100,200", help="sessions attached to one broker")
    parser.add_argument("--attach-runs", type=int, default=25, help="warm attaches per step")
    parser.add_argument("--brokers", type=int, default=50)
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="scale")
    parser.add_argument("--replot", action="store_true", help="measure nothing: redraw the plot from the results")
    args = parser.parse_args()
    if args.replot:
        data = json.loads((RESULTS / f"{args.out}.json").read_text())
        plot(data, str(RESULTS / f"{args.out}.png"))
        return
    if args.quick:
        args.per_server, args.storm, args.storm_rounds, args.storm_servers = 3, 20, 1, "everything"
        args.steps, args.attach_runs, args.brokers, args.settle = "1,50", 10, 10, 1.0
    sections = args.only.split(",")
    data: dict[str, Any] = {"benchmark": "scale", "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
                            "machine": machine(), "client_python": client_python(), "settle_seconds": args.settle}
    if "servers" in sections:
        log(f"servers: {len(MIX)} keys × {args.per_server} sessions, shared then direct")
        data["servers"] = bench_servers(args.per_server, args.settle, args.timeout)
    if "storm" in sections:
        data["storm"] = bench_storm(args.storm_servers.split(","), args.storm, args.storm_rounds, args.timeout)
    if "many" in sections:
        data["many"] = bench_many(sorted({int(x) for x in args.steps.split(",")}), args.attach_runs, args.settle,
                                  args.timeout)
    if "brokers" in sections:
        data["brokers"] = bench_brokers(args.brokers, args.settle, args.timeout)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if plot(data, str(RESULTS / f"{args.out}.png")):
        data["plot"] = f"{args.out}.png"
    write_result(args.out, data)


if __name__ == "__main__":
    main()
