"""A per-key broker of the previous version (wire protocol 1), as far as a shim and the CLI can see one.

`python legacy_broker.py KEY1 RUNTIME_DIR`: holds `KEY1.lock`, listens on `KEY1.sock`, writes `KEY1.json` (no
`protocol` field, as protocol-1 brokers wrote it), and speaks protocol 1: `MCPS1 attach KEY1` + fds → `ok`,
then serves the session itself (initialize, tools/list with one tool named `legacy`, and sends the waiter
a `state` line once the session is initialized); `MCPS1 status` → one record; `MCPS1 restart` → every
waiter is told `reattach`, then it exits; `MCPS1 stop` → every waiter is told `exit 0`, then it exits.
Tests of the upgrade path (point 7 of issue 21) run it: the previous version's code is not installed here.
"""

from __future__ import annotations

import array
import base64
import fcntl
import json
import os
import socket
import sys
import threading

KEY, DIRECTORY = sys.argv[1], sys.argv[2]
BASE = os.path.join(DIRECTORY, KEY)
STATE = {"version": "2025-06-18", "client": "legacy-client", "capabilities": {}, "initialized": True, "modern": False}
waiters: list[socket.socket] = []
clients: list[int] = []


def reply(out: int, message: dict) -> None:
    os.write(out, json.dumps(message).encode() + b"\n")


def serve(conn: socket.socket, stdin: int, stdout: int) -> None:
    """The session's stdio, answered here (a protocol-1 broker would relay it to its backend)."""
    buffered = b""
    while chunk := os.read(stdin, 65536):
        buffered += chunk
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            message = json.loads(line)
            method, ident = message.get("method"), message.get("id")
            if method == "initialize":
                result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                          "serverInfo": {"name": "legacy-broker", "version": "1"}}
                reply(stdout, {"jsonrpc": "2.0", "id": ident, "result": result})
            elif method == "notifications/initialized":
                text = base64.b64encode(json.dumps(STATE).encode()).decode()
                conn.sendall(f"state {text}\n".encode())
            elif method == "tools/list":
                tools = [{"name": "legacy", "inputSchema": {"type": "object"}}]
                reply(stdout, {"jsonrpc": "2.0", "id": ident, "result": {"tools": tools}})
            elif ident is not None:
                reply(stdout, {"jsonrpc": "2.0", "id": ident, "error": {"code": -32601, "message": "legacy"}})


def attach(conn: socket.socket, pid: int, fds: list[int]) -> None:
    conn.sendall(b"ok\n")
    assert conn.recv(1) == b"r"
    waiters.append(conn)
    clients.append(pid)
    threading.Thread(target=serve, args=(conn, fds[0], fds[1]), daemon=True).start()


def status() -> bytes:
    record = {"key": KEY, "name": "legacy", "command": ["legacy-server"], "cwd": "/", "scope": "cwd",
              "broker_pid": os.getpid(), "state": "running", "version": "0.legacy",
              "clients": [{"pid": pid, "client": "legacy-client"} for pid in clients]}
    return json.dumps({"protocol": "1", "backends": [record]}).encode() + b"\n"


def end(line: bytes) -> None:
    for waiter in waiters:
        waiter.sendall(line)
        waiter.close()
    os.unlink(BASE + ".sock")
    os.unlink(BASE + ".json")
    os._exit(0)


def main() -> None:
    lock = os.open(BASE + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(BASE + ".sock")
    listener.listen(16)
    state = {"key": KEY, "name": "legacy", "command": ["legacy-server"], "cwd": "/", "scope": "cwd",
             "broker_pid": os.getpid(), "started_at": "2026-01-01T00:00:00+00:00", "version": "0.legacy"}
    with open(BASE + ".json", "w") as handle:
        json.dump(state, handle)
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        data, ancillary, _, _ = conn.recvmsg(16384, socket.CMSG_SPACE(4 * 4))
        fds = [fd for _, _, payload in ancillary for fd in array.array("i", payload[: len(payload) // 4 * 4])]
        peercred = getattr(socket, "SO_PEERCRED", None)  # Linux; elsewhere `ls` shows pid 0
        pid = int.from_bytes(conn.getsockopt(socket.SOL_SOCKET, peercred, 12)[:4], sys.byteorder) if peercred else 0
        words = data.decode().split()
        if words[:3] == ["MCPS1", "attach", KEY]:
            attach(conn, pid, fds)
        elif words == ["MCPS1", "status"]:
            conn.sendall(status())
            conn.close()
        elif words in (["MCPS1", "restart"], ["MCPS1", "stop"]):
            conn.sendall(b"ok\n")
            conn.close()
            end(b"reattach\n" if words[1] == "restart" else b"exit 0\n")
        else:
            conn.close()  # another protocol's hello: protocol-1 brokers closed such connections unanswered


if __name__ == "__main__":
    main()
