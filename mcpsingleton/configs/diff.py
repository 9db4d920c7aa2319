"""Dry-run diffs: what wrap or unwrap would change, with every secret value masked."""

from __future__ import annotations

import difflib

from mcpsingleton.configs.entries import Document
from mcpsingleton.configs.wrapping import Edit, apply

MASK = '"***"'


def masked(doc: Document) -> str:
    """The text with env/headers values and secret-named values replaced by a mask."""
    return apply(doc.text, [Edit(span.start, span.end, MASK) for span in doc.secrets])


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
