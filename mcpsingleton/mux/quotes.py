"""Where a JSON string ends: the one rule for escaped quotes, at copy speed. Pure functions.

A quote closes a string when an even number of backslashes precede it within the string. Plain text
costs one `find` per quote. Text that embeds JSON has thousands of escaped quotes: past
`QUOTES_STEPPED` of them, the rest is searched window by window in small copies where every escape
pair is blanked, so the first quote left is the closing one. Blanking `\\"` alone is exact unless a
window holds an escaped backslash before a quote (text escaped twice over): then `\\\\` is blanked
first. Small copies: no fresh pages to fault in for a 10 MB line. Used for whole lines (jsonwalk.py)
and for a string arriving in pieces (mux/session_stream.py), which carries `escaped` between pieces.
"""

from __future__ import annotations

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing in every broker
if TYPE_CHECKING:
    from collections.abc import Callable

QUOTES_STEPPED = 16
"""Quotes examined one by one before the rest of the string is searched in blanked windows."""
WINDOW = 32 * 1024
"""Bytes per blanked copy (at least 2: a window may give its last backslash to the next one)."""
_BACKSLASH = 0x5C


def closing_quote(
    data: bytes, start: int, escaped: bool = False, on_step: Callable[[], None] | None = None
) -> tuple[int, bool]:
    """The index in `data` of the quote that closes the string whose content continues at `start` (-1
    when it does not close within `data`), and whether `data` ends inside an escape (the next piece's
    first byte is escaped). `escaped`: the byte at `start` is, by a backslash before it. `on_step` is
    called for each escaped quote examined one by one (a caller's budget of Python steps)."""
    if escaped:
        if start >= len(data):
            return -1, True
        start += 1  # the escaped byte never closes the string
    quote = data.find(b'"', start)
    for _ in range(QUOTES_STEPPED):
        if quote < 0:
            return -1, ends_escaping(data, start)
        if quote_is_real(data, start, quote):
            return quote, False
        if on_step is not None:
            on_step()
        quote = data.find(b'"', quote + 1)
    if quote < 0:
        return -1, ends_escaping(data, start)
    return _blanked(data, data.rfind(b'"', 0, quote) + 1)  # nothing carries over an escaped quote


def quote_is_real(data: bytes, start: int, quote: int) -> bool:
    """Whether the quote at `quote` ends the string: an even run of backslashes (from `start` on) before it."""
    run = quote
    while run > start and data[run - 1] == _BACKSLASH:
        run -= 1
    return (quote - run) % 2 == 0


def ends_escaping(data: bytes, start: int) -> bool:
    """Whether an odd run of backslashes (from `start` on) ends `data`."""
    run = len(data)
    while run > start and data[run - 1] == _BACKSLASH:
        run -= 1
    return (len(data) - run) % 2 == 1


def _blanked(data: bytes, start: int) -> tuple[int, bool]:
    """`closing_quote` from `start`, where no escape is open, in blanked windows."""
    first = start
    while start < len(data):
        stop = min(start + WINDOW, len(data))
        window = data[start:stop]
        if stop < len(data) and window.endswith(b"\\"):
            trailing = len(window) - len(window.rstrip(b"\\"))
            if trailing % 2:  # the last backslash escapes the next window's first byte: it starts that window
                stop -= 1
                window = window[:-1]
        blanked = window.replace(b'\\"', b"__")
        found = blanked.find(b'"')
        if blanked.find(b"\\", 0, found if found >= 0 else len(blanked)) >= 0 and b'\\\\"' in window:
            # an escaped backslash before a quote (text escaped twice over): blank escaped backslashes first
            found = window.replace(b"\\\\", b"__").replace(b'\\"', b"__").find(b'"')
        if found >= 0:
            return start + found, False
        start = stop
    return -1, ends_escaping(data, first)
