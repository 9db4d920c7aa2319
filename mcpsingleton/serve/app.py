"""The ASGI app: routes only. Every request passes auth.Guard first; the monitor owns the numbers.

`create_app(auth, …, routes=…)` mounts extra routes (the MCP transport's `/mcp/NAME`) under the same Guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..ops import metrics
from . import actions, events, logtail
from .auth import Auth, Guard
from .history import History
from .monitor import Monitor
from .state import Sampler

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class Dashboard:
    """The handlers, bound to one monitor."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    async def page(self, request: Request) -> Response:
        return FileResponse(os.path.join(STATIC, "index.html"), headers=PAGE_HEADERS)

    async def state(self, request: Request) -> Response:
        return JSONResponse(self.monitor.latest)

    async def health(self, request: Request) -> Response:
        health = self.monitor.latest.get("health") or {"status": "starting", "reasons": []}
        body = {"status": health["status"]} if health["status"] == "ok" else health
        return JSONResponse(body, status_code=200 if health["status"] == "ok" else 503)

    async def metrics(self, request: Request) -> Response:
        text = metrics.render(self.monitor.latest.get("servers", []))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def history(self, request: Request) -> Response:
        series = self.monitor.history.series(request.query_params.get("range", "hour"))
        return JSONResponse({**series, "events": self.monitor.history.events()})

    async def events(self, request: Request) -> Response:
        first = [events.encode("state", self.monitor.latest)] if self.monitor.latest else []
        first.append(events.encode("events", self.monitor.history.events()))
        stream = self.monitor.broadcaster.stream(first)
        return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)

    async def log(self, request: Request) -> Response:
        from ..ops.cli import find_log

        path = await asyncio.to_thread(find_log, request.path_params["target"])
        if path is None:
            return _error(404, f"no log for {request.path_params['target']!r}; see the servers listed")
        return StreamingResponse(_log_events(path), media_type="text/event-stream", headers=SSE_HEADERS)

    async def server_action(self, request: Request) -> Response:
        target, verb = request.path_params["target"], request.path_params["verb"]
        if verb not in ("stop", "restart"):
            return _error(404, f"no action {verb!r}: stop or restart")
        try:
            done = await asyncio.to_thread(actions.act_on_server, target, verb)
        except actions.NotFound:
            return _error(404, f"no running server matches {target!r}")
        for broker in done:
            outcome = "done" if broker["ended"] else "asked" if broker["answered"] else "did not answer"
            self.monitor.note("action", f"{verb} {broker['name']} ({broker['key'][:12]}) from the page: {outcome}")
        await self.monitor.refresh(memory=True)
        return JSONResponse({verb: done})

    async def reap(self, request: Request) -> Response:
        body = await _json_body(request)
        if body is None:
            return _error(400, 'send a JSON object: {"confirm": false} for the dry run, true to act')
        confirm = body.get("confirm") is True
        done = await asyncio.to_thread(actions.reap, confirm)
        if confirm:
            self.monitor.note("reap", f"reap from the page: {len(done)} acted on")
            await self.monitor.scan_orphans()
            await self.monitor.refresh(memory=True)
        return JSONResponse({"confirmed": confirm, "findings": done})


async def _log_events(path: str) -> AsyncIterator[bytes]:
    yield f"retry: {events.RETRY_MS}\n\n".encode()
    async for lines in logtail.follow(path):
        yield events.encode("lines", lines)


async def _json_body(request: Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": f"mcpsingleton: {message}"}, status_code=status)


def create_app(
    auth: Auth,
    monitor: Monitor | None = None,
    routes: Sequence[BaseRoute] = (),
) -> Guard:
    """The whole app behind the Guard; `routes` (e.g. the MCP transport's) are mounted after ours."""
    monitor = monitor or Monitor(Sampler(), History(), events.Broadcaster())
    dashboard = Dashboard(monitor)
    table = [
        Route("/", dashboard.page),
        Route("/api/state", dashboard.state),
        Route("/api/health", dashboard.health),
        Route("/api/history", dashboard.history),
        Route("/api/events", dashboard.events),
        Route("/metrics", dashboard.metrics),
        Route("/api/servers/{target}/log", dashboard.log),
        Route("/api/servers/{target}/{verb:str}", dashboard.server_action, methods=["POST"]),
        Route("/api/reap", dashboard.reap, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        *routes,
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await monitor.refresh()
        task = asyncio.create_task(monitor.run())
        try:
            yield
        finally:
            task.cancel()
            monitor.history.close()

    return Guard(Starlette(routes=table, lifespan=lifespan), auth)
