"""The sharing decision: where a server may be shared, whether at all, and why.

Made by `policy/rules.py` on the cold path (or by `--scope`), cached per command and directory by
`shim/sharing.py`, carried to the broker in the spec; here so that both sides share it without importing
each other. On the shim's warm path: nothing heavy at import time.
"""

from .options import KEY_SCOPES
from .wire import ISOLATED, SHARED


class Decision:
    """Where a server may be shared (`scope`), whether at all (`sharing`), and why (`policy`, one line).

    `sharing` is None when only the running server can tell (its declaration or its tools). `final`
    means a user decided (option or config.toml): nothing learnt at runtime overrides it.
    `config_error` is the one-line reason config.toml was ignored, if it was. What config.toml says
    beyond the sharing: `lazy` (True/False, None when it says nothing), `idle` (a duration text, or
    None) and `budget` (the user's `[budget]`: max backends, max memory in bytes; None where unset).
    """

    __slots__ = ("budget", "config_error", "final", "idle", "lazy", "policy", "scope", "sharing")

    def __init__(
        self,
        scope: str,
        sharing: str | None,
        policy: str,
        *,
        final: bool = False,
        config_error: str | None = None,
        lazy: bool | None = None,
        idle: str | None = None,
        budget: tuple[int | None, int | None] = (None, None),
    ) -> None:
        self.scope = scope
        self.sharing = sharing
        self.policy = policy
        self.final = final
        self.config_error = config_error
        self.lazy = lazy
        self.idle = idle
        self.budget = budget

    def __repr__(self) -> str:
        return f"Decision({self.scope!r}, {self.sharing!r}, {self.policy!r}, final={self.final})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and self.as_lines() == other.as_lines()

    def as_lines(self) -> str:
        final = "final" if self.final else ""
        lazy = {True: "lazy", False: "eager", None: ""}[self.lazy]
        budget = " ".join("-" if limit is None else str(limit) for limit in self.budget)
        error, idle = self.config_error or "", self.idle or ""
        fields = (self.scope, self.sharing or "", self.policy, final, error, lazy, idle, budget)
        return "".join(_one_line(field) + "\n" for field in fields)

    @classmethod
    def from_lines(cls, text: str) -> "Decision | None":
        fields = text.split("\n")
        if len(fields) != 9 or fields[0] not in KEY_SCOPES:
            return None
        scope, sharing, policy, final, error, lazy, idle, budget, _ = fields
        limits = [int(word) if word.isdigit() else None for word in budget.split()]
        return cls(
            scope,
            sharing or None,
            policy,
            final=final == "final",
            config_error=error or None,
            lazy={"lazy": True, "eager": False}.get(lazy),
            idle=idle or None,
            budget=(limits[0], limits[1]) if len(limits) == 2 else (None, None),
        )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def explicit_decision(scope: str, config: Decision | None = None) -> Decision:
    """`--scope cwd|global|isolated` given: the user decided; `config`: what config.toml says besides."""
    decision = Decision(scope, ISOLATED if scope == ISOLATED else SHARED, f"--scope {scope}", final=True)
    if config is not None:
        decision.config_error, decision.lazy, decision.idle = config.config_error, config.lazy, config.idle
        decision.budget = config.budget
    return decision
