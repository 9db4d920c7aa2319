"""Where the time goes: the shim's warm path and the broker's per-message path, with numbers.

    .venv/bin/python bench/bench_profile.py [--quick]

shim     interpreter start-up vs the shim's own imports (interleaved runs of `python -I -S -c pass`,
         `python -c pass`, `python -c "import mcpsingleton.shim.attach"`), `-X importtime` of a real warm
         attach (top modules), and the shim's pure steps (argument parsing, key, paths) timed in-process.
broker   the broker's per-message work timed in-process with the project's own Mux and jsonrpc: a ping
         and a tools/call round trip (lines handed to the mux as the broker's LineReader hands them,
         actions encoded as the broker writes them), and a cProfile of the round trip. (Issue 7's
         one-off A/B experiments — READ_CHUNK, a cached encoder, a line-splitter fast path, a live
         A/B through a sitecustomize overlay — were removed with the classes they patched; their
         results are in bench/README.md.)
memory   what the broker's imports cost in anonymous memory (one interpreter per module).
Writes bench/results/profile.json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import (
    Home,
    RawClient,
    base_env,
    entry_interpreter,
    initialize_line,
    log,
    machine,
    server_cmd,
    shim_cmd,
    summary,
    write_result,
)

# ---- shim -----------------------------------------------------------------------------------


def startup_breakdown(runs: int) -> dict[str, Any]:
    python = entry_interpreter()
    env = base_env()
    variants = {
        "python -I -S -c pass": [python, "-I", "-S", "-c", "pass"],
        "python -c pass": [python, "-c", "pass"],
        "python -c 'import mcpsingleton.shim.attach'": [python, "-c", "import mcpsingleton.shim.attach"],
        "python -c 'import mcpsingleton.broker.process'": [python, "-c", "import mcpsingleton.broker.process"],
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for iteration in range(runs + 2):
        for name in names[iteration % len(names):] + names[:iteration % len(names)]:
            started = time.perf_counter()
            subprocess.run(variants[name], env=env, check=True)
            if iteration >= 2:
                samples[name].append((time.perf_counter() - started) * 1000)
    stats = {k: summary(v, 2) for k, v in samples.items()}
    return {"ms": stats,
            "site_ms_p50": round(stats["python -c pass"]["p50"] - stats["python -I -S -c pass"]["p50"], 2),
            "shim_imports_ms_p50": round(stats["python -c 'import mcpsingleton.shim.attach'"]["p50"]
                                         - stats["python -c pass"]["p50"], 2),
            "broker_imports_ms_p50": round(stats["python -c 'import mcpsingleton.broker.process'"]["p50"]
                                           - stats["python -c pass"]["p50"], 2),
            "broker_importtime_us": broker_importtime()}


def broker_importtime() -> dict[str, int]:
    """-X importtime of the broker's imports: the biggest cumulative entries under mcpsingleton.broker.process."""
    names = ("mcpsingleton.broker.process", "mcpsingleton.mux", "dataclasses", "inspect", "typing",
             "mcpsingleton.broker.backend", "subprocess", "socket", "json", "datetime", "mcpsingleton.broker.eventloop",
             "selectors")
    best: dict[str, int] = {}
    for _ in range(5):  # best of five: noise only adds
        err = subprocess.run([entry_interpreter(), "-X", "importtime", "-c", "import mcpsingleton.broker.process"],
                             env=base_env(), capture_output=True, text=True, check=True).stderr
        for line in err.splitlines():
            if line.startswith("import time:") and "self" not in line:
                _, cumulative, name = line[len("import time:"):].split("|")
                if name.strip() in names:
                    best[name.strip()] = min(best.get(name.strip(), 1 << 60), int(cumulative))
    return best


def importtime_of_attach(everything: list[str]) -> dict[str, Any]:
    """-X importtime of one real warm attach: the slowest imports (self and cumulative µs)."""
    with Home() as home:
        holder = RawClient(shim_cmd(everything), home.env)
        holder.initialize(timeout=60)
        rows: list[tuple[int, int, str]] = []
        for attempt in range(2):  # the first one also writes bytecode caches
            env = {**home.env, "PYTHONPROFILEIMPORTTIME": "1"}
            process = subprocess.Popen(shim_cmd(everything), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, env=env)
            _, err = process.communicate(initialize_line(1), timeout=30)
            if attempt == 1:
                for line in err.decode().splitlines():
                    if line.startswith("import time:") and "|" in line and "self" not in line:
                        own, cumulative, name = line[len("import time:"):].split("|")
                        rows.append((int(own), int(cumulative), name.rstrip()))
        holder.close()
    top_level = [r for r in rows if not r[2].startswith("  ")]
    return {
        "total_us": sum(r[1] for r in top_level),
        "top_level_us": {r[2].strip(): r[1] for r in sorted(top_level, key=lambda r: -r[1])[:8]},
        "top_self_us": {r[2].strip(): r[0] for r in sorted(rows, key=lambda r: -r[0])[:10]},
        "mcpsingleton_us": {r[2].strip(): r[1] for r in rows if r[2].strip().startswith("mcpsingleton")},
    }


def per_call_us(function: Any, count: int, repeats: int = 5) -> float:
    """Best of `repeats` rounds, µs per call: on a shared machine, noise only ever adds time."""
    results = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for index in range(count):
            function(index)
        results.append((time.perf_counter_ns() - started) / count / 1000)
    return round(min(results), 2)


