"""The contracts between our processes, in one place: shim ↔ broker, CLI ↔ broker, waiter ↔ broker.

One broker per user hosts every server key (protocol 2). Every line on its socket starts with a hello
`MCPS<protocol> <command> [args]`:
- `attach KEY [STATE]` with the client's stdin, stdout and stderr as SCM_RIGHTS (older shims: stdin and
  stdout); STATE: a session re-attaching after its broker went away, with the last `state` its waiter was
  sent. Answered `ok` (welcome) or `no <reason>` (refused: the shim prints the reason and exits 1), or
  `spec` when the broker hosts no server for KEY yet: the shim then sends the server's spec as one JSON
  line on the same connection (never on disk: it holds the env) and the broker answers `ok` or `no …`.
  After the welcome the socket carries the waiter's lines (`r` ready, `t NAME` the transport of a session
  that is not a shim's, `x N` its exit status) and the
  broker's (`msg TEXT`; `exit N`: the session ends; `state TEXT`: what to re-attach with, `state -` when
  it is too large to carry; `reattach`: attach to the next broker).
- `status`: answered with one JSON document, `{"protocol": …, "backends": [record, …]}` (every server's).
- `stop [KEY]`: answered `ok`; that server (or, without KEY, every server and the broker) stops in order
  and its sessions end.
- `restart [KEY]`: answered `ok`; that server's sessions (or, without KEY, every session, and the broker
  exits) are handed over: they re-attach, and get a fresh server (from a fresh broker).
A protocol-1 broker (the previous version: one per key, at `KEY.sock`) speaks the same lines without the
KEY arguments and without `spec`.

The shim imports this module on its warm path: nothing heavy at import time (json only inside the
functions that need it).
"""

PROTOCOL = "2"
"""Wire protocol of shim and broker; part of every key, so an upgrade never attaches to an old broker."""
LEGACY_PROTOCOL = "1"
"""The per-key brokers of the previous version: a shim still attaches to one that runs (the upgrade path)."""

SHARED = "shared"
ISOLATED = "isolated"
"""A key's sharing, as the spec carries it and `ls` shows it."""

KEY_ENV = "MCPSINGLETON_KEY"
"""Set in every backend's environment: its key, so `reap` and `ls --all` know what is ours after a crash."""

ATTACH = "attach"
STATUS = "status"
STOP = "stop"
RESTART = "restart"
REATTACH = b"reattach\n"
SPEC = b"spec\n"
"""The broker's answer to `attach` for a key it does not host yet: send the spec line."""
SPEC_LIMIT = 4 * 1024 * 1024
"""Bytes a spec line may take (argv, env); a longer one is refused."""
STATE_LIMIT = 12 * 1024
"""Bytes of an encoded session state the waiter is sent (a hello carries it back, in one read of the listener's).
Beyond it the waiter is sent `state -`: should the broker die, that session ends as one that cannot resume."""
NO_STATE = "-"
WELCOME = b"ok\n"
REFUSAL = b"no "
WAITER_READY = b"r"
WAITER_STATUS = "x "
"""The waiter's `x N` line: how its session ended (0, or 128+N on signal N), sent before it exits."""
WAITER_TRANSPORT = "t "
"""`t NAME` after `r`: the session is not a shim's but reaches us over NAME (`serve`'s HTTP sessions say `t http`).
A broker that does not know the line keeps it with the waiter's other words and ignores it."""
STDIO = "stdio"
HTTP = "http"

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any


def hello(command: str, *args: str, protocol: str = PROTOCOL) -> bytes:
    return " ".join((f"MCPS{protocol}", command, *args)).encode() + b"\n"


def parse_hello(data: bytes) -> list[str] | None:
    """[command, args…] of a hello of our protocol version, else None."""
    words = data.decode("ascii", "replace").split()
    if len(words) < 2 or words[0] != f"MCPS{PROTOCOL}":
        return None
    return words[1:]


def refusal(reason: str) -> bytes:
    return REFUSAL + reason.replace("\n", " ").encode("utf-8", "replace") + b"\n"


def farewell(code: int, message: str | None) -> bytes:
    """What the broker tells a session's waiter when it ends the session: print `message`, exit `code`."""
    return ((f"msg mcpsingleton: {message}\n" if message else "") + f"exit {code}\n").encode("utf-8", "replace")


def state_line(state: "dict[str, Any] | None") -> bytes:
    """`state TEXT`: the session's state as base64 of compact JSON (one word: the hello carries it back)."""
    import base64
    import json

    text = base64.b64encode(json.dumps(state, separators=(",", ":")).encode()).decode("ascii")
    return f"state {text if len(text) <= STATE_LIMIT else NO_STATE}\n".encode()


def decode_state(text: str) -> "dict[str, Any] | None":
    """The state a re-attaching session brought; None when it is not one (client data: never trusted)."""
    import base64
    import binascii
    import json

    try:
        state = json.loads(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error):
        return None
    return state if isinstance(state, dict) else None


