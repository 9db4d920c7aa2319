"""What may share a backend: the key (resolved argv, scope part, salted env fingerprint), the env rule behind
its env part (secret names, --env-key, what the client config set), and secret masking. Where a key's files
live is `common/paths.py`.

Imported on the shim's warm path: standard library only, nothing heavy.
"""

import os

from ..common.cmdline import is_assignment
from ..common.errors import SetupError
from ..common.options import KEY_SCOPES
from ..common.platform import process_reader
from ..common.wire import PROTOCOL

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing on the warm path
if TYPE_CHECKING:
    from collections.abc import Callable


try:  # the small builtin module avoids loading OpenSSL on every session start
    from _sha256 import sha256  # type: ignore[import-not-found]  # no stub; CPython has it
except ImportError:  # pragma: no cover - other Pythons
    from hashlib import sha256


SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATE")
"""Env var names containing one of these must match for two sessions to share a backend."""

VOLATILE_VARS = frozenset(
    {"PWD", "OLDPWD", "SHLVL", "_", "TERM_SESSION_ID", "WINDOWID", "GNOME_KEYRING_CONTROL", "KEYTIMEOUT"}
    | {"COLUMNS", "LINES"}
)
"""Per-terminal or per-shell values that never decide what a server does."""

CLIENT_SPAWN_VARS = frozenset(
    {"CLAUDECODE", "CLAUDE_PROJECT_DIR", "AI_AGENT", "COREPACK_ENABLE_AUTO_PIN", "NoDefaultCurrentDirectoryInExePath"}
    | {"GEMINI_CLI"}
)
CLIENT_SPAWN_PREFIXES = ("CLAUDE_CODE_", "GEMINI_CLI_")
"""Names a client sets on every server it spawns, some per session: not config.

Measured with Claude Code 2.1.197 and Gemini CLI 0.61.0 (tests/fixtures/clients); Codex 0.171.0 adds none.
"""

CLIENT_EDITED_VARS = frozenset({"PATH"})
"""Variables clients change for every server they spawn (Codex prepends its own tool dir to PATH): never
config. What PATH decides, the program it finds, is in the key already (the resolved argv); a user whose
servers must also differ by PATH names it with --env-key."""

SHELLS = frozenset({"sh", "bash", "zsh", "dash", "fish", "env"})
"""Programs a client may start the shim through; their environment is the config's, not the client's."""

def which(program: str, path: str | None = None) -> str | None:
    """PATH lookup like shutil.which, without importing shutil on the warm path."""
    if os.sep in program:
        return program if os.access(program, os.X_OK) else None
    for entry in (path if path is not None else os.environ.get("PATH", os.defpath)).split(os.pathsep):
        candidate = os.path.join(entry or ".", program)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def resolve_argv(argv: list[str], cwd: str) -> list[str]:
    """The command with its program made absolute, so equal programs hash equally."""
    program = argv[0]
    found = which(program) if os.sep not in program else os.path.join(cwd, program)
    if found:
        program = canonical_path(found)
    return [program, *argv[1:]]


def canonical_path(path: str, case_insensitive: "Callable[[str], bool] | None" = None) -> str:
    """`path` as its filesystem tells directories apart, so one directory is one key: links resolved, and
    on a case-insensitive filesystem (macOS's default APFS, vfat, an ext4 casefold dir) case folded, so
    `~/Projects` and `~/projects` agree. Detected per path (`case_insensitive`), never assumed by platform.
    """
    real = os.path.realpath(path)
    return real.casefold() if (case_insensitive or is_case_insensitive)(real) else real


def is_case_insensitive(path: str) -> bool:
    """Whether `path`'s deepest name with letters also names the same file in the other case (two stats)."""
    parent, name = os.path.split(path)
    while name and name.swapcase() == name:
        parent, name = os.path.split(parent)
    if not name:
        return False
    try:
        return os.path.samestat(os.stat(os.path.join(parent, name)), os.stat(os.path.join(parent, name.swapcase())))
    except OSError:
        return False


def _is_volatile(upper: str) -> bool:
    return upper in VOLATILE_VARS or upper.startswith("MCPSINGLETON_") or upper.endswith(("_SOCK", "_PID"))


def _set_by_client(name: str) -> bool:
    """Exact names: clients set exact names, and a config's `Path` is not the PATH a client edits."""
    return name in CLIENT_SPAWN_VARS or name in CLIENT_EDITED_VARS or name.startswith(CLIENT_SPAWN_PREFIXES)


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return not _is_volatile(upper) and any(marker in upper for marker in SECRET_MARKERS)


def reads_client_environ() -> bool:
    """Whether the client's own environment can be read here, so config-set variables count (`explain`, `ls`)."""
    return process_reader().environ(os.getpid()) is not None


