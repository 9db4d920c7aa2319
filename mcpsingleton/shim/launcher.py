"""A lean `mcpsingleton` for client configs: Python without `site`, the package found by path.

Every session start runs the command a client config names. A console script written by pip starts
Python with `site` (each `.pth` file in site-packages is read, setuptools' distutils hook runs) and,
written by older pips, imports `re` to tidy `argv[0]`: about 10 ms more than bare `python -c pass` per
session here. The launcher runs `python -I -S` with the sys.path entries `site` would have added,
recorded when the launcher is written. It keeps the name `mcpsingleton`, so a wrapped entry still
reads `mcpsingleton run …` and unwrap still recognizes it; should the install move or change under
it, it hands over to the console script it was written for.

Its first line is `#!PYTHON -IS` where the kernel can run that: a path without blanks that fits a `#!`
line. Any other path (a venv under "Application Support", a deep one) gets the `/bin/sh` trampoline pip
writes in that case too: sh execs Python on the same file, which Python reads past as a string.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from ..common.atomic import write_atomically
from ..common.paths import ensure_private_dir

NAME = "mcpsingleton"
SHEBANG_LIMIT = 127
"""Bytes of a `#!` line every kernel we run on reads whole (Linux before 5.1 and macOS cut longer ones)."""
TRAMPOLINE = "#!/bin/sh\n'''exec' {python} -I -S \"$0\" \"$@\"\n' '''\n"
"""For sh: exec PYTHON -I -S THIS_FILE ARGS. For Python: a string expression, then the launcher proper."""


def site_paths(python: str) -> list[str]:
    """The sys.path entries `site` adds for `python`: its site-packages and the paths its .pth files name."""
    probe = "import sys; print('\\n'.join(sys.path))"

    def path_with(*flags: str) -> list[str]:
        done = subprocess.run([python, *flags, "-c", probe], capture_output=True, text=True, check=True, timeout=30)
        return done.stdout.splitlines()

    without_site = set(path_with("-I", "-S"))
    return [path for path in path_with("-I") if path not in without_site]


def interpreter_lines(python: str) -> str | None:
    """The launcher's first line(s), which start `python -I -S` on it; None for a path no launcher can
    name (a backslash or a line break would not stay plain text inside the trampoline's Python string)."""
    shebang = f"#!{python} -IS"
    if len(shebang.encode()) <= SHEBANG_LIMIT and not any(char.isspace() for char in python):
        return shebang + "\n"
    if any(char in python for char in "\\\n\r"):
        return None
    return TRAMPOLINE.format(python=shlex.quote(python))  # shlex's quoting never holds three quotes in a row


def launcher_text(python: str, paths: list[str], console_script: str) -> str:
    lines = interpreter_lines(python)
    assert lines is not None, "launcher_path names the console script for such an interpreter"
    return (
        f"{lines}"
        f"# written by `mcpsingleton wrap`: starts without site; falls back to {console_script}\n"
        "import sys\n"
        f"sys.path += {paths!r}\n"
        "try:\n"
        "    from mcpsingleton.__main__ import main\n"
        "except ImportError:\n"
        "    import os\n"
        f"    os.execv({console_script!r}, [{console_script!r}, *sys.argv[1:]])\n"
        "sys.exit(main())\n"
    )


def launcher_path(directory: str, console_script: str, python: str = sys.executable) -> str:
    """Where `write_launcher` puts the launcher, or the console script when `python` cannot have one."""
    if interpreter_lines(python) is None:
        return console_script
    return os.path.join(directory, NAME)


def write_launcher(directory: str, console_script: str, python: str = sys.executable) -> str:
    """Write the launcher for this interpreter into `directory` (atomically, mode 0755); its path.

    An interpreter path no launcher can name gets none: the console script's path comes back.
    """
    path = launcher_path(directory, console_script, python)
    if path == console_script:
        return console_script
    ensure_private_dir(directory)  # configs run what is here in every session: nobody else may swap it
    write_atomically(path, launcher_text(python, site_paths(python), console_script).encode(), mode=0o755)
    return path
