"""The one reader of a server's command line: which words name the server, and which names they stand for.

`ls`, `stop` and `logs` show the first one (`default_name`); the catalog and config.toml match every one
(`policy/rules.match_names`). One reader, so a server is never called one thing in `ls` and matched as another.
Imported on the shim's warm path (each session is named): `os` only, and no filesystem calls unless asked.
"""

import os

LAUNCHERS = frozenset(
    {
        "npx",
        "uvx",
        "pipx",
        "bunx",
        "node",
        "deno",
        "bun",
        "python",
        "python3",
        "uv",
        "npm",
        "pnpm",
        "yarn",
        "sh",
        "bash",
        "zsh",
        "env",
        "exec",
        "run",
        "dlx",
        "tool",
        "-m",
        "-c",
        "docker",
        "podman",
    }
)
"""Programs and subcommands that start a server rather than name one."""

LAUNCHER_KINDS = {
    **dict.fromkeys(("npx", "bunx", "npm", "pnpm", "yarn", "bun"), "js"),
    **dict.fromkeys(("uv", "uvx"), "uv"),
    **dict.fromkeys(("docker", "podman"), "container"),
    **dict.fromkeys(("sh", "bash", "zsh", "dash"), "shell"),
    **{name: name for name in ("env", "node", "deno", "pipx", "python")},
}
"""Launchers whose options take values; `run`, `exec`, `dlx`, `tool` keep the launcher they follow."""

VALUE_OPTIONS = {
    "js": frozenset({"-p", "--package", "-c", "--call", "--registry", "--cache", "--prefix", "-w", "--workspace"}),
    "uv": frozenset(
        {"--with", "-w", "--with-editable", "--with-requirements", "--from", "--python", "-p", "--directory",
         "--project", "--package", "--index", "--default-index", "--index-url", "-i", "--extra-index-url",
         "--find-links", "-f", "--env-file", "--cache-dir", "--config-file"}
    ),
    "env": frozenset({"-u", "--unset", "-C", "--chdir", "-S", "--split-string"}),
    "node": frozenset(
        {"-r", "--require", "--import", "--loader", "--experimental-loader", "-e", "--eval", "-p", "--print",
         "-C", "--conditions", "--env-file", "--title"}
    ),
    "deno": frozenset({"-c", "--config", "--import-map", "--lock", "--cert", "--location", "--env-file"}),
    "pipx": frozenset({"--spec", "--python", "--pip-args", "--index-url", "-i"}),
    "python": frozenset({"-W", "-X", "-c"}),
}
"""Options that take the next word as their value: a value is never a name (it may be a secret)."""

CONTAINER_FLAGS = frozenset(
    {"--rm", "--init", "--interactive", "--tty", "--detach", "--privileged", "--read-only", "--publish-all"}
)
"""`docker run` options that take no value; every other option of a container runner takes one."""

PACKAGE_OPTIONS = frozenset({"--package", "--from"})
"""Launcher options whose value names the server's package (`npx --package pkg bin`, `uvx --from pkg bin`):
matched, never shown (a `--from` URL may hold a token)."""

BUILD_DIRS = frozenset({"dist", "build", "bin", "src", "lib", "out", "cjs", "esm", "scripts"})
ENTRY_FILES = frozenset({"index", "main", "server", "cli", "__main__", "app", "stdio"})
"""`…/weather/dist/index.js` and `…/weather/stdio.py` are named by their folder, past build-output folders."""
SCRIPT_SUFFIXES = (".js", ".mjs", ".cjs", ".ts", ".py", ".exe", ".cmd", ".bat")
SCRIPT_PUNCTUATION = "'\";&|()"
"""Stripped from the words of a `sh -c "…"` script: quotes and command separators."""
REGISTRY_PREFIXES = ("docker.io/", "index.docker.io/")


def is_launcher(program: str) -> bool:
    return program in LAUNCHERS or program.startswith(("python", "node"))


def is_assignment(word: str) -> bool:
    """`NAME=value`, as `env` and shells read it."""
    name, equals, _ = word.partition("=")
    return bool(equals) and name.replace("_", "a").isalnum() and not name[:1].isdigit()


