"""JSON-RPC 2.0 framing: parse one line, classify it, build replies. Pure functions, no I/O."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any, TypeAlias, TypeGuard

    Message: TypeAlias = dict[str, Any]
else:
    Message = dict

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

Id = str | int

ENCODE_HEADROOM = 2000
"""Extra recursion depth `encode` may use. json's parser and encoder both recurse: a value the parser
took near the interpreter's limit can be written from a deeper stack than it was read from."""


class Invalid(Exception):
    """A line that is not a usable JSON-RPC message; carries the error reply for its sender."""

    def __init__(self, code: int, message: str, request_id: Id | None = None) -> None:
        super().__init__(message)
        self.reply = error(request_id, code, message)


def valid_id(value: object) -> TypeGuard[Id]:
    """MCP ids are strings or integers (never null, never bool, never float). Values come from JSON,
    so exact types suffice (and keep bool out: it is an int subclass)."""
    return type(value) is str or type(value) is int


def id_key(value: Id) -> tuple[bool, Id]:
    """Dict key that keeps 1 and "1" apart (and True out: valid_id rejects it)."""
    return (isinstance(value, str), value)


def parse(line: bytes) -> Message | list[Any]:
    """Decode one line; raise Invalid with the reply the sender should get."""
    try:
        data = _decode(line)
    except UnicodeDecodeError:
        raise Invalid(PARSE_ERROR, "Parse error: message is not valid UTF-8") from None
    except ValueError as exc:
        raise Invalid(PARSE_ERROR, f"Parse error: {exc}") from None
    except RecursionError:  # not a ValueError: json gives up on deep nesting this way
        raise Invalid(PARSE_ERROR, "Parse error: nested too deeply") from None
    if isinstance(data, list):
        return data
    check(data)
    return data


def parse_lenient(line: bytes) -> tuple[Message | list[Any], bool]:
    """`parse` for a peer's line, and whether it parsed only once its bytes that are not UTF-8 were
    replaced by U+FFFD: a server that writes a Latin-1 file's bytes into a reply still gets that reply
    delivered (as a lenient client would show it) instead of leaving it unanswered. Raises `Invalid` (the
    repaired line's, when repairing did not help)."""
    try:
        return parse(line), False
    except Invalid:
        try:
            line.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return parse(line.decode("utf-8", "replace").encode("utf-8")), True
        raise


def nested_within(value: object, limit: int) -> bool:
    """Whether `value` nests objects and arrays at most `limit` levels deep (walked without recursion:
    values nested near the interpreter's limit are what this is for)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # set by __init__, not in typeshed


def _decode(line: bytes) -> Any:
    """`json.loads(line)`, without its per-call checks when the line is one UTF-8 JSON value (the usual
    case); anything else (leading whitespace, a BOM, other encodings, errors) goes through json.loads,
    whose result and error messages are the reference."""
    try:
        text = line.decode()
        value, end = _scan_once(text, 0)
    except (UnicodeDecodeError, StopIteration, ValueError):
        return json.loads(line)
    if end != len(text) and text[end:].strip(" \t\n\r"):
        return json.loads(line)
    return value


def check(data: object) -> None:
    """Raise Invalid unless `data` is a well-formed request, notification or response."""
    if not isinstance(data, dict):
        raise Invalid(INVALID_REQUEST, "Invalid Request: a message must be a JSON object")
    if data.get("jsonrpc") != "2.0":
        raise _invalid('Invalid Request: "jsonrpc" must be "2.0"', data)
    if "method" in data:
        if not isinstance(data["method"], str):
            raise _invalid('Invalid Request: "method" must be a string', data)
        if "id" in data and not valid_id(data["id"]):
            raise Invalid(INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
        params = data.get("params")
        if params is not None and not isinstance(params, dict | list):
            raise _invalid('Invalid Request: "params" must be an object', data)
    elif "result" in data or "error" in data:
        request_id = data.get("id")
        if request_id is not None and not valid_id(request_id):
            raise Invalid(INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
    else:
        raise _invalid("Invalid Request: neither a request, a notification nor a response", data)


def _invalid(text: str, data: dict[str, Any]) -> Invalid:
    """The error for an invalid message, answered under its id when that id is usable."""
    request_id = data.get("id")
    return Invalid(INVALID_REQUEST, text, request_id if valid_id(request_id) else None)


def params_of(message: Message) -> dict[str, Any]:
    """A message's params when they are an object (positional or malformed params read as none)."""
    params = message.get("params")
    return params if isinstance(params, dict) else {}


def is_request(message: Message) -> bool:
    return "method" in message and "id" in message


def is_notification(message: Message) -> bool:
    return "method" in message and "id" not in message


def result(request_id: Id | None, value: dict[str, Any]) -> Message:
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


def error(request_id: Id | None, code: int, message: str, data: object = None) -> Message:
    body: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": body}


def request(request_id: Id, method: str, params: dict[str, Any] | None = None) -> Message:
    message: Message = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def notification(method: str, params: dict[str, Any] | None = None) -> Message:
    message: Message = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    return message


def _not_serializable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _compact_encoder() -> Callable[[object], str]:
    """`json.dumps(value, separators=(",", ":"), ensure_ascii=False)`, without the encoder that json.dumps
    builds on every call (~2 µs of a small message's ~4 µs: the broker encodes every message it routes)."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (another Python): the plain call
        return lambda value: json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    chunks = make(None, _not_serializable, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    return lambda value: "".join(chunks(value, 0))


_dumps = _compact_encoder()


def encode(message: Message | list[Message]) -> bytes:
    """One line of compact JSON; non-ASCII kept as UTF-8 (escaped only when it holds lone surrogates)."""
    try:
        text = _dumps(message)
    except RecursionError:
        return _encode_deep(message)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"


def _encode_deep(message: Message | list[Message]) -> bytes:
    """`encode`, for a value nested near the recursion limit: with ENCODE_HEADROOM more (the value is at
    most as deep as the parser allows, so this ends well within the C stack)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + ENCODE_HEADROOM)
    try:
        return encode(message)
    finally:
        sys.setrecursionlimit(limit)
