"""Big messages: a `tools/call` echo of 1 MB and 10 MB of text, and a reply of that size to a small
request, direct vs through mcpsingleton, with the fast path (envelope splicing and streaming) on (the
default) and off (`MCPSINGLETON_FAST_PATH_FROM=off`), side by side in one run; plus the small
`tools/call` round trip on server-everything, and a bare relay (bench/relay.py: reads and writes,
nothing parsed) as the floor of any process between a client and its server.

    .venv/bin/python bench/bench_big.py [--quick] [--sizes 1M,10M] [--runs 30] [--before /path/to/mcpsingleton]

Each variant is one long-lived session (its own MCPSINGLETON_HOME, so its own broker); the variants take
turns, one request each, for `--runs` rounds, and the medians are compared. A round trip is timed from
the first byte of the request written to the last byte of the reply read; the client splits lines only
(no JSON decoding), so the time is the pipes', the server's and the broker's. The backend is
bench/fast_server.py (it decodes the request and encodes the reply, as a real server does).
`--before` adds a variant running another installed mcpsingleton (e.g. the main checkout's) for the
code as it was. Writes bench/results/big.json.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import time
from typing import Any

from common import ECHO_CALL, Home, base_env, log, machine, server_cmd, shim_cmd, summary, write_result

SIZES = {"1K": 1 << 10, "16K": 16 << 10, "100K": 100 << 10, "1M": 1 << 20, "10M": 10 << 20}
READ = 1 << 20


class Session:
    """One stdio client process pipe pair; requests written whole, replies read as raw lines."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=env)
        assert self.process.stdin and self.process.stdout
        self.out, self.inp = self.process.stdin.fileno(), self.process.stdout.fileno()
        self.buf = bytearray()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.inp, selectors.EVENT_READ)
        self.next_id = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.out, view):]

    def line(self) -> bytes:
        searched = 0
        while (newline := self.buf.find(b"\n", searched)) < 0:
            searched = len(self.buf)
            if not self.selector.select(60):
                raise TimeoutError(f"no reply within 60 s from {self.process.args}")
            chunk = os.read(self.inp, READ)
            if not chunk:
                raise EOFError(f"{self.process.args} closed its stdout")
            self.buf += chunk
        line = bytes(self.buf[:newline])
        del self.buf[: newline + 1]
        return line

    def call(self, method: str, params: dict[str, Any]) -> tuple[float, bytes]:
        """(µs, reply line) of one request; notifications before its reply are skipped."""
        self.next_id += 1
        marker = b'"id":%d' % self.next_id
        data = json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params},
                          separators=(",", ":")).encode() + b"\n"
        started = time.perf_counter_ns()
        self.write(data)
        while True:
            line = self.line()
            if marker in line[:64] or marker in line[-64:]:
                return (time.perf_counter_ns() - started) / 1000, line

    def initialize(self) -> None:
        params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}
        self.call("initialize", params)
        self.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.selector.close()


def open_variants(server: list[str], before: str | None) -> tuple[dict[str, Session], list[Home]]:
    homes = [Home(), Home()]
    homes[1].env["MCPSINGLETON_FAST_PATH_FROM"] = "off"
    relay = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay.py")]
    sessions = {
        "direct": Session(server, base_env()),
        "relay": Session([*relay, *server], base_env()),
        "fast_path": Session(shim_cmd(server), homes[0].env),
        "no_fast_path": Session(shim_cmd(server), homes[1].env),
    }
    if before:
        homes.append(Home())
        sessions["before"] = Session([before, "run", "--", *server], homes[2].env)
    for session in sessions.values():
        session.initialize()
    return sessions, homes


def measure(sessions: dict[str, Session], method: str, params: dict[str, Any], runs: int,
            expect: int | None) -> dict[str, list[float]]:
    """Interleaved rounds (the order rotates), one request per variant per round, after one warm-up each."""
    names = list(sessions)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(runs + 1):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, line = sessions[name].call(method, params)
            if expect is not None and len(line) < expect:
                raise RuntimeError(f"{name}: reply of {len(line)} bytes, expected ≥ {expect}: {line[:200]!r}")
            if round_number:
                samples[name].append(elapsed)
    return samples


def table(samples: dict[str, list[float]]) -> dict[str, Any]:
    direct = summary(samples["direct"], 1)["p50"]
    result: dict[str, Any] = {}
    for name, values in samples.items():
        stats = summary(values, 1)
        result[name] = {"us": stats, "ratio_p50": round(stats["p50"] / direct, 2),
                        "added_us_p50": round(stats["p50"] - direct, 1)}
    return result


def describe(label: str, result: dict[str, Any]) -> None:
    parts = [f"{name} {r['us']['p50'] / 1000:.2f} ms ×{r['ratio_p50']}" for name, r in result.items()]
    log(f"{label}: " + ", ".join(parts))


def bench_sizes(sizes: list[str], runs: int, before: str | None) -> dict[str, Any]:
    """Per size: the echo (big request, big reply), and a big reply to a small request (`blob`), its id
    written last as TypeScript servers do (the reply is routed by the one request the backend owes)."""
    sessions, homes = open_variants(server_cmd("fast"), before)
    result: dict[str, Any] = {}
    try:
        for size in sizes:
            params = {"name": "echo", "arguments": {"text": "x" * SIZES[size]}}
            result[size] = table(measure(sessions, "tools/call", params, runs, SIZES[size]))
            describe(f"echo {size}", result[size])
            blob = {"name": "blob", "arguments": {"size": SIZES[size], "id_last": True}}
            result[f"reply {size}"] = table(measure(sessions, "tools/call", blob, runs, SIZES[size]))
            describe(f"reply {size}", result[f"reply {size}"])
    finally:
        for session in sessions.values():
            session.close()
        for home in homes:
            home.close()
    return result


def bench_small(calls: int, before: str | None) -> dict[str, Any]:
    sessions, homes = open_variants(server_cmd("everything"), before)
    method, params = ECHO_CALL["everything"]
    try:
        measure(sessions, method, params, 100, None)
        result = table(measure(sessions, method, params, calls, None))
    finally:
        for session in sessions.values():
            session.close()
        for home in homes:
            home.close()
    log("small echo, server-everything: " + ", ".join(f"{n} {r['us']['p50']} µs ×{r['ratio_p50']}"
                                                      for n, r in result.items()))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,10M")
    parser.add_argument("--runs", type=int, default=30, help="rounds per size")
    parser.add_argument("--small-calls", type=int, default=2000, help="rounds of the small echo")
    parser.add_argument("--before", help="another mcpsingleton executable, measured as the variant `before`")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="big")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.small_calls = 8, 300
    data: dict[str, Any] = {"benchmark": "big", "command": " ".join([os.path.relpath(sys.executable), *sys.argv]),
                            "machine": machine(), "before": args.before}
    data["echo"] = bench_sizes(args.sizes.split(","), args.runs, args.before)
    data["small_everything"] = bench_small(args.small_calls, args.before)
    write_result(args.out, data)


if __name__ == "__main__":
    main()
