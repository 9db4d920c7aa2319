"""A trivial handshake-era MCP stdio server that answers at once: the backend for overhead and throughput
benchmarks, where the real server's own work must not hide the broker's cost.

Standard library only. Tools: `echo` (returns its `text` argument), `blob` (returns `size` bytes of
text; with `id_last`, the reply's id is written last, as TypeScript servers do). Also answers
initialize, ping, tools/list; notifications are ignored; any other request gets -32601. Exits on
stdin EOF.
"""

from __future__ import annotations

import json
import os
import sys

TOOLS = [{
    "name": "echo",
    "description": "Return the text argument.",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
}, {
    "name": "blob",
    "description": "Return `size` bytes of text.",
    "inputSchema": {"type": "object", "properties": {"size": {"type": "integer"}, "id_last": {"type": "boolean"}}},
}]


def answer(message: dict) -> dict | None:
    method = message.get("method")
    if "id" not in message or method is None:
        return None  # a notification or a response: nothing to say
    request_id = message["id"]
    params = message.get("params") or {}
    if method == "tools/call":
        arguments = params.get("arguments") or {}
        text = "x" * int(arguments.get("size", 0)) if params.get("name") == "blob" else str(arguments.get("text", ""))
        result = {"content": [{"type": "text", "text": text}]}
        if arguments.get("id_last"):
            return {"result": result, "jsonrpc": "2.0", "id": request_id}
        return {"jsonrpc": "2.0", "id": request_id, "result": result}
    if method == "ping":
        return {"jsonrpc": "2.0", "id": request_id, "result": {}}
    if method == "initialize":
        return {"jsonrpc": "2.0", "id": request_id, "result": {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "fast-server", "version": "1"},
        }}
    if method == "tools/list":
        return {"jsonrpc": "2.0", "id": request_id, "result": {"tools": TOOLS}}
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32601, "message": f"Method not found: {method}"}}


def main() -> None:
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    out = sys.stdout.fileno()
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and (reply := answer(message)) is not None:
            data = dumps(reply).encode() + b"\n"
            while data:
                data = data[os.write(out, data):]


if __name__ == "__main__":
    main()