def server_words(argv: list[str]) -> list[tuple[str, bool]]:
    """The words that may name the server, in order, each with whether it is a package option's value.

    Launchers (`npx`, `node`, `docker run`, …), option values and `VAR=value` words are skipped; a word
    with spaces (`sh -c "…"`) is read as a command of its own.
    """
    found: list[tuple[str, bool]] = []
    launcher = ""
    words = iter(argv)
    for word in words:
        if is_assignment(word):
            continue
        if word.startswith("-"):
            flag, has_value, value = word.partition("=")
            if flag in PACKAGE_OPTIONS:
                found.append((value if has_value else next(words, ""), True))
            elif launcher == "shell" and flag[1:2] != "-" and flag.endswith("c"):  # `sh -c`, `bash -lc`
                found += _script_words(next(words, ""))
            elif not has_value and _takes_value(launcher, flag):
                next(words, None)
            continue
        if " " in word.strip():
            found += _script_words(word)
            continue
        base = os.path.basename(word.rstrip("/"))
        if is_launcher(base):
            launcher = LAUNCHER_KINDS.get(base.rstrip(".0123456789"), launcher)
            continue
        found.append((word, False))
    return found


def _script_words(script: str) -> list[tuple[str, bool]]:
    return server_words([part.strip(SCRIPT_PUNCTUATION) for part in script.split()])


def default_name(argv: list[str]) -> str:
    """A short label for ls/stop/logs: the last part of the first name of the command's server word.

    It appears in `ls` and in the waiter's world-readable argv, so it never comes from a `VAR=value`
    word or an option's value (`env TOKEN=… server`, `uvx --from URL x`, `docker run -e TOKEN image`).
    """
    for word, is_package in server_words(argv):
        if not is_package:
            names = word_names(word)
            return names[0].rsplit("/", 1)[-1].lstrip("@") if names else "server"
    first = os.path.basename(argv[0]) if argv else ""
    return first if first and not is_assignment(first) else "server"


def word_names(word: str, follow_links: bool = False) -> list[str]:
    """What one word may name, most specific first: a package (bare, and a registry image's last part), or
    for a path its package or program; `follow_links` also reads where a link into node_modules points."""
    if word.startswith(("/", "./", "../", "~")) or "\\" in word or word.endswith(SCRIPT_SUFFIXES):
        return _path_names(word, follow_links)
    if "://" in word or word.startswith("git+"):
        return []  # a URL (`uvx --from git+https://…`) names a source, and may carry a token
    bare = _strip_version(word.removeprefix("npm:").removeprefix("jsr:"))  # deno's `npm:pkg@1`, `jsr:@s/p`
    for prefix in REGISTRY_PREFIXES:
        bare = bare.removeprefix(prefix)
    if not bare:
        return []
    names = [bare]
    if "/" in bare and not bare.startswith("@"):
        names.append(bare.rsplit("/", 1)[1])  # docker `ghcr.io/org/server` → `server` as well
    return names


def _takes_value(launcher: str, option: str) -> bool:
    if launcher == "container":
        is_flag_cluster = option[1:2] != "-" and set(option[1:]) <= set("itdP")
        return not (is_flag_cluster or option in CONTAINER_FLAGS)
    return option in VALUE_OPTIONS.get(launcher, ())


def _strip_version(word: str) -> str:
    """`pkg@1.2`, `@scope/pkg@latest`, `pkg==1.0`, `pkg[extra]`, `image:tag`, `image@sha256:…` → the bare name."""
    at = word.find("@", 1)
    if at > 0:
        word = word[:at]
    for marker in ("==", ">=", "<=", "~=", "!=", "[", ">", "<"):
        word = word.split(marker, 1)[0]
    last_slash = word.rfind("/")
    colon = word.rfind(":")
    if colon > last_slash:
        word = word[:colon]
    return word


def _path_names(word: str, follow_links: bool) -> list[str]:
    """Names a filesystem path stands for: the package under node_modules, else the program or script.

    A link into node_modules (npm's `node_modules/.bin/NAME`, a global bin dir) also stands for the
    package it points into, so every launch form of a catalog server finds its entry.
    """
    names = _names_in_path(word)
    if follow_links:
        try:
            target = os.path.realpath(os.path.expanduser(word))
            written = os.path.abspath(os.path.expanduser(word))
        except OSError:  # a relative path from a deleted directory: there is no link left to read
            return names
        if "/node_modules/" in target and target != written:
            names = _names_in_path(target) + names
    return names


def _names_in_path(word: str) -> list[str]:
    parts = [part for part in word.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    if "node_modules" in parts:
        after = parts[len(parts) - parts[::-1].index("node_modules") :]
        if after[:1] == [".bin"]:
            return after[1:2]  # the bin name; its package comes from the link, where it can be read
        if after:
            return ["/".join(after[:2]) if after[0].startswith("@") and len(after) > 1 else after[0]]
    if not parts:
        return []
    base = parts[-1]
    for suffix in SCRIPT_SUFFIXES:
        base = base.removesuffix(suffix)
    if base in ENTRY_FILES:
        folders = [part for part in parts[:-1] if part not in BUILD_DIRS]
        return [folders[-1]] if folders else []
    return [base]
