"""What may share a backend (the key), and where each key's files live.

Imported on the shim's warm path: standard library only, nothing heavy.
"""

from __future__ import annotations

import os
import stat
import sys

from ..common.cmdline import is_assignment
from ..common.platform import process_reader

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing on the warm path
if TYPE_CHECKING:
    from collections.abc import Callable


try:  # the small builtin module avoids loading OpenSSL on every session start
    from _sha256 import sha256  # type: ignore[import-not-found]  # no stub; CPython has it
except ImportError:  # pragma: no cover - other Pythons
    from hashlib import sha256

PROTOCOL = "2"
"""Wire protocol of shim and broker; part of every key, so an upgrade never attaches to an old broker."""
LEGACY_PROTOCOL = "1"
"""The per-key brokers of the previous version: a shim still attaches to one that runs (the upgrade path)."""
BROKER = "broker"
"""The one broker's files in the runtime dir: `broker.sock`, `broker.lock`, `broker.json` (KeyPaths(BROKER));
no key is ever this word (keys are hex digests)."""

SCOPES = ("auto", "cwd", "global", "isolated")
KEY_SCOPES = ("cwd", "global", "isolated")
"""What a key is computed for; `auto` is first resolved to one of these."""

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

KEY_ENV = "MCPSINGLETON_KEY"
HOME_ENV = "MCPSINGLETON_HOME"
RUN_USER = "/run/user"
SOCKET_PATH_LIMIT = 104  # macOS sun_path; Linux allows 108
LONGEST_PID = "9" * 7  # Linux pid_max is at most 2**22; macOS pids have 5 digits


class UsageError(Exception):
    """Bad command line or environment; reported as one line, exit status 2."""


class SetupError(Exception):
    """The machine is not in a state we can safely run in; reported as one line, exit status 1."""


def home_override() -> str | None:
    """MCPSINGLETON_HOME: when set, every file of ours lives under it (tests, or a user's explicit choice)."""
    return os.environ.get(HOME_ENV) or None


def runtime_dir() -> str:
    """Private per-user directory for sockets, locks and state files: MCPSINGLETON_HOME/run when set, else
    `default_runtime_dir()`."""
    home = home_override()
    return os.path.join(home, "run") if home else default_runtime_dir()


def default_runtime_dir() -> str:
    """The runtime dir without MCPSINGLETON_HOME: where sessions of clients that strip it run, too.

    It must be the same for every client of the same user, and clients start servers with a filtered
    environment (Codex passes little more than HOME and PATH), so it depends on nothing a client may
    strip: Linux's per-user runtime dir `/run/user/UID` when it exists and is ours and private, else a
    dir under the home directory (macOS: always; its per-user temp dir is not offered by CPython's
    confstr, and its contents are removed after 3 days unused, which would take live locks with them).
    Never a shared-/tmp name that another user could create first. See docs/ARCHITECTURE.md.
    """
    system_dir = f"{RUN_USER}/{os.getuid()}"
    if is_private_and_ours(system_dir):
        return os.path.join(system_dir, "mcpsingleton")
    return os.path.join(os.path.expanduser("~"), ".cache", "mcpsingleton")


def is_private_and_ours(path: str) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def state_dir() -> str:
    """Where lasting state (wrap's records) goes: MCPSINGLETON_HOME/state, else `default_state_dir()`."""
    home = home_override()
    return os.path.join(home, "state") if home else default_state_dir()


def default_state_dir() -> str:
    """The user state dir, derived from the home directory alone (not XDG_STATE_HOME, which clients may
    strip), so every client's brokers log to the place `mcpsingleton logs` looks. On Linux this is
    platformdirs' default, on macOS the same as platformdirs'.
    """
    if sys.platform == "darwin":
        return os.path.join(os.path.expanduser("~"), "Library", "Application Support", "mcpsingleton")
    return os.path.join(os.path.expanduser("~"), ".local", "state", "mcpsingleton")


def launcher_dir() -> str:
    """Where `wrap` writes the launcher client configs name: MCPSINGLETON_HOME/bin, else beside the user
    state (from the home directory alone, like `state_dir`: never from XDG variables clients may strip)."""
    home = home_override()
    return os.path.join(home, "bin") if home else os.path.join(state_dir(), "bin")


def log_dir() -> str:
    """Where broker logs go: MCPSINGLETON_HOME/logs, else `default_log_dir()`."""
    home = home_override()
    return os.path.join(home, "logs") if home else default_log_dir()


def default_log_dir() -> str:
    """Broker logs without MCPSINGLETON_HOME (or from a client that stripped it): on macOS
    ~/Library/Logs/mcpsingleton, where users and Console.app look for an app's logs; else beside the user state."""
    if sys.platform == "darwin":
        return os.path.join(os.path.expanduser("~"), "Library", "Logs", "mcpsingleton")
    return os.path.join(default_state_dir(), "logs")


