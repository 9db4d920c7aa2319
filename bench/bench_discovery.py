"""Cached discovery and lazy backends: what a first session waits for, what ten idle servers cost, and what
the first tool call on a lazy backend adds.

    .venv/bin/python bench/bench_discovery.py [--quick] [--only cold,lazy,firstcall]

cold   spawn → InitializeResult of the first session on a cold key (no broker running), for
       server-everything started with node and through `npx -y`: the server started directly, through
       mcpsingleton without a cache entry (what main did before), and with one (an earlier session
       stored this server's discovery; `--eager`, as main before lazy became the default). Also spawn →
       first `tools/call` result, which needs the backend in every variant. Interleaved; goal ≤ 150 ms to
       the InitializeResult with an entry.
lazy   a client session that opens ten servers (server-everything, ten keys), initializes and lists
       tools on each, then calls one tool on one of them: PSS of the brokers, keepers and backends
       once that call has been answered, and the time until all ten InitializeResults were in.
       Variants: the servers started directly by the client (their process trees' PSS), through
       mcpsingleton without cache entries, with entries and `--eager`, with entries and lazy (the default).
       Interleaved.
firstcall  a session initializes and lists tools (answered from the cache), waits 5 s (an eager backend is
       ready by then), then calls one tool: that first call's round trip, lazy (it starts the backend and
       initializes it first) against eager (the backend is up). The difference is what lazy costs the
       first call of a session's life on a server; later calls are the same. Node and `npx -y`.
Writes bench/results/discovery.json.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import time
from typing import Any

from common import (
    ECHO_CALL,
    MIB,
    Home,
    RawClient,
    base_env,
    census,
    entry_point,
    log,
    machine,
    memory,
    server_cmd,
    server_cwd,
    shim_cmd,
    summary,
    tree,
    write_result,
)

GOAL_MS = 150
SERVERS = 10
COST_ROLES = ("broker", "keeper", "backend")
"""What a server costs while its session is open (waiters are the same in every variant)."""


def cache_files(home: Home) -> list[str]:
    return glob.glob(os.path.join(home.path, "state", "discovery", "*.json"))


def drop_cache(home: Home) -> None:
    for path in cache_files(home):
        os.unlink(path)


def stop_brokers(home: Home) -> None:
    """Every broker of the home stopped (the key goes cold); its state dir, hence the cache, stays."""
    subprocess.run([entry_point(), "stop", "--all"], env=home.env, capture_output=True, timeout=30)
    deadline = time.monotonic() + 10
    while home.processes() and time.monotonic() < deadline:
        time.sleep(0.02)


def wait_for_cache(home: Home, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(cache_files(home)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(cache_files(home))} of {count} discovery entries were stored")
        time.sleep(0.02)


def first_session(argv: list[str], env: dict[str, str], cwd: str | None, call: tuple[str, dict]) -> tuple[float, float]:
    """ms from spawn to the InitializeResult, and to the first tool call's result."""
    client = RawClient(argv, env, cwd)
    try:
        client.initialize()
        initialized = time.perf_counter()
        client.request(*call)
        called = time.perf_counter()
        return (initialized - client.started) * 1000, (called - client.started) * 1000
    finally:
        client.close()


# ---- cold start with and without a cache entry ----------------------------------------------


def bench_cold(runs: int, kinds: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"runs": runs, "goal_ms": GOAL_MS}
    for kind in kinds:
        server, cwd = server_cmd(kind), server_cwd(kind)
        call = ECHO_CALL["everything"]
        samples: dict[str, list[tuple[float, float]]] = {"direct": [], "no_cache": [], "cache": []}
        with Home() as cached:
            first_session(shim_cmd(server), cached.env, cwd, call)
            wait_for_cache(cached, 1)
            stop_brokers(cached)
            for iteration in range(runs):
                order = list(samples) if iteration % 2 == 0 else list(samples)[::-1]
                for variant in order:
                    if variant == "direct":
                        samples[variant].append(first_session(server, base_env(), cwd, call))
                    elif variant == "no_cache":
                        with Home() as fresh:  # a cold key: no broker, no salt, no cache
                            samples[variant].append(first_session(shim_cmd(server), fresh.env, cwd, call))
                    else:
                        samples[variant].append(first_session(shim_cmd(server, "--eager"), cached.env, cwd, call))
                        stop_brokers(cached)
        row = {
            variant: {
                "initialize_ms": summary([s[0] for s in values], 1),
                "first_call_ms": summary([s[1] for s in values], 1),
            }
            for variant, values in samples.items()
        }
        row["goal_met"] = row["cache"]["initialize_ms"]["p50"] <= GOAL_MS
        result[kind] = row
        log(
            f"cold {kind}: initialize p50 direct {row['direct']['initialize_ms']['p50']} ms, "
            f"no cache {row['no_cache']['initialize_ms']['p50']} ms, cache {row['cache']['initialize_ms']['p50']} ms; "
            f"first call p50 {row['direct']['first_call_ms']['p50']} / {row['no_cache']['first_call_ms']['p50']} / "
            f"{row['cache']['first_call_ms']['p50']} ms"
        )
    return result


# ---- ten servers, one tool called -----------------------------------------------------------


def use_one_tool(clients: list[RawClient]) -> float:
    """A client session's start: initialize every server, list their tools, call one tool on the first,
    then wait for eager backends to finish starting (their cost is what is measured); ms to all initialized."""
    for client in clients:
        client.initialize()
    all_initialized = (time.perf_counter() - clients[0].started) * 1000
    for client in clients:
        client.request("tools/list")
    clients[0].request(*ECHO_CALL["everything"])
    time.sleep(0.5)
    return all_initialized


