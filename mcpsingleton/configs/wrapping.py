"""Wrap and unwrap as small text edits of a Document, plus the data the edited file must parse back to.

Wrap touches two places per stdio entry and nothing else:
  * the `command` value's token becomes the mcpsingleton executable;
  * `run [OPTIONS] -- <original command token>` is inserted in front of the first `args` element (or
    inside an empty array; or, when the entry has no `args`, a new `args` member after the command).
The original command token is copied verbatim (escapes and quoting included) and the original `args`
elements are never rewritten, so the wrapped entry itself holds everything unwrap needs: replace the
command token by the element after `--`, delete the elements before the original args. The one bit the
text cannot carry — that `args` did not exist — is kept in `records` as the exact text wrap inserted,
and honoured only while that text is still there unchanged. Unwrap works on a fresh parse, so edits the
user made anywhere else (even inside the original args) stay.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mcpsingleton.configs.entries import ArgsArray, Document, ServerEntry, Span, classify, wrapped_command_index
from mcpsingleton.policy import decide

Recorded = Callable[[tuple[str, ...], str], bool]


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
    inserted: list[tuple[tuple[str, ...], str]] = field(default_factory=list)  # args members wrap added
    removed: list[tuple[tuple[str, ...], str]] = field(default_factory=list)  # … and unwrap took away
    policies: list[str] = field(default_factory=list)  # per wrapped entry: the sharing it will get, and why


def run_prefix(entry: ServerEntry, scope: str | None) -> list[str]:
    """`run`, its options (the scope, the entry's name, every env key the entry sets), and `--`."""
    options = ["run", *(["--scope", scope] if scope else []), "--name", entry.name]
    env = entry.data.get("env")
    for key in env if isinstance(env, dict) else ():
        options += ["--env-key", key]
    return [*options, "--"]


def plan_wrap(doc: Document, executable: str, scope: str | None) -> Plan:
    """Edits that wrap every stdio entry of `doc`."""
    plan = Plan(expected=copy.deepcopy(doc.data))
    for entry in _targets(doc, plan, "stdio"):
        options = run_prefix(entry, scope)
        tokens = [*(doc.quote(option) for option in options), _text(doc, entry.command)]
        plan.edits += [_edit(entry.command, doc.quote(executable)), _args_insertion(doc, entry, tokens, plan)]
        _expect(plan, entry, executable, [*options, entry.data["command"], *entry.data.get("args", [])])
        plan.policies.append(_policy_line(entry, scope))
    return plan


def _policy_line(entry: ServerEntry, scope: str | None) -> str:
    """`name: scope S, sharing (policy)`: what `run` will decide for the wrapped entry, as `explain` shows it."""
    command = [str(word) for word in (entry.data["command"], *entry.data.get("args", []))]
    decision = decide(scope or "auto", command, entry.name)
    sharing = decision.sharing or "decided when it runs"
    return f"{entry.name}: scope {decision.scope}, {sharing} ({decision.policy})"


def _args_insertion(doc: Document, entry: ServerEntry, tokens: list[str], plan: Plan) -> Edit:
    """Put `tokens` in front of the original args; a missing args member is created (and recorded)."""
    args = entry.args
    if args is None:
        member = entry.slot.prefix + "[" + ", ".join(tokens) + "]"
        plan.inserted.append((entry.path, member))
        return Edit(entry.slot.pos, entry.slot.pos, member)
    if not args.items:
        return Edit(args.close, args.close, ", ".join(tokens))
    separator = _separator(doc.text, args)
    return Edit(args.items[0].start, args.items[0].start, separator.join(tokens) + separator)


def plan_unwrap(doc: Document, recorded: Recorded) -> Plan:
    """Edits that restore every wrapped entry of `doc`; `recorded` tells which args members wrap added."""
    plan = Plan(expected=copy.deepcopy(doc.data))
    for entry in _targets(doc, plan, "wrapped"):
        args, items = entry.data["args"], entry.args.items
        index = wrapped_command_index(entry.data["command"], args)
        plan.edits.append(_edit(entry.command, _text(doc, items[index])))
        member = doc.text[entry.slot.pos : entry.args.close + 1] if entry.slot.pos <= entry.args.open else ""
        if index == len(items) - 1 and member and recorded(entry.path, member):
            plan.edits.append(Edit(entry.slot.pos, entry.args.close + 1, ""))
            plan.removed.append((entry.path, member))
            _expect(plan, entry, args[index], None)
        else:
            end = items[index + 1].start if index + 1 < len(items) else items[index].end
            plan.edits.append(Edit(items[0].start, end, ""))
            _expect(plan, entry, args[index], args[index + 1 :])
    return plan


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


def _expect(plan: Plan, entry: ServerEntry, command: str, args: list[str] | None) -> None:
    """Record in `plan.expected` what the entry must parse to after the edit (args None: no args key)."""
    target = plan.expected
    for key in entry.path:
        target = target[key]
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
