"""Where the time goes: the shim's warm path and the broker's per-message path, with numbers.

    .venv/bin/python bench/bench_profile.py [--quick]

shim     interpreter start-up vs the shim's own imports (interleaved runs of `python -I -S -c pass`,
         `python -c pass`, `python -c "import mcpsingleton.shim"`), `-X importtime` of a real warm
         attach (top modules), and the shim's pure steps (argument parsing, key, paths) timed in-process.
broker   the broker's per-message work timed in-process with the project's own classes (LineBuffer,
         Mux, jsonrpc): a ping and a tools/call round trip; the cost of `os.read` with the broker's
         READ_CHUNK (1 MiB) vs 64 KiB; `Broker._finish_ending_sessions` vs attached sessions; a cProfile
         of the round trip; and what-if variants of suspected hot spots (a cached JSON encoder, a
         LineBuffer fast path) measured the same way.
live     the same broker A/B on real processes: stock vs with its reads capped at 64 KiB vs that plus a
         cached encoder (applied by a sitecustomize overlay on PYTHONPATH that patches the running
         broker only — mcpsingleton/ itself is not modified), interleaved round-trip blocks against
         bench/fast_server.py, next to the direct round trip.
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

import psutil
from bench_latency import cpu_seconds, roundtrips
from common import (
    ECHO_CALL,
    Home,
    RawClient,
    base_env,
    entry_interpreter,
    initialize_line,
    log,
    machine,
    role,
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
        "python -c 'import mcpsingleton.shim'": [python, "-c", "import mcpsingleton.shim"],
        "python -c 'import mcpsingleton.broker'": [python, "-c", "import mcpsingleton.broker"],
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
            "shim_imports_ms_p50": round(stats["python -c 'import mcpsingleton.shim'"]["p50"]
                                         - stats["python -c pass"]["p50"], 2),
            "broker_imports_ms_p50": round(stats["python -c 'import mcpsingleton.broker'"]["p50"]
                                           - stats["python -c pass"]["p50"], 2),
            "broker_importtime_us": broker_importtime()}


def broker_importtime() -> dict[str, int]:
    """-X importtime of the broker's imports: the biggest cumulative entries under mcpsingleton.broker."""
    names = ("mcpsingleton.broker", "mcpsingleton.mux", "dataclasses", "inspect", "typing", "mcpsingleton.backend",
             "subprocess", "socket", "json", "datetime", "mcpsingleton.eventloop", "selectors")
    best: dict[str, int] = {}
    for _ in range(5):  # best of five: noise only adds
        err = subprocess.run([entry_interpreter(), "-X", "importtime", "-c", "import mcpsingleton.broker"],
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
    from mcpsingleton import keys, shim

    home = tempfile.mkdtemp(prefix="msb-", dir="/tmp")
    os.environ["MCPSINGLETON_HOME"] = home
    argv = ["--", *server_cmd("everything")]
    directory = keys.ensure_private_dir(keys.runtime_dir())
    salt = keys.user_salt(directory)
    env = dict(os.environ)
    cwd = os.getcwd()
    options = shim.parse_args(argv)
    scope = shim.resolve_scope(options, options.command, cwd, env)
    result = {
        "parse_args": per_call_us(lambda _: shim.parse_args(argv), count),
        "runtime_dir+ensure_private_dir": per_call_us(lambda _: keys.ensure_private_dir(keys.runtime_dir()), count),
        "user_salt (read)": per_call_us(lambda _: keys.user_salt(directory), count),
        "dict(os.environ)": per_call_us(lambda _: dict(os.environ), count),
        "resolve_scope": per_call_us(lambda _: shim.resolve_scope(options, options.command, cwd, env), count),
        "compute_key": per_call_us(
            lambda _: keys.compute_key(options.command, scope, cwd, env, options.env_keys, salt), count),
        "default_name": per_call_us(lambda _: keys.default_name(options.command), count),
    }
    result["total_us"] = round(sum(result.values()), 1)
    del os.environ["MCPSINGLETON_HOME"]
    shutil.rmtree(home, ignore_errors=True)
    return result


# ---- broker, in-process ---------------------------------------------------------------------

PING = b'{"jsonrpc":"2.0","id":%d,"method":"ping"}\n'
CALL = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}\n'
REPLY = b'{"jsonrpc":"2.0","id":%d,"result":{"content":[{"type":"text","text":"hello"}]}}\n'


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


def message_paths(encode: Any, feed_class: Any) -> tuple[Any, Any]:
    """(ping, tools/call round trip) as the broker does them: split lines, run the mux, encode actions."""
    mux = ready_mux()
    session_lines, backend_lines = feed_class(1 << 26), feed_class(1 << 26)

    def ping(index: int) -> None:
        for line in session_lines.feed(PING % index)[0]:
            for action in mux.from_session(1, line):
                encode(action.message)

    def call(index: int) -> None:
        backend_id = 0
        for line in session_lines.feed(CALL % index)[0]:
            for action in mux.from_session(1, line):
                encode(action.message)
                backend_id = action.message["id"]
        for line in backend_lines.feed(REPLY % backend_id)[0]:
            for action in mux.from_backend(line):
                encode(action.message)

    return ping, call


