"""Property test: random interleavings of several sessions against a simulated backend keep the mux honest.

A model of every client and of the backend process checks each message as it is delivered: replies reach
the request that caused them (exact id, exactly once), progress and server requests reach their owner only,
the backend sees unique ids and nothing before its handshake, and everything is answered in the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mux_harness import Harness, init_result, is_notification, is_request

from mcpsingleton.mux import jsonrpc
from mcpsingleton.mux.jsonrpc import Id, Message, id_key

Key = tuple[bool, Id]
URIS = ("file:///a", "file:///a/b", "file:///c")
LEVELS = ("debug", "warning", "error")
KINDS = ("call", "progress", "subscribe", "unsubscribe", "level", "ping")


@dataclass
class Req:
    """A request a client sent, as the client knows it."""

    sid: int
    rid: Id
    nonce: str
    method: str
    token: Id | None = None
    batch: bool = False
    cancelled: bool = False
    replies: int = 0
    answered: bool = False  # by the backend
    late_ok: bool = False  # cancelled while its reply sat in an unfinished batch


@dataclass
class Client:
    sid: int
    sampling: bool
    counters: dict[bool, int] = field(default_factory=lambda: {False: 0, True: 0})
    initialized: bool = False
    left: bool = False
    reqs: dict[Key, Req] = field(default_factory=dict)
    server_requests: dict[int, str] = field(default_factory=dict)  # session-side id -> server nonce

    def handshaking(self) -> bool:
        return any(r.method == "initialize" and not r.replies for r in self.reqs.values())

    def next_id(self, as_str: bool) -> Id:
        """Ints and strings count separately, so a client uses both 1 and "1"."""
        self.counters[as_str] += 1
        n = self.counters[as_str]
        return str(n) if as_str else n


@dataclass
class ServerRequest:
    nonce: str
    routed: int | None  # the one session it must reach; None: the mux must refuse it
    cancelled: bool = False


@dataclass
class Process:
    """One backend process: what it received and still owes, what it asked and still waits for."""

    alive: bool = False
    initialized: bool = False
    initialized_notes: int = 0
    pending: dict[int, Message] = field(default_factory=dict)
    received: set[int] = field(default_factory=set)
    cancelled: set[int] = field(default_factory=set)
    server: dict[Key, ServerRequest] = field(default_factory=dict)


def nonce_of(message: Message) -> str | None:
    params = message.get("params")
    return params.get("nonce") if isinstance(params, dict) else None


def token_of(message: Message) -> Any:
    meta = (message.get("params") or {}).get("_meta") or {}
    return meta.get("progressToken")


def same(a: object, b: object) -> bool:
    """Equal in value and JSON type (1 is not "1", and not True)."""
    return type(a) is type(b) and a == b


def pick(items: list[Any], index: int) -> Any:
    return items[index % len(items)] if items else None


class World:
    """The harness, a model of each client, and a simulated backend process."""

    def __init__(self) -> None:
        self.h = Harness(auto_start=False, auto_initialize=False)
        self.clients: dict[int, Client] = {}
        self.by_nonce: dict[str, Req] = {}
        self.proc = Process()
        self.seen_ids: set[int] = set()
        self.read = 0
        self.serial = 0
        self.answered_tokens: list[tuple[int, str]] = []

    # ---- plumbing ---------------------------------------------------------------------------

    def new_nonce(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    def live(self) -> list[Client]:
        return [c for c in self.clients.values() if not c.left]

    def sync(self) -> dict[int, list[Any]]:
        """Let the backend read what the mux wrote, then check what each session received."""
        while self.read < len(self.h.backend):
            self.read += 1
            self.backend_reads(self.h.backend[self.read - 1])
        got: dict[int, list[Any]] = {}
        for sid in list(self.h.inbox):
            got[sid] = self.h.take(sid)
            client = self.clients[sid]
            assert not client.left, f"session {sid} received {got[sid]} after it left"
            for message in got[sid]:
                for item in message if isinstance(message, list) else [message]:
                    self.session_reads(client, item, isinstance(message, list))
        return got

    def backend_reads(self, message: Message) -> None:
        proc = self.proc
        assert proc.alive, f"written to a backend that is not running: {message}"
        if is_request(message):
            bid = message["id"]
            assert type(bid) is int and bid not in self.seen_ids, f"duplicate or foreign backend id {bid!r}"
            self.seen_ids.add(bid)
            if message["method"] == "initialize":
                assert not proc.initialized, "a second initialize after a successful handshake"
            else:
                assert proc.initialized, f"{message['method']} before the handshake completed"
            proc.pending[bid] = message
            proc.received.add(bid)
        elif is_notification(message):
            if message["method"] == "notifications/initialized":
                assert proc.initialized and proc.initialized_notes == 0
                proc.initialized_notes += 1
            elif message["method"] == "notifications/cancelled":
                assert message["params"]["requestId"] in proc.received
                proc.cancelled.add(message["params"]["requestId"])
        else:
            server = proc.server.pop(id_key(message["id"]), None)
            assert server is not None, f"backend got an answer to no live request of its own: {message}"
            assert not server.cancelled
            if "result" in message:
                assert message["result"] == {"from": server.routed, "nonce": server.nonce}

    def session_reads(self, client: Client, message: Message, in_batch: bool) -> None:
        if is_request(message):
            assert message["method"] == "sampling/createMessage" and client.sampling
            assert message["id"] not in client.server_requests
            client.server_requests[message["id"]] = nonce_of(message)  # type: ignore[assignment]
        elif is_notification(message):
            params = message.get("params") or {}
            if message["method"] == "notifications/progress":
                req = self.by_nonce[params["message"]]
                assert req.sid == client.sid and same(params["progressToken"], req.token)
            elif message["method"] == "notifications/cancelled":
                assert params["requestId"] in client.server_requests
        else:
            req = client.reqs.get(id_key(message["id"])) if jsonrpc.valid_id(message["id"]) else None
            assert req is not None, f"session {client.sid} got a reply to nothing it sent: {message}"
            assert same(message["id"], req.rid) and req.batch == in_batch
            req.replies += 1
            assert req.replies == 1, f"second reply to {req}"
            assert not req.cancelled or req.late_ok, f"reply after cancel: {req}"
            echo = message["result"].get("echo") if "result" in message else (message["error"].get("data"))
            assert echo in (None, req.nonce), f"reply to {req.nonce} carries {echo}"
            if req.method == "initialize" and "result" in message:
                assert message["result"] == init_result()
                client.initialized = True

    # ---- the clients ------------------------------------------------------------------------

    def make_request(self, client: Client, as_str: bool, kind: str, batch: bool = False) -> Message:
        rid = client.next_id(as_str)
        nonce = self.new_nonce(f"s{client.sid}")
        params: dict[str, Any] = {"nonce": nonce}
        method, token = {
            "call": ("tools/call", None),
            "progress": ("tools/call", rid),  # SDKs use their request id as the token
            "subscribe": ("resources/subscribe", None),
            "unsubscribe": ("resources/unsubscribe", None),
            "level": ("logging/setLevel", None),
            "ping": ("ping", None),
            "initialize": ("initialize", None),
        }[kind]
        if token is not None:
            params["_meta"] = {"progressToken": token}
        if kind in ("subscribe", "unsubscribe"):
            params["uri"] = URIS[self.serial % len(URIS)]
        if kind == "level":
            params["level"] = LEVELS[self.serial % len(LEVELS)]
        if kind == "initialize":
            params |= {"protocolVersion": "2025-11-25", "clientInfo": {"name": f"c{client.sid}", "version": "1"}}
            params["capabilities"] = {"sampling": {}} if client.sampling else {}
        req = Req(client.sid, rid, nonce, method, token, batch)
        client.reqs[id_key(rid)] = req
        self.by_nonce[nonce] = req
        return jsonrpc.request(rid, method, params)

    def open(self, sid: int, sampling: bool) -> None:
        client = self.clients.get(sid)
        if client is None:
            client = self.clients[sid] = Client(sid, sampling)
            self.h.perform(self.h.mux.open_session(sid))
        elif client.left or client.initialized or client.handshaking():
            return
        self.h.send(sid, self.make_request(client, False, "initialize"))
        self.h.notify(sid, "notifications/initialized")
        self.sync()

    def request(self, sid: int, as_str: bool, kind: str) -> None:
        client = self.clients.get(sid)
        if client is not None and not client.left:
            self.h.send(sid, self.make_request(client, as_str, kind))
            self.sync()

    def batch(self, sid: int, as_str: bool, size: int) -> None:
        client = self.clients.get(sid)
        if client is not None and not client.left:
            self.h.send(sid, [self.make_request(client, as_str, "progress", batch=True) for _ in range(size)])
            self.sync()

    def cancel(self, sid: int, index: int) -> None:
        client = self.clients.get(sid)
        if client is None or client.left:
            return
        open_reqs = [r for r in client.reqs.values() if not r.replies and not r.cancelled and r.method != "initialize"]
        req = pick(open_reqs, index)
        if req is not None:
            req.cancelled = True
            req.late_ok = req.batch and req.answered
            self.h.notify(sid, "notifications/cancelled", {"requestId": req.rid})
            self.sync()
            self.assert_cancelled_at_backend([req])

    def leave(self, sid: int) -> None:
        client = self.clients.get(sid)
        if client is not None and not client.left:
            client.left = True
            self.h.close(sid)
            self.sync()
            self.assert_cancelled_at_backend(list(client.reqs.values()))

    def assert_cancelled_at_backend(self, reqs: list[Req]) -> None:
        """Whatever of `reqs` the backend is still working on was cancelled there."""
        nonces = {r.nonce for r in reqs}
        working = [bid for bid, m in self.proc.pending.items() if nonce_of(m) in nonces]
        assert set(working) <= self.proc.cancelled, f"backend never told to stop {working}"

    def session_answer(self, sid: int, index: int) -> None:
        client = self.clients.get(sid)
        if client is None or client.left or not client.server_requests:
            return
        our_id = pick(sorted(client.server_requests), index)
        nonce = client.server_requests.pop(our_id)
        live = any(s.nonce == nonce and not s.cancelled for s in self.proc.server.values())
        self.h.send(sid, jsonrpc.result(our_id, {"from": sid, "nonce": nonce}))
        self.sync()
        if live:
            assert nonce not in {s.nonce for s in self.proc.server.values()}, "a live answer never reached the backend"

    # ---- the backend ------------------------------------------------------------------------

    def start(self) -> None:
        if self.h.mux.backend.state == "spawning":
            self.proc = Process(alive=True)
            self.h.start()
            self.sync()

    def settle(self) -> None:
        """Start the backend if the mux asked for one, and let it answer its pending initialize."""
        self.start()
        for bid, request in sorted(self.proc.pending.items()):
            if request["method"] == "initialize":
                self.answer(sorted(self.proc.pending).index(bid), fail=False)

    def crash(self) -> None:
        if self.h.mux.backend.state == "down":
            return
        self.proc = Process()
        self.h.crash("the backend exited with status 1")
        self.sync()
        for client in self.live():
            for req in client.reqs.values():
                assert req.cancelled or req.replies == 1, f"{req} left unanswered by the crash"

    def answer(self, index: int, fail: bool) -> None:
        bid = pick(sorted(self.proc.pending), index)
        if bid is None:
            return
        request = self.proc.pending.pop(bid)
        nonce = nonce_of(request)
        if fail:
            reply = jsonrpc.error(bid, -32000, "backend failed", nonce)
        elif request["method"] == "initialize":
            reply = jsonrpc.result(bid, init_result())
        else:
            reply = jsonrpc.result(bid, {"echo": nonce} if nonce else {})
        if request["method"] == "initialize" and not fail:
            self.proc.initialized = True
        if nonce is not None:
            self.by_nonce[nonce].answered = True
            if token_of(request) is not None:
                self.answered_tokens.append((token_of(request), nonce))
        self.h.from_backend(reply)
        self.sync()

    def progress(self, index: int, stale: bool) -> None:
        if not self.proc.initialized:
            return
        live = [(token_of(m), nonce_of(m)) for m in self.proc.pending.values() if token_of(m) is not None]
        token, nonce = pick(self.answered_tokens if stale else live, index) or (None, None)
        if nonce is None:
            return
        req = self.by_nonce[nonce]
        owner = self.clients[req.sid]
        expected = req.sid if (token, nonce) in live and not req.cancelled and not owner.left else None
        params = {"progressToken": token, "progress": 1, "message": nonce}
        self.h.from_backend(jsonrpc.notification("notifications/progress", params))
        got = self.sync()
        receivers = [sid for sid, messages in got.items() if messages]
        assert receivers == ([expected] if expected is not None else []), (receivers, expected)

    def candidates(self) -> list[int]:
        """Sessions that may have caused a sampling request: initialized, capable, waiting on the backend."""
        pending = {nonce_of(m) for m in self.proc.pending.values()}
        return [
            c.sid
            for c in self.live()
            if c.initialized and c.sampling and any(r.nonce in pending and not r.cancelled for r in c.reqs.values())
        ]

    def sample(self, as_str: bool) -> None:
        if not self.proc.initialized:
            return
        nonce = self.new_nonce("srv")
        bid: Id = nonce if as_str else self.serial
        found = self.candidates()
        routed = found[0] if len(found) == 1 else None
        self.proc.server[id_key(bid)] = ServerRequest(nonce, routed)
        self.h.from_backend(jsonrpc.request(bid, "sampling/createMessage", {"maxTokens": 1, "nonce": nonce}))
        got = self.sync()
        receivers = [sid for sid, messages in got.items() if messages]
        assert receivers == ([routed] if routed is not None else []), (receivers, found)
        assert (id_key(bid) in self.proc.server) == (routed is not None), "refused without an error, or both"

    def server_cancel(self, index: int) -> None:
        live = [(key, s) for key, s in self.proc.server.items() if not s.cancelled]
        chosen = pick(live, index)
        if chosen is None:
            return
        key, server = chosen
        server.cancelled = True
        self.h.from_backend(jsonrpc.notification("notifications/cancelled", {"requestId": key[1]}))
        notes = self.sync().get(server.routed, [])  # type: ignore[arg-type]
        assert len(notes) == 1, f"the backend's cancel reached {server.routed} as {notes}"
        assert self.clients[server.routed].server_requests[notes[0]["params"]["requestId"]] == server.nonce  # type: ignore[index]

    # ---- the end ----------------------------------------------------------------------------

    def drain(self) -> None:
        """The backend answers everything, clients answer what they were asked; then all is answered."""
        for _ in range(50):
            before = (self.read, self.serial, len(self.h.backend), sum(len(c.server_requests) for c in self.live()))
            self.start()
            while self.proc.pending:
                self.answer(0, fail=False)
            for client in self.live():
                while client.server_requests:
                    self.session_answer(client.sid, 0)
            after = (self.read, self.serial, len(self.h.backend), sum(len(c.server_requests) for c in self.live()))
            if after == before:
                break
        unanswered = [s for s in self.proc.server.values() if not s.cancelled]
        assert not unanswered, f"the backend still waits for {unanswered}"
        for client in self.live():
            assert not self.h.mux.busy(client.sid)
            for req in client.reqs.values():
                assert req.replies == 1 or req.cancelled, f"never answered: {req}"


WEIGHTS = {
    "request": 8,
    "answer": 6,
    "settle": 3,
    "progress": 3,
    "sample": 3,
    "cancel": 3,
    "session_answer": 2,
    "batch": 2,
    "open": 1,
    "leave": 2,
    "server_cancel": 1,
    "start": 1,
    "crash": 1,
}
Op = tuple[str, int, bool, int, str]
OPS: st.SearchStrategy[Op] = st.tuples(
    st.sampled_from([name for name, weight in WEIGHTS.items() for _ in range(weight)]),
    st.integers(1, 4),  # session
    st.booleans(),  # string id / sampling capable / string server id
    st.integers(0, 31),  # which pending item
    st.sampled_from(KINDS),
)


def step(world: World, op: Op) -> None:
    """Run one generated operation; each uses the fields it needs."""
    name, sid, flag, index, kind = op
    {
        "request": lambda: world.request(sid, flag, kind),
        "answer": lambda: world.answer(index, fail=index % 8 == 7),
        "settle": world.settle,
        "progress": lambda: world.progress(index, stale=index % 4 == 3),
        "sample": lambda: world.sample(flag),
        "cancel": lambda: world.cancel(sid, index),
        "session_answer": lambda: world.session_answer(sid, index),
        "batch": lambda: world.batch(sid, flag, 1 + index % 3),
        "open": lambda: world.open(sid, flag),
        "leave": lambda: world.leave(sid),
        "server_cancel": lambda: world.server_cancel(index),
        "start": world.start,
        "crash": world.crash,
    }[name]()


@settings(
    max_examples=600,
    deadline=None,
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no explain phase: it is slow here
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    sampling=st.lists(st.booleans(), min_size=2, max_size=4),
    ready_first=st.integers(0, 4).map(lambda n: n > 0),
    ops=st.lists(OPS, min_size=10, max_size=60),
)
def test_random_interleavings_keep_invariants(sampling: list[bool], ready_first: bool, ops: list[Op]) -> None:
    world = World()
    for sid, capable in enumerate(sampling, start=1):
        world.open(sid, capable)
    if ready_first:
        world.settle()
    for op in ops:
        step(world, op)
    world.drain()
