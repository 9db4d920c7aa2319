"""Where our files live: the runtime dir (sockets, locks, state records), the state dir, logs, the
launcher dir, each private to the user and checked so; and the files of one key in the runtime dir.

Imported on the shim's warm path: standard library only (`os`, `stat`).
"""

import os
import stat

from .errors import SetupError
from .platform import user_config_home, user_log_home, user_state_home

BROKER = "broker"
"""The one broker's files in the runtime dir: `broker.sock`, `broker.lock`, `broker.json` (KeyPaths(BROKER));
no key is ever this word (keys are hex digests)."""
HOME_ENV = "MCPSINGLETON_HOME"
RUN_USER = "/run/user"
SOCKET_PATH_LIMIT = 104  # macOS sun_path; Linux allows 108
LONGEST_PID = "9" * 7  # Linux pid_max is at most 2**22; macOS pids have 5 digits


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
    return os.path.join(user_state_home(), "mcpsingleton")


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
    logs = user_log_home()
    return os.path.join(logs, "mcpsingleton") if logs else os.path.join(default_state_dir(), "logs")


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


def check_socket_path(paths: KeyPaths) -> None:
    """Refuse a runtime dir so deep that the longest name a broker binds would not fit a Unix socket."""
    longest = paths.temp_sock(LONGEST_PID)
    if len(longest.encode("utf-8", "surrogateescape")) >= SOCKET_PATH_LIMIT:
        raise SetupError(
            f"the runtime dir {paths.dir} is too deep for Unix socket names ({SOCKET_PATH_LIMIT - 1} bytes at most); "
            "set MCPSINGLETON_HOME to a short dir of yours, such as ~/.ms"
        )


CATALOG_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "policy", "catalog.toml")
"""The built-in catalog: its version is part of a cached decision's generation; `policy/rules.py` reads it."""


def config_path() -> str:
    """MCPSINGLETON_HOME/config.toml, else the user config dir as platformdirs' defaults name it (no import).

    From the home directory alone, never XDG_CONFIG_HOME: clients strip XDG_* (Codex), and a config
    that only some sessions read would share, in those, a server the user asked to isolate.
    """
    home = os.environ.get("MCPSINGLETON_HOME")
    if home:
        return os.path.join(home, "config.toml")
    return os.path.join(user_config_home(), "mcpsingleton", "config.toml")
