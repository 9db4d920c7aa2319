"""Shared helpers for the benchmarks: paths, a private MCPSINGLETON_HOME, a raw JSON-RPC client,
process census and memory, statistics, machine description, result files.

Every benchmark measures its variants side by side in one run (interleaved), because this kind of
machine is small and shared: absolute numbers drift between runs, ratios and differences much less.
"""

from __future__ import annotations

import json
import os
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = Path(os.environ["BENCH_RESULTS"]).resolve() if os.environ.get("BENCH_RESULTS") else BENCH / "results"
"""The committed results (of the last full run: README's numbers come from them), or BENCH_RESULTS:
`run_all.sh --quick` writes its smoke-run numbers to results/quick/ instead."""
NPM_PREFIX = ROOT / ".cache/npm"
EVERYTHING_JS = NPM_PREFIX / "node_modules/@modelcontextprotocol/server-everything/dist/index.js"
EVERYTHING_PACKAGE = "@modelcontextprotocol/server-everything"
FAST_SERVER = BENCH / "fast_server.py"
SESSION_CLIENT = BENCH / "session_client.py"
MIB = 1024 * 1024
PROTOCOL_VERSION = "2025-06-18"


# ---- programs -------------------------------------------------------------------------------


def entry_point() -> str:
    """The installed `mcpsingleton` (MCPSINGLETON_BIN overrides; default: the repo's .venv)."""
    override = os.environ.get("MCPSINGLETON_BIN")
    if override:
        return override
    candidate = ROOT / ".venv/bin/mcpsingleton"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("mcpsingleton", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if not found:
        sys.exit("bench: mcpsingleton is not installed; run `bash shell/install.sh` first")
    return found


def entry_interpreter(entry: str | None = None) -> str:
    """The Python that runs the entry point (its shebang), i.e. the shim's and the broker's interpreter."""
    with open(entry or entry_point(), "rb") as handle:
        first = handle.readline().decode().strip()
    if first.startswith("#!"):
        words = first[2:].split()
        if words and os.path.basename(words[0]) != "env":
            return words[0]
    return sys.executable


def everything_cmd() -> list[str]:
    if not EVERYTHING_JS.exists():
        sys.exit(f"bench: server-everything is not installed at {EVERYTHING_JS}; run `bash shell/install.sh`")
    return [shutil.which("node") or "node", str(EVERYTHING_JS), "stdio"]


def npx_cmd() -> list[str]:
    """server-everything the way client configs launch it: `npx -y PACKAGE` (sh + npm exec + node). Run it with
    cwd=NPM_PREFIX (or a dir from `npx_dir`) so npx finds the installed package; base_env() makes npm offline."""
    everything_cmd()  # the package must be installed
    return [shutil.which("npx") or "npx", "-y", EVERYTHING_PACKAGE]


def npx_dir(path: str) -> str:
    """Make `path` a directory where `npx -y server-everything` resolves the installed package (a distinct cwd,
    hence a distinct key under --scope cwd)."""
    os.makedirs(path, exist_ok=True)
    os.symlink(NPM_PREFIX / "node_modules", os.path.join(path, "node_modules"))  # no package.json needed (or made)
    return path


def time_cmd() -> list[str]:
    found = shutil.which("mcp-server-time", path=os.path.dirname(entry_interpreter()))
    if not found:
        sys.exit("bench: mcp-server-time is not installed; run `bash shell/install.sh`")
    return [found]


def fast_cmd() -> list[str]:
    return [entry_interpreter(), str(FAST_SERVER)]


def server_cmd(kind: str) -> list[str]:
    return {"everything": everything_cmd, "time": time_cmd, "fast": fast_cmd, "npx": npx_cmd}[kind]()


def server_cwd(kind: str) -> str | None:
    """The working directory a server kind needs (npx: where the package is installed), else None."""
    return str(NPM_PREFIX) if kind == "npx" else None


def client_python() -> str:
    """Interpreter for the session client processes: a *different* Python binary than the broker's when
    one exists, so the clients share no interpreter pages with the broker (PSS splits shared pages
    between every process that maps them, and the clients are not counted)."""
    ours = os.path.realpath(entry_interpreter())
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and os.path.realpath(candidate) != ours:
            return candidate
    return sys.executable


def shim_cmd(server: list[str], *options: str) -> list[str]:
    return [entry_point(), "run", *options, "--", *server]


# ---- a private home -------------------------------------------------------------------------


def pycache_dir() -> str:
    path = os.path.join(tempfile.gettempdir(), f"msb-pycache-{os.getuid()}")
    os.makedirs(path, exist_ok=True)
    return path


def base_env() -> dict[str, str]:
    """The environment every measured process gets.

    Bytecode is cached (under a prefix outside the repo) even when the caller exports
    PYTHONDONTWRITEBYTECODE, because an installed package has its .pyc files: without them every
    shim would compile mcpsingleton's sources on each start (bench_latency measures that case too).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPSINGLETON_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = pycache_dir()
    env["npm_config_offline"] = "true"  # npx: use the installed package, never the network
    env["npm_config_update_notifier"] = "false"
    return env


class Home:
    """A fresh short MCPSINGLETON_HOME; on exit stops every broker in it and kills whatever is left."""

    def __init__(self, linger: str | None = None) -> None:
        self.path = tempfile.mkdtemp(prefix="msb-", dir="/tmp")
        os.chmod(self.path, 0o700)
        self.env = base_env()
        self.env["MCPSINGLETON_HOME"] = self.path
        if linger is not None:
            self.env["MCPSINGLETON_LINGER"] = linger

    def __enter__(self) -> Home:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def processes(self) -> list[psutil.Process]:
        return processes_of(self.path)

    def close(self) -> None:
        try:
            subprocess.run([entry_point(), "stop", "--all"], env=self.env, capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 5
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        for process in self.processes():
            try:
                process.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.path, ignore_errors=True)


def processes_of(home: str) -> list[psutil.Process]:
    """Every live process whose environment has MCPSINGLETON_HOME=home (shims/waiters, brokers, keepers,
    backends and their children: they all inherit it)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get("MCPSINGLETON_HOME") == home:
                found.append(process)
        except psutil.Error:
            continue
    return found


def role(process: psutil.Process) -> str:
    """broker | keeper | waiter | shim | backend | other (for processes of one home)."""
    try:
        cmdline = process.cmdline()
        env = process.environ()
    except psutil.Error:
        return "gone"
    joined = " ".join(cmdline)
    if "mcpsingleton.broker" in joined:
        return "broker"
    if cmdline and cmdline[-1] == "mcpsingleton-keeper":
        return "keeper"
    if cmdline and cmdline[0] == "mcpsingleton-session":
        return "waiter"
    if "MCPSINGLETON_KEY" in env:
        return "backend"
    if "mcpsingleton" in joined and " run " in f" {joined} ":
        return "shim"
    return "other"


def memory(process: psutil.Process) -> dict[str, int]:
    """PSS, USS and RSS in bytes (PSS falls back to RSS where the platform has no smaps)."""
    try:
        full = process.memory_full_info()
    except psutil.AccessDenied:
        rss = process.memory_info().rss
        return {"pss": rss, "uss": rss, "rss": rss}
    rss = full.rss
    result = {"pss": getattr(full, "pss", rss), "uss": getattr(full, "uss", rss), "rss": rss}
    result.update(_rollup(process.pid))
    return result


def _rollup(pid: int) -> dict[str, int]:
    """Linux: PSS split into anonymous (the process's own heap, stable) and file-backed (code and data of
    binaries and libraries, whose share shrinks as more processes on the machine map the same files)."""
    found = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name in ("Pss_Anon", "Pss_File"):
                    found[name.lower()] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return found


def census(home: str, exclude: set[int] | frozenset[int] = frozenset()) -> dict[str, list[dict[str, Any]]]:
    """Role -> [{"pid", "ppid", "pss", "uss", "rss", ...}] of every process of one home, except `exclude`
    (the session clients)."""
    roles: dict[str, list[dict[str, Any]]] = {}
    for process in processes_of(home):
        if process.pid in exclude:
            continue
        try:
            kind = role(process)
            entry: dict[str, Any] = {"pid": process.pid, "ppid": process.ppid(), **memory(process)}
        except psutil.Error:
            continue
        if kind != "gone":
            roles.setdefault(kind, []).append(entry)
    return roles


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def broker_log_counts(home: str) -> dict[str, int]:
    """From the brokers' logs under a home: how many brokers and backends were ever started (catches a
    duplicate that came and went between two looks at the process table)."""
    counts = {"brokers_started": 0, "backends_started": 0, "log_files": 0}
    directory = os.path.join(home, "logs")
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        counts["log_files"] += 1
        with open(os.path.join(directory, name), errors="replace") as handle:
            for line in handle:
                words = line.split(" ", 4)  # "<stamp> broker PID started for …" / "<stamp> backend started: pid …"
                if words[1:2] == ["broker"] and words[3:4] == ["started"]:
                    counts["brokers_started"] += 1
                elif words[1:3] == ["backend", "started:"]:
                    counts["backends_started"] += 1
    return counts


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def kill_tree(pid: int) -> None:
    for process in reversed(tree(pid)):
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


# ---- a raw JSON-RPC client ------------------------------------------------------------------


class RawClient:
    """A minimal stdio MCP client: newline-delimited JSON over the child's pipes, no SDK, no threads."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str | None = None) -> None:
        self.started = time.perf_counter()
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=env, cwd=cwd)
        assert self.process.stdin and self.process.stdout
        self.out = self.process.stdin.fileno()
        self.inp = self.process.stdout.fileno()
        self.buf = b""
        self.next_id = 0
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.inp, selectors.EVENT_READ)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.out, view):]

    def send(self, message: dict[str, Any]) -> None:
        self.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def line(self, timeout: float = 60.0) -> bytes:
        while True:
            newline = self.buf.find(b"\n")
            if newline >= 0:
                line, self.buf = self.buf[:newline], self.buf[newline + 1:]
                return line
            if not self.selector.select(timeout):
                raise TimeoutError(f"no reply within {timeout}s from {self.process.args}")
            chunk = os.read(self.inp, 65536)
            if not chunk:
                raise EOFError(f"{self.process.args} closed its stdout")
            self.buf += chunk

    def response(self, request_id: int, timeout: float = 60.0) -> dict[str, Any]:
        """Read until the response to `request_id`; notifications are skipped, server requests refused."""
        while True:
            message = json.loads(self.line(timeout))
            if "method" in message:
                if "id" in message:
                    self.send({"jsonrpc": "2.0", "id": message["id"],
                               "error": {"code": -32601, "message": "not supported by the bench client"}})
                continue
            if message.get("id") == request_id:
                return message

    def request(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60.0) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        return self.response(self.next_id, timeout)

    def initialize(self, timeout: float = 60.0) -> dict[str, Any]:
        reply = self.request("initialize", initialize_params(), timeout)
        if "result" not in reply:
            raise RuntimeError(f"initialize failed: {reply}")
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return reply["result"]

    def close(self, timeout: float = 5.0) -> int | None:
        try:
            self.process.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(self.process.pid)
            return self.process.wait(5)
        finally:
            self.selector.close()
            self.process.stdout.close()  # type: ignore[union-attr]


def initialize_params(name: str = "mcpsingleton-bench") -> dict[str, Any]:
    return {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": {"name": name, "version": "1"}}


def initialize_line(request_id: int = 1) -> bytes:
    message = {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": initialize_params()}
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


ECHO_CALL = {
    "everything": ("tools/call", {"name": "echo", "arguments": {"message": "hello"}}),
    "fast": ("tools/call", {"name": "echo", "arguments": {"text": "hello"}}),
    "time": ("tools/call", {"name": "get_current_time", "arguments": {"timezone": "UTC"}}),
}
"""A small, fast tool call per server."""


# ---- statistics -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), digits),
        "p95": round(percentile(values, 95), digits),
        "p99": round(percentile(values, 99), digits),
        "min": round(min(values), digits) if values else float("nan"),
        "max": round(max(values), digits) if values else float("nan"),
        "mean": round(sum(values) / len(values), digits) if values else float("nan"),
    }


# ---- the machine and the results ------------------------------------------------------------


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mcpsingleton"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def warm_bytecode() -> None:
    """Compile mcpsingleton into the bench's bytecode cache (PYTHONPYCACHEPREFIX, outside the repo) before anything
    is measured: after a source change the first broker would otherwise compile its modules itself, and start
    slower and keep ~3 MiB more anonymous memory than every later one."""
    subprocess.run([entry_interpreter(), "-m", "compileall", "-q", str(ROOT / "mcpsingleton")], env=base_env(),
                   capture_output=True, timeout=120)


def machine() -> dict[str, Any]:
    """The machine, the versions and the load at the start of a benchmark (which also warms the bytecode cache)."""
    warm_bytecode()
    interpreter = entry_interpreter()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": _version([interpreter, "-c", "import platform; print(platform.python_version())"]),
        "python_path": interpreter,
        "client_python": f"{client_python()} ({_version([client_python(), '--version'])})",
        "node": _version([shutil.which("node") or "node", "--version"]),
        "mcpsingleton": _version([entry_point(), "--version"]),
        "git": git_revision(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(info: dict[str, Any]) -> str:
    return (f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, {info['kernel']}, "
            f"Python {info['python']}, node {info['node']}, {info['mcpsingleton']} @ {info['git']}, {info['date']}, "
            f"load average {info['loadavg_at_start'][0]} at start, {info.get('loadavg_at_end', ['?'])[0]} at end")


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    if isinstance(data.get("machine"), dict):
        data["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {os.path.relpath(path, ROOT)}", file=sys.stderr)
    return path


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None (with a log line) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -r bench/requirements.txt): no plot")
        return None
    return plt


def save_figure(plt, figure, path: str) -> bool:
    """Lay out, write and close a figure; True so plot functions can return it."""
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    log(f"wrote {path}")
    return True
