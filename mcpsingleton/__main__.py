"""Entry point. `run` is dispatched before click loads: it is the per-session warm path."""

import sys


def wants_shim(argv: list[str]) -> bool:
    """`run` goes straight to the lean shim, unless `run` itself (not the server) is asked for --help."""
    if argv[:1] != ["run"]:
        return False
    from .common.options import asks_for_help

    return not asks_for_help(argv[1:])


def main() -> None:
    from .common.platform import unsupported_reason  # before anything that needs fcntl or AF_UNIX

    if reason := unsupported_reason():
        sys.stderr.write(f"mcpsingleton: {reason}\n")
        sys.exit(1)
    argv = sys.argv[1:]
    if wants_shim(argv):
        from .shim.attach import main as run_shim

        sys.exit(run_shim(argv[1:]))
    from .common.errors import SetupError, stderr_line
    from .ops.cli import cli

    try:
        cli()
    except SetupError as exc:  # e.g. no usable place for our files: one line, not a traceback
        stderr_line(str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