def ensure_private_dir(path: str) -> str:
    """Create `path` 0700, or check that an existing one is ours and private; refuse otherwise.

    The dirs above it up to the root of our files (MCPSINGLETON_HOME, else the state dir) must be ours
    and not writable by others as well: whoever may rename one of them may swap what we read and run.
    """
    try:
        _make_private_dirs(path)
        info = os.lstat(path)
    except OSError as exc:
        raise SetupError(f"cannot create {path} ({exc.strerror}); set MCPSINGLETON_HOME to a writable dir") from exc
    _check_ours(path, info)
    if info.st_mode & 0o077:
        raise SetupError(f"{path} is readable by others (mode {info.st_mode & 0o777:o}); run: chmod 700 {path}")
    for above in _dirs_above_within_our_root(path):
        try:
            info = os.stat(above)  # MCPSINGLETON_HOME may be a link of the user's to a dir of theirs
        except OSError as exc:
            raise SetupError(f"cannot use {above} ({exc.strerror}); set MCPSINGLETON_HOME to a dir of yours") from exc
        _check_ours(above, info)
        if _writable_by_others(info):
            mode = f"mode {info.st_mode & 0o777:o}"
            raise SetupError(f"{above} is writable by others ({mode}); run: chmod go-w {above}")
    return path


def _make_private_dirs(path: str) -> None:
    """`os.makedirs(path, 0o700)` makes only the last dir 0700, the ones above it 0755: `state/` made on the way to
    `state/discovery/` was then refused to `serve` (its history lives in `state/`) as readable by others."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass


def _check_ours(path: str, info: os.stat_result) -> None:
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise SetupError(f"{path} is not a directory owned by you; remove it or set MCPSINGLETON_HOME")


def _writable_by_others(info: os.stat_result) -> bool:
    """World-writable, or writable by a group other than our own primary group: with umask 002 (user
    private groups, Ubuntu's default) every dir is group-writable by a group of one, which is no one else."""
    return bool(info.st_mode & 0o002 or (info.st_mode & 0o020 and info.st_gid != os.getgid()))


def _dirs_above_within_our_root(path: str) -> list[str]:
    """`path`'s parents up to and including MCPSINGLETON_HOME (else the state dir), when it lies under it."""
    root = os.path.abspath(home_override() or state_dir())
    found = []
    above = os.path.dirname(os.path.abspath(path))
    while above == root or above.startswith(root + os.sep):
        found.append(above)
        above = os.path.dirname(above)
    return found


class KeyPaths:
    """The files that belong to one key inside the runtime dir (KeyPaths(BROKER): the one broker's files; a key's
    own `.sock/.lock/.json` are a protocol-1 broker's, read for the upgrade path and by `reap`)."""

    def __init__(self, key: str, directory: str | None = None) -> None:
        self.key = key
        self.dir = directory or runtime_dir()
        base = os.path.join(self.dir, key)
        self.sock = base + ".sock"
        self.lock = base + ".lock"
        self.state = base + ".json"

    def temp_sock(self, pid: int | str) -> str:
        """The name a broker binds before renaming it onto `sock`, so no client sees a socket not yet listening."""
        return f"{self.sock}.{pid}.tmp"

    def log(self) -> str:
        return os.path.join(log_dir(), self.key + ".log")


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


def canonical_path(path: str, case_insensitive: Callable[[str], bool] | None = None) -> str:
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


def check_socket_path(paths: KeyPaths) -> None:
    """Refuse a runtime dir so deep that the longest name a broker binds would not fit a Unix socket."""
    longest = paths.temp_sock(LONGEST_PID)
    if len(longest.encode("utf-8", "surrogateescape")) >= SOCKET_PATH_LIMIT:
        raise SetupError(
            f"the runtime dir {paths.dir} is too deep for Unix socket names ({SOCKET_PATH_LIMIT - 1} bytes at most); "
            "set MCPSINGLETON_HOME to a short dir of yours, such as ~/.ms"
        )


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


def parse_duration(text: str) -> float:
    """'0', '250ms', '30s', '5m', '2h' or plain seconds → seconds."""
    text = text.strip().lower()
    units = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))
    for suffix, factor in units:
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * factor
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise UsageError(f"invalid duration {text!r} (use e.g. 0, 30s, 5m)")


def parse_size(text: str) -> int:
    """'512M', '2G', '300MiB', '1048576' → bytes."""
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    factors = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    factor = factors.get(cleaned[-1:], 1)
    number = cleaned[:-1] if cleaned[-1:] in factors else cleaned
    try:
        value = float(number) * factor
    except ValueError:
        raise UsageError(f"invalid size {text!r} (use e.g. 512M, 2G)") from None
    if value <= 0:
        raise UsageError(f"invalid size {text!r}: must be positive")
    return int(value)


def stderr_line(message: str) -> None:
    """Errors for people: one line, prefixed with the program name."""
    sys.stderr.write(f"mcpsingleton: {message}\n")
    sys.stderr.flush()
