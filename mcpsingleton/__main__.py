"""Entry point. `run` is dispatched before click loads: it is the per-session warm path."""

from __future__ import annotations

import sys


def wants_shim(argv: list[str]) -> bool:
    """`run` without --help goes straight to the lean shim."""
    if argv[:1] != ["run"]:
        return False
    options = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
    return "--help" not in options and "-h" not in options


def main() -> None:
    from .platform import unsupported_reason  # before anything that needs fcntl or AF_UNIX

    if reason := unsupported_reason():
        sys.stderr.write(f"mcpsingleton: {reason}\n")
        sys.exit(1)
    argv = sys.argv[1:]
    if wants_shim(argv):
        from .shim import main as run_shim

        sys.exit(run_shim(argv[1:]))
    from .cli import cli

    cli()


if __name__ == "__main__":
    main()
