"""Server-Sent Events: the monitor publishes, every open page gets it, with a heartbeat in between.

One queue per subscriber, bounded: a page that stops reading loses old events (it gets the next full
state anyway), never grows `serve`. The heartbeat (an SSE comment) keeps proxies and the browser from
taking a quiet stream for a dead one; EventSource reconnects by itself when `serve` restarts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

HEARTBEAT = 15.0
QUEUE_LIMIT = 16
RETRY_MS = 2000


def encode(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Broadcaster:
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[bytes]] = set()

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, event: str, data: Any) -> None:
        message = encode(event, data)
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()  # drop the oldest: a slow page catches up with the next state
            queue.put_nowait(message)

    async def stream(self, first: list[bytes], heartbeat: float = HEARTBEAT) -> AsyncIterator[bytes]:
        """What one page receives: `first` (the current state), then every publication, heartbeats between."""
        queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LIMIT)
        self._queues.add(queue)
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            for message in first:
                yield message
            while True:
                try:
                    yield await asyncio.wait_for(queue.get(), heartbeat)
                except TimeoutError:
                    yield b": heartbeat\n\n"
        finally:
            self._queues.discard(queue)
