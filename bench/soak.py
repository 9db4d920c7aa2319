"""Soak: N sessions x T minutes of mixed valid and hostile traffic against one broker (not in the test suite).

    .venv/bin/python bench/soak.py [--sessions 10] [--minutes 3] [--server fake|everything] [--skip KIND]...

Every session is a real `mcpsingleton run` shim. Each one sends, at random: valid requests (tools/call
echo, ping, tools/list), and hostile lines — malformed JSON, huge lines, wrong types, responses with
unknown ids, deep nesting, batches, invalid UTF-8. A monitor samples the broker's RSS and open fds.
At the end every valid request must have been answered, the broker must be alive, and the report
gives RSS and fd count (first/last/max, and RSS per quarter of the run: flat after warm-up means no
leak). Exit status 0 when all of that holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
FAKE_SERVER = ROOT / "tests" / "fake_server.py"
EVERYTHING_JS = ROOT / ".cache/npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
ANSWER_WAIT = 30.0


def hostile_lines(rng: random.Random) -> dict[str, bytes]:
    """One line of each hostile kind (none of them is a valid request that must be answered)."""
    return {
        "malformed": b'{"jsonrpc": "2.0", "id": 1, "method": ',
        "huge": b'{"junk": "' + b"z" * rng.randint(1 << 20, 3 << 20) + b'"}',
        "wrong_types": json.dumps({"jsonrpc": "2.0", "id": {"x": 1}, "method": 5, "params": "p"}).encode(),
        "unknown_id": json.dumps({"jsonrpc": "2.0", "id": f"nobody-{rng.random()}", "result": {}}).encode(),
        "deep": b"[" * 5000 + b"]" * 5000,
        "batch": json.dumps([{"jsonrpc": "2.0", "method": "notifications/progress", "params": []}, 7]).encode(),
        "bad_utf8": b'{"jsonrpc": "2.0", "method": "x", "params": {"s": "\xff\xfe"}}',
        # streamed lines (64 KiB or more): cut short, with the id first; and a TypeScript-order end that is broken
        "big_truncated": b'{"jsonrpc":"2.0","id":"cut","method":"tools/call","params":{"name":"echo","arguments":'
        + b'{"text":"' + b"t" * rng.randint(70_000, 300_000),
        "big_bad_tail": b'{"method":"tools/call","params":{"name":"echo","arguments":{"text":"'
        + b"u" * rng.randint(70_000, 300_000) + b'"}},"jsonrpc":"2.0","id":{"no":1}}',
    }


class SoakSession:
    """One shim with a writer (the soak loop) and a reader thread that matches replies to valid requests."""

    def __init__(self, argv: list[str], number: int, seed: int, skip: set[str]) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.number = number
        self.rng = random.Random(seed)
        self.skip = skip
        self.lock = threading.Lock()
        self.waiting: dict[str, float] = {}
        self.sent = self.answered = self.hostile = 0
        self.eof = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def write(self, line: bytes) -> bool:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line + b"\n")
            self.process.stdin.flush()
            return True
        except (BrokenPipeError, ValueError):
            return False

    def request(self, method: str, params: dict | None = None, id_last: bool = False) -> bool:
        """A request that must be answered; `id_last`: written as TypeScript clients do (method, params, id)."""
        request_id = f"s{self.number}-{self.sent}"
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, **({"params": params} if params else {})}
        if id_last:
            message = {"method": method, **({"params": params} if params else {}), "jsonrpc": "2.0", "id": request_id}
        with self.lock:
            self.waiting[request_id] = time.monotonic()
            self.sent += 1
        return self.write(json.dumps(message).encode())

    def initialize(self) -> None:
        hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "soak", "version": "1"}}
        self.request("initialize", hello)
        self.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode())

    def step(self) -> bool:
        """One random message; False once the session's shim is gone."""
        roll = self.rng.random()
        if roll < 0.6:
            text = "x" * self.rng.choice((1, 100, 10_000, 200_000))
            params: dict = {"name": "echo", "arguments": {"message": text, "text": text}}
            if self.rng.random() < 0.2:  # as TypeScript clients send progress: `_meta` last in params
                params["_meta"] = {"progressToken": self.rng.choice((1, "p"))}
            elif self.rng.random() < 0.1:  # a `_meta` key deep in a big request: sent in full
                params["arguments"]["z"] = {"_meta": 1}
            return self.request("tools/call", params, id_last=self.rng.random() < 0.5)
        if roll < 0.7:
            return self.request(self.rng.choice(("ping", "tools/list")))
        kinds = {k: v for k, v in hostile_lines(self.rng).items() if k not in self.skip}
        self.hostile += 1
        return self.write(kinds[self.rng.choice(sorted(kinds))])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            for item in message if isinstance(message, list) else [message]:
                if isinstance(item, dict) and "method" not in item:
                    with self.lock:
                        if self.waiting.pop(str(item.get("id")), None) is not None:
                            self.answered += 1
        self.eof = True

    def unanswered(self) -> int:
        with self.lock:
            return len(self.waiting)


