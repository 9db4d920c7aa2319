"""What may share a backend (the key), and where each key's files live.

Imported on the shim's warm path: standard library only, nothing heavy.
"""

from __future__ import annotations

import os
import stat
import sys

try:  # the small builtin module avoids loading OpenSSL on every session start
    from _sha256 import sha256
except ImportError:  # pragma: no cover - other Pythons
    from hashlib import sha256

PROTOCOL = "1"
"""Wire protocol of shim and broker; part of every key, so an upgrade never attaches to an old broker."""

SCOPES = ("cwd", "global", "isolated")

SECRET_MARKERS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATE")
"""Env var names containing one of these must match for two sessions to share a backend."""

VOLATILE_VARS = frozenset(
    {"PWD", "OLDPWD", "SHLVL", "_", "TERM_SESSION_ID", "WINDOWID", "GNOME_KEYRING_CONTROL", "KEYTIMEOUT"}
    | {"COLUMNS", "LINES"}
)
"""Per-terminal or per-shell values that never decide what a server does."""

CLIENT_SPAWN_VARS = frozenset(
    {"CLAUDECODE", "CLAUDE_PROJECT_DIR", "AI_AGENT", "GEMINI_CLI", "COREPACK_ENABLE_AUTO_PIN"}
)
CLIENT_SPAWN_PREFIXES = ("CLAUDE_CODE_",)
"""Names a client sets on every server it spawns (Claude Code, Gemini CLI), some per session: not config."""

SHELLS = frozenset({"sh", "bash", "zsh", "dash", "fish", "env"})
"""Programs a client may start the shim through; their environment is the config's, not the client's."""

KEY_ENV = "MCPSINGLETON_KEY"
SOCKET_PATH_LIMIT = 104  # macOS sun_path; Linux allows 108


class UsageError(Exception):
    """Bad command line or environment; reported as one line, exit status 2."""


class SetupError(Exception):
    """The machine is not in a state we can safely run in; reported as one line, exit status 1."""


def runtime_dir() -> str:
    """Private per-user directory for sockets, locks and state files."""
    home = os.environ.get("MCPSINGLETON_HOME")
    if home:
        return os.path.join(home, "run")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return os.path.join(xdg, "mcpsingleton")
    return f"/tmp/mcpsingleton-{os.getuid()}"


def log_dir() -> str:
    """Where broker logs go: under MCPSINGLETON_HOME, else the platform's user state dir."""
    home = os.environ.get("MCPSINGLETON_HOME")
    if home:
        return os.path.join(home, "logs")
    import platformdirs

    return os.path.join(platformdirs.user_state_dir("mcpsingleton"), "logs")


def ensure_private_dir(path: str) -> str:
    """Create `path` 0700, or check that an existing one is ours and private; refuse otherwise."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise SetupError(f"cannot create {path} ({exc.strerror}); set MCPSINGLETON_HOME to a writable dir") from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise SetupError(f"{path} is not a directory owned by you; remove it or set MCPSINGLETON_HOME")
    if info.st_mode & 0o077:
        raise SetupError(f"{path} is readable by others (mode {info.st_mode & 0o777:o}); run: chmod 700 {path}")
    return path


class KeyPaths:
    """The files that belong to one key inside the runtime dir."""

    def __init__(self, key: str, directory: str | None = None) -> None:
        self.key = key
        self.dir = directory or runtime_dir()
        base = os.path.join(self.dir, key)
        self.sock = base + ".sock"
        self.lock = base + ".lock"
        self.state = base + ".json"

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
        program = os.path.realpath(found)
    return [program, *argv[1:]]


def _is_volatile(upper: str) -> bool:
    return upper in VOLATILE_VARS or upper.startswith("MCPSINGLETON_") or upper.endswith(("_SOCK", "_PID"))


def _set_by_client(upper: str) -> bool:
    return upper in CLIENT_SPAWN_VARS or upper.startswith(CLIENT_SPAWN_PREFIXES)


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return not _is_volatile(upper) and any(marker in upper for marker in SECRET_MARKERS)


def _read_proc(pid: int, field: str) -> bytes | None:
    try:
        fd = os.open(f"/proc/{pid}/{field}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _parent_of(pid: int) -> int:
    stat_line = _read_proc(pid, "stat") or b""
    fields = stat_line[stat_line.rfind(b")") + 2 :].split()  # the name may hold spaces and parentheses
    return int(fields[1]) if len(fields) > 1 else 0


def client_environ() -> dict[str, str] | None:
    """The environment of the client that started us (its own, from /proc), or None where we cannot read it.

    Shells between the client and us (`sh -c "mcpsingleton run …"`) carry the config's env already, so
    we look past them. Only Linux: elsewhere reading another process's env costs more than a session
    start may spend, and callers fall back to secrets and --env-key.
    """
    if sys.platform != "linux" or os.environ.get("MCPSINGLETON_PORTABLE") == "1":
        return None
    pid = os.getppid()
    for _ in range(4):
        if pid <= 1:
            return None
        comm = (_read_proc(pid, "comm") or b"").strip().decode("utf-8", "replace")
        if comm not in SHELLS:
            break
        pid = _parent_of(pid)
    raw = _read_proc(pid, "environ") if pid > 1 else None
    if raw is None:
        return None
    entries = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {
        name.decode("utf-8", "surrogateescape"): value.decode("utf-8", "surrogateescape") for name, _, value in entries
    }


def config_set_names(env: dict[str, str], parent: dict[str, str] | None) -> set[str]:
    """Variables the client config set for this server: ours but not the client's own (or different from it)."""
    if parent is None:
        return set()
    return {
        name
        for name, value in env.items()
        if parent.get(name) != value and not _is_volatile(name.upper()) and not _set_by_client(name.upper())
    }


