"""Issue 3, protocol eras: 2026-07-28 (stateless) sessions share the handshake-era backend by translation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anyio
from helpers import RawClient, backend_roots, ls_json, shim, shim_params, text_of
from mcp import Client

from mcpsingleton.mux import eras

ERA_FIELDS = {
    eras.PROTOCOL_VERSION: "2026-07-28",
    eras.CLIENT_CAPABILITIES: {},
    eras.CLIENT_INFO: {"name": "stateless-raw", "version": "1"},
}


def stateless(client: RawClient, method: str, params: dict | None = None, **meta: object) -> object:
    """Send a 2026-07-28 request: no initialize, the envelope in every request's _meta."""
    body = dict(params or {})
    body["_meta"] = {**ERA_FIELDS, **meta}
    return client.request(method, body)


def test_pinned_stateless_auto_and_handshake_clients_share_one_backend(home: Path, time_server: list[str]) -> None:
    results: dict[str, object] = {}

    async def main() -> None:
        params = shim_params(time_server, "--linger", "0")
        async with (
            Client(params, mode="2026-07-28") as pinned,
            Client(params) as auto,
            Client(params, mode="legacy") as legacy,
        ):
            for name, client in (("pinned", pinned), ("auto", auto), ("legacy", legacy)):
                reply = await client.call_tool("get_current_time", {"timezone": "Asia/Tokyo"})
                results[name] = (client.protocol_version, json.loads(text_of(reply))["timezone"])
            results["roots"] = len(backend_roots(home))
            results["clients"] = await anyio.to_thread.run_sync(lambda: len(ls_json()[0]["clients"]))

    anyio.run(main)
    assert results["pinned"] == ("2026-07-28", "Asia/Tokyo")
    assert results["auto"][1] == results["legacy"][1] == "Asia/Tokyo"
    assert results["auto"][0] != "2026-07-28", "a dual-era client falls back to the handshake on this broker"
    assert results["roots"] == 1 and results["clients"] == 3


def test_stateless_era_results_are_translated(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server))
    listed = client.reply_to(stateless(client, "tools/list"))
    assert listed["result"]["resultType"] == "complete"
    assert listed["result"]["ttlMs"] == 0 and listed["result"]["cacheScope"] == "private"
    assert listed["result"]["_meta"][eras.SERVER_INFO]["name"] == "fake-server"
    called = client.reply_to(stateless(client, "tools/call", {"name": "echo", "arguments": {"text": "m"}}))
    assert called["result"]["resultType"] == "complete" and "ttlMs" not in called["result"]
    assert ls_json()[0]["clients"][0]["client"] == "stateless-raw"
    assert client.close() == 0


def test_listen_streams_are_confined_and_tagged(home: Path, fake_server: list[str]) -> None:
    watcher, handshake, other = (RawClient(shim(fake_server)) for _ in range(3))
    handshake.initialize()
    listen_id = stateless(
        watcher,
        "subscriptions/listen",
        {
            "notifications": {
                "resourceSubscriptions": ["file:///a"],
                "toolsListChanged": True,
                "promptsListChanged": True,
            }
        },
    )
    ack = watcher.read()
    assert ack["method"] == "notifications/subscriptions/acknowledged"
    assert ack["params"]["_meta"][eras.SUBSCRIPTION_ID] == listen_id
    assert ack["params"]["notifications"] == {"toolsListChanged": True, "resourceSubscriptions": ["file:///a"]}, (
        "only what the backend can serve (it declares no prompts capability)"
    )
    other.reply_to(other.request("tools/call", {"name": "touch", "arguments": {"uri": "file:///a/child"}}))
    update = watcher.read()
    assert update["method"] == "notifications/resources/updated" and update["params"]["uri"] == "file:///a/child"
    assert update["params"]["_meta"][eras.SUBSCRIPTION_ID] == listen_id
    handshake.reply_to(handshake.request("tools/call", {"name": "touch", "arguments": {"uri": "file:///b"}}))
    assert watcher.read(timeout=0.5) is None, "no update for a URI it did not ask for"
    assert [m for m in getattr(handshake, "seen", []) if m.get("method") == "notifications/resources/updated"] == []
    watcher.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": listen_id}})
    other.reply_to(other.request("tools/call", {"name": "touch", "arguments": {"uri": "file:///a"}}))
    assert watcher.read(timeout=0.5) is None, "a cancelled listen stream gets nothing more"
    for client in (watcher, handshake, other):
        assert client.close() == 0


def test_stateless_era_log_opt_in_per_request(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server))
    quiet = client.reply_to(stateless(client, "tools/call", {"name": "log", "arguments": {"level": "info"}}))
    assert quiet["result"]["resultType"] == "complete"
    assert not [m for m in getattr(client, "seen", []) if m.get("method") == "notifications/message"], (
        "no opt-in, no log messages"
    )
    request_id = stateless(
        client,
        "tools/call",
        {"name": "log", "arguments": {"level": "error", "text": "bad"}},
        **{eras.LOG_LEVEL: "warning"},
    )
    client.reply_to(request_id)
    assert [m["params"]["data"] for m in client.seen if m.get("method") == "notifications/message"] == ["bad"]
    below = stateless(
        client,
        "tools/call",
        {"name": "log", "arguments": {"level": "info", "text": "chatty"}},
        **{eras.LOG_LEVEL: "warning"},
    )
    client.reply_to(below)
    assert "chatty" not in json.dumps(client.seen)
    assert client.close() == 0


def test_stateless_era_sessions_never_receive_server_requests(home: Path, fake_server: list[str]) -> None:
    client = RawClient(shim(fake_server), env={**os.environ})
    reply = client.reply_to(stateless(client, "tools/call", {"name": "sample"}), timeout=15)
    assert "no connected session supports sampling" in json.dumps(reply["result"])
    assert not [m for m in getattr(client, "seen", []) if "id" in m and "method" in m]
    assert client.close() == 0
