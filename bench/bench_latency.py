"""Latency: warm attach, cold start, and the per-request overhead of going through the broker.

    .venv/bin/python bench/bench_latency.py [--quick] [--only attach,cold,roundtrip]

attach     time from spawning `mcpsingleton run -- server-everything` (its broker already running,
           one other session attached) to receiving the InitializeResult, beside a bare
           `python -c pass` of the same interpreter, interleaved. Extra variants, same loop: the same
           package without the editable-install finder (a plain venv whose .pth just names the repo),
           and, when the caller exports PYTHONDONTWRITEBYTECODE, the shim without bytecode caches.
cold       server-everything (and the trivial fast server) started directly → InitializeResult, vs the
           first session on a cold key through mcpsingleton (broker start + backend start + initialize);
           goal: ≤ direct + 50 ms. Also the floor of that addition: `python -c pass` (the shim's
           interpreter) + `python -c "import mcpsingleton.broker.process"` (the broker's interpreter and imports).
roundtrip  p50/p99 of a small tools/call (`echo`) and of `ping`, direct vs through one broker,
           interleaved blocks on two long-lived sessions; plus the broker's CPU time per request.
           Through the broker `ping` is answered by the broker itself (never reaches the backend).
Writes bench/results/latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import psutil
from common import (
    ECHO_CALL,
    ROOT,
    Home,
    RawClient,
    base_env,
    entry_interpreter,
    entry_point,
    initialize_line,
    log,
    machine,
    role,
    server_cmd,
    shim_cmd,
    summary,
    write_result,
)

# ---- warm attach ----------------------------------------------------------------------------


def plain_venv(directory: str) -> tuple[str, str]:
    """A venv of the same base interpreter where mcpsingleton is importable through a plain .pth line (no
    editable-install finder, no setuptools hooks), i.e. what a regular `pip install` costs at start-up.
    Returns (python, entry-point script)."""
    interpreter = entry_interpreter()
    base = subprocess.run([interpreter, "-c", "import sys; print(sys._base_executable)"], capture_output=True,
                          text=True, check=True).stdout.strip()
    venv = os.path.join(directory, "pv")
    subprocess.run([base, "-m", "venv", "--without-pip", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(purelib, "mcpsingleton-bench.pth"), "w") as handle:
        handle.write(str(ROOT) + "\n")
    with open(entry_point()) as handle:
        body = handle.read().split("\n", 1)[1]
    script = os.path.join(venv, "bin", "mcpsingleton")
    with open(script, "w") as handle:
        handle.write(f"#!{python}\n{body}")
    os.chmod(script, 0o755)
    return python, script


def site_hooks() -> dict[str, str]:
    """The .pth files of the entry point's venv: code in them runs at every interpreter start."""
    interpreter = entry_interpreter()
    purelib = subprocess.run([interpreter, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    hooks = {}
    for name in sorted(os.listdir(purelib)):
        if name.endswith(".pth"):
            with open(os.path.join(purelib, name)) as handle:
                hooks[name] = handle.read(160).strip()
    return hooks


def time_bare(argv: list[str], env: dict[str, str]) -> float:
    """ms from spawn to exit."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    process.communicate()
    elapsed = (time.perf_counter() - started) * 1000
    if process.returncode != 0:
        raise RuntimeError(f"{argv} exited {process.returncode}")
    return elapsed


def time_attach(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(ms from spawn to InitializeResult, ms from closing its stdin to its exit)."""
    client = RawClient(argv, env)
    client.write(initialize_line(1))
    reply = client.response(1, timeout=30)
    elapsed = (time.perf_counter() - client.started) * 1000
    if "result" not in reply:
        raise RuntimeError(f"initialize through {argv[:3]} failed: {reply}")
    closing = time.perf_counter()
    code = client.close()
    detach = (time.perf_counter() - closing) * 1000
    if code != 0:
        raise RuntimeError(f"{argv[:3]} exited {code} after stdin EOF")
    return elapsed, detach


def bench_attach(runs: int, warmup: int) -> dict[str, Any]:
    everything = server_cmd("everything")
    interpreter = entry_interpreter()
    with Home() as home:
        holder = RawClient(shim_cmd(everything), home.env)
        holder.initialize(timeout=60)  # cold: starts the broker; it stays attached for the whole loop
        python, script = plain_venv(home.path)
        nopyc = {k: v for k, v in home.env.items() if k != "PYTHONPYCACHEPREFIX"}
        nopyc["PYTHONDONTWRITEBYTECODE"] = "1"
        variants: dict[str, tuple[str, list[str], dict[str, str]]] = {
            "bare_python": ("bare", [interpreter, "-c", "pass"], home.env),
            "shim_attach": ("attach", shim_cmd(everything), home.env),
            "plain_bare_python": ("bare", [python, "-c", "pass"], home.env),
            "plain_shim_attach": ("attach", [script, "run", "--", *everything], home.env),
        }
        no_bytecode = os.environ.get("PYTHONDONTWRITEBYTECODE") and not (ROOT / "mcpsingleton/__pycache__").exists()
        if no_bytecode:
            variants["nopyc_bare_python"] = ("bare", [interpreter, "-c", "pass"], nopyc)
            variants["nopyc_shim_attach"] = ("attach", shim_cmd(everything), nopyc)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        detach: list[float] = []
        names = list(variants)
        for iteration in range(warmup + runs):
            shift = iteration % len(names)
            for name in names[shift:] + names[:shift]:  # rotate the order every iteration
                kind, argv, env = variants[name]
                if kind == "bare":
                    value = time_bare(argv, env)
                else:
                    value, detached = time_attach(argv, env)
                    if name == "shim_attach" and iteration >= warmup:
                        detach.append(detached)
                if iteration >= warmup:
                    samples[name].append(value)
        brokers = [p for p in home.processes() if role(p) == "broker"]
        holder.close()
    if len(brokers) != 1:
        raise RuntimeError(f"every variant should have attached to one broker; found {len(brokers)}")
    stats = {name: summary(values) for name, values in samples.items()}
    result: dict[str, Any] = {"runs": runs, "ms": stats, "detach_ms": summary(detach), "samples_ms": samples}
    for prefix in ("", "plain_", "nopyc_"):
        if f"{prefix}shim_attach" in stats:
            shim, bare = samples[f"{prefix}shim_attach"], samples[f"{prefix}bare_python"]
            added = stats[f"{prefix}shim_attach"]["p50"] - stats[f"{prefix}bare_python"]["p50"]
            result[f"{prefix}added_ms_p50"] = round(added, 2)
            result[f"{prefix}added_ms_paired_p50"] = summary([s - b for s, b in zip(shim, bare, strict=True)])["p50"]
    result["site_hooks_ms_p50"] = round(stats["bare_python"]["p50"] - stats["plain_bare_python"]["p50"], 2)
    result["site_hooks"] = site_hooks()
    if no_bytecode:
        result["no_bytecode_cost_ms_p50"] = round(stats["nopyc_shim_attach"]["p50"] - stats["shim_attach"]["p50"], 2)
    return result


# ---- cold start -----------------------------------------------------------------------------


def time_cold(argv: list[str], env: dict[str, str]) -> float:
    client = RawClient(argv, env)
    try:
        client.initialize(timeout=60)
        return (time.perf_counter() - client.started) * 1000
    finally:
        client.close()


FLOOR_VARIANTS = {"python_pass": ["-c", "pass"], "python_import_broker": ["-c", "import mcpsingleton.broker.process"]}
"""The floor of a first session's addition over the server's own start, whatever our code does: two Python
interpreter starts in series (the shim, then the broker it launches) and the broker's imports, measured as
`python -c pass` + `python -c "import mcpsingleton.broker.process"`, inside the cold loop (same load)."""


def floor_samples(samples: dict[str, list[float]], iteration: int) -> None:
    names = list(FLOOR_VARIANTS) if iteration % 2 == 0 else list(FLOOR_VARIANTS)[::-1]
    for name in names:
        samples.setdefault(name, []).append(time_bare([entry_interpreter(), *FLOOR_VARIANTS[name]], base_env()))


def bench_cold(runs: int, kinds: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"runs": runs, "goal_added_ms": 50}
    floor: dict[str, list[float]] = {}
    for kind in kinds:
        server = server_cmd(kind)
        direct: list[float] = []
        shared: list[float] = []
        for iteration in range(runs):
            for mode in (("direct", "shared") if iteration % 2 == 0 else ("shared", "direct")):
                if mode == "direct":
                    direct.append(time_cold(server, base_env()))
                else:
                    with Home() as home:  # a cold key: no broker, no salt, nothing
                        shared.append(time_cold(shim_cmd(server), home.env))
            floor_samples(floor, iteration)
        result[kind] = {"direct_ms": summary(direct, 1), "first_session_ms": summary(shared, 1),
                        "added_ms_p50": round(summary(shared)["p50"] - summary(direct)["p50"], 1),
                        "samples": {"direct": direct, "first_session": shared}}
        log(f"cold {kind}: direct p50 {result[kind]['direct_ms']['p50']} ms, "
            f"first session p50 {result[kind]['first_session_ms']['p50']} ms")
    stats = {name: summary(values, 1) for name, values in floor.items()}
    floor_ms = stats["python_pass"]["p50"] + stats["python_import_broker"]["p50"]
    result["floor"] = {"ms": stats, "floor_ms_p50": round(floor_ms, 1),
                       "two_interpreters_ms_p50": round(2 * stats["python_pass"]["p50"], 1)}
    log(f"cold floor: python -c pass {stats['python_pass']['p50']} ms + import broker "
        f"{stats['python_import_broker']['p50']} ms = {floor_ms:.1f} ms")
    for kind in kinds:
        added = result[kind]["added_ms_p50"]
        result[kind]["goal_met"] = added <= result["goal_added_ms"]
        result[kind]["added_beyond_floor_ms"] = round(added - floor_ms, 1)
    return result


# ---- request round trips --------------------------------------------------------------------


def roundtrips(client: RawClient, method: str, params: dict[str, Any] | None, count: int) -> list[float]:
    """µs per request/response, one request in flight."""
    body = json.dumps({"method": method, **({"params": params} if params is not None else {})},
                      separators=(",", ":"))[1:]
    template = '{"jsonrpc":"2.0","id":%d,' + body.replace("%", "%%") + "\n"
    samples = []
    for _ in range(count):
        client.next_id += 1
        request_id = client.next_id
        data = (template % request_id).encode()
        started = time.perf_counter_ns()
        client.write(data)
        while True:
            message = json.loads(client.line(30))
            if message.get("id") == request_id and "method" not in message:
                break
        samples.append((time.perf_counter_ns() - started) / 1000)
        if "result" not in message:
            raise RuntimeError(f"{method} failed: {message}")
    return samples


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def bench_roundtrip(kinds: list[str], calls: int, block: int, warmup: int) -> dict[str, Any]:
    result: dict[str, Any] = {"calls_per_mode": calls, "block": block,
                              "note": "through the broker, ping is answered by the broker itself"}
    for kind in kinds:
        server = server_cmd(kind)
        method, params = ECHO_CALL[kind]
        with Home() as home:
            direct = RawClient(server, base_env())
            shared = RawClient(shim_cmd(server), home.env)
            direct.initialize()
            shared.initialize()
            broker = next(p for p in home.processes() if role(p) == "broker")
            backend = next(p for p in home.processes() if role(p) == "backend")
            for client in (direct, shared):
                roundtrips(client, method, params, warmup)
                roundtrips(client, "ping", None, warmup // 2)
            kind_result: dict[str, Any] = {}
            plan = {"tools_call": (method, params, calls), "ping": ("ping", None, calls // 2)}
            for label, (m, p, total) in plan.items():
                samples: dict[str, list[float]] = {"direct": [], "shared": []}
                block_deltas = []
                broker_cpu = backend_cpu = 0.0
                for index in range(max(1, total // block)):
                    medians = {}
                    for mode in (("direct", "shared") if index % 2 == 0 else ("shared", "direct")):
                        client = direct if mode == "direct" else shared
                        before = (cpu_seconds(broker), cpu_seconds(backend)) if mode == "shared" else None
                        values = roundtrips(client, m, p, block)
                        if before is not None:
                            broker_cpu += cpu_seconds(broker) - before[0]
                            backend_cpu += cpu_seconds(backend) - before[1]
                        samples[mode] += values
                        medians[mode] = summary(values)["p50"]
                    block_deltas.append(medians["shared"] - medians["direct"])
                d, s = summary(samples["direct"], 1), summary(samples["shared"], 1)
                count = len(samples["shared"])
                kind_result[label] = {
                    "method": m, "direct_us": d, "shared_us": s,
                    "added_us_p50": round(s["p50"] - d["p50"], 1), "added_us_p99": round(s["p99"] - d["p99"], 1),
                    "ratio_p50": round(s["p50"] / d["p50"], 2), "ratio_p99": round(s["p99"] / d["p99"], 2),
                    "added_us_p50_paired_blocks": summary(block_deltas, 1)["p50"],
                    "broker_cpu_us_per_request": round(broker_cpu / count * 1e6, 1),
                    "backend_cpu_us_per_request_shared": round(backend_cpu / count * 1e6, 1),
                }
                log(f"roundtrip {kind} {label}: direct p50 {d['p50']} µs, shared p50 {s['p50']} µs "
                    f"(+{kind_result[label]['added_us_p50']} µs, ×{kind_result[label]['ratio_p50']}); "
                    f"broker CPU {kind_result[label]['broker_cpu_us_per_request']} µs/request")
            direct.close()
            shared.close()
        result[kind] = kind_result
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="attach,cold,roundtrip")
    parser.add_argument("--attach-runs", type=int, default=50)
    parser.add_argument("--cold-runs", type=int, default=8)
    parser.add_argument("--calls", type=int, default=2000, help="tools/call round trips per mode (ping: half)")
    parser.add_argument("--block", type=int, default=100, help="round trips per interleaved block")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="latency")
    args = parser.parse_args()
    if args.quick:
        args.attach_runs, args.cold_runs, args.calls = 15, 3, 600
    sections = args.only.split(",")
    data: dict[str, Any] = {"benchmark": "latency", "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
                            "machine": machine()}
    if "attach" in sections:
        log(f"warm attach: {args.attach_runs} interleaved runs")
        data["attach"] = bench_attach(args.attach_runs, warmup=3)
        a = data["attach"]
        log(f"warm attach p50 {a['ms']['shim_attach']['p50']} ms vs bare python {a['ms']['bare_python']['p50']} ms "
            f"(+{a['added_ms_p50']} ms); plain venv +{a['plain_added_ms_p50']} ms")
    if "cold" in sections:
        log(f"cold start: {args.cold_runs} interleaved runs")
        data["cold"] = bench_cold(args.cold_runs, ["everything", "fast"])
    if "roundtrip" in sections:
        log(f"round trips: {args.calls} per mode in blocks of {args.block}")
        data["roundtrip"] = bench_roundtrip(["fast", "everything"], args.calls, args.block, warmup=300)
    write_result(args.out, data)


if __name__ == "__main__":
    main()
