"""Tasks (2025-11-25): a task belongs to the session whose request created it. Only its owner may get,
read, cancel or list it, and only its owner hears its status; a leaving owner's tasks are cancelled."""

from __future__ import annotations

from . import jsonrpc
from .actions import Feature, ToSession
from .jsonrpc import Message

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from .actions import Action
    from .router import Mux
    from .session import Session

TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})
EARLY_STATUS_TASKS = 64
"""How many not-yet-created task ids may have statuses held for them (and statuses per task)."""


class Tasks(Feature):
    def __init__(self, mux: Mux) -> None:
        super().__init__(mux)
        self.owner: dict[str, int] = {}
        self.token: dict[str, int] = {}  # a task keeps its creating request's progress token alive
        self.owned: dict[int, set[str]] = {}
        self.early_status: dict[str, list[Message]] = {}  # statuses that arrived before their task's reply

    @staticmethod
    def created(reply: Message) -> str | None:
        """The task id when a reply creates a task (a task-augmented request)."""
        result = reply.get("result")
        task = result.get("task") if isinstance(result, dict) else None
        task_id = task.get("taskId") if isinstance(task, dict) else None
        return task_id if isinstance(task_id, str) else None

    def adopt(self, session: Session, task_id: str, token: int | None) -> list[Action]:
        """`session`'s request created `task_id`: it owns it, and gets any status that came first."""
        self.owner[task_id] = session.sid
        self.owned.setdefault(session.sid, set()).add(task_id)
        if token is not None:
            self.token[task_id] = token
        return [ToSession(session.sid, status) for status in self.early_status.pop(task_id, [])]

    def guard(self, session: Session, message: Message) -> list[Action]:
        """tasks/get, tasks/result, tasks/cancel: forwarded for the task's owner only."""
        if self.owner.get(str(jsonrpc.params_of(message).get("taskId"))) != session.sid:
            return self.mux.reply_error(session, message["id"], jsonrpc.INVALID_PARAMS, "Unknown task id")
        return self.mux.requests.forward(session, message)

    def own_only(self, session: Session, reply: Message) -> Message:
        """A tasks/list result with the other sessions' tasks removed."""
        result = reply.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("tasks"), list):
            return reply
        mine = self.owned.get(session.sid, set())
        tasks = [t for t in result["tasks"] if isinstance(t, dict) and t.get("taskId") in mine]
        return {**reply, "result": {**result, "tasks": tasks}}

    def route_status(self, message: Message) -> list[Action]:
        params = jsonrpc.params_of(message)
        task_id = str(params.get("taskId"))
        owner = self.owner.get(task_id)
        if owner is None:
            return self._hold_early_status(task_id, message)
        if params.get("status") in TERMINAL_STATES:
            token = self.token.pop(task_id, None)
            if token is not None:
                self.mux.progress.release(token)
        return [ToSession(owner, message)] if owner in self.mux.sessions else []

    def _hold_early_status(self, task_id: str, message: Message) -> list[Action]:
        """A status can overtake the reply that creates its task: keep it (bounded) for the owner-to-be."""
        held = self.early_status.setdefault(task_id, [])
        if len(held) < EARLY_STATUS_TASKS:
            held.append(message)
        while len(self.early_status) > EARLY_STATUS_TASKS:
            del self.early_status[next(iter(self.early_status))]
        return []

    def session_closed(self, session: Session) -> list[Action]:
        actions: list[Action] = []
        for task_id in self.owned.pop(session.sid, set()):
            self.owner.pop(task_id, None)
            self.token.pop(task_id, None)
            if self.mux.backend.ready:
                actions.append(self.mux.requests.own("tasks/cancel", {"taskId": task_id}))
        return actions

    def backend_lost(self, reason: str) -> list[Action]:
        self.owner.clear()
        self.token.clear()
        self.owned.clear()
        self.early_status.clear()
        return []
