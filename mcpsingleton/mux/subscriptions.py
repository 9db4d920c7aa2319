"""Subscriptions: resource subscriptions refcounted (the backend is subscribed once, unsubscribed when
the last holder lets go), updates sent to holders only, list-changed notifications to every session,
and stateless-era `subscriptions/listen` streams built from the same shared subscriptions."""

from __future__ import annotations

from . import eras, jsonrpc
from .actions import Feature, ToSession
from .jsonrpc import Id, Message, id_key
from .requests import malformed

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from .actions import Action
    from .router import Mux
    from .session import Session

LIST_CHANGED_KINDS = ("tools", "resources", "prompts")


class Listen:
    """A stateless-era `subscriptions/listen` stream, open until its session cancels it."""

    __slots__ = ("kinds", "request_id", "uris")

    def __init__(self, request_id: Id, kinds: set[str], uris: set[str]) -> None:
        self.request_id = request_id
        self.kinds = kinds  # "tools" | "prompts" | "resources": which list_changed notifications it asked for
        self.uris = uris


def covers(held: str, uri: str) -> bool:
    """A subscription to `held` covers `uri` itself and everything under it."""
    return uri == held or uri.startswith(held.rstrip("/") + "/")


class Subscriptions(Feature):
    def __init__(self, mux: Mux) -> None:
        super().__init__(mux)
        self.subscribers: dict[str, set[int]] = {}  # uri → sessions holding it
        self.held: dict[int, set[str]] = {}  # session → uris it holds
        self.listens: dict[int, dict[tuple[bool, Id], Listen]] = {}

    def has_subscribers(self) -> bool:
        return bool(self.subscribers)

    # ---- session requests ------------------------------------------------------------------

    def subscribe(self, session: Session, message: Message) -> list[Action]:
        uri = jsonrpc.params_of(message).get("uri")
        if not isinstance(uri, str):
            text = "resources/subscribe needs a uri"
            return self.mux.reply_error(session, message["id"], jsonrpc.INVALID_PARAMS, text)
        if uri in self.held.get(session.sid, ()) or not self._count_in(session, uri):
            return self.mux.batches.deliver(session, jsonrpc.result(message["id"], {}))

        def undo_on_error(reply: Message) -> list[Action]:
            if "error" in reply or malformed(reply) is not None:
                self._count_out(session, uri)
            return []

        return self.mux.requests.forward(session, message, undo_on_error)

    def unsubscribe(self, session: Session, message: Message) -> list[Action]:
        uri = jsonrpc.params_of(message).get("uri")
        if not isinstance(uri, str) or uri not in self.held.get(session.sid, ()) or not self._count_out(session, uri):
            return self.mux.batches.deliver(session, jsonrpc.result(message["id"], {}))
        return self.mux.requests.forward(session, message)

    def resume(self, session: Session, uris: list[str]) -> list[Action]:
        """A re-attached session's subscriptions from its previous broker: held again, the backend told once."""
        actions: list[Action] = []
        for uri in uris:
            if uri not in self.held.get(session.sid, ()) and self._count_in(session, uri) and self.mux.backend.ready:
                actions.append(self.mux.requests.own("resources/subscribe", {"uri": uri}))
        return actions

    def listen(self, session: Session, message: Message) -> list[Action]:
        """Acknowledge what the backend can serve; hold the stream open until the session cancels it."""
        wanted = jsonrpc.params_of(message).get("notifications")
        capabilities = self.mux.handshake.capabilities()
        resources = capabilities.get("resources")
        subscribe_ok = isinstance(resources, dict) and bool(resources.get("subscribe"))
        granted = eras.honoured(wanted if isinstance(wanted, dict) else {}, capabilities, subscribe_ok)
        kinds = {kind for flag, kind in eras.LIST_KINDS.items() if granted.get(flag)}
        listen = Listen(message["id"], kinds, set(granted.get("resourceSubscriptions", [])))
        self.listens.setdefault(session.sid, {})[id_key(message["id"])] = listen
        ack = jsonrpc.notification(
            "notifications/subscriptions/acknowledged",
            {"_meta": {eras.SUBSCRIPTION_ID: message["id"]}, "notifications": granted},
        )
        actions: list[Action] = [ToSession(session.sid, ack)]
        for uri in sorted(listen.uris):
            if uri not in self.held.get(session.sid, ()) and self._count_in(session, uri):
                actions.append(self.mux.requests.own("resources/subscribe", {"uri": uri}))
        # an open stream has no reply (until it is cancelled): a batch holding it must not wait for one
        return actions + self.mux.batches.no_reply(session, id_key(message["id"]))

    def end_listen(self, session: Session, key: tuple[bool, Id]) -> list[Action] | None:
        """The session cancelled a listen stream (None: `key` is not one)."""
        listen = self.listens.get(session.sid, {}).pop(key, None)
        if listen is None:
            return None
        actions: list[Action] = []
        for uri in listen.uris:
            if not any(uri in other.uris for other in self.listens[session.sid].values()):
                actions += self._release(session, uri)
        return actions

    # ---- backend notifications -------------------------------------------------------------

    def updated(self, message: Message) -> list[Action]:
        """notifications/resources/updated: to the sessions (and listen streams) holding the uri."""
        uri = jsonrpc.params_of(message).get("uri")
        if not isinstance(uri, str):
            return []
        receivers: set[int] = set()
        for subscribed, holders in self.subscribers.items():
            if covers(subscribed, uri):
                receivers |= holders
        actions: list[Action] = []
        for sid in sorted(receivers):
            if not self.mux.sessions[sid].stateless:
                actions.append(ToSession(sid, message))
                continue
            for listen in self.listens.get(sid, {}).values():
                if any(covers(held, uri) for held in listen.uris):
                    actions.append(ToSession(sid, eras.tagged(message, listen.request_id)))
        return actions

    def broadcast(self, message: Message) -> list[Action]:
        """To every handshake session; to stateless-era sessions only on listen streams that asked for it."""
        method = message["method"]
        kind = method.split("/")[1] if method.endswith("/list_changed") and method.count("/") == 2 else None
        actions: list[Action] = []
        for session in self.mux.sessions.values():
            if not session.stateless:
                if session.initialized:
                    actions.append(ToSession(session.sid, message))
                continue
            for listen in self.listens.get(session.sid, {}).values():
                if kind in listen.kinds:
                    actions.append(ToSession(session.sid, eras.tagged(message, listen.request_id)))
        return actions

    # ---- counting --------------------------------------------------------------------------

    def _count_in(self, session: Session, uri: str) -> bool:
        """Count a session in on a URI; True when it is the first holder, so the backend must subscribe."""
        self.held.setdefault(session.sid, set()).add(uri)
        holders = self.subscribers.setdefault(uri, set())
        holders.add(session.sid)
        return len(holders) == 1

    def _count_out(self, session: Session, uri: str) -> bool:
        """Count a session out of a URI; True when it was the last holder, so the backend must unsubscribe."""
        self.held.get(session.sid, set()).discard(uri)
        holders = self.subscribers.get(uri)
        if holders is None:
            return False
        holders.discard(session.sid)
        if holders:
            return False
        del self.subscribers[uri]
        return True

    def _release(self, session: Session, uri: str) -> list[Action]:
        """The broker's own unsubscribe when a session's hold on a URI ends without a request of its own."""
        if not self._count_out(session, uri) or not self.mux.backend.ready:
            return []
        return [self.mux.requests.own("resources/unsubscribe", {"uri": uri})]

    # ---- lifecycle -------------------------------------------------------------------------

    def session_closed(self, session: Session) -> list[Action]:
        self.listens.pop(session.sid, None)
        actions: list[Action] = []
        for uri in list(self.held.get(session.sid, ())):
            actions += self._release(session, uri)
        self.held.pop(session.sid, None)
        return actions

    def backend_ready(self, restarted: bool) -> list[Action]:
        """After a restart the new backend is subscribed again, and sessions learn lists may differ.

        A first backend has subscribers only when sessions re-attached from a dead broker brought them."""
        actions: list[Action] = [self.mux.requests.own("resources/subscribe", {"uri": uri}) for uri in self.subscribers]
        if not restarted or self.mux.discovery.compares_restart:  # after a reclaim, discovery says what changed
            return actions
        for kind in LIST_CHANGED_KINDS:
            actions += self.broadcast(jsonrpc.notification(f"notifications/{kind}/list_changed"))
        return actions
