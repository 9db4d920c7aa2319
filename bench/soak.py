"""Soak: N sessions x T minutes of valid and hostile traffic while the broker is restarted and killed.

    .venv/bin/python bench/soak.py --sessions 10 --minutes 10 --chaos     # what issue 19 asks for
    .venv/bin/python bench/soak.py --sessions 4 --minutes 2 --chaos       # a quick look
    options: --lazy N (of the sessions, on a key of their own; default a third), --chaos-mode
    alternate|both|restart|restart-all|kill|kill-backend, --chaos-period SECONDS, --joiners N, --rate MSG/S,
    --skip KIND...

Not part of the test suite. Every session is a real `mcpsingleton run` shim on tests/fake_server.py, with
one writer thread and one reader thread. Two keys: `soak-eager`, and `soak-lazy` whose sessions run with
`--lazy` after a first broker cached the server's discovery (so a fresh broker answers `initialize` and
`tools/list` from the cache and starts the backend only for a tool call).

Traffic, at random per session: echo calls (small; and streamed requests of 100-300 KB, some written in two
halves with a pause, as a slow client does), big streamed replies (1-3 MB, id first or id last), slow calls
(up to 8 s, longer than a handover's 5 s drain), tools/list, ping, resource subscriptions (at most 20 kept;
a `touch` of one must bring its `resources/updated` before the reply, on whichever broker: the waiter
carries them across); and hostile lines (malformed, huge, wrong types, unknown ids, deep nesting, batches,
bad UTF-8, cut and broken big lines).

Chaos (`--chaos`), against the process model of one broker per user (every key a server inside it, one keeper,
a waiter per session, a backend per key): each period, in turn and a quarter period apart, `mcpsingleton restart
NAME` of each key (a server's handover; the broker goes on), a `kill -9` of the one broker (once: it hosts every
key), `mcpsingleton restart --all` (every session to a fresh broker) and a `kill -9` of each key's backend (the
broker restarts it); or `both` (a restart of each key then a kill -9), or one kind only. Before a restart or
kill -9 a staged victim is put in flight on one session of each key struck (issue 19 rows 2-4): before a
restart a 7 s call (longer than the 5 s drain) and a 40 KB line written half before and half after it; before a
kill -9 a 2 MB reply that has streamed half-way. Restarts are orderly handovers, which the sessions' crash-loop
guard does not count; the kills of the broker, one a period, are crashes it counts (4 within 60 s would end the
sessions). After each strike, while the backends' `initialize` is held back (fake_server's `--initialize-gate`,
as at the start), joiners attach: short-lived sessions on each key and on a cold key of their own (there all
but the first are parked while the first backend decides the sharing); each does initialize, tools/list, an
echo and a ping, then closes its stdin and must exit 0.

The accounting: every valid request must be answered exactly once, an error reply counts, silence does
not. Per category: sent, ok, error, unanswered; plus duplicates, replies to another session (misrouted),
wrong content, lost subscriptions, answers later than 30 s, and lines glued together on a session's stdout
(a reply cut by a dying broker with the next message written onto it; a cut reply ended on its own line is
counted, and its request must still be answered). Each unanswered request is given its likely cause: in
flight at a restart or kill -9, written while one was under way, inside an unparseable line, its session
ended, or plain silence.
A monitor samples the broker's RSS and fds per broker lifetime (the pid changes at each kill -9 and restart
--all) and counts our processes. Exit status 0 only when no problem was found: every request answered exactly
once and right, on a clean stdout, no session lost, every joiner exited 0, every strike carried out, no
exception in the soak's own threads, no traceback or internal error in a log, the broker alive at the end and
nothing of ours left after `stop --all`.
Writes bench/results/soak.json (or --out NAME).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from common import Home, broker_log_counts, entry_point, log, machine, processes_of, role, write_result

ROOT = Path(__file__).resolve().parent.parent
FAKE_SERVER = ROOT / "tests" / "fake_server.py"
NAMES = {"eager": "soak-eager", "lazy": "soak-lazy"}
OUR_ID = re.compile(r"[sj]\d+-\d+")
OUR_ID_IN_LINE = re.compile(rb'"id"\s*:\s*"([sj]\d+-\d+)"')
LATE = 30.0
"""An answer later than this is reported (a request parked until something else unparked it). A slow call written
during a restart's drain (7 s with the staged call) waits for it, the held `initialize` (2 s) and itself (8 s)."""
SILENCE_HORIZON = 15.0
"""A request unanswered this long before the next strike was not lost to it: plain silence."""
MIB = 2**20
PROBLEMS_SHOWN = 12
"""Examples kept in the report per kind of problem and cause (the counts are always complete)."""

VALID_MIX = {
    "eager": {"echo": 45, "echo_big": 12, "big_reply": 5, "slow": 3, "list": 15, "ping": 20, "subscribe": 2,
              "touch": 3},
    "lazy": {"echo": 20, "echo_big": 6, "big_reply": 4, "slow": 2, "list": 40, "ping": 28, "subscribe": 2, "touch": 3},
}
"""Weights of the valid kinds per group: lazy sessions mostly ask what the cache can answer."""
SUBSCRIPTIONS_KEPT = 20
"""Resources a session keeps subscribed (its state, which its waiter carries across brokers, stays small)."""


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


# ---- the accounting -------------------------------------------------------------------------------


@dataclass
class Pending:
    """A valid request waiting for its one reply; `expect`: the length of the text a right reply carries."""

    kind: str
    sent_at: float
    expect: int | None = None
    uri: str | None = None  # the resource a subscribe or touch is about
    shape: str = ""  # how the line was written (size, where its id is, in two halves), for the report


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    error: int = 0


