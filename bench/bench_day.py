"""A typical day: 12 configured servers, 4 client sessions in 4 project directories, each calling 3 of them;
and 50 keys x 5 sessions.

    .venv/bin/python bench/bench_day.py [--quick] [--only day,keys] [--runs 3]

day   Every session is a client as the editors run them: it starts all 12 servers of its config (12
      session_client.py processes, one per server, in the project's directory), initializes each, lists its
      tools, calls tools on 3 of them and holds. 3 of the 12 are isolated (sequential-thinking and
      desktop-commander by the catalog, tests/fake_server.py by its `x-mux` declaration). Direct: every
      session's server trees (48 servers). Through mcpsingleton (defaults: --scope auto, lazy): everything
      carrying the home, split into backends and ours (brokers, keepers, waiters). The discovery of every
      server was learnt by one earlier run of the same day (a previous day: the first run of a server learns
      it), then every broker was stopped. Rounds interleaved; medians over rounds.
keys  50 keys (fast_server, one project directory each, scope cwd) x 5 sessions each, every session calling
      one tool (so every key is active): the PSS of brokers, keepers and waiters, and warm attach (spawn →
      InitializeResult of one more session on a warm key) beside bare `python -c pass`.
Session clients are never counted (see bench_sessions.py). Writes bench/results/day.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from typing import Any

from bench_latency import time_bare
from bench_sessions import census_direct, start_clients, stop_clients, wait_ready
from common import (
    MIB,
    NPM_PREFIX,
    ROOT,
    Home,
    base_env,
    census,
    entry_interpreter,
    entry_point,
    fast_cmd,
    log,
    machine,
    npx_cmd,
    npx_dir,
    shim_cmd,
    summary,
    time_cmd,
    write_result,
)

MODULES = NPM_PREFIX / "node_modules"
SESSIONS = 4
GOAL_RATIO = 0.2
GOAL_OURS_MIB = 20.0


def node(package: str, *args: str) -> list[str]:
    return [shutil.which("node") or "node", str(MODULES / package / "dist/index.js"), *args]


class Server:
    """One configured server: its command (`{project}` is the session's directory), extra environment and
    the tool call a session makes when it uses it."""

    def __init__(self, name: str, argv: list[str], call: list[Any], env: dict[str, str] | None = None,
                 isolated: bool = False) -> None:
        self.name, self.argv, self.call, self.env, self.isolated = name, argv, call, env or {}, isolated

    def command(self, project: str) -> list[str]:
        return [word.replace("{project}", project) for word in self.argv]


def tool(name: str, arguments: dict[str, Any]) -> list[Any]:
    return ["tools/call", {"name": name, "arguments": arguments}]


def day_servers(home: str) -> list[Server]:
    """The 12 servers of every session's config. 6 packages are installed here, so 6 of the 12 are a second
    configuration of one of them, each a distinct key as a user's config makes it: a second memory graph
    (its own MEMORY_FILE_PATH), a second filesystem root, mcp-server-time with a local timezone, the same
    server-everything launched through `npx -y`, and two small Python servers."""
    docs = os.path.join(home, "docs")
    return [
        Server("everything", node("@modelcontextprotocol/server-everything", "stdio"),
               tool("echo", {"message": "hello"})),
        Server("everything-npx", npx_cmd(), tool("echo", {"message": "hello"})),
        Server("memory", node("@modelcontextprotocol/server-memory"), tool("read_graph", {}),
               {"MEMORY_FILE_PATH": os.path.join(home, "memory.jsonl")}),
        Server("memory-work", node("@modelcontextprotocol/server-memory"), tool("read_graph", {}),
               {"MEMORY_FILE_PATH": os.path.join(home, "work-memory.jsonl")}),
        Server("filesystem", node("@modelcontextprotocol/server-filesystem", "{project}"),
               tool("list_directory", {"path": "{project}"})),
        Server("filesystem-docs", node("@modelcontextprotocol/server-filesystem", docs),
               tool("list_directory", {"path": docs})),
        Server("time", time_cmd(), tool("get_current_time", {"timezone": "UTC"})),
        Server("time-paris", [*time_cmd(), "--local-timezone", "Europe/Paris"],
               tool("get_current_time", {"timezone": "Europe/Paris"})),
        Server("fast", fast_cmd(), tool("echo", {"text": "hello"})),
        Server("sequential-thinking", node("@modelcontextprotocol/server-sequential-thinking"),
               tool("sequentialthinking", {"thought": "plan the day", "thoughtNumber": 1, "totalThoughts": 1,
                                           "nextThoughtNeeded": False}),
               {"DISABLE_THOUGHT_LOGGING": "true"}, isolated=True),
        Server("desktop-commander", node("@wonderwhy-er/desktop-commander"), tool("get_config", {}),
               isolated=True),
        Server("fake-isolated", [entry_interpreter(), str(ROOT / "tests/fake_server.py"), "--x-mux=isolated"],
               tool("echo", {"text": "hello"}), isolated=True),
    ]


USES = [
    ("filesystem", "everything", "sequential-thinking"),
    ("filesystem", "memory", "time"),
    ("desktop-commander", "memory", "everything-npx"),
    ("filesystem", "time", "fake-isolated"),
]
"""The 3 servers each of the 4 sessions calls: 9 calls on 7 servers; 5 of the 12 are never called."""


def substitute(value: Any, project: str) -> Any:
    if isinstance(value, str):
        return value.replace("{project}", project)
    if isinstance(value, dict):
        return {key: substitute(item, project) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, project) for item in value]
    return value


def start_day(home: Home, mode: str) -> list[tuple[str, subprocess.Popen]]:
    """4 sessions x 12 servers: (server name, session client) for every server of every session."""
    servers = day_servers(home.path)
    os.makedirs(os.path.join(home.path, "docs"), exist_ok=True)
    started = []
    for session, uses in enumerate(USES):
        project = os.path.join(home.path, f"project-{session}")
        if not os.path.isdir(project):
            npx_dir(project)  # a node_modules link, so `npx -y` resolves the installed package offline
        for server in servers:
            calls = [["tools/list", {}]] + ([substitute(server.call, project)] if server.name in uses else [])
            command = server.command(project)
            argv = command if mode == "direct" else shim_cmd(command)
            env = base_env() if mode == "direct" else home.env
            started += [(server.name, client) for client in start_clients(argv, 1, env, calls, project,
                                                                         server_env=server.env)]
    return started


def measure_day(home: Home, mode: str, settle_s: float, timeout: float) -> dict[str, Any]:
    clients = start_day(home, mode)
    try:
        began = time.monotonic()
        for name, client in clients:
            try:
                wait_ready([client], max(1.0, timeout - (time.monotonic() - began)))
            except RuntimeError as exc:
                raise RuntimeError(f"{mode}, server {name}: {exc}") from None
        ready_s = time.monotonic() - began
        time.sleep(settle_s)
        if mode == "direct":
            whole = census_direct([client for _, client in clients])
            result: dict[str, Any] = {"total_mib": mib(whole["total_pss"]), "processes": whole["processes"]}
        else:
            result = shared_census(census(home.path, {client.pid for _, client in clients}))
            result["ls"] = listing(home)
    finally:
        stop_clients([client for _, client in clients])
    result["all_ready_s"] = round(ready_s, 2)
    return result


def listing(home: Home) -> dict[str, Any]:
    """What `ls --json` shows: per server name, its scope, sharing, and how many entries have a backend running."""
    out = subprocess.run([entry_point(), "ls", "--json"], env=home.env, capture_output=True, text=True, timeout=60)
    servers: dict[str, Any] = {}
    for entry in json.loads(out.stdout or "[]"):
        row = servers.setdefault(entry["name"], {"scope": entry["scope"], "sharing": entry["sharing"],
                                                 "entries": 0, "backends": 0, "keys": set()})
        row["entries"] += 1
        row["backends"] += 1 if entry.get("backend_pid") else 0
        row["keys"].add(entry["key"])
    return {name: {**row, "keys": len(row["keys"])} for name, row in sorted(servers.items())}


def mib(value: float) -> float:
    return round(value / MIB, 2)


def shared_census(roles: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    by_role = {kind: sum(member["pss"] for member in members) for kind, members in roles.items()}
    return {
        "total_mib": mib(sum(by_role.values())),
        "ours_mib": mib(sum(value for kind, value in by_role.items() if kind != "backend")),
        "by_role_mib": {kind: mib(value) for kind, value in sorted(by_role.items())},
        "counts": {kind: len(members) for kind, members in sorted(roles.items())},
        "processes": sum(len(members) for members in roles.values()),
        "backend_trees": backend_trees(roles.get("backend", [])),
    }


def backend_trees(backends: list[dict[str, Any]]) -> int:
    """How many backends run: backend processes whose parent is not a backend (npx's sh and node are one)."""
    pids = {member["pid"] for member in backends}
    return sum(1 for member in backends if member["ppid"] not in pids)


def stop_all(home: Home) -> None:
    subprocess.run([entry_point(), "stop", "--all"], env=home.env, capture_output=True, timeout=60)
    deadline = time.monotonic() + 15
    while home.processes() and time.monotonic() < deadline:
        time.sleep(0.05)


def bench_day(runs: int, settle_s: float, timeout: float) -> dict[str, Any]:
    samples: dict[str, list[dict[str, Any]]] = {"shared": [], "direct": []}
    with Home() as home:
        log("day: a previous day (learns every server's discovery)")
        measure_day(home, "shared", settle_s, timeout)
        stop_all(home)
        for iteration in range(runs):
            order = ["shared", "direct"] if iteration % 2 == 0 else ["direct", "shared"]
            for mode in order:
                sample = measure_day(home, mode, settle_s, timeout)
                samples[mode].append(sample)
                log(f"day {mode}: total {sample['total_mib']} MiB, {sample['processes']} processes"
                    + (f", ours {sample['ours_mib']} MiB {sample['counts']}" if mode == "shared" else ""))
                stop_all(home)
    shared, direct = samples["shared"], samples["direct"]
    total_shared = statistics.median(s["total_mib"] for s in shared)
    total_direct = statistics.median(s["total_mib"] for s in direct)
    ours = statistics.median(s["ours_mib"] for s in shared)
    return {
        "sessions": SESSIONS,
        "servers": [{"name": s.name, "command": " ".join(os.path.basename(w) for w in s.argv[:2]),
                     "isolated": s.isolated} for s in day_servers("HOME")],
        "uses": USES,
        "runs": runs,
        "direct": direct,
        "shared": shared,
        "direct_total_mib": round(total_direct, 1),
        "shared_total_mib": round(total_shared, 1),
        "ratio": round(total_shared / total_direct, 3),
        "ours_mib": round(ours, 1),
        "goal_ratio": GOAL_RATIO,
        "goal_ours_mib": GOAL_OURS_MIB,
        "goal_ratio_met": total_shared / total_direct <= GOAL_RATIO,
        "goal_ours_met": ours <= GOAL_OURS_MIB,
    }


# ---- 50 keys x 5 sessions -------------------------------------------------------------------


def warm_attach(argv: list[str], env: dict[str, str], directory: str) -> float:
    """ms from spawn to InitializeResult of one more session on the warm key of `directory`, timed inside a session
    client like the ones holding the key: the shim's parent then has the same environment, hence the same key
    (a shim spawned by this process would see the bench's variables as set for it and get a key of its own)."""
    [client] = start_clients(argv, 1, env, [], directory)
    try:
        [report] = wait_ready([client], 60)
    finally:
        stop_clients([client])
    return float(report["init_ms"])


def bench_keys(keys: int, sessions: int, attaches: int, settle_s: float, timeout: float) -> dict[str, Any]:
    argv = shim_cmd(fast_cmd(), "--scope", "cwd")
    calls = [["tools/list", {}], ["tools/call", {"name": "echo", "arguments": {"text": "hello"}}]]
    with Home() as home:
        dirs = [os.path.join(home.path, f"key-{index}") for index in range(keys)]
        clients: list[subprocess.Popen] = []
        try:
            for directory in dirs:
                os.makedirs(directory)
                clients += start_clients(argv, sessions, home.env, calls, directory)
                wait_ready(clients[-sessions:], timeout)  # one key at a time: a warm start, not a storm
            time.sleep(settle_s)
            roles = census(home.path, {client.pid for client in clients})
            attach, bare = [], []
            for index in range(attaches):
                attach.append(warm_attach(argv, home.env, dirs[index % keys]))
                bare.append(time_bare([entry_interpreter(), "-c", "pass"], home.env))
        finally:
            stop_clients(clients)
    brokers = roles.get("broker", [])
    totals = shared_census(roles)
    result = {
        "keys": keys,
        "sessions_per_key": sessions,
        "brokers": len(brokers),
        "broker_pss_mib_total": mib(sum(m["pss"] for m in brokers)),
        "broker_pss_anon_mib_total": mib(sum(m.get("pss_anon", 0) for m in brokers)),
        "keepers": len(roles.get("keeper", [])),
        "keepers_pss_mib_total": totals["by_role_mib"].get("keeper", 0),
        "waiters_pss_mib_total": totals["by_role_mib"].get("waiter", 0),
        "ours_mib": totals["ours_mib"],
        "backends_pss_mib_total": totals["by_role_mib"].get("backend", 0),
        "counts": totals["counts"],
        "attach_ms": summary(attach, 2),
        "bare_python_ms": summary(bare, 2),
        "attach_added_ms_p50": round(statistics.median(attach) - statistics.median(bare), 2),
    }
    log(f"keys: {keys}×{sessions}: {len(brokers)} brokers {result['broker_pss_mib_total']} MiB, ours "
        f"{result['ours_mib']} MiB; warm attach p50 {result['attach_ms']['p50']} ms "
        f"(bare python {result['bare_python_ms']['p50']} ms)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="day,keys")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--sessions-per-key", type=int, default=5)
    parser.add_argument("--attaches", type=int, default=30)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--out", default="day")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.keys, args.sessions_per_key, args.attaches = 1, 10, 3, 10
    data: dict[str, Any] = {"machine": machine()}
    if "day" in args.only.split(","):
        data["day"] = bench_day(args.runs, args.settle, timeout=240)
        day = data["day"]
        log(f"day: direct {day['direct_total_mib']} MiB, shared {day['shared_total_mib']} MiB "
            f"({day['ratio']}×), ours {day['ours_mib']} MiB")
    if "keys" in args.only.split(","):
        data["keys"] = bench_keys(args.keys, args.sessions_per_key, args.attaches, args.settle, timeout=240)
    write_result(args.out, data)


if __name__ == "__main__":
    main()