def shim_steps(count: int) -> dict[str, float]:
    from mcpsingleton.common import paths
    from mcpsingleton.shim import attach as shim
    from mcpsingleton.shim import keys

    home = tempfile.mkdtemp(prefix="msb-", dir="/tmp")
    os.environ["MCPSINGLETON_HOME"] = home
    argv = ["--", *server_cmd("everything")]
    directory = paths.ensure_private_dir(paths.runtime_dir())
    salt = keys.user_salt(directory)
    env = dict(os.environ)
    cwd = os.getcwd()
    options = shim.parse_args(argv)
    decision = shim.resolve_scope(options.scope, options.command, options.name, directory, salt)
    client = keys.client_environ()
    result = {
        "parse_args": per_call_us(lambda _: shim.parse_args(argv), count),
        "runtime_dir+ensure_private_dir": per_call_us(lambda _: paths.ensure_private_dir(paths.runtime_dir()), count),
        "user_salt (read)": per_call_us(lambda _: keys.user_salt(directory), count),
        "dict(os.environ)": per_call_us(lambda _: dict(os.environ), count),
        "resolve_scope (cached decision)": per_call_us(
            lambda _: shim.resolve_scope(options.scope, options.command, options.name, directory, salt), count),
        "client_environ": per_call_us(lambda _: keys.client_environ(), count),
        "compute_key": per_call_us(
            lambda _: keys.key_of(
                keys.key_parts(options.command, decision.scope, cwd, env, options.env_keys, salt, client)
            ),
            count,
        ),
        "default_name": per_call_us(lambda _: keys.default_name(options.command), count),
    }
    result["total_us"] = round(sum(result.values()), 1)
    del os.environ["MCPSINGLETON_HOME"]
    shutil.rmtree(home, ignore_errors=True)
    return result


# ---- broker, in-process ---------------------------------------------------------------------

PING = b'{"jsonrpc":"2.0","id":%d,"method":"ping"}'
CALL = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}'
REPLY = b'{"jsonrpc":"2.0","id":%d,"result":{"content":[{"type":"text","text":"hello"}]}}'


def ready_mux() -> Any:
    from mcpsingleton.mux import Mux

    mux = Mux()
    mux.open_session(1)
    mux.from_session(1, b'{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
                        b'"capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}')
    mux.backend_started()
    mux.from_backend(b'{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":'
                     b'{"tools":{}},"serverInfo":{"name":"fast","version":"1"}}}')
    return mux


def message_path() -> tuple[Any, Any]:
    """(ping, tools/call round trip) as the broker does them: the mux on each line, every action encoded."""
    mux = ready_mux()

    def ping(index: int) -> None:
        for action in mux.from_session(1, PING % index):
            b"".join(action.parts())

    def call(index: int) -> None:
        backend_id = 0
        for action in mux.from_session(1, CALL % index):
            b"".join(action.parts())
            backend_id = action.message["id"]
        for action in mux.from_backend(REPLY % backend_id):
            b"".join(action.parts())

    return ping, call


def broker_inprocess(count: int) -> dict[str, Any]:
    ping, call = message_path()
    rounds: dict[str, list[float]] = {"ping_us": [], "tools_call_round_trip_us": []}
    for _ in range(12):
        rounds["ping_us"].append(per_call_us(ping, count // 5, repeats=1))
        rounds["tools_call_round_trip_us"].append(per_call_us(call, count // 5, repeats=1))
    profiler = cProfile.Profile()
    profiler.enable()
    for index in range(count):
        call(index)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    return {"message_path": {k: round(min(v), 2) for k, v in rounds.items()}, "cprofile_tools_call_top": lines[start:]}


ANON = ("import sys\n"
        "for name in sys.argv[1:]: __import__(name)\n"
        "print(next(int(l.split()[1]) for l in open('/proc/self/smaps_rollup') if l.startswith('Pss_Anon')))")


def import_memory(repeats: int) -> dict[str, Any]:
    """Pss_Anon (KiB) of an interpreter after importing a module, minus a bare interpreter's."""
    python = entry_interpreter()
    modules = ["mcpsingleton.broker.process", "dataclasses", "typing", "subprocess", "json", "socket", "datetime",
               "selectors", "ctypes"]

    def anon(*names: str) -> int:
        values = [int(subprocess.run([python, "-c", ANON, *names], capture_output=True, text=True, env=base_env(),
                                     check=True).stdout) for _ in range(repeats)]
        return sorted(values)[len(values) // 2]

    bare = anon()
    others = ["array", "json", "signal", "socket", "struct", "collections", "datetime", "subprocess", "heapq",
              "itertools", "selectors", "ctypes"]
    base = anon(*others)
    return {"bare_interpreter_pss_anon_kib": bare,
            "added_pss_anon_kib": {name: anon(name) - bare for name in modules},
            "broker_stdlib_without_dataclasses_typing_kib": base - bare,
            "dataclasses_on_top_kib": anon(*others, "dataclasses") - base,
            "typing_on_top_kib": anon(*others, "typing") - base,
            "dataclasses_and_typing_on_top_kib": anon(*others, "dataclasses", "typing") - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="profile")
    args = parser.parse_args()
    runs, count = (10, 3000) if args.quick else (30, 20000)
    data: dict[str, Any] = {"benchmark": "profile", "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
                            "machine": machine()}
    log("shim: start-up breakdown")
    data["shim_startup"] = startup_breakdown(runs)
    log("shim: importtime of a warm attach")
    data["shim_importtime"] = importtime_of_attach(server_cmd("everything"))
    log("shim: pure steps in-process")
    data["shim_steps_us"] = shim_steps(count // 10)
    log("broker: in-process message path")
    data["broker_inprocess"] = broker_inprocess(count)
    log("broker: import memory")
    data["broker_import_memory"] = import_memory(3)
    write_result(args.out, data)
    print(json.dumps({k: v for k, v in data.items() if k not in ("machine", "command")}, indent=1))


if __name__ == "__main__":
    main()