class Monitor:
    """Samples the broker's RSS and open fds every few seconds."""

    def __init__(self, pid: int, interval: float) -> None:
        self.process = psutil.Process(pid)
        self.samples: list[tuple[int, int]] = []
        self.alive = True
        self.stop = threading.Event()
        self.interval = interval
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set() and self.sample():
            self.stop.wait(self.interval)

    def sample(self) -> bool:
        """One sample; False (and `alive` False) once the broker is gone (exited, or a zombie)."""
        try:
            if self.process.status() == psutil.STATUS_ZOMBIE:
                raise psutil.NoSuchProcess(self.process.pid)
            self.samples.append((self.process.memory_info().rss, self.process.num_fds()))
        except psutil.Error:
            self.alive = False
        return self.alive

    def summary(self) -> dict[str, object]:
        rss = [s[0] for s in self.samples]
        fds = [s[1] for s in self.samples]
        mib = lambda b: round(b / 2**20, 1)  # noqa: E731
        quarter = max(1, len(rss) // 4)
        return {
            "rss_mib": {"first": mib(rss[0]), "last": mib(rss[-1]), "max": mib(max(rss))},
            "rss_max_per_quarter_mib": [mib(max(rss[i : i + quarter])) for i in range(0, len(rss), quarter)][:4],
            "fds": {"first": fds[0], "last": fds[-1], "max": max(fds)},
            "samples": len(self.samples),
        }


def server_command(kind: str) -> list[str]:
    if kind == "everything":
        return [shutil.which("node") or "node", str(EVERYTHING_JS), "stdio"]
    return [sys.executable, str(FAKE_SERVER)]


def broker_pid(env: dict[str, str], exe: str) -> int:
    for _ in range(200):
        out = subprocess.run([exe, "ls", "--json"], capture_output=True, text=True, env=env)
        entries = json.loads(out.stdout or "[]")
        if entries:
            return int(entries[0]["broker_pid"])
        time.sleep(0.1)
    raise SystemExit("soak: no broker came up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--server", choices=("fake", "everything"), default="fake")
    parser.add_argument("--skip", action="append", default=[], help="a hostile kind to leave out (e.g. deep)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    exe = shutil.which("mcpsingleton", path=os.path.dirname(sys.executable)) or "mcpsingleton"
    home = tempfile.mkdtemp(prefix="ms-soak-", dir="/tmp")
    env = {**os.environ, "MCPSINGLETON_HOME": home}
    os.environ.update(env)
    argv = [exe, "run", "--name", "soak", "--", *server_command(args.server)]
    sessions = [SoakSession(argv, n, args.seed + n, set(args.skip)) for n in range(args.sessions)]
    for session in sessions:
        session.initialize()
    monitor = Monitor(broker_pid(env, exe), interval=5.0)
    deadline = time.monotonic() + args.minutes * 60
    live = list(sessions)
    while time.monotonic() < deadline and live and monitor.alive:
        session = random.choice(live)
        if not session.step():
            live.remove(session)
        if session.unanswered() > 50:
            time.sleep(0.01)  # keep a bounded window of valid requests in flight per session
    wait_until = time.monotonic() + ANSWER_WAIT
    while time.monotonic() < wait_until and any(s.unanswered() for s in sessions if not s.eof):
        time.sleep(0.1)
    monitor.stop.set()
    monitor.thread.join()
    monitor.sample()  # the last word on whether the broker survived
    report = {
        "sessions": args.sessions,
        "minutes": args.minutes,
        "server": args.server,
        "skipped": args.skip,
        "broker_alive": monitor.alive,
        "valid_sent": sum(s.sent for s in sessions),
        "valid_answered": sum(s.answered for s in sessions),
        "unanswered": sum(s.unanswered() for s in sessions),
        "hostile_sent": sum(s.hostile for s in sessions),
        "sessions_lost": sum(1 for s in sessions if s.eof),
        **monitor.summary(),
    }
    for session in sessions:
        session.process.kill()
    subprocess.run([exe, "stop", "--all"], capture_output=True, env=env)
    shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(report, indent=2))
    healthy = report["broker_alive"] and report["unanswered"] == 0 and report["sessions_lost"] == 0
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
