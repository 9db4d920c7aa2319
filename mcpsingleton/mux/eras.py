"""The stateless era (protocol 2026-07-28), translated onto the shared handshake-era backend.

Two eras, one word each (docs/ARCHITECTURE.md, Glossary): the *handshake* era (2024-11-05 to
2025-11-25: `initialize` first, then requests) and the *stateless* era (2026-07-28: no `initialize`;
every request carries its protocol version, client info and capabilities in `params._meta`, the
request's era fields). The broker keeps one backend per server, initialized by handshake (a
Python-SDK server locks each stdio connection to one era, and handshake-era servers speak nothing
else), so stateless-era sessions are served by translation: the era fields are stripped on the way in,
results are marked `resultType: complete` on the way out, and `subscriptions/listen` streams are
built from the backend's refcounted subscriptions and list-changed notifications. Functions of their
arguments, kept apart from the state they serve (`adopt` only marks the session as stateless-era).
"""

from __future__ import annotations

from .jsonrpc import Message

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

    from .session import Session

PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
LOG_LEVEL = "io.modelcontextprotocol/logLevel"
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
SERVER_INFO = "io.modelcontextprotocol/serverInfo"
ERA_FIELDS = (PROTOCOL_VERSION, CLIENT_CAPABILITIES, CLIENT_INFO, LOG_LEVEL)

CACHEABLE = frozenset(
    {"prompts/list", "resources/list", "resources/read", "resources/templates/list", "server/discover", "tools/list"}
)
"""Methods whose stateless-era results must carry `ttlMs` and `cacheScope`."""

LIST_KINDS = {"toolsListChanged": "tools", "promptsListChanged": "prompts", "resourcesListChanged": "resources"}
"""subscriptions/listen flags → the capability (and notifications/<kind>/list_changed) they stand for."""


def _meta(message: Message) -> dict[str, Any]:
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta if isinstance(meta, dict) else {}


def era_fields(message: Message) -> dict[str, Any] | None:
    """The stateless-era fields of a request's `_meta`, or None for a handshake-era message."""
    meta = _meta(message)
    if not isinstance(meta.get(PROTOCOL_VERSION), str) or message.get("method") == "initialize":
        return None
    return {key: meta[key] for key in ERA_FIELDS if key in meta}


def adopt(session: Session, fields: dict[str, Any]) -> None:
    """A session sent a stateless-era request (`fields`: its era fields), and may say who it is."""
    session.stateless = session.initialized = True
    info = fields.get(CLIENT_INFO)
    if isinstance(info, dict) and isinstance(info.get("name"), str):
        session.client_name = info["name"]


def strip(message: Message) -> Message:
    """The request as a handshake-era backend expects it: no era fields in `_meta`."""
    params = dict(message["params"])
    meta = {k: v for k, v in params["_meta"].items() if k not in ERA_FIELDS}
    if meta:
        params["_meta"] = meta
    else:
        del params["_meta"]
    return {**message, "params": params}


def complete(reply: Message, method: str, server_info: object) -> Message:
    """A handshake-era result as a stateless-era client expects it (cacheable ones: immediately stale, private)."""
    result = reply.get("result")
    if not isinstance(result, dict):
        return reply
    meta = dict(result["_meta"]) if isinstance(result.get("_meta"), dict) else {}
    if isinstance(server_info, dict):
        meta.setdefault(SERVER_INFO, server_info)
    translated = {**result, "resultType": result.get("resultType", "complete"), "_meta": meta}
    if method in CACHEABLE:
        translated.setdefault("ttlMs", 0)
        translated.setdefault("cacheScope", "private")
    return {**reply, "result": translated}


def tagged(notification: Message, subscription_id: object) -> Message:
    """A notification as sent on one listen stream: `_meta.subscriptionId` names the stream."""
    params = dict(notification["params"]) if isinstance(notification.get("params"), dict) else {}
    meta = params.get("_meta")
    params["_meta"] = {**(meta if isinstance(meta, dict) else {}), SUBSCRIPTION_ID: subscription_id}
    return {**notification, "params": params}


def honoured(requested: dict[str, Any], capabilities: dict[str, Any], subscribe_ok: bool) -> dict[str, Any]:
    """The part of a listen request the backend can serve (never more than was asked)."""
    granted: dict[str, Any] = {}
    for flag, kind in LIST_KINDS.items():
        declared = capabilities.get(kind)
        if requested.get(flag) is True and isinstance(declared, dict) and declared.get("listChanged"):
            granted[flag] = True
    uris = requested.get("resourceSubscriptions")
    if subscribe_ok and isinstance(uris, list):
        granted["resourceSubscriptions"] = [uri for uri in uris if isinstance(uri, str)]
    return granted
