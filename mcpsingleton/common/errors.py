"""Errors for people: what went wrong is one line, `mcpsingleton: what happened; what to do`.

Imported on the shim's warm path: nothing but `sys`.
"""

import sys


class UsageError(Exception):
    """Bad command line or environment; reported as one line, exit status 2."""


class SetupError(Exception):
    """The machine is not in a state we can safely run in; reported as one line, exit status 1."""


def stderr_line(message: str) -> None:
    """Errors for people: one line, prefixed with the program name."""
    sys.stderr.write(f"mcpsingleton: {message}\n")
    sys.stderr.flush()