FIELDS: "dict[str, Any]" = {
    "key": "",
    "name": "?",
    "command": [],
    "cwd": "",
    "scope": "",
    "sharing": "shared",
    "policy": "",
    "broker_pid": 0,
    "slot": 1,
    "backend_pid": None,
    "clients": [],
    "state": "starting",
    "started_at": "",
    "restarts": 0,
    "limit_restarts": 0,
    "max_memory": None,
    "max_procs": None,
    "linger_seconds": 0.0,
    "requests": 0,
    "errors": 0,
    "dropped": 0,
    "rejected": 0,
    "internal_errors": 0,
    "backend_write_failures": 0,
    "spawn_failures": 0,
    "backpressure_pauses": 0,
    "stderr_dropped": 0,
    "budget_refusals": 0,
    "budget": None,
    "config_error": None,
    "last_error": None,
    "sessions_refused": 0,
    "log_lines_dropped": 0,
    "version": "?",
}
"""Every field of a status record, in `ls --json` order, with its default."""


class BackendStatus:
    """One backend as its broker reports it (`ls --json` adds memory_bytes and processes).

    A plain class with slots, not a dataclass: the broker runs one per server and imports stay light.
    Unknown fields from a newer broker are ignored; missing ones take their defaults.
    """

    __slots__ = tuple(FIELDS)
    key: str
    name: str
    command: list[str]
    cwd: str
    scope: str
    sharing: str
    policy: str
    broker_pid: int
    slot: int
    """Which of its broker's backends this is (a broker runs one per isolated session or per set of roots)."""
    backend_pid: int | None
    clients: "list[dict[str, Any]]"
    """{pid, client, attached_at, transport} per attached session (transport: `stdio`, or `http` for `serve`'s)."""
    state: str
    """idle|starting|running|lingering|restarting|stopping (lifecycle.SHOWN_STATES)."""
    started_at: str
    restarts: int
    limit_restarts: int
    """Restarts because the tree outgrew --max-memory / --max-procs."""
    max_memory: int | None
    max_procs: int | None
    linger_seconds: float
    requests: int
    errors: int
    """Error replies the mux sent to sessions."""
    dropped: int
    """Lines the mux dropped (unknown ids, late replies, malformed backend output)."""
    rejected: int
    """Session lines refused (malformed JSON, too deep, not JSON-RPC): answered -32700/-32600."""
    internal_errors: int
    """Inputs whose handling raised: answered -32603, logged; each one is a bug to report."""
    backend_write_failures: int
    """The backend stopped taking input (EPIPE on its stdin): each one ended in a restart."""
    spawn_failures: int
    """Spawning the backend failed (not executable, out of fds …)."""
    backpressure_pauses: int
    """Times the sessions were paused because the backend left too much input unread."""
    stderr_dropped: int
    """Bytes of an isolated backend's stderr not copied to its session's stderr (it was not being read)."""
    budget_refusals: int
    """Starts of this backend the [budget] refused (the requests that needed it got an error)."""
    budget: dict[str, int | None] | None
    """The user's [budget] and what of it the broker's backends use (`budget.Usage.report`), None without one:
    {max_backends, max_memory_bytes (None where unset), backends (running), memory_bytes (PSS of their
    trees; None unless max_memory is set)}."""
    last_error: str | None
    """When (UTC) and why a backend of this slot was last lost or could not start; secret values masked."""
    config_error: str | None
    """Why config.toml was ignored when the decision was made, if it was."""
    sessions_refused: int
    """Sessions refused because the broker was out of file descriptors."""
    log_lines_dropped: int
    version: str

    def __init__(self, **fields: "Any") -> None:
        for name in self.__slots__:
            default = FIELDS[name]
            value = fields.get(name, default)
            if default is not None and not isinstance(value, type(default)) and not _is_number_pair(default, value):
                value = default  # a field of the wrong type from an unknown broker is not trusted
            if name == "budget":
                value = _checked_budget(value)
            setattr(self, name, list(value) if isinstance(value, list) else value)

    def to_json(self) -> "dict[str, Any]":
        return {name: getattr(self, name) for name in self.__slots__}


BUDGET_FIELDS = ("max_backends", "max_memory_bytes", "backends", "memory_bytes")


def _checked_budget(value: object) -> dict[str, int | None] | None:
    """A record's `budget` as `ls` and `metrics` may read it: every field a whole number or None, else None."""
    if not isinstance(value, dict):
        return None
    fields = {name: value.get(name) for name in BUDGET_FIELDS}
    numbers = all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in fields.values())
    return fields if numbers else None


def _is_number_pair(default: object, value: object) -> bool:
    return isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)


def encode_status(backends: list[BackendStatus]) -> bytes:
    import json

    return json.dumps({"protocol": PROTOCOL, "backends": [b.to_json() for b in backends]}).encode() + b"\n"


def decode_status(reply: bytes) -> list[BackendStatus] | None:
    """The records of a `status` reply; None when it is not one (an older broker's flat record is one)."""
    import json

    try:
        document = json.loads(reply)
    except ValueError:
        return None
    if isinstance(document, dict) and isinstance(document.get("backends"), list):
        records = document["backends"]
    elif isinstance(document, dict) and isinstance(document.get("key"), str):
        records = [document]
    else:
        return None
    return [BackendStatus(**record) for record in records if isinstance(record, dict)]