@dataclass
class Ledger:
    """Every valid request of one session and what came back for it: the exactly-once bookkeeping.

    Written by the session's writer, read by its reader thread, hence the lock."""

    prefix: str
    group: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: dict[str, Pending] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    tally: dict[str, Tally] = field(default_factory=dict)
    problems: list[dict[str, Any]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    notifications: Counter[str] = field(default_factory=Counter)
    corrupt_ids: set[str] = field(default_factory=set)
    uris_made: int = 0
    per_minute: Counter[int] = field(default_factory=Counter)  # answers by minute of the run: did traffic go on?
    ended_at: float | None = None  # when the session's stdout closed
    subscribed: dict[str, float] = field(default_factory=dict)  # uri → when the subscription was acknowledged
    notified: set[str] = field(default_factory=set)  # uris a resources/updated came for since their last touch

    def sent(self, request_id: str, pending: Pending) -> None:
        with self.lock:
            if pending.kind == "touch":
                self.notified.discard(str(pending.uri))
            self.waiting[request_id] = pending
            self.tally.setdefault(pending.kind, Tally()).sent += 1

    def in_flight(self, since: float = 0.0) -> int:
        """Requests still waiting; with `since`, only those sent after it (a lost one must not stall the session)."""
        with self.lock:
            return sum(1 for p in self.waiting.values() if p.sent_at >= since) if since else len(self.waiting)

    def take(self, item: object, now: float) -> None:
        """One JSON value from the session's stdout: a reply is matched, anything else counted."""
        if not isinstance(item, dict):
            self.problem("not an object", None, now, f"a {type(item).__name__} on stdout")
        elif "method" in item:
            self.notifications[str(item["method"]) + (" (request)" if "id" in item else "")] += 1
            if item["method"] == "notifications/resources/updated":
                self._updated(item.get("params"), now)
        elif isinstance(item.get("id"), str) and OUR_ID.fullmatch(item["id"]):
            self._reply(item["id"], item, now)
        # other replies (id null, "cut", ...) answer hostile lines: nothing to match

    def _reply(self, request_id: str, item: dict[str, Any], now: float) -> None:
        with self.lock:
            pending = self.waiting.pop(request_id, None)
            if pending is None:
                mine = request_id.startswith(self.prefix + "-")
                what = "duplicate" if request_id in self.answered else "misrouted" if not mine else "never sent"
                self.problem(what, request_id, now, json.dumps(item)[:160])
                return
            self.answered.add(request_id)
            self.per_minute[int(now // 60)] += 1
            if now - pending.sent_at > LATE:
                self.problem("late answer", request_id, now, f"{pending.kind} after {now - pending.sent_at:.1f} s")
            tally = self.tally[pending.kind]
            if "error" in item:
                tally.error += 1
                self.errors[error_text(item["error"])] += 1
                return
            tally.ok += 1
            self._subscription_answered(request_id, pending, now)
            wrong = content_problem(item, pending)
            if wrong:
                self.problem("wrong content", request_id, now, f"{pending.kind}: {wrong}")

    # ---- subscriptions: acknowledged ones must survive every broker (issue 19 row 6) ----------------

    def next_subscription(self) -> tuple[str, str]:
        """Subscribe to a new resource, or, with enough kept, unsubscribe the oldest one no touch is waiting on."""
        with self.lock:
            touched = {p.uri for p in self.waiting.values() if p.kind == "touch"}
            oldest = [uri for uri in self.subscribed if uri not in touched]
            if len(self.subscribed) >= SUBSCRIPTIONS_KEPT and oldest:
                del self.subscribed[oldest[0]]  # whatever the answer, it is no longer one to check
                return "resources/unsubscribe", oldest[0]
            self.uris_made += 1
            return "resources/subscribe", f"soak://{self.prefix}/{self.uris_made}"

    def touch_target(self, rng: random.Random) -> str | None:
        with self.lock:
            return rng.choice(list(self.subscribed)) if self.subscribed else None

    def _updated(self, params: object, now: float) -> None:
        uri = str(params.get("uri")) if isinstance(params, dict) else ""
        if not uri.startswith(f"soak://{self.prefix}/"):
            self.problem("update for another session", None, now, f"resources/updated for {uri!r}")
            return
        with self.lock:
            self.notified.add(uri)

    def _subscription_answered(self, request_id: str, pending: Pending, now: float) -> None:
        """A subscribe is acknowledged; a touch of an acknowledged subscription must have brought its update
        first (the backend writes the update before the reply, and both reach the session in that order)."""
        if pending.kind == "subscribe" and pending.uri:
            self.subscribed[pending.uri] = now
        elif pending.kind == "touch" and pending.uri not in self.notified:
            since = self.subscribed.get(str(pending.uri))
            self.problem("subscription lost", request_id, now, f"touched {pending.uri}, subscribed at {since} s: "
                         "no resources/updated came before the reply")

    def corrupt(self, line: bytes, now: float) -> None:
        """An unparseable line on stdout: a reply cut by a dying broker. Ended on its own (row 4: the next broker
        writes a newline, then answers that request with an error) it is counted, not a problem: its request's
        answer is checked like any other. With the next message glued on, it is a problem."""
        ids = [found.decode() for found in OUR_ID_IN_LINE.findall(line)]
        with self.lock:
            self.corrupt_ids.update(ids)
            if line.count(b'{"jsonrpc"') <= 1:  # the fill of big replies never holds one
                self.notifications["(a reply cut by a dying broker, ended on its own line)"] += 1
                return
        head, tail = line[:60], line[-60:].rstrip(b"\n")
        self.problem("lines glued together", ",".join(ids) or None, now, f"{len(line)} bytes {head!r} ... {tail!r}")

    def problem(self, what: str, request_id: str | None, now: float, detail: str) -> None:
        self.problems.append({"what": what, "session": self.prefix, "id": request_id, "at": now, "detail": detail})


def error_text(error: object) -> str:
    """An error reply's code and message, with the parts that vary (pids, numbers) left in: they are short."""
    if not isinstance(error, dict):
        return repr(error)[:100]
    return f"{error.get('code')} {str(error.get('message'))[:100]}"


def content_problem(item: dict[str, Any], pending: Pending) -> str | None:
    """Why a successful reply is not the one this request asked for (echoed text of the wrong length)."""
    if pending.expect is None:
        return None
    try:
        text = item["result"]["content"][0]["text"]
    except (KeyError, IndexError, TypeError):
        return f"no text in {json.dumps(item)[:100]}"
    return None if len(text) == pending.expect else f"text of {len(text)} chars, expected {pending.expect}"


# ---- sessions -------------------------------------------------------------------------------------


class SoakSession:
    """One real shim: requests written by its owner's thread, replies read and matched by a thread of its own."""

    def __init__(self, argv: list[str], prefix: str, group: str, stderr_path: Path, clock: float) -> None:
        with open(stderr_path, "wb") as stderr:  # the waiter's `msg` lines land here; read only on failure
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        self.stderr_path = stderr_path
        self.ledger = Ledger(prefix, group)
        self.clock = clock
        self.count = self.hostile_sent = 0
        self.write_lock = threading.RLock()
        self.eof = self.closing = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def now(self) -> float:
        return round(time.monotonic() - self.clock, 2)

    def write(self, line: bytes, split_pause: float = 0.0) -> bool:
        """One line; with `split_pause`, its first half, a pause, then the rest (a slow client). Several threads
        write to one session (its driver, the staged victims): a line is never interleaved with another."""
        assert self.process.stdin is not None
        cut = len(line) // 2 if split_pause else 0
        try:
            with self.write_lock:
                if cut:
                    self.process.stdin.write(line[:cut])
                    self.process.stdin.flush()
                    time.sleep(split_pause)
                self.process.stdin.write(line[cut:] + b"\n")
                self.process.stdin.flush()
            return True
        except (BrokenPipeError, ValueError):
            return False

    def request(self, kind: str, method: str, params: dict | None = None, **how: Any) -> bool:
        """A valid request, accounted before it is written. `how`: expect (reply text length), id_last (as
        TypeScript clients order members), split_pause (written in two halves), uri (of a subscribe or touch)."""
        with self.write_lock:
            request_id = f"{self.ledger.prefix}-{self.count}"
            self.count += 1
            members: dict[str, Any] = {"method": method, **({"params": params} if params else {})}
            message = {**members, "jsonrpc": "2.0", "id": request_id} if how.get("id_last") else {
                "jsonrpc": "2.0", "id": request_id, **members}
            line = json.dumps(message).encode()
            shape = (f"{len(line)} bytes, id {'last' if how.get('id_last') else 'first'}"
                     + (f", in two halves {how['split_pause']:.2f} s apart" if how.get("split_pause") else ""))
            self.ledger.sent(request_id, Pending(kind, self.now(), how.get("expect"), how.get("uri"), shape))
            return self.write(line, how.get("split_pause", 0.0))

    def initialize(self) -> bool:
        hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "soak", "version": "1"}}
        self.request("initialize", "initialize", hello)
        return self.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode())

    def settle(self, timeout: float) -> bool:
        """Wait until nothing is in flight; whether that happened."""
        deadline = time.monotonic() + timeout
        while self.ledger.in_flight() and not self.eof and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.ledger.in_flight()

    def close(self, timeout: float) -> int | None:
        """End the session as a client does (close its stdin); its exit status, None if it did not exit."""
        assert self.process.stdin is not None
        self.closing = True
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stderr_tail(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-300:].strip()
        except OSError:
            return ""

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                self.ledger.corrupt(line, self.now())
                continue
            for item in message if isinstance(message, list) else [message]:
                self.ledger.take(item, self.now())
        if not self.closing:  # ended by itself, not by our close
            self.ledger.ended_at = self.now()
        self.eof = True