def ten_server_session(home: Home, dirs: list[str], lazy: bool) -> dict[str, float]:
    """Open all servers at once as a client does, call one tool on the first, measure, close."""
    server = server_cmd("everything")
    options = ("--scope", "cwd", "--lazy" if lazy else "--eager")
    clients = [RawClient(shim_cmd(server, *options), home.env, directory) for directory in dirs]
    try:
        all_initialized = use_one_tool(clients)
        roles = census(home.path, exclude={client.process.pid for client in clients})
        cost = {role: sum(p["pss"] for p in roles.get(role, [])) / MIB for role in COST_ROLES}
        return {
            "all_initialized_ms": all_initialized,
            "pss_mib": sum(cost.values()),
            **{f"{role}_pss_mib": value for role, value in cost.items()},
            "backends": len(roles.get("backend", [])),
        }
    finally:
        for client in clients:
            client.close()


def ten_servers_direct(dirs: list[str]) -> dict[str, float]:
    """The same client session without mcpsingleton: it starts every server itself."""
    server = server_cmd("everything")
    clients = [RawClient(server, base_env(), directory) for directory in dirs]
    try:
        all_initialized = use_one_tool(clients)
        pss = sum(memory(process)["pss"] for client in clients for process in tree(client.process.pid)) / MIB
        return {"all_initialized_ms": all_initialized, "pss_mib": pss, "backends": len(clients)}
    finally:
        for client in clients:
            client.close()


def bench_lazy(runs: int) -> dict[str, Any]:
    variants = {"direct": False, "no_cache": False, "cache": False, "cache_lazy": True}
    samples: dict[str, list[dict[str, float]]] = {variant: [] for variant in variants}
    with Home() as home:
        dirs = [os.path.join(home.path, f"server-{number}") for number in range(SERVERS)]  # --scope cwd: ten keys
        for directory in dirs:
            os.makedirs(directory)
        ten_server_session(home, dirs, lazy=False)  # stores every key's discovery
        wait_for_cache(home, SERVERS)
        stop_brokers(home)
        for iteration in range(runs):
            order = list(variants) if iteration % 2 == 0 else list(variants)[::-1]
            for variant in order:
                if variant == "direct":
                    samples[variant].append(ten_servers_direct(dirs))
                    continue
                if variant == "no_cache":
                    drop_cache(home)
                samples[variant].append(ten_server_session(home, dirs, variants[variant]))
                if variant == "no_cache":
                    wait_for_cache(home, SERVERS)
                stop_brokers(home)
    result: dict[str, Any] = {"runs": runs, "servers": SERVERS}
    for variant, values in samples.items():
        result[variant] = {name: summary([v[name] for v in values], 1) for name in values[0]}
        log(
            f"10 servers, {variant}: PSS p50 {result[variant]['pss_mib']['p50']} MiB "
            f"({result[variant]['backends']['p50']:.0f} backend processes), all initialized p50 "
            f"{result[variant]['all_initialized_ms']['p50']} ms"
        )
    return result


# ---- the first tool call on a lazy backend --------------------------------------------------


WARM_WAIT = 5.0
"""Seconds between initialize and the first call: an eager backend has started and initialized by then."""


def first_call(argv: list[str], env: dict[str, str], cwd: str | None, call: tuple[str, dict]) -> float:
    """ms of the first tool call's round trip, made WARM_WAIT after the session initialized and listed tools."""
    client = RawClient(argv, env, cwd)
    try:
        client.initialize()
        client.request("tools/list")
        time.sleep(WARM_WAIT)
        started = time.perf_counter()
        reply = client.request(*call)
        elapsed = (time.perf_counter() - started) * 1000
        if "result" not in reply:
            raise RuntimeError(f"the first call failed: {reply}")
        return elapsed
    finally:
        client.close()


def bench_first_call(runs: int, kinds: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"runs": runs, "warm_wait_s": WARM_WAIT}
    for kind in kinds:
        server, cwd, call = server_cmd(kind), server_cwd(kind), ECHO_CALL["everything"]
        samples: dict[str, list[float]] = {"eager": [], "lazy": []}
        with Home() as home:
            first_session(shim_cmd(server), home.env, cwd, call)  # learns the discovery entry
            wait_for_cache(home, 1)
            stop_brokers(home)
            for iteration in range(runs):
                order = list(samples) if iteration % 2 == 0 else list(samples)[::-1]
                for variant in order:
                    samples[variant].append(first_call(shim_cmd(server, f"--{variant}"), home.env, cwd, call))
                    stop_brokers(home)
        row: dict[str, Any] = {variant: {"first_call_ms": summary(values, 1)} for variant, values in samples.items()}
        row["lazy_adds_ms_p50"] = round(row["lazy"]["first_call_ms"]["p50"] - row["eager"]["first_call_ms"]["p50"], 1)
        result[kind] = row
        log(
            f"first call, {kind}: eager p50 {row['eager']['first_call_ms']['p50']} ms, lazy p50 "
            f"{row['lazy']['first_call_ms']['p50']} ms (+{row['lazy_adds_ms_p50']} ms)"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="cold,lazy,firstcall")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--lazy-runs", type=int, default=3)
    parser.add_argument("--out", default="discovery")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.lazy_runs = 3, 1
    sections = args.only.split(",")
    data: dict[str, Any] = {"machine": machine()}
    if "cold" in sections:
        data["cold"] = bench_cold(args.runs, ["everything", "npx"])
    if "lazy" in sections:
        data["lazy"] = bench_lazy(args.lazy_runs)
    if "firstcall" in sections:
        data["first_call"] = bench_first_call(args.runs, ["everything", "npx"])
    data["machine_end"] = machine()
    log(f"wrote {write_result(args.out, data)}")


if __name__ == "__main__":
    main()
