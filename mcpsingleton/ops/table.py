"""Plain-text tables that fit the terminal: the wide free-text columns cut with `…`, then, on a terminal too
narrow even for that, the columns that matter least left out.

`ls` rows carry long free text (the policy: why a server is shared or not; the sessions' client names).
At full width a row runs to ~230 columns and every line wraps; cut, the table stays a table, and
`ls --json` (or a pipe, which gets every character) still has everything.
"""

from __future__ import annotations

import os
import sys

GAP = "  "
MIN_WIDTH = 8
ELLIPSIS = "…"


def terminal_width() -> int | None:
    """The columns to fit in when stdout is a terminal: COLUMNS when set, else the terminal's own; None for
    a pipe or a file, which get every character (test runners export COLUMNS to everything they start)."""
    try:
        if not sys.stdout.isatty():
            return None
        columns = os.environ.get("COLUMNS", "")
        return (
            int(columns)
            if columns.isdigit() and int(columns) > 0
            else os.get_terminal_size(sys.stdout.fileno()).columns
        )
    except (OSError, ValueError):
        return None


def render(
    rows: list[list[str]], width: int | None, shrink_first: tuple[str, ...], drop_first: tuple[str, ...]
) -> list[str]:
    """The rows (a header first) as aligned lines no longer than `width` (None: no limit).

    The columns named in `shrink_first` are cut, in that order, down to their header's width or MIN_WIDTH;
    when that is not enough, the columns in `drop_first` are left out, in that order."""
    columns = list(range(len(rows[0])))
    natural = [max(len(row[column]) for row in rows) for column in columns]
    floors = [
        min(natural[c], max(len(rows[0][c]), MIN_WIDTH)) if rows[0][c] in shrink_first else natural[c] for c in columns
    ]
    for name in drop_first:
        if width is None or _total([floors[c] for c in columns]) <= width:
            break
        columns.remove(rows[0].index(name))
    widths = {c: natural[c] for c in columns}
    overflow = _total(list(widths.values())) - width if width is not None else 0
    for name in shrink_first:
        column = rows[0].index(name)
        if overflow <= 0 or column not in widths:
            continue
        taken = min(widths[column] - floors[column], overflow)
        widths[column] -= taken
        overflow -= taken
    return [GAP.join(_cut(row[c], widths[c]).ljust(widths[c]) for c in columns).rstrip() for row in rows]


def _total(widths: list[int]) -> int:
    return sum(widths) + len(GAP) * (len(widths) - 1)


def _cut(cell: str, width: int) -> str:
    return cell if len(cell) <= width else cell[: width - 1] + ELLIPSIS