def send_valid(session: SoakSession, kind: str, rng: random.Random) -> bool:
    """One valid request of `kind` (a key of VALID_MIX)."""
    if kind == "subscribe":
        method, uri = session.ledger.next_subscription()
        return session.request("unsubscribe" if method.endswith("unsubscribe") else kind, method, {"uri": uri}, uri=uri)
    if kind == "touch":  # the backend says a subscribed resource changed; nothing subscribed yet: a ping
        target = session.ledger.touch_target(rng)
        if target is not None:
            return session.request(kind, "tools/call", {"name": "touch", "arguments": {"uri": target}}, uri=target)
        kind = "ping"
    if kind in ("list", "ping"):
        return session.request(kind, "tools/list" if kind == "list" else "ping")
    if kind == "slow":
        return session.request(kind, "tools/call", {"name": "slow", "arguments": {"seconds": rng.uniform(0.5, 8)}})
    if kind == "big_reply":
        size, id_last = rng.randint(1 << 20, 3 << 20), rng.random() < 0.5
        arguments = {"size": size, "id_last": id_last, "fill": rng.choice("abc")}
        return session.request(kind, "tools/call", {"name": "big", "arguments": arguments}, expect=size)
    length = rng.choice((1, 100, 10_000)) if kind == "echo" else rng.randint(100_000, 300_000)
    params: dict[str, Any] = {"name": "echo", "arguments": {"text": "x" * length}}
    if rng.random() < 0.2:  # as TypeScript clients send progress: `_meta` last in params
        params["_meta"] = {"progressToken": rng.choice((1, "p"))}
    split = rng.uniform(0.05, 0.3) if kind == "echo_big" and rng.random() < 0.3 else 0.0
    return session.request(kind, "tools/call", params, expect=length, id_last=rng.random() < 0.5, split_pause=split)


