"""Routing one big JSON-RPC response: what it costs to change its id, by JSON approach.

    .venv/bin/python bench/bench_json.py [--quick] [--sizes 1K,16K,100K,1M,10M]

The broker's job on a backend response is to put the session's own id back. Today it decodes the
whole line and encodes it again (`jsonrpc.parse` + `jsonrpc.encode`). Side by side, interleaved, on
`tools/call` results of each size whose content is a text (source code: newlines, quotes), a JSON
document serialized into a text (what many servers return: thousands of escaped quotes), the same
with a quoted word in every record (`json-in-json`: text escaped twice over) or a base64 image,
keys in the order the TypeScript SDK writes them (`result` before `id`, so the whole result must be
skipped to reach the id):

stdlib      json.loads, id replaced in a copy, json.dumps(separators, ensure_ascii=False).encode()
orjson      orjson.loads + orjson.dumps                        (bench-only install)
msgspec     msgspec.json.decode + encode                       (bench-only install)
msgspec-raw msgspec.json.decode(type=dict[str, Raw]): top-level values left raw, id replaced, encode
envelope    mcpsingleton.mux.envelope.scan + replace_id: no decoding of the result (stdlib only)

Time: median of interleaved repetitions. Memory: tracemalloc peak above the input, one run each.
orjson and msgspec are not dependencies: `pip install orjson msgspec` into .venv for this bench; a
missing one is reported as such. Writes bench/results/json.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import ROOT, log, machine, summary, write_result

from mcpsingleton.mux import envelope

SIZES = {"1K": 1024, "16K": 16 * 1024, "100K": 100 * 1024, "1M": 1024 * 1024, "10M": 10 * 1024 * 1024}
PAYLOADS = ("text", "json-text", "json-in-json", "image")
SESSION_ID = "session-7:42"
BACKEND_ID = 1042

Codec = Callable[[bytes], bytes]


# ---- payloads ---------------------------------------------------------------------------------


def _source_text(size: int) -> str:
    source = "".join(path.read_text() for path in sorted((ROOT / "mcpsingleton").glob("*.py")))
    return (source * (size // len(source) + 1))[:size]


def _json_text(size: int, note: str) -> str:
    rng = random.Random(7)
    rows, total = [], 0
    while total < size:
        rows.append({"id": len(rows), "name": f"item {rng.randrange(10**6)}", "tags": ["a", "b"], "note": note})
        total += 70
    return json.dumps({"rows": rows})[:size]


def _image(size: int) -> str:
    return base64.b64encode(random.Random(7).randbytes(size * 3 // 4)).decode()


def response_line(kind: str, size: int) -> bytes:
    """A tools/call response from a backend, keys in the TypeScript SDK's order (result, jsonrpc, id)."""
    if kind == "image":
        content = {"type": "image", "data": _image(size), "mimeType": "image/png"}
    else:
        text = {"text": _source_text, "json-text": lambda n: _json_text(n, "fine"),
                "json-in-json": lambda n: _json_text(n, 'said "ok"')}[kind](size)
        content = {"type": "text", "text": text}
    message = {"result": {"content": [content], "isError": False}, "jsonrpc": "2.0", "id": BACKEND_ID}
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


# ---- the approaches ---------------------------------------------------------------------------