def client_environ() -> dict[str, str] | None:
    """The environment the client that started us was started with, or None where we cannot read it.

    Shells between the client and us (`sh -c "mcpsingleton run …"`) carry the config's env already, so
    we look past them. Linux reads /proc; macOS asks sysctl KERN_PROCARGS2 for it (one call per process,
    no child process); where neither works, callers fall back to secrets and --env-key.
    """
    reader = process_reader()
    pid = os.getppid()
    for _ in range(4):
        if pid <= 1:
            return None
        if reader.program(pid) not in SHELLS:
            return reader.environ(pid)
        pid = reader.parent(pid)
    return None


def config_set_names(env: dict[str, str], parent: dict[str, str] | None) -> set[str]:
    """Variables the client config set for this server: ours but not the client's own (or different from it)."""
    if parent is None:
        return set()
    return {
        name
        for name, value in env.items()
        if parent.get(name) != value and not _is_volatile(name.upper()) and not _set_by_client(name)
    }


SECRET_NAMED = "secret-named"
NAMED_BY_OPTION = "--env-key"
SET_BY_CONFIG = "set by the client config"
"""Why a variable is part of the key, as `explain` says it (names only, never values)."""


def key_env_names(env: dict[str, str], extra_keys: list[str], parent: dict[str, str] | None = None) -> dict[str, str]:
    """The variables whose values must match to share, each with its reason: NAMED_BY_OPTION before
    SECRET_NAMED before SET_BY_CONFIG, where one variable has several.

    Those are: every secret-looking variable, every --env-key, and every variable the client config set
    for the server (`parent` is the client's own environment; None when it cannot be read).
    """
    reasons = dict.fromkeys(config_set_names(env, parent), SET_BY_CONFIG)
    reasons.update(dict.fromkeys((name for name in env if is_secret_name(name)), SECRET_NAMED))
    reasons.update(dict.fromkeys(extra_keys, NAMED_BY_OPTION))
    return reasons


def env_fingerprint(
    env: dict[str, str], extra_keys: list[str], salt: bytes, parent: dict[str, str] | None = None
) -> str:
    """Salted digest of the env vars that must match to share (`key_env_names`); values never leave this function."""
    digest = sha256(salt)
    for name in sorted(key_env_names(env, extra_keys, parent)):
        value = env.get(name)
        digest.update(b"\0" + name.encode("utf-8", "surrogateescape") + b"=")
        digest.update(b"-" if value is None else b"+" + value.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def user_salt(directory: str) -> bytes:
    """A per-user random salt so that key hashes cannot be brute-forced back into secret values."""
    path = os.path.join(directory, "salt")
    try:
        return _read_or_create_salt(path)
    except OSError as exc:
        raise SetupError(f"cannot use {path} ({exc.strerror}); set MCPSINGLETON_HOME to a writable dir") from exc


def _read_or_create_salt(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            salt = handle.read()
        if len(salt) == 32:
            return salt
    except FileNotFoundError:
        pass
    salt = os.urandom(32)
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}"  # serve attaches sessions from several threads at once
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, salt)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # first writer wins; everyone then reads the same salt
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path, "rb") as handle:
        return handle.read()


def key_parts(
    argv: list[str],
    scope: str,
    cwd: str,
    env: dict[str, str],
    extra_keys: list[str],
    salt: bytes,
    parent_env: dict[str, str] | None = None,
) -> list[str]:
    """What a key hashes (resolved argv, scope part, env part; equal parts share one backend), computed once
    for the key and its protocol-1 twin: `key_of(key_parts(...))`."""
    if scope == "isolated":
        scope_part = f"isolated:{os.getpid()}:{os.urandom(8).hex()}"
    elif scope == "cwd":
        scope_part = "cwd:" + canonical_path(cwd)
    elif scope == "global":
        scope_part = "global"
    else:
        raise ValueError(f"a key needs a resolved scope, one of {KEY_SCOPES}, not {scope!r}")
    return [*resolve_argv(argv, cwd), scope_part, env_fingerprint(env, extra_keys, salt, parent_env)]


def key_of(parts: list[str], protocol: str = PROTOCOL) -> str:
    """The key of `key_parts` under a wire protocol (the protocol is hashed in: keys change with it)."""
    digest = sha256(protocol.encode())
    for part in parts:
        digest.update(b"\0" + part.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:20]


def redacted_argv(argv: list[str]) -> list[str]:
    """The command as `ls` shows it and state files keep it: values of secret-named `VAR=value` words and
    options (`TOKEN=…`, `--api-key …`, `--token=…`) replaced by `***`, so secrets never reach disk or `ls`."""
    shown: list[str] = []
    hide_next = False
    for word in argv:
        name, equals, _ = word.partition("=")
        is_option = word.startswith("-")
        secret = is_secret_name(name.lstrip("-").replace("-", "_"))
        if hide_next or (secret and equals and (is_option or is_assignment(word))):
            shown.append(f"{name}=***" if equals and not hide_next else "***")
        else:
            shown.append(word)
        hide_next = secret and is_option and not equals
    return shown