@dataclass
class Traffic:
    """What the long-lived sessions send: the mix, the hostile share, the pace and the in-flight window."""

    hostile: float
    rate: float
    window: int
    skip: set[str]

    def drive(self, session: SoakSession, rng: random.Random, stop: threading.Event) -> None:
        """A session's writer loop, until `stop` or its shim is gone."""
        mix = {kind: weight for kind, weight in VALID_MIX[session.ledger.group].items() if kind not in self.skip}
        kinds, weights = list(mix), list(mix.values())
        while not stop.is_set():
            if session.ledger.in_flight(since=session.now() - LATE) >= self.window:
                stop.wait(0.01)  # a bounded window of valid requests in flight, as a client has
                continue
            if rng.random() < self.hostile:
                lines = {k: v for k, v in hostile_lines(rng).items() if k not in self.skip}
                alive = session.write(lines[rng.choice(sorted(lines))])
                session.hostile_sent += 1
            else:
                alive = send_valid(session, rng.choices(kinds, weights)[0], rng)
            if not alive or session.eof:
                return
            stop.wait(rng.expovariate(self.rate) if self.rate else 0)


def joiner_script(session: SoakSession, timeout: float) -> dict[str, Any]:
    """A short-lived session that attaches while the backend decides: handshake, a few requests, then leaves."""
    session.initialize()
    session.request("list", "tools/list")
    session.request("echo", "tools/call", {"name": "echo", "arguments": {"text": "joined"}}, expect=6)
    session.request("ping", "ping")
    settled = session.settle(timeout)
    status = session.close(timeout)
    return {"session": session.ledger.prefix, "settled": settled, "exit": status}


# ---- brokers ---------------------------------------------------------------------------------------


EVERY_KEY = "*"
"""A strike's `name` when it hits the whole broker (kill -9, restart --all): every key in it, fresh ones too."""


@dataclass
class Strike:
    """One chaos event: against one key (its server's restart, its backend's kill) or the whole broker."""

    number: int
    kind: str  # "restart" | "restart --all" | "kill -9" | "kill backend"
    name: str  # a key's name, or EVERY_KEY
    at: float
    old_pid: int | None  # the broker's, or the backend's for "kill backend"
    seconds: float = 0.0
    detail: str = ""

    def hits(self, name: str | None) -> bool:
        return self.name == EVERY_KEY or self.name == name


