"""Wrap and unwrap as small text edits of a Document, plus the data the edited file must parse back to.

Wrap touches two places per stdio entry and nothing else:
  * the `command` value's token becomes the mcpsingleton executable;
  * `run [OPTIONS] <original command token>` is inserted in front of the first `args` element (or
    inside an empty array; or, when the entry has no `args`, a new `args` member after the command).
    No `--` unless the command starts with `-`: old MCP Inspector versions split argv at the first `--`.
The original command token is copied verbatim (escapes and quoting included) and the original `args`
elements are never rewritten, so the wrapped entry itself holds everything unwrap needs: replace the
command token by the first word after run's options, delete the elements before the original args. The one
bit the text cannot carry — that `args` did not exist — is kept in `records` as the exact text wrap inserted
(so is the MCPSINGLETON_HOME it may add). Unwrap deletes that text where it is still in place, else (a
client rewrote the file in its own layout) the member wherever the parser finds it, and only while no
original args follow. Unwrap works on a fresh parse, so edits the user made anywhere else (even inside
the original args) stay.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mcpsingleton.common.options import run_prefix
from mcpsingleton.common.paths import HOME_ENV
from mcpsingleton.ops.configs.entries import ArgsArray, Document, ServerEntry, Span, classify, wrapped_command_index
from mcpsingleton.policy.rules import decide

Recorded = Callable[[tuple[str, ...]], frozenset[str]]
"""The texts wrap inserted at an entry path (the entry's for args members, entry + `env` for env text)."""


@dataclass(frozen=True)
class Edit:
    """Replace text[start:end] by `text`."""

    start: int
    end: int
    text: str


@dataclass
class Plan:
    """What one wrap or unwrap does to one file."""

    edits: list[Edit] = field(default_factory=list)
    expected: Any = None  # what the edited text must parse to
    changed: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    inserted: list[tuple[tuple[str, ...], str]] = field(default_factory=list)  # args members/env pairs wrap added
    removed: list[tuple[tuple[str, ...], str]] = field(default_factory=list)  # … and unwrap took away
    env_by_hand: list[str] = field(default_factory=list)  # entries whose env wrap could not extend
    policies: list[str] = field(default_factory=list)  # per wrapped entry: the sharing it will get, and why


def wrap_prefix(entry: ServerEntry, scope: str | None) -> list[str]:
    """`run` and its options: the scope, the entry's name, every env key the entry sets (no `--` unless needed)."""
    env = entry.data.get("env")
    env_keys = list(env) if isinstance(env, dict) else None
    return run_prefix(entry.data["command"], scope=scope, name=entry.name, env_keys=env_keys)


def plan_wrap(doc: Document, executable: str, scope: str | None, home: str | None = None) -> Plan:
    """Edits that wrap every stdio entry of `doc`; with `home`, each entry's env also sets MCPSINGLETON_HOME."""
    plan = Plan(expected=copy.deepcopy(doc.data))
    for entry in _targets(doc, plan, "stdio"):
        assert entry.command is not None  # classify() checked it
        options = wrap_prefix(entry, scope)
        tokens = [*(doc.quote(option) for option in options), _text(doc, entry.command)]
        plan.edits += [_edit(entry.command, doc.quote(executable)), _args_insertion(doc, entry, tokens, plan)]
        _expect(plan, entry, executable, [*options, entry.data["command"], *entry.data.get("args", [])])
        if home is not None:
            _pass_home(doc, entry, home, plan)
        plan.policies.append(_policy_line(entry, scope))
    return plan


def _pass_home(doc: Document, entry: ServerEntry, home: str, plan: Plan) -> None:
    """Add MCPSINGLETON_HOME to the entry's env, for clients that pass servers a filtered environment."""
    env = entry.data.get("env")
    if isinstance(env, dict) and HOME_ENV in env:
        return
    if entry.env is None:
        plan.env_by_hand.append(entry.name)
        return
    text = entry.env.before + doc.pair(HOME_ENV, home) + entry.env.after
    plan.edits.append(Edit(entry.env.pos, entry.env.pos, text))
    plan.inserted.append((_home_record_path(entry, created="env" not in entry.data), text))
    _target(plan, entry).setdefault("env", {})[HOME_ENV] = home


def _home_record_path(entry: ServerEntry, created: bool) -> tuple[str, ...]:
    """Where the MCPSINGLETON_HOME wrap added is recorded: at `env` when wrap created the env member
    (unwrap may take the member out), at the variable when it went into the user's env."""
    return (*entry.path, "env") if created else (*entry.path, "env", HOME_ENV)


def _policy_line(entry: ServerEntry, scope: str | None) -> str:
    """`name: scope S, sharing (policy)`: what `run` will decide for the wrapped entry, as `explain` shows it."""
    command = [str(word) for word in (entry.data["command"], *entry.data.get("args", []))]
    decision = decide(scope or "auto", command, entry.name)
    sharing = decision.sharing or "decided when it runs"
    return f"{entry.name}: scope {decision.scope}, {sharing} ({decision.policy})"


def _args_insertion(doc: Document, entry: ServerEntry, tokens: list[str], plan: Plan) -> Edit:
    """Put `tokens` in front of the original args; a missing args member is created (and recorded)."""
    args, slot = entry.args, entry.slot
    assert slot is not None  # classify() checked it
    if args is None:
        member = slot.prefix + "[" + ", ".join(tokens) + "]"
        plan.inserted.append((entry.path, member))
        return Edit(slot.pos, slot.pos, member)
    if not args.items:
        return Edit(args.close, args.close, ", ".join(tokens))
    separator = _separator(doc.text, args)
    return Edit(args.items[0].start, args.items[0].start, separator.join(tokens) + separator)


def plan_unwrap(doc: Document, recorded: Recorded) -> Plan:
    """Edits that restore every wrapped entry of `doc`; `recorded` tells which args members wrap added."""
    plan = Plan(expected=copy.deepcopy(doc.data))
    for entry in _targets(doc, plan, "wrapped"):
        args, array, slot = entry.data["args"], entry.args, entry.slot
        index = wrapped_command_index(entry.data["command"], args)
        assert entry.command and array and slot and index is not None  # classify() checked them
        items = array.items
        plan.edits.append(_edit(entry.command, _text(doc, items[index])))
        member = doc.text[slot.pos : array.close + 1] if slot.pos <= array.open else ""
        added_args = _added_args(doc, entry, recorded(entry.path), member)
        if index == len(items) - 1 and added_args:
            plan.edits.append(added_args)
            plan.removed += [(entry.path, text) for text in recorded(entry.path)]
            _expect(plan, entry, args[index], None)
        else:
            end = items[index + 1].start if index + 1 < len(items) else items[index].end
            plan.edits.append(Edit(items[0].start, end, ""))
            _expect(plan, entry, args[index], args[index + 1 :])
        _unpass_home(doc, entry, (slot.pos, array.close + 1), recorded, plan)
    return plan


def _added_args(doc: Document, entry: ServerEntry, texts: frozenset[str], member: str) -> Edit | None:
    """The deletion of the args member wrap added (`texts` were recorded for it): the exact text where it is
    still in place, else (a client rewrote the file in its own layout) the member wherever it now is."""
    if not texts:
        return None
    assert entry.slot is not None  # classify() checked it
    if member in texts:
        return Edit(entry.slot.pos, entry.slot.pos + len(member), "")
    return _deletion(doc.drop((*entry.path, "args")))


def _unpass_home(
    doc: Document, entry: ServerEntry, members_at: tuple[int, ...], recorded: Recorded, plan: Plan
) -> None:
    """Take out the MCPSINGLETON_HOME wrap added: the exact text recorded where it is still in place (a whole
    env member right after the command or the args wrap added, or first in the env mapping); else, after a
    client rewrote the file, the variable wherever it is, with the env member when wrap created it and
    nothing else is in it."""
    env = entry.data.get("env")
    if not (isinstance(env, dict) and HOME_ENV in env):
        return
    member_path, variable_path = _home_record_path(entry, created=True), _home_record_path(entry, created=False)
    created, into_env = recorded(member_path), recorded(variable_path)
    spots = [(pos, len(env) == 1) for pos in members_at] + ([(entry.env.pos, False)] if entry.env else [])
    texts = created | into_env
    in_place = [(pos, text, whole) for pos, whole in spots for text in texts if doc.text.startswith(text, pos)]
    if in_place:
        pos, text, whole = in_place[0]
        removal: Edit | None = Edit(pos, pos + len(text), "")
    else:
        whole = bool(created) and len(env) == 1
        # a whole env written as dotted keys (`env.VAR = …`) has no member of its own: its one line goes
        removal = (_deletion(doc.drop(member_path) if whole else None) or _deletion(doc.drop(variable_path))
                   if texts else None)
    if removal is None:
        return
    plan.edits.append(removal)
    plan.removed += [(member_path, text) for text in created] + [(variable_path, text) for text in into_env]
    del _target(plan, entry)["env"][HOME_ENV]
    if whole:
        del _target(plan, entry)["env"]


def _deletion(span: Span | None) -> Edit | None:
    return Edit(span.start, span.end, "") if span else None


def apply(text: str, edits: list[Edit]) -> str:
    """The text with all (non-overlapping) edits made."""
    pieces, last = [], 0
    for edit in sorted(edits, key=lambda edit: (edit.start, edit.end)):
        if edit.start < last:
            raise ValueError("overlapping edits")
        pieces += [text[last : edit.start], edit.text]
        last = edit.end
    return "".join([*pieces, text[last:]])


def _targets(doc: Document, plan: Plan, target: str) -> list[ServerEntry]:
    """The entries of the `target` kind; the others are counted (and skipped ones explained)."""
    targets = []
    for entry in doc.entries:
        kind, why = classify(entry)
        plan.kinds[kind] += 1
        if kind == "skipped":
            plan.skipped.append((entry.name, why))
        elif kind == target:
            targets.append(entry)
            plan.changed.append(entry.name)
    return targets


def _target(plan: Plan, entry: ServerEntry) -> Any:
    """The entry's data in `plan.expected`."""
    target = plan.expected
    for key in entry.path:
        target = target[key]
    return target


def _expect(plan: Plan, entry: ServerEntry, command: str, args: list[str] | None) -> None:
    """Record in `plan.expected` what the entry must parse to after the edit (args None: no args key)."""
    target = _target(plan, entry)
    target["command"] = command
    if args is None:
        del target["args"]
    else:
        target["args"] = args


def _separator(text: str, args: ArgsArray) -> str:
    """Between inserted elements: the array's own line layout when it has one element per line."""
    lead = text[args.open : args.items[0].start]
    return "," + lead if "\n" in lead and not lead.strip() else ", "


def _text(doc: Document, span: Span) -> str:
    return doc.text[span.start : span.end]


def _edit(span: Span, text: str) -> Edit:
    return Edit(span.start, span.end, text)
