"""Server→client requests (sampling, elicitation): sent only to the one session that can have caused
them (initialized, capable, waiting on the backend), under a broker-unique id; refused when that session
is not certain, never guessed. Also the broker's own requests to sessions (roots/list)."""

from __future__ import annotations

from . import jsonrpc
from .actions import Feature, Log, Spliced, ToBackend, ToSession
from .envelope import Envelope, encode_id
from .jsonrpc import Id, Message, id_key
from .requests import cancel

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from .actions import Action, Reply
    from .router import Mux
    from .session import Session


class Outstanding:
    """A server→client request a session owes an answer to."""

    __slots__ = ("backend_id", "method", "on_reply", "session")

    def __init__(self, session: int, backend_id: Id | None, method: str, on_reply: Reply | None = None) -> None:
        self.session = session
        self.backend_id = backend_id  # None: the broker's own request (roots/list)
        self.method = method
        self.on_reply = on_reply


class ServerRequests(Feature):
    def __init__(self, mux: Mux) -> None:
        super().__init__(mux)
        self.outstanding: dict[int, Outstanding] = {}
        self.by_backend: dict[tuple[bool, Id], int] = {}
        self.elicitation_owner: dict[str, int] = {}

    def route(self, message: Message) -> list[Action]:
        """sampling/createMessage, elicitation/create: to the one session that can answer, or refused."""
        method, backend_id = message["method"], message["id"]
        params = jsonrpc.params_of(message)
        capability, mode = method.split("/")[0], params.get("mode")
        able = [s for s in self.mux.sessions.values() if s.initialized and s.can(capability, mode)]
        candidates = [s for s in able if s.inflight]
        if len(candidates) != 1:
            why = (
                f"no connected session supports {capability}"
                if not able
                else f"{len(candidates)} sessions could have caused this {method}; refusing to guess"
            )
            code = jsonrpc.METHOD_NOT_FOUND if not able else jsonrpc.INTERNAL_ERROR
            return [Log(f"backend {method}: {why}"), ToBackend(jsonrpc.error(backend_id, code, f"mcpsingleton: {why}"))]
        session = candidates[0]
        our_id = self.mux.requests.new_id()
        self.outstanding[our_id] = Outstanding(session.sid, backend_id, method)
        self.by_backend[id_key(backend_id)] = our_id
        if mode == "url" and isinstance(params.get("elicitationId"), str):
            self.elicitation_owner[params["elicitationId"]] = session.sid
        return [ToSession(session.sid, {**message, "id": our_id})]

    def ask(self, session: Session, method: str, on_reply: Reply) -> list[Action]:
        """The broker's own request to a session; its answer goes to `on_reply`."""
        our_id = self.mux.requests.new_id()
        self.outstanding[our_id] = Outstanding(session.sid, None, method, on_reply)
        return [ToSession(session.sid, jsonrpc.request(our_id, method))]

    def answer(self, session: Session, message: Message) -> list[Action]:
        """A session's answer to a server→client request: back to the backend under its own id."""
        our_id = message.get("id")
        outstanding = self._owed_by(session, our_id)
        if outstanding is None:
            self.mux.stats["dropped"] += 1
            return [Log(f"session {session.sid}: response to unknown request {our_id!r}; dropped")]
        del self.outstanding[message["id"]]
        if outstanding.on_reply is not None:
            return outstanding.on_reply(message)
        return [ToBackend({**message, "id": self._settled(outstanding)})]

    def answer_spliced(self, session: Session, line: bytes, envelope: Envelope) -> list[Action] | None:
        """`answer` for a backend's request: the session's bytes pass as written with the backend's id
        spliced in. None (nothing done) for anything else (the broker's own requests, unknown ids)."""
        outstanding = self._owed_by(session, envelope.id)
        if outstanding is None or outstanding.on_reply is not None:
            return None
        assert type(envelope.id) is int and envelope.id_span is not None
        del self.outstanding[envelope.id]
        return [ToBackend(None, Spliced(line, envelope.id_span, encode_id(self._settled(outstanding))))]

    def _owed_by(self, session: Session, our_id: object) -> Outstanding | None:
        outstanding = self.outstanding.get(our_id) if type(our_id) is int else None
        return outstanding if outstanding is not None and outstanding.session == session.sid else None

    def _settled(self, outstanding: Outstanding) -> Id:
        """The backend's own id for an answered request, which no longer needs mapping back."""
        assert outstanding.backend_id is not None
        self.by_backend.pop(id_key(outstanding.backend_id), None)
        return outstanding.backend_id

    def cancelled(self, message: Message) -> list[Action]:
        """The backend gave up a server→client request: its session hears it, under the id it knows."""
        params = jsonrpc.params_of(message)
        request_id = params.get("requestId")
        our_id = self.by_backend.pop(id_key(request_id), None) if jsonrpc.valid_id(request_id) else None
        outstanding = self.outstanding.pop(our_id, None) if our_id is not None else None
        if outstanding is None or outstanding.session not in self.mux.sessions:
            return []
        return [ToSession(outstanding.session, {**message, "params": {**params, "requestId": our_id}})]

    def elicitation_complete(self, message: Message) -> list[Action]:
        owner = self.elicitation_owner.pop(str(jsonrpc.params_of(message).get("elicitationId")), None)
        return [ToSession(owner, message)] if owner in self.mux.sessions else []

    @staticmethod
    def pong(message: Message) -> list[Action]:
        return [ToBackend(jsonrpc.result(message["id"], {}))]

    @staticmethod
    def unknown(message: Message) -> list[Action]:
        method = message["method"]
        return [ToBackend(jsonrpc.error(message["id"], jsonrpc.METHOD_NOT_FOUND, f"Method not found: {method}"))]

    def session_closed(self, session: Session) -> list[Action]:
        """Server→client requests the leaving session will never answer get an error now."""
        self.elicitation_owner = {e: s for e, s in self.elicitation_owner.items() if s != session.sid}
        actions: list[Action] = []
        for our_id, outstanding in list(self.outstanding.items()):
            if outstanding.session != session.sid:
                continue
            del self.outstanding[our_id]
            if outstanding.backend_id is not None:
                self.by_backend.pop(id_key(outstanding.backend_id), None)
                text = "mcpsingleton: the client session left before answering"
                actions.append(ToBackend(jsonrpc.error(outstanding.backend_id, jsonrpc.INTERNAL_ERROR, text)))
        return actions

    def backend_lost(self, reason: str) -> list[Action]:
        """The backend's requests die with it: their sessions are told; the broker's own stay."""
        self.elicitation_owner.clear()
        self.by_backend.clear()
        actions: list[Action] = []
        for our_id, outstanding in list(self.outstanding.items()):
            if outstanding.backend_id is not None:
                del self.outstanding[our_id]
                if outstanding.session in self.mux.sessions:
                    actions.append(ToSession(outstanding.session, cancel(our_id, "backend exited")))
        return actions