class Brokers:
    """Finds the broker (the pid changes at each kill -9 and restart --all) and the keys' backends; restarts a
    key's server or everything, kills the broker or a backend."""

    def __init__(self, exe: str, env: dict[str, str]) -> None:
        self.exe, self.env = exe, env

    def records(self) -> list[dict[str, Any]]:
        """`ls --json`: one record per backend slot."""
        try:
            out = subprocess.run([self.exe, "ls", "--json"], capture_output=True, text=True, env=self.env, timeout=30)
            entries = json.loads(out.stdout or "[]")
        except (subprocess.TimeoutExpired, ValueError):
            return []
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []

    def current(self) -> dict[str, int]:
        """Name → the pid of the broker hosting that key (one broker hosts them all)."""
        return {str(e["name"]): int(e["broker_pid"]) for e in self.records() if e.get("broker_pid")}

    def backends(self, name: str) -> list[int]:
        """The pids of the key's running backends."""
        return [int(e["backend_pid"]) for e in self.records() if e.get("name") == name and e.get("backend_pid")]

    def await_broker(self, name: str, timeout: float) -> int | None:
        """The key's broker pid once one runs (after a strike the waiters start the next one)."""
        deadline = time.monotonic() + timeout
        while (pid := self.current().get(name)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        return pid

    @staticmethod
    def kill(pid: int, role: str = "mcpsingleton.broker") -> str:
        """SIGKILL `pid` if its command line still holds `role` (a backend's: fake_server.py)."""
        try:
            if role not in " ".join(psutil.Process(pid).cmdline()):
                return f"pid is no longer {role}"
            os.kill(pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError) as error:
            return f"gone before the kill ({type(error).__name__})"
        return "killed"

    def restart(self, name: str) -> str:
        """`mcpsingleton restart NAME` (a server's handover), or `--all` (every session to a fresh broker): returns
        once the handover is done (after its drain). The detail starts with "restarted" only when it worked."""
        target = ["--all"] if name == EVERY_KEY else [name]
        out = subprocess.run([self.exe, "restart", *target], capture_output=True, text=True, env=self.env, timeout=120)
        said = (out.stdout + out.stderr).strip().replace("\n", " | ")[:200]
        return f"{'restarted' if out.returncode == 0 else 'failed'}: {said} (exit {out.returncode})"


@dataclass
class Lifetime:
    """One broker process as the monitor saw it: (seconds since start, RSS, fds) samples."""

    name: str
    pid: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        rss = [s[1] for s in self.samples]
        fds = [s[2] for s in self.samples]
        quarter = max(1, len(rss) // 4)
        return {
            "name": self.name, "pid": self.pid,
            "seen_s": [self.samples[0][0], self.samples[-1][0]], "samples": len(self.samples),
            "rss_mib": {"first": mib(rss[0]), "max": mib(max(rss)), "last": mib(rss[-1])},
            "rss_max_per_quarter_mib": [mib(max(rss[i : i + quarter])) for i in range(0, len(rss), quarter)][:4],
            "fds": {"first": fds[0], "max": max(fds), "last": fds[-1]},
        }


def mib(value: float) -> float:
    return round(value / MIB, 1)


class Monitor:
    """Samples the broker's RSS and fds (per lifetime) and counts the processes of the soak's home."""

    def __init__(self, brokers: Brokers, home: str, interval: float, clock: float) -> None:
        self.brokers, self.home, self.interval, self.clock = brokers, home, interval, clock
        self.lifetimes: dict[int, Lifetime] = {}
        self.pid: int | None = None
        self.census_max: Counter[str] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        if self.pid is None or not pid_alive(self.pid):
            found = set(self.brokers.current().values())
            self.pid = found.pop() if len(found) == 1 else None  # none yet, or the old one still draining
        at = round(time.monotonic() - self.clock, 1)
        try:
            process = psutil.Process(self.pid) if self.pid is not None else None
            if process is not None:
                rss, fds = process.memory_info().rss, process.num_fds()
                self.lifetimes.setdefault(process.pid, Lifetime("broker", process.pid)).samples.append((at, rss, fds))
        except psutil.Error:
            pass
        roles = Counter(role(p) for p in processes_of(self.home))
        for kind, count in roles.items():
            self.census_max[kind] = max(self.census_max[kind], count)

    def alive(self) -> dict[str, bool]:
        current = self.brokers.current()
        return {name: pid_alive(current[name]) if name in current else False for name in NAMES.values()}


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---- chaos ----------------------------------------------------------------------------------------


class Gate:
    """fake_server's `--initialize-gate`: while the file is missing a starting backend does not answer
    `initialize`, so sessions that attach meanwhile are parked (the backend is still deciding)."""

    def __init__(self, path: Path, hold: float) -> None:
        self.path, self.hold = path, hold

    def close(self) -> None:
        self.path.unlink(missing_ok=True)

    def open_now(self, settle: float) -> None:
        self.path.touch()
        time.sleep(settle)

    def open_later(self) -> None:
        timer = threading.Timer(self.hold, self.path.touch)
        timer.daemon = True
        timer.start()


PLANS = {
    "alternate": ["restart", "kill -9", "restart --all", "kill backend"],
    "both": ["both"],
    "restart": ["restart"],
    "restart-all": ["restart --all"],
    "kill": ["kill -9"],
    "kill-backend": ["kill backend"],
}
"""What each --chaos-mode strikes, in turn. `restart` and `kill backend` strike each key; `kill -9` and `restart
--all` the one broker, once."""
PER_KEY = ("restart", "kill backend")


class Chaos:
    """Restarts and kills on a schedule. Before each strike `stage(kind, name)` puts a victim request in flight on
    each key struck; after it, `join()` attaches joiners while the new backends are held at their `initialize`."""

    def __init__(self, brokers: Brokers, gate: Gate, plan: list[str], every: float, hooks: Any, clock: float) -> None:
        self.brokers, self.gate, self.every, self.hooks, self.clock = brokers, gate, every, hooks, clock
        self.plan = itertools.cycle(plan)
        self.strikes: list[Strike] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        """Strikes on a fixed beat (a restart's drain does not stretch the period); a late one goes at once."""
        beat = time.monotonic()
        while True:
            beat += self.every
            if self.stop.wait(max(0.0, beat - time.monotonic())):
                return
            self.strike(next(self.plan))

    def strike(self, plan: str) -> None:
        self.gate.close()
        kinds = ("restart", "kill -9") if plan == "both" else (plan,)
        for kind in kinds:
            if kind != kinds[0]:  # the kill's staged reply needs the restarted backends up
                self.gate.open_now(settle=3.0)
            for name in NAMES.values() if kind in PER_KEY else (EVERY_KEY,):
                self._one(kind, name)
        self.hooks.join()
        self.gate.open_later()

    def _one(self, kind: str, name: str) -> None:
        """One strike; `at` is the moment of the signal or of the restart command, after the lookups. Every key it
        strikes must be hosted (its sessions re-attached after the last strike), all by the one broker."""
        keys = list(NAMES.values()) if name == EVERY_KEY else [name]
        started = time.monotonic()
        hosts = {key: self.brokers.await_broker(key, 15) for key in keys}
        if len(set(hosts.values())) > 1:  # the old broker may still be answering `status` as it exits
            time.sleep(2)
            hosts = {key: self.brokers.await_broker(key, 15) for key in keys}
        pid = hosts[keys[0]]
        if pid is None or None in hosts.values() or len(set(hosts.values())) > 1:
            self._record(kind, name, started, pid, f"failed: the keys' brokers after 15 s: {hosts}")
            return
        if kind == "kill backend":
            backends = self.brokers.backends(name)
            details = [self.brokers.kill(backend, FAKE_SERVER.name) for backend in backends]
            detail = ", ".join(details) if backends else "idle: no backend ran (a lazy key's, until a tool call)"
            self._record(kind, name, time.monotonic(), backends[0] if backends else None, detail)
            return
        for key in keys:
            self.hooks.stage(kind, key)
        started = time.monotonic()
        detail = self.brokers.kill(pid) if kind == "kill -9" else self.brokers.restart(name)
        self._record(kind, name, started, pid, detail)

    def _record(self, kind: str, name: str, started: float, pid: int | None, detail: str) -> None:
        strike = Strike(len(self.strikes) + 1, kind, name, round(started - self.clock, 2), pid,
                        round(time.monotonic() - started, 2), detail)
        self.strikes.append(strike)
        log(f"strike #{strike.number}: {kind} {name} (pid {pid}) at {strike.at} s: {detail} [{strike.seconds} s]")


# ---- the run --------------------------------------------------------------------------------------


class Soak:
    """The sessions, joiners, monitor and chaos of one run, in one private MCPSINGLETON_HOME."""

    def __init__(self, args: argparse.Namespace, home: Home) -> None:
        self.args, self.home = args, home
        self.exe = entry_point()
        self.clock = time.monotonic()
        self.gate = Gate(Path(home.path) / "initialize-gate", args.hold)
        self.gate.path.touch()
        self.brokers = Brokers(self.exe, home.env)
        self.stop = threading.Event()
        self.sessions: list[SoakSession] = []
        self.joiners: list[SoakSession] = []
        self.joiner_results: list[dict[str, Any]] = []
        self.fresh_keys = 0
        self.threads: list[threading.Thread] = []
        self.thread_errors: list[str] = []  # an exception in a driver, joiner or chaos thread is a problem too
        threading.excepthook = lambda hook: self.thread_errors.append(f"{hook.exc_type.__name__}: {hook.exc_value}")
        self.rng = random.Random(args.seed)
        self.traffic = Traffic(args.hostile, args.rate, args.window, set(args.skip))
        os.environ.update(home.env)  # the Popen'd shims and `ls` inherit the home

    def argv(self, group: str) -> list[str]:
        """The shim's command line: one key per group (`fresh-N`: a cold key for one strike's joiners)."""
        server = [sys.executable, str(FAKE_SERVER), f"--initialize-gate={self.gate.path}", f"--soak-group={group}"]
        options = {"lazy": ["--lazy"], "eager": []}.get(group, ["--linger", "0"])
        return [self.exe, "run", "--name", NAMES.get(group, f"soak-{group}"), *options, "--", *server]

    def spawn(self, group: str, prefix: str) -> SoakSession:
        stderr = Path(self.home.path) / f"{prefix}.stderr"
        return SoakSession(self.argv(group), prefix, group, stderr, self.clock)

    def prime_lazy_cache(self) -> None:
        """One session on the lazy key until its backend answered, then stop that broker: the discovery is
        cached, so the lazy sessions start on a key whose fresh brokers need no backend for the handshake."""
        primer = self.spawn("lazy", "j0")
        primer.initialize()
        primer.request("list", "tools/list")
        primer.request("echo", "tools/call", {"name": "echo", "arguments": {"text": "prime"}}, expect=5)
        if not primer.settle(30):
            raise SystemExit("soak: the lazy key's first backend never answered")
        primer.close(10)
        subprocess.run([self.exe, "stop", NAMES["lazy"]], capture_output=True, env=self.home.env, timeout=60)
        self.joiners.append(primer)

    def start_sessions(self) -> None:
        """The long-lived sessions, started while the gate holds the first backend: the later ones park."""
        self.gate.close()
        lazy = self.args.lazy if self.args.lazy is not None else self.args.sessions // 3
        for number in range(self.args.sessions):
            session = self.spawn("lazy" if number < lazy else "eager", f"s{number}")
            session.initialize()
            self.sessions.append(session)
        self.gate.open_later()
        for session in self.sessions:
            rng = random.Random(self.args.seed * 1000 + len(self.threads))
            self.run_thread(self.traffic.drive, session, rng, self.stop)

    def join(self) -> None:
        """Joiners right after a strike, while the gate holds every starting backend at its `initialize`: on each
        key (they meet the re-attaching sessions in the new broker) and on a cold key of their own (all but the
        first are parked while its first backend decides the sharing)."""
        self.fresh_keys += 1
        for group in (*NAMES, f"fresh-{self.fresh_keys}"):
            for _ in range(self.args.joiners):
                joiner = self.spawn(group, f"j{len(self.joiners) + 1}")
                self.joiners.append(joiner)
                self.run_thread(lambda j=joiner: self.joiner_results.append(joiner_script(j, 60)))

    def stage(self, kind: str, name: str) -> None:
        """Put in flight, on one session of the key, what issue 19 says a strike must not lose: before a restart
        a call longer than the 5 s drain and a 40 KB line half written across the restart; before a kill -9 a
        2 MB reply that has streamed half-way (fake_server's `big` with a gate that never opens)."""
        group = next(g for g, n in NAMES.items() if n == name)
        live = [s for s in self.sessions if s.ledger.group == group and not s.eof]
        if not self.args.staged or not live:
            return
        session = self.rng.choice(live)
        if kind.startswith("restart"):
            slow = {"name": "slow", "arguments": {"seconds": 7}}
            self.run_thread(session.request, "staged_slow_over_drain", "tools/call", slow)
            half = {"name": "echo", "arguments": {"text": "h" * 40_000}}
            self.run_thread(lambda: session.request("staged_half_line", "tools/call", half, expect=40_000,
                                                    split_pause=1.5))
            time.sleep(0.3)
            return
        gate = {"size": 2 << 20, "gate": f"{self.home.path}/never", "fill": "c"}
        session.request("staged_big_cut", "tools/call", {"name": "big", "arguments": gate}, expect=2 << 20)
        time.sleep(0.4)  # the first half streams to the session; the second waits for the gate

    def run_thread(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def run(self) -> dict[str, Any]:
        about = machine()
        self.prime_lazy_cache()
        self.start_sessions()
        monitor = Monitor(self.brokers, self.home.path, self.args.interval, self.clock)
        monitor.thread.start()
        chaos = self.chaos()
        time.sleep(self.args.minutes * 60)
        chaos.stop.set()
        if chaos.thread.is_alive():
            chaos.thread.join()
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=self.args.answer_wait + 30)
        self.wait_for_answers()
        monitor.stop.set()
        monitor.thread.join()
        monitor.sample()
        alive = monitor.alive()
        return self.report(about, chaos.strikes, monitor, alive)

    def chaos(self) -> Chaos:
        plan = PLANS[self.args.chaos_mode]
        chaos = Chaos(self.brokers, self.gate, plan, self.args.chaos_period / len(plan), self, self.clock)
        if self.args.chaos:
            chaos.thread.start()
        return chaos

    def wait_for_answers(self) -> None:
        deadline = time.monotonic() + self.args.answer_wait
        everyone = self.sessions + self.joiners
        while time.monotonic() < deadline and any(s.ledger.in_flight() and not s.eof for s in everyone):
            time.sleep(0.1)

    def report(
        self, about: dict[str, Any], strikes: list[Strike], monitor: Monitor, alive: dict[str, bool]
    ) -> dict[str, Any]:
        lost = [{"session": s.ledger.prefix, "exit": s.process.poll(), "stderr": s.stderr_tail()}
                for s in self.sessions if s.eof or s.process.poll() is not None]
        for session in self.sessions:
            session.close(15)
            session.reader.join(15)  # a reply cut at the very end shows as the last, unterminated line
        everyone = self.sessions + self.joiners
        accounts = accounting(everyone, strikes)
        subprocess.run([self.exe, "stop", "--all"], capture_output=True, env=self.home.env, timeout=120)
        time.sleep(1)
        leftovers = Counter(role(p) for p in processes_of(self.home.path))
        return {
            "machine": about,
            "config": {k: v for k, v in vars(self.args).items() if k != "out"},
            "accounting": accounts,
            "hostile_sent": sum(s.hostile_sent for s in self.sessions),
            "sessions": {
                "long_lived": len(self.sessions), "lost": lost,
                "joiners": len(self.joiner_results),
                "joiners_failed": [j for j in self.joiner_results if not j["settled"] or j["exit"] != 0],
                "joiners_without_result": len(self.joiners) - 1 - len(self.joiner_results),  # (the primer has none)
            },
            "soak_thread_errors": self.thread_errors,
            "chaos": chaos_summary(strikes),
            "brokers": brokers_summary(monitor, alive),
            "processes_max": dict(monitor.census_max),
            "processes_left_after_stop": dict(leftovers),
            "logs": broker_log_counts(self.home.path) | log_findings(self.home.path),
        }


# ---- the report -----------------------------------------------------------------------------------


def accounting(everyone: list[SoakSession], strikes: list[Strike]) -> dict[str, Any]:
    """Per group and kind: sent / ok / error / unanswered; every problem with its request; the causes."""
    by_category: dict[str, dict[str, int]] = {}
    problems: list[dict[str, Any]] = []
    errors: Counter[str] = Counter()
    notifications: Counter[str] = Counter()
    per_minute: Counter[int] = Counter()
    for session in everyone:
        ledger = session.ledger
        group = ("joiner-" if ledger.prefix.startswith("j") else "") + ledger.group.split("-")[0]
        for kind, tally in ledger.tally.items():
            row = by_category.setdefault(f"{group}/{kind}", {"sent": 0, "ok": 0, "error": 0, "unanswered": 0})
            row["sent"] += tally.sent
            row["ok"] += tally.ok
            row["error"] += tally.error
        for request_id, pending in ledger.waiting.items():
            by_category[f"{group}/{pending.kind}"]["unanswered"] += 1
            problems.append(unanswered_problem(request_id, pending, ledger, strikes))
        problems += ledger.problems
        errors.update(ledger.errors)
        notifications.update(ledger.notifications)
        per_minute.update(ledger.per_minute)
    totals = {k: sum(row[k] for row in by_category.values()) for k in ("sent", "ok", "error", "unanswered")}
    problems.sort(key=lambda p: p["at"])
    shown = examples(problems, PROBLEMS_SHOWN)
    return {
        "valid": totals,
        "problems_by_kind": dict(Counter(p["what"] for p in problems)),
        "unanswered_by_cause": dict(Counter(p["cause"] for p in problems if p["what"] == "unanswered")),
        "answered_per_minute": [per_minute[m] for m in range(max(per_minute, default=-1) + 1)],
        "by_category": dict(sorted(by_category.items())),
        "error_replies": dict(errors.most_common(12)),
        "notifications": dict(notifications.most_common(8)),
        "problems": shown,
        "problems_left_out": len(problems) - len(shown),
        "problems_all": problems,
    }


def examples(problems: list[dict[str, Any]], each: int) -> list[dict[str, Any]]:
    """The first `each` problems of every kind and cause, so that a flood of one kind hides no other."""
    seen: Counter[tuple[str, str]] = Counter()
    shown = []
    for problem in problems:
        kind = (problem["what"], problem.get("cause", ""))
        seen[kind] += 1
        if seen[kind] <= each:
            shown.append(problem)
    return shown


def unanswered_problem(request_id: str, pending: Pending, ledger: Ledger, strikes: list[Strike]) -> dict[str, Any]:
    """An unanswered request, with what most likely took its reply: the unparseable line its id was found in, its
    session's end, the next strike on its key (within SILENCE_HORIZON), or the strike under way as it was written."""
    name = NAMES.get(ledger.group, f"soak-{ledger.group}")  # a fresh key: struck only with the whole broker
    mine = [s for s in strikes if s.hits(name)]
    sent = pending.sent_at
    later = next((s for s in mine if sent - 0.05 <= s.at <= sent + SILENCE_HORIZON), None)
    during = next((s for s in mine if s.at < sent <= s.at + s.seconds), None)
    if request_id in ledger.corrupt_ids:
        cause, strike = "its reply is inside an unparseable line", later or during
    elif ledger.ended_at is not None and ledger.ended_at - sent <= SILENCE_HORIZON:
        cause, strike = "its session ended (the shim exited)", later or during
    elif later is not None:
        cause, strike = f"in flight at a {later.kind}", later
    elif during is not None:
        cause, strike = f"written during a {during.kind} (before the old broker exited)", during
    else:
        cause, strike = "silence (no strike within 15 s after it was sent)", None
    near = f"; strike #{strike.number} {strike.kind} {strike.name} at {strike.at} s" if strike else ""
    return {"what": "unanswered", "session": ledger.prefix, "id": request_id, "at": sent,
            "cause": cause, "detail": f"{pending.kind} ({pending.shape}) sent at {sent} s{near}"}


def chaos_summary(strikes: list[Strike]) -> dict[str, Any]:
    restarts = [s.seconds for s in strikes if s.kind == "restart"]
    timing = {"median": round(statistics.median(restarts), 2), "max": max(restarts)} if restarts else {}
    return {
        "strikes": dict(Counter(s.kind for s in strikes)),
        "restart_command_s": timing,
        "failed": [vars(s) for s in strikes if not s.detail.startswith(("killed", "restarted", "idle"))],
    }


def brokers_summary(monitor: Monitor, alive: dict[str, bool]) -> dict[str, Any]:
    """Per broker lifetime, and the trend across the lifetimes of the one broker (first third vs last third,
    medians): growth from one lifetime to the next, or within the longest one, would show here."""
    lifetimes = [life.summary() for life in monitor.lifetimes.values() if life.samples]
    third = max(1, len(lifetimes) // 3)
    trend = {}
    if lifetimes:
        trend = {
            "lifetimes": len(lifetimes),
            "rss_max_mib_first_third_vs_last_third": [
                statistics.median(life["rss_mib"]["max"] for life in lifetimes[:third]),
                statistics.median(life["rss_mib"]["max"] for life in lifetimes[-third:])],
            "fds_last_first_third_vs_last_third": [
                statistics.median(life["fds"]["last"] for life in lifetimes[:third]),
                statistics.median(life["fds"]["last"] for life in lifetimes[-third:])],
            "rss_mib_max_overall": max(life["rss_mib"]["max"] for life in lifetimes),
            "fds_max_overall": max(life["fds"]["max"] for life in lifetimes),
            "longest_lifetime": max(lifetimes, key=lambda life: life["seen_s"][1] - life["seen_s"][0]),
        }
    return {"alive_at_end": alive, "trend": trend, "lifetimes": lifetimes}


def log_findings(home: str) -> dict[str, int]:
    """Lines in the brokers' logs that deserve a look: tracebacks and internal errors."""
    found: Counter[str] = Counter()
    directory = Path(home) / "logs"
    for path in directory.glob("*.log*") if directory.is_dir() else []:
        for line in path.read_text(errors="replace").splitlines():
            found["traceback_lines"] += "Traceback" in line
            found["internal_error_lines"] += "internal error" in line.lower()
    return dict(found)


def findings(report: dict[str, Any]) -> list[str]:
    """Every kind of problem the run found; none: the soak passed (exit status 0)."""
    accounts, sessions, logs = report["accounting"], report["sessions"], report["logs"]
    left = {role: count for role, count in report["processes_left_after_stop"].items() if role != "gone"}
    checks = {
        f"requests: {accounts['problems_by_kind']}": accounts["problems_by_kind"],
        f"{len(sessions['lost'])} long-lived session(s) lost": sessions["lost"],
        f"{len(sessions['joiners_failed'])} joiner(s) failed": sessions["joiners_failed"],
        f"{sessions['joiners_without_result']} joiner(s) without a result": sessions["joiners_without_result"],
        f"{len(report['chaos']['failed'])} strike(s) not carried out": report["chaos"]["failed"],
        f"no broker hosted {report['brokers']['alive_at_end']} at the end": not all(
            report["brokers"]["alive_at_end"].values()),
        f"{logs.get('traceback_lines', 0)} traceback line(s) in the logs": logs.get("traceback_lines"),
        f"{logs.get('internal_error_lines', 0)} internal error line(s) in the logs": logs.get("internal_error_lines"),
        f"left after `stop --all`: {left}": left,
        f"exceptions in the soak's threads: {report['soak_thread_errors'][:3]}": report["soak_thread_errors"],
    }
    return [what for what, found in checks.items() if found]


def headline(report: dict[str, Any]) -> str:
    accounts = report["accounting"]
    valid = accounts["valid"]
    return (f"valid {valid['sent']}: ok {valid['ok']}, error {valid['error']}, unanswered {valid['unanswered']}; "
            f"problems {accounts['problems_by_kind']}; causes {accounts['unanswered_by_cause']}; "
            f"strikes {report['chaos']['strikes']}; lost sessions {len(report['sessions']['lost'])}; "
            f"joiners failed {len(report['sessions']['joiners_failed'])}/{report['sessions']['joiners']}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--lazy", type=int, default=None, help="how many sessions run --lazy (default a third)")
    parser.add_argument("--chaos", action="store_true", help="restart and kill -9 the brokers on a schedule")
    parser.add_argument("--chaos-mode", choices=tuple(PLANS), default="alternate")
    parser.add_argument("--chaos-period", type=float, default=60.0,
                        help="seconds in which each kind strikes once (under 20, the broker is killed more than 3 "
                        "times a minute and the crash-loop guard ends the sessions, by design)")
    parser.add_argument("--joiners", type=int, default=2, help="short-lived sessions per key after each strike")
    parser.add_argument("--hold", type=float, default=2.0, help="seconds a new backend's initialize is held")
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second per session (0: flat out)")
    parser.add_argument("--window", type=int, default=16, help="valid requests in flight per session at most")
    parser.add_argument("--no-staged", dest="staged", action="store_false",
                        help="no staged victims (a slow call, a half line, a cut big reply) at the strikes")
    parser.add_argument("--hostile", type=float, default=0.3, help="share of hostile lines")
    parser.add_argument("--skip", action="append", default=[], help="a hostile or valid kind to leave out")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between monitor samples")
    parser.add_argument("--answer-wait", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="soak", help="result file name under bench/results")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the brokers' logs there before the home is removed")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    with Home() as home:
        report = Soak(args, home).run()
        if args.keep_logs:
            shutil.copytree(Path(home.path) / "logs", args.keep_logs, dirs_exist_ok=True)
    write_result(args.out, report)
    shown = {k: v for k, v in report["accounting"].items() if k != "problems_all"}  # all of them: in the file
    print(json.dumps({"accounting": shown, "sessions": report["sessions"], "chaos": report["chaos"]}, indent=2))
    log(headline(report))
    problems = findings(report)
    for problem in problems:
        log(f"problem: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
