"""Dry-run diffs: what wrap or unwrap would change, with secrets masked and everything else readable."""

from __future__ import annotations

import difflib

from mcpsingleton.ops.configs.entries import Document, Span, wrapped_command_index
from mcpsingleton.ops.configs.wrapping import Edit, apply
from mcpsingleton.shim.keys import redacted_argv

MASK = '"***"'


def masked(doc: Document) -> str:
    """The text with the secret values (`entries.is_secret`) and the secret args words `ls` hides masked."""
    spans = set(doc.secrets) | set(_secret_args(doc))
    return apply(doc.text, [Edit(span.start, span.end, MASK) for span in spans])


def _secret_args(doc: Document) -> list[Span]:
    """The args elements `ls` would show as `***` (`--token X`, `API_KEY=…`): wrap rewrites args lines. In a
    wrapped entry only the server's command is read so: `run`'s `--env-key NAME` names a variable."""
    spans = []
    for entry in doc.entries:
        args = entry.data.get("args") if isinstance(entry.data, dict) else None
        if entry.args is None or not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
            continue
        command = entry.data.get("command")
        server_from = (wrapped_command_index(command, args) if isinstance(command, str) else None) or 0
        shown = args[:server_from] + redacted_argv(args[server_from:])  # `run`'s own options name, never hold, secrets
        spans += [span for span, word, seen in zip(entry.args.items, args, shown, strict=True) if word != seen]
    return spans


def unified(path: str, before: Document, after: Document) -> str:
    """A unified diff of the masked texts, every line newline-terminated for printing."""
    lines = difflib.unified_diff(
        masked(before).splitlines(keepends=True),
        masked(after).splitlines(keepends=True),
        fromfile=path,
        tofile=path,
        n=2,
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