def stdlib(line: bytes) -> bytes:
    reply = dict(json.loads(line))
    reply["id"] = SESSION_ID
    return json.dumps(reply, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def by_envelope(line: bytes) -> bytes:
    """The fast path, and the full parser when the envelope is not certain (as the router will do)."""
    found = envelope.scan(line)
    if found is None or found.id_span is None:
        return stdlib(line)
    return envelope.replace_id(line, found.id_span, envelope.encode_id(SESSION_ID))


def optional_codecs() -> dict[str, Codec | str]:
    """The libraries' codecs, or why one is missing."""
    codecs: dict[str, Codec | str] = {}
    try:
        import orjson

        def with_orjson(line: bytes) -> bytes:
            reply = orjson.loads(line)
            reply["id"] = SESSION_ID
            return orjson.dumps(reply)

        codecs["orjson"] = with_orjson
    except ImportError:
        codecs["orjson"] = "not installed (pip install orjson)"
    try:
        import msgspec

        raw_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
        decoder, encoder = msgspec.json.Decoder(), msgspec.json.Encoder()
        raw_id = msgspec.Raw(json.dumps(SESSION_ID).encode())

        def with_msgspec(line: bytes) -> bytes:
            reply = decoder.decode(line)
            reply["id"] = SESSION_ID
            return encoder.encode(reply)

        def with_msgspec_raw(line: bytes) -> bytes:
            reply = raw_decoder.decode(line)
            reply["id"] = raw_id
            return encoder.encode(reply)

        codecs["msgspec"] = with_msgspec
        codecs["msgspec-raw"] = with_msgspec_raw
    except ImportError:
        codecs["msgspec"] = codecs["msgspec-raw"] = "not installed (pip install msgspec)"
    return codecs


def approaches() -> tuple[dict[str, Codec], dict[str, str]]:
    usable: dict[str, Codec] = {"stdlib": stdlib}
    missing: dict[str, str] = {}
    for name, codec in optional_codecs().items():
        if isinstance(codec, str):
            missing[name] = codec
        else:
            usable[name] = codec
    usable["envelope"] = by_envelope
    return usable, missing


# ---- measuring --------------------------------------------------------------------------------


def check(name: str, codec: Codec, line: bytes) -> None:
    """Every approach must yield the same message with the session's id."""
    expected = json.loads(line)
    expected["id"] = SESSION_ID
    if json.loads(codec(line)) != expected:
        raise SystemExit(f"bench: {name} changed the message")


def repetitions(size: int, quick: bool) -> int:
    runs = max(5, min(400, (40 * 1024 * 1024) // size))
    return max(5, runs // 4) if quick else runs


def time_interleaved(codecs: dict[str, Codec], line: bytes, runs: int) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU milliseconds per call; CPU time is what a busy machine's other processes do not inflate."""
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in codecs}
    names = list(codecs)
    for run in range(runs):
        for name in names[run % len(names) :] + names[: run % len(names)]:
            started, started_cpu = time.perf_counter(), time.thread_time()
            codecs[name](line)
            times[name]["cpu"].append((time.thread_time() - started_cpu) * 1e3)
            times[name]["wall"].append((time.perf_counter() - started) * 1e3)
    return times


def peak_memory(codec: Codec, line: bytes) -> int:
    """Bytes allocated at the peak of one call, beyond what was live before it."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    output = codec(line)
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    del output
    return peak


def measure(kind: str, size_name: str, codecs: dict[str, Codec], quick: bool) -> dict[str, Any]:
    line = response_line(kind, SIZES[size_name])
    for name, codec in codecs.items():
        check(name, codec, line)
    times = time_interleaved(codecs, line, repetitions(len(line), quick))
    row: dict[str, Any] = {"payload": kind, "size": size_name, "bytes": len(line),
                           "envelope_certain": envelope.scan(line) is not None}
    for name, codec in codecs.items():
        row[name] = {"ms": summary(times[name]["wall"], 4), "cpu_ms": summary(times[name]["cpu"], 4),
                     "peak_bytes": peak_memory(codec, line)}
    return row


def table(rows: list[dict[str, Any]], names: list[str], column: str) -> str:
    """One Markdown table: per payload and size, the p50 of `column` ("ms" wall, "cpu_ms") and the peak."""
    head = "| payload | size | " + " | ".join(names) + " | " + " | ".join(f"{n} peak MiB" for n in names) + " |"
    lines = [head, "|---|---:|" + "---:|" * (2 * len(names))]
    for row in rows:
        cells = [f"{row[n][column]['p50']:.3f}" for n in names]
        cells += [f"{row[n]['peak_bytes'] / 1024 / 1024:.2f}" for n in names]
        certain = "" if row["envelope_certain"] else " (envelope: full parser)"
        lines.append(f"| {row['payload']}{certain} | {row['size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--out", default="json")
    args = parser.parse_args()
    info = machine()
    codecs, missing = approaches()
    rows = []
    for size_name in args.sizes.split(","):
        for kind in PAYLOADS:
            log(f"{kind} {size_name}")
            rows.append(measure(kind, size_name, codecs, args.quick))
    names = list(codecs)
    markdown = "CPU ms p50\n\n" + table(rows, names, "cpu_ms") + "\n\nwall ms p50\n\n" + table(rows, names, "ms")
    print(markdown)
    write_result(args.out, {"machine": info, "approaches": names, "missing": missing, "rows": rows,
                            "table": markdown, "script": Path(__file__).name})


if __name__ == "__main__":
    main()