def cached_encoder() -> Any:
    """What-if: one JSONEncoder built once (json.dumps with non-default arguments builds one per call)."""
    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    ascii_encoder = json.JSONEncoder(separators=(",", ":"))

    def encode(message: Any) -> bytes:
        text = encoder.encode(message)
        try:
            return text.encode("utf-8") + b"\n"
        except UnicodeEncodeError:
            return ascii_encoder.encode(message).encode("ascii") + b"\n"

    return encode


def fast_feed_class() -> Any:
    """What-if: LineBuffer with a fast path for the common case, an empty buffer and whole lines."""
    from mcpsingleton.broker import LineBuffer

    class FastLineBuffer(LineBuffer):
        def feed(self, data: bytes) -> tuple[list[bytes], bool]:
            if not self.buf and not self.skipping and data.endswith(b"\n") and len(data) <= self.limit:
                return [line.rstrip(b"\r") for line in data.split(b"\n")[:-1] if line.strip()], False
            return super().feed(data)

    return FastLineBuffer


def read_chunk_cost(count: int) -> dict[str, float]:
    from mcpsingleton import broker

    read_fd, write_fd = os.pipe()
    message = REPLY % 1
    result = {}
    for label, size in ((f"READ_CHUNK={broker.READ_CHUNK}", broker.READ_CHUNK), ("65536", 65536)):
        def one(_: int, size: int = size) -> None:
            os.write(write_fd, message)
            os.read(read_fd, size)

        result[f"write+read, {label}"] = per_call_us(one, count)
    buffer = bytearray(broker.READ_CHUNK)

    def into(_: int) -> None:
        os.write(write_fd, message)
        count = os.readv(read_fd, [buffer])
        bytes(buffer[:count])

    result[f"write+readv into a reused {broker.READ_CHUNK} bytearray"] = per_call_us(into, count)
    os.close(read_fd)
    os.close(write_fd)
    return result


def ending_sessions_cost(count: int) -> dict[str, float]:
    """Broker._finish_ending_sessions runs after every message; it walks every attached session."""
    from mcpsingleton.broker import Broker, Session

    directory = tempfile.mkdtemp(prefix="msb-", dir="/tmp")
    spec = {"key": "k" * 20, "runtime_dir": directory, "log": os.path.join(directory, "bench.log"), "name": "bench",
            "argv": ["true"], "cwd": "/", "env": {}, "scope": "cwd", "linger": 0}
    result = {}
    read_fd, write_fd = os.pipe()
    for sessions in (1, 10, 50):
        broker = Broker(spec, -1)
        for sid in range(sessions):
            broker.sessions[sid] = Session(sid, None, 0, read_fd, write_fd)  # type: ignore[arg-type]
            broker.mux.open_session(sid)
        result[f"{sessions} sessions"] = per_call_us(lambda _, b=broker: b._finish_ending_sessions(), count)
        broker.loop.close()
        broker.log.close()
    os.close(read_fd)
    os.close(write_fd)
    shutil.rmtree(directory, ignore_errors=True)
    return result


