"""Batches (2025-03-26): a JSON-RPC array is split into its messages, and their replies go back as one
array once all are in. Replies find their batch through an index by id, so any number of open batches
costs the same per reply."""

from __future__ import annotations

from . import jsonrpc
from .actions import Feature, ToSession
from .jsonrpc import Id, Invalid, Message, id_key

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from typing import Any

    from .actions import Action
    from .router import Mux
    from .session import Session


class Batch:
    __slots__ = ("remaining", "replies")

    def __init__(self) -> None:
        self.remaining = 0  # requests whose reply (or cancellation) is still to come
        self.replies: list[Message] = []


class Batches(Feature):
    def __init__(self, mux: Mux) -> None:
        super().__init__(mux)
        self.expected: dict[int, dict[tuple[bool, Id], list[Batch]]] = {}  # session → reply id → its open batches
        self.splitting: Batch | None = None  # the batch being split, until all its messages have run

    def split(self, session: Session, items: list[Any]) -> list[Action]:
        """Run each message of a batch; invalid ones are answered inside the batch's array."""
        if not items:
            empty = jsonrpc.error(None, jsonrpc.INVALID_REQUEST, "Invalid Request: empty batch")
            return [ToSession(session.sid, empty)]
        batch = self.splitting = Batch()
        valid: list[Message] = []
        keys: set[tuple[bool, Id]] = set()
        for item in items:
            try:
                jsonrpc.check(item)
            except Invalid as bad:
                batch.replies.append(bad.reply)
                continue
            if jsonrpc.is_request(item):
                self.mux.stats["requests"] += 1
                self.mux.accepted.append((session.sid, item["id"]))
                keys.add(id_key(item["id"]))
            valid.append(item)
        if keys:
            index = self.expected.setdefault(session.sid, {})
            for key in keys:
                index.setdefault(key, []).append(batch)
            batch.remaining = len(keys)
        actions: list[Action] = []
        for item in valid:
            actions += self.mux.dispatch(session, item)
        if not keys and batch.replies:
            actions.append(ToSession(session.sid, batch.replies))
        self.splitting = None
        return actions

    def abort(self, session: Session) -> None:
        """Splitting failed: the batch being split expects no more replies (its sender is answered at once)."""
        batch, self.splitting = self.splitting, None
        index = self.expected.get(session.sid, {})
        for key, waiting in list(index.items()):
            if batch in waiting:
                waiting.remove(batch)
                if not waiting:
                    del index[key]
        if not index:
            self.expected.pop(session.sid, None)

    def deliver(self, session: Session, reply: Message) -> list[Action]:
        """Send a reply, holding it back while it belongs to an unfinished batch."""
        batch = self._take(session, reply.get("id")) if session.sid in self.expected else None
        if batch is None:
            return [ToSession(session.sid, reply)]
        batch.replies.append(reply)
        return self._settle(session, batch)

    def expects(self, session: Session, request_id: Id) -> bool:
        """Whether an unfinished batch of `session` waits for the reply to `request_id`."""
        index = self.expected.get(session.sid)
        return index is not None and bool(index.get(id_key(request_id)))

    def no_reply(self, session: Session, key: tuple[bool, Id]) -> list[Action]:
        """A cancelled request gets no reply: the batch holding it must not wait for one."""
        batch = self._take(session, key[1]) if session.sid in self.expected else None
        return self._settle(session, batch) if batch is not None else []

    def _take(self, session: Session, request_id: object) -> Batch | None:
        """The oldest open batch expecting `request_id`, which stops expecting it."""
        if not jsonrpc.valid_id(request_id):
            return None
        index = self.expected[session.sid]
        key = id_key(request_id)
        waiting = index.get(key)
        if not waiting:
            return None
        batch = waiting.pop(0)
        if not waiting:
            del index[key]
            if not index:
                del self.expected[session.sid]
        batch.remaining -= 1
        return batch

    @staticmethod
    def _settle(session: Session, batch: Batch) -> list[Action]:
        if batch.remaining or not batch.replies:
            return []
        return [ToSession(session.sid, batch.replies)]

    def session_closed(self, session: Session) -> list[Action]:
        self.expected.pop(session.sid, None)
        return []