def env_fingerprint(
    env: dict[str, str], extra_keys: list[str], salt: bytes, parent: dict[str, str] | None = None
) -> str:
    """Salted digest of the env vars that must match to share; values never leave this function.

    Those are: every secret-looking variable, every --env-key, and every variable the client config set
    for the server (`parent` is the client's own environment; None when it cannot be read).
    """
    names = sorted({name for name in env if is_secret_name(name)} | set(extra_keys) | config_set_names(env, parent))
    digest = sha256(salt)
    for name in names:
        value = env.get(name)
        digest.update(b"\0" + name.encode("utf-8", "surrogateescape") + b"=")
        digest.update(b"-" if value is None else b"+" + value.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def user_salt(directory: str) -> bytes:
    """A per-user random salt so that key hashes cannot be brute-forced back into secret values."""
    path = os.path.join(directory, "salt")
    try:
        with open(path, "rb") as handle:
            salt = handle.read()
        if len(salt) == 32:
            return salt
    except FileNotFoundError:
        pass
    salt = os.urandom(32)
    tmp = f"{path}.{os.getpid()}"
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


def compute_key(
    argv: list[str],
    scope: str,
    cwd: str,
    env: dict[str, str],
    extra_keys: list[str],
    salt: bytes,
    parent_env: dict[str, str] | None = None,
) -> str:
    """Hash of (resolved argv, scope part, env part): equal keys share one backend."""
    if scope == "isolated":
        scope_part = f"isolated:{os.getpid()}:{os.urandom(8).hex()}"
    elif scope == "cwd":
        scope_part = "cwd:" + os.path.realpath(cwd)
    else:
        scope_part = "global"
    digest = sha256(PROTOCOL.encode())
    for part in (*resolve_argv(argv, cwd), scope_part, env_fingerprint(env, extra_keys, salt, parent_env)):
        digest.update(b"\0" + part.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:20]


def check_socket_path(path: str) -> None:
    if len(path.encode()) >= SOCKET_PATH_LIMIT:
        raise SetupError(f"socket path {path} is too long for a Unix socket; set MCPSINGLETON_HOME to a short dir")


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
    }
)


def default_name(argv: list[str]) -> str:
    """A short label for ls/stop/logs: the first word of the command that is not a launcher or flag."""
    for word in argv:
        base = os.path.basename(word.rstrip("/"))
        if not base or base.startswith("-") or base in LAUNCHERS or base.startswith(("python3.", "node")):
            continue
        if "@" in base[1:]:
            base = base[: base.index("@", 1)]
        base = base.split("/")[-1].lstrip("@")
        for suffix in (".js", ".mjs", ".cjs", ".py", ".ts"):
            base = base.removesuffix(suffix)
        if base in ("index", "main", "server", "cli", "__main__") and os.sep in word:
            base = _package_dir_name(word) or base
        return base or "server"
    return os.path.basename(argv[0]) if argv else "server"


def _package_dir_name(path: str) -> str | None:
    """`.../server-everything/dist/index.js` → `server-everything`: skip build-output folder names."""
    for part in reversed(os.path.dirname(path).split(os.sep)):
        if part and part not in ("dist", "build", "bin", "src", "lib", "out", "cjs", "esm"):
            return part
    return None


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