def broker_inprocess(count: int) -> dict[str, Any]:
    from mcpsingleton import jsonrpc
    from mcpsingleton.broker import LineBuffer

    variants = {
        "as is": (jsonrpc.encode, LineBuffer),
        "as is, again (noise control)": (jsonrpc.encode, LineBuffer),
        "cached encoder": (cached_encoder(), LineBuffer),
        "cached encoder + LineBuffer fast path": (cached_encoder(), fast_feed_class()),
    }
    functions = {name: message_paths(encode, feed_class) for name, (encode, feed_class) in variants.items()}
    rounds: dict[str, dict[str, list[float]]] = {name: {"ping_us": [], "tools_call_round_trip_us": []}
                                                 for name in variants}
    names = list(functions)
    for index in range(12):  # interleaved rounds in rotating order, best per variant
        for name in names[index % len(names):] + names[:index % len(names)]:
            ping, call = functions[name]
            rounds[name]["ping_us"].append(per_call_us(ping, count // 5, repeats=1))
            rounds[name]["tools_call_round_trip_us"].append(per_call_us(call, count // 5, repeats=1))
    paths = {name: {k: round(min(v), 2) for k, v in values.items()} for name, values in rounds.items()}
    _, call = message_paths(jsonrpc.encode, LineBuffer)
    profiler = cProfile.Profile()
    profiler.enable()
    for index in range(count):
        call(index)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    return {"message_path": paths, "read": read_chunk_cost(count),
            "finish_ending_sessions_us": ending_sessions_cost(count),
            "cprofile_tools_call_top": lines[start:]}


# ---- broker, live A/B -----------------------------------------------------------------------

SITECUSTOMIZE = '''
import os, sys
PATCH = os.environ.get("MSB_PATCH", "")
if any("mcpsingleton.broker" in word for word in getattr(sys, "orig_argv", [])):
    if "read64k" in PATCH:
        _read = os.read
        os.read = lambda fd, n, _read=_read: _read(fd, min(n, 65536))
    if "encoder" in PATCH:
        import json
        from mcpsingleton import jsonrpc
        _encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
        _fallback = jsonrpc.encode
        def encode(message, _encoder=_encoder, _fallback=_fallback):
            try:
                return _encoder.encode(message).encode("utf-8") + b"\\n"
            except UnicodeEncodeError:
                return _fallback(message)
        jsonrpc.encode = encode
'''


RELAY = """
import os, selectors, subprocess, sys
server = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
selector = selectors.DefaultSelector()
selector.register(0, selectors.EVENT_READ, server.stdin.fileno())
selector.register(server.stdout.fileno(), selectors.EVENT_READ, 1)
while True:
    for key, _ in selector.select():
        data = os.read(key.fd, 65536)
        if not data:
            sys.exit(0)
        while data:
            data = data[os.write(key.data, data):]
"""
"""The floor for any extra process in the path: a Python byte relay that parses nothing."""


def broker_live(calls: int, block: int) -> dict[str, Any]:
    server = server_cmd("fast")
    method, params = ECHO_CALL["fast"]
    overlay = tempfile.mkdtemp(prefix="msb-overlay-")
    with open(os.path.join(overlay, "sitecustomize.py"), "w") as handle:
        handle.write(SITECUSTOMIZE)
    patches = {"stock": "", "reads capped at 64 KiB": "read64k", "reads capped + cached encoder": "read64k,encoder"}
    homes = {name: Home() for name in patches}
    clients: dict[str, RawClient] = {"direct": RawClient(server, base_env()),
                                     "byte relay (floor)": RawClient([entry_interpreter(), "-c", RELAY, *server],
                                                                     base_env())}
    brokers = {"byte relay (floor)": psutil.Process(clients["byte relay (floor)"].process.pid)}
    try:
        for name, patch in patches.items():
            env = {**homes[name].env, "PYTHONPATH": overlay, "MSB_PATCH": patch}
            clients[name] = RawClient(shim_cmd(server), env)
        for name, client in clients.items():
            client.initialize()
            if name in patches:
                brokers[name] = next(p for p in homes[name].processes() if role(p) == "broker")
            roundtrips(client, method, params, 300)
        samples: dict[str, list[float]] = {name: [] for name in clients}
        cpu = dict.fromkeys(brokers, 0.0)
        names = list(clients)
        for index in range(max(1, calls // block)):
            for name in names[index % len(names):] + names[:index % len(names)]:
                before = cpu_seconds(brokers[name]) if name in brokers else 0.0
                samples[name] += roundtrips(clients[name], method, params, block)
                if name in brokers:
                    cpu[name] += cpu_seconds(brokers[name]) - before
    finally:
        for client in clients.values():
            client.close()
        for home in homes.values():
            home.close()
        shutil.rmtree(overlay, ignore_errors=True)
    stats = {name: summary(values, 1) for name, values in samples.items()}
    direct = stats["direct"]["p50"]
    return {
        "calls": calls, "block": block, "backend": "bench/fast_server.py", "us": stats,
        "added_us_p50": {name: round(stats[name]["p50"] - direct, 1) for name in brokers},
        "middle_process_cpu_us_per_request": {name: round(cpu[name] / len(samples[name]) * 1e6, 1)
                                              for name in brokers},
    }


# ---- broker memory --------------------------------------------------------------------------

ANON = ("import sys\n"
        "for name in sys.argv[1:]: __import__(name)\n"
        "print(next(int(l.split()[1]) for l in open('/proc/self/smaps_rollup') if l.startswith('Pss_Anon')))")


def import_memory(repeats: int) -> dict[str, Any]:
    """Pss_Anon (KiB) of an interpreter after importing a module, minus a bare interpreter's."""
    python = entry_interpreter()
    modules = ["mcpsingleton.broker", "dataclasses", "typing", "subprocess", "json", "socket", "datetime",
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
    runs, count, calls = (10, 3000, 600) if args.quick else (30, 20000, 2000)
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
    log("broker: live A/B")
    data["broker_live"] = broker_live(calls, 100)
    log("broker: import memory")
    data["broker_import_memory"] = import_memory(3)
    write_result(args.out, data)
    print(json.dumps({k: v for k, v in data.items() if k not in ("machine", "command")}, indent=1))


if __name__ == "__main__":
    main()
