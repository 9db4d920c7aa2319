"""A small handshake-era MCP stdio server for fault injection (standard library only, starts fast).

Tools: echo, whoami (pid/cwd/env), slow, progress, crash, garbage, sample, log, touch (resource
update), spawn (children), close_stdin (closes its stdin but keeps running), stall (never reads
its stdin again, still running), stderr (writes its text to stderr), big (a `size`-long text, the id
first or, with `id_last`, last; with `gate`, its second half only once that file exists), half (the
first `size` bytes of a reply, then exits), latin1 (a reply holding one raw Latin-1 byte, not UTF-8).
Flags: --fail-start (stderr, exit 2 before reading anything), --grandchild (start a sleeping child at
once, like npx → node trees), --no-exit-on-eof,
--x-mux=SHARING (declares `x-mux` in its capabilities; --x-mux-experimental=SHARING: in
capabilities.experimental), --browser-tools (lists browser-shaped tools, like a browser server),
--deep-tools=N (its tools/list result holds an inputSchema nested N levels deep).
Discovery flags: --initialize-gate=PATH (answer initialize only once PATH exists: a slow start whose
end the test decides), --instructions-env=VAR (the value of $VAR as the InitializeResult's instructions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
write_lock = threading.Lock()
state = {"level": "debug", "subscriptions": set(), "next_id": 0, "waiting": {}}
children: list[subprocess.Popen] = []


def send(message: dict) -> None:
    with write_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def reply(request_id, result: dict) -> None:
    send({"jsonrpc": "2.0", "id": request_id, "result": result})


def text(value: str) -> dict:
    return {"content": [{"type": "text", "text": value}]}


def ask_client(method: str, params: dict) -> dict:
    """Send a server→client request and wait for its answer."""
    state["next_id"] += 1
    request_id = f"srv-{state['next_id']}"
    event = threading.Event()
    state["waiting"][request_id] = [event, None]
    send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
    event.wait(30)
    return state["waiting"].pop(request_id)[1] or {"error": {"message": "timeout"}}


def call_tool(request_id, params: dict) -> None:
    name, args = params.get("name"), params.get("arguments") or {}
    token = (params.get("_meta") or {}).get("progressToken")
    if name == "echo":
        reply(request_id, text(str(args.get("text", ""))))
    elif name == "whoami":
        info = {"pid": os.getpid(), "cwd": os.getcwd(), "env": os.environ.get(args.get("env", ""), None)}
        reply(request_id, text(json.dumps(info)))
    elif name == "slow":
        time.sleep(float(args.get("seconds", 1)))
        reply(request_id, text("slow done"))
    elif name == "progress":
        steps = int(args.get("steps", 3))
        for step in range(1, steps + 1):
            if token is not None:
                send(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/progress",
                        "params": {"progressToken": token, "progress": step, "total": steps},
                    }
                )
            time.sleep(float(args.get("interval", 0.05)))
        reply(request_id, text(f"{steps} steps"))
    elif name == "crash":
        os._exit(3)
    elif name == "garbage":
        with write_lock:
            sys.stdout.write(str(args.get("line", "this is not json")) + "\n")
            sys.stdout.flush()
        reply(request_id, text("after garbage"))
    elif name == "sample":
        answer = ask_client("sampling/createMessage", {"messages": [], "maxTokens": 5})
        reply(request_id, text(json.dumps(answer.get("result") or answer.get("error"))))
    elif name == "roots":
        answer = ask_client("roots/list", {})
        reply(request_id, text(json.dumps(answer.get("result"))))
    elif name == "log":
        level = args.get("level", "info")
        if LEVELS.index(level) >= LEVELS.index(state["level"]):
            send(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/message",
                    "params": {"level": level, "data": args.get("text", "")},
                }
            )
        reply(request_id, text("logged"))
    elif name == "touch":
        send({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": args["uri"]}})
        reply(request_id, text("touched"))
    elif name == "spawn":
        for _ in range(int(args.get("count", 1))):
            children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
        reply(request_id, text(f"{len(children)} children"))
    elif name == "stderr":
        sys.stderr.write(str(args.get("text", "")) + "\n")
        sys.stderr.flush()
        reply(request_id, text("written"))
    elif name == "big":
        body = json.dumps(text(str(args.get("fill", "x")) * int(args.get("size", 1 << 20))))
        head, tail = f'"jsonrpc":"2.0","id":{json.dumps(request_id)}', f'"result":{body}'
        members = (tail, head) if args.get("id_last") else (head, tail)  # TypeScript servers write the id last
        line = "{" + ",".join(members) + "}\n"
        with write_lock:
            if args.get("gate"):  # half of it, then the rest once the test creates the gate file
                sys.stdout.write(line[: len(line) // 2])
                sys.stdout.flush()
                wait_for_path(args["gate"])
            sys.stdout.write(line[len(line) // 2 :] if args.get("gate") else line)
            sys.stdout.flush()
    elif name == "half":
        with write_lock:
            sys.stdout.write('{"result":{"content":[{"type":"text","text":"' + "x" * int(args.get("size", 1 << 18)))
            sys.stdout.flush()
        os._exit(4)
    elif name == "latin1":  # "café" as a Latin-1 file would hold it: one byte that is not UTF-8
        line = b'{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"caf\xe9"}]}}\n'
        with write_lock:
            sys.stdout.flush()
            sys.stdout.buffer.write(line % json.dumps(request_id).encode())
            sys.stdout.buffer.flush()
    elif name == "grow":
        state.setdefault("ballast", []).append(bytearray(int(args.get("mib", 10)) * 1024 * 1024))
        reply(request_id, text("grown"))
    else:
        send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32602, "message": f"unknown tool {name}"}})


def flag_value(name: str) -> str | None:
    return next((arg.split("=", 1)[1] for arg in sys.argv if arg.startswith(name + "=")), None)


def capabilities() -> dict:
    resources = {"subscribe": True, "listChanged": True}
    declared: dict = {"tools": {"listChanged": True}, "logging": {}, "resources": resources}
    if flag_value("--x-mux"):
        declared["x-mux"] = {"sharing": flag_value("--x-mux")}
    if flag_value("--x-mux-experimental"):
        declared["experimental"] = {"x-mux": {"sharing": flag_value("--x-mux-experimental")}}
    return declared


def handle(message: dict) -> None:
    method, request_id = message.get("method"), message.get("id")
    params = message.get("params") or {}
    if method is None:
        waiting = state["waiting"].get(request_id)
        if waiting:
            waiting[1] = message
            waiting[0].set()
        return
    if request_id is None:
        return
    if method == "initialize":
        wait_for_gate()
        reply(
            request_id,
            {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": capabilities(),
                "serverInfo": {"name": "fake-server", "version": "1.0"},
                **instructions(),
            },
        )
    elif method == "tools/list":
        names = ["echo", "whoami", "slow", "progress", "crash", "garbage", "sample", "log", "stderr"]
        if "--browser-tools" in sys.argv:
            names += ["browser_navigate", "browser_click"]
        tools: list[dict] = [{"name": n, "inputSchema": {"type": "object"}} for n in names]
        depth = int(flag_value("--deep-tools") or 0)
        if depth:
            tools[0]["inputSchema"]["default"] = nested(depth)
        reply(request_id, {"tools": tools})
    elif method == "tools/call" and params.get("name") == "close_stdin":  # on the main thread, the only reader
        state["stay"] = True
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the pipe's only read end is gone: writers get EPIPE
        reply(request_id, text("stdin closed"))
    elif method == "tools/call" and params.get("name") == "stall":
        reply(request_id, text("stalled"))
        time.sleep(600)  # on the main thread: nothing reads stdin any more
    elif method == "tools/call":
        threading.Thread(target=call_tool, args=(request_id, params), daemon=True).start()
    elif method == "logging/setLevel":
        state["level"] = params["level"]
        reply(request_id, {})
    elif method == "resources/subscribe":
        state["subscriptions"].add(params["uri"])
        reply(request_id, {})
    elif method == "resources/unsubscribe":
        state["subscriptions"].discard(params["uri"])
        reply(request_id, {})
    elif method == "ping":
        reply(request_id, {})
    else:
        send({"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": "Method not found"}})


def nested(depth: int) -> list:
    """A list `depth` levels deep, built without recursion."""
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def wait_for_gate() -> None:
    wait_for_path(flag_value("--initialize-gate"))


def wait_for_path(path: str | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while path and not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def instructions() -> dict:
    variable = flag_value("--instructions-env")
    return {"instructions": os.environ.get(variable, "")} if variable else {}


def main() -> None:
    if "--fail-start" in sys.argv:
        sys.stderr.write("fake server: boom, config file missing\n")
        sys.exit(2)
    sys.stderr.write(f"fake server {os.getpid()} starting\n")
    sys.setrecursionlimit(10_000)  # json.dumps of --deep-tools
    if "--grandchild" in sys.argv:
        children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]))
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError:  # as the SDKs' servers do: the line is reported and dropped
            sys.stderr.write(f"fake server: unparseable line of {len(line)} bytes\n")
            continue
        handle(message)
    if "--no-exit-on-eof" in sys.argv or state.get("stay"):
        time.sleep(600)


if __name__ == "__main__":
    main()
