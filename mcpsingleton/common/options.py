"""The options of `mcpsingleton run`, declared once.

One table says, per option, how it is written, whether it takes a value, how its value is checked and
converted, its default (and the env var that overrides the default) and its help text. Everything that
reads or writes a `run` command line works from it: the shim's parser (below), click's `run` command
(help and completions), `wrap`/`unwrap` (which must find where the server's own command starts) and
`explain`.

Grammar: `run` takes its own options only before the first word of the server command, as `env`,
`nohup` and `sudo` do, so a server argument such as `-h` is never read as ours. A `--` may end the
options (it must when the command itself starts with `-`); clients that drop it (Gemini CLI) and
tools that split their argv at the first `--` (old MCP Inspector) both work without it.

Imported on the shim's warm path: standard library only, nothing heavy.
"""

import os

from .errors import UsageError

SCOPES = ("auto", "cwd", "global", "isolated")
KEY_SCOPES = ("cwd", "global", "isolated")
"""What a key is computed for; `auto` is first resolved to one of these."""

TYPE_CHECKING = False  # `typing` itself costs milliseconds on the warm path
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

HELP_FLAGS = ("-h", "--help")
DEFAULT_IDLE = "10m"
"""How long a backend whose state nothing can lose may sit idle before it is stopped (`--idle`)."""
FLAG_GIVEN = "\0on"
"""The value split_run_args gives an on/off option that is present (no word on a command line can hold NUL)."""


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


def _scope(value: str) -> str:
    if value not in SCOPES:
        raise UsageError(f"invalid value {value!r} (choose from {', '.join(SCOPES)})")
    return value


def _duration_text(value: str) -> str:
    """Checked here, so a bad linger is a usage error now; the broker converts it to seconds."""
    parse_duration(value)
    return value


def _positive_count(value: str) -> int:
    if not (value.isdigit() and int(value) > 0):
        raise UsageError(f"invalid value {value!r} (a positive whole number)")
    return int(value)


def _text(value: str) -> str:
    return value


class RunOption:
    """One option of `run`: its flag, where its value goes, how the value is checked, and its help."""

    __slots__ = ("attr", "choices", "convert", "default", "env", "flag", "help", "is_flag", "metavar", "repeatable")

    def __init__(
        self,
        flag: str,
        attr: str,
        metavar: str,
        convert: "Callable[[str], Any]",
        help: str,
        *,
        default: str | None = None,
        env: str | None = None,
        repeatable: bool = False,
        choices: tuple[str, ...] | None = None,
        is_flag: bool = False,
    ) -> None:
        self.flag = flag
        self.attr = attr
        self.metavar = metavar
        self.convert = convert
        self.help = help
        self.default = default
        self.env = env
        self.repeatable = repeatable
        self.choices = choices
        self.is_flag = is_flag  # takes no value: present means on


RUN_OPTIONS = (
    RunOption(
        "--scope",
        "scope",
        "|".join(SCOPES),
        _scope,
        "What may share a backend: auto (the sharing policy decides), cwd (same command, env and directory), "
        "global (same command and env), isolated (one backend per session).",
        default="auto",
        choices=SCOPES,
    ),
    RunOption("--name", "name", "NAME", _text, "Label shown by ls/stop/logs (default: derived from COMMAND)."),
    RunOption(
        "--linger",
        "linger",
        "DURATION",
        _duration_text,
        "Keep the backend this long after the last session leaves (0, 30s, 5m).",
        default="5m",
        env="MCPSINGLETON_LINGER",
    ),
    RunOption(
        "--env-key",
        "env_keys",
        "VAR",
        _text,
        "Env var that must match for sessions to share (repeatable).",
        repeatable=True,
    ),
    RunOption(
        "--max-memory",
        "max_memory",
        "SIZE",
        parse_size,
        "Restart the backend gracefully when its process tree exceeds SIZE (512M, 2G).",
    ),
    RunOption(
        "--max-procs",
        "max_procs",
        "N",
        _positive_count,
        "Restart the backend gracefully when its process tree holds more than N processes.",
    ),
    RunOption(
        "--lazy",
        "lazy",
        "",
        _text,
        "Start the backend only when a request needs it, once this server's discovery is cached from an earlier "
        "run (the default; also `lazy = true` in config.toml).",
        is_flag=True,
    ),
    RunOption(
        "--eager",
        "eager",
        "",
        _text,
        "Start the backend at once, even when its discovery is cached (also `lazy = false` in config.toml).",
        is_flag=True,
    ),
    RunOption(
        "--idle",
        "idle",
        "DURATION",
        _duration_text,
        f"Stop a backend idle this long whose state nothing can lose; it comes back on the next request that "
        f"needs it (default {DEFAULT_IDLE}; 0 = never; also `idle` in config.toml).",
    ),
)
BY_FLAG = {option.flag: option for option in RUN_OPTIONS}


class RunOptions:
    """What `run` was asked to do: one attribute per entry of RUN_OPTIONS (its default), plus the command."""

    scope: str
    name: str | None
    linger: str
    env_keys: list[str]
    max_memory: int | None
    max_procs: int | None
    lazy: bool
    eager: bool
    idle: str | None

    def __init__(self) -> None:
        for option in RUN_OPTIONS:
            setattr(self, option.attr, [] if option.repeatable else False if option.is_flag else option.default)
        self.command: list[str] = []


def split_run_args(argv: list[str]) -> tuple[list[tuple[str, str | None]], int]:
    """`run`'s own option words as (flag, value) pairs, and the index where the server command starts.

    Nothing is checked here: a flag that is not in the table comes back with value None, like a value
    option at the very end. Any value option in the table takes the next word as its value, even `--`
    or `-h`; an on/off option (`--lazy`) comes back with FLAG_GIVEN.
    """
    pairs: list[tuple[str, str | None]] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        if word == "--":
            return pairs, index + 1
        if not word.startswith("-") or word == "-":
            return pairs, index
        flag, has_inline, inline = word.partition("=")
        if has_inline:
            pairs.append((flag, inline))
        elif flag in BY_FLAG and BY_FLAG[flag].is_flag:
            pairs.append((flag, FLAG_GIVEN))
        elif flag in BY_FLAG and index + 1 < len(argv):
            index += 1
            pairs.append((flag, argv[index]))
        else:
            pairs.append((flag, None))
        index += 1
    return pairs, index


def asks_for_help(argv: list[str]) -> bool:
    """Whether `-h`/`--help` is among `run`'s own options (not the server's)."""
    pairs, _ = split_run_args(argv)
    return any(flag in HELP_FLAGS for flag, _value in pairs)


def parse_run_args(argv: list[str]) -> RunOptions:
    """The options and command of `run [OPTIONS] [--] COMMAND [ARG...]`; UsageError on bad input."""
    options = RunOptions()
    for option in RUN_OPTIONS:
        text = os.environ.get(option.env) if option.env else None
        if text is not None:
            _set(options, option, text, source=f"${option.env}")
    pairs, command_index = split_run_args(argv)
    for flag, value in pairs:
        given = BY_FLAG.get(flag)
        if given is None:
            raise UsageError(f"no such option: {flag}")
        if value is None:
            raise UsageError(f"option {flag} requires a value")
        _set(options, given, value, source=flag)
    options.command = argv[command_index:]
    if not options.command:
        raise UsageError("missing the server command")
    if options.lazy and options.eager:
        raise UsageError("--lazy and --eager contradict each other; give one")
    return options


def backend_timing(options: RunOptions, config_lazy: bool | None, config_idle: str | None) -> tuple[bool, float]:
    """Whether the backend starts lazily, and after how many idle seconds it is reclaimed (0: never).

    The option outranks config.toml's `lazy`/`idle` for the server, which outrank the defaults: lazy
    (it only matters once discovery is cached) and DEFAULT_IDLE."""
    lazy = False if options.eager else True if options.lazy else config_lazy if config_lazy is not None else True
    return lazy, parse_duration(options.idle or config_idle or DEFAULT_IDLE)


def _set(options: RunOptions, option: RunOption, text: str, source: str) -> None:
    if option.is_flag:
        if text != FLAG_GIVEN:
            raise UsageError(f"option {source} takes no value")
        setattr(options, option.attr, True)
        return
    try:
        value = option.convert(text)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None
    if option.repeatable:
        getattr(options, option.attr).append(value)
    else:
        setattr(options, option.attr, value)


def run_prefix(command_word: str, **values: "str | Iterable[str] | bool | None") -> list[str]:
    """The words that put `command_word …` behind `run`: `run`, the given options in table order, and
    `--` only when the command needs one (it starts with `-`), since some tools split argv at `--`."""
    words = ["run"]
    for option in RUN_OPTIONS:
        value = values.pop(option.attr, None)
        if isinstance(value, bool):
            words += [option.flag] if value and option.is_flag else []
            continue
        if value is None:
            continue
        for item in [value] if isinstance(value, str) else value:
            words += [option.flag, item]
    if values:
        raise TypeError(f"not run options: {', '.join(values)}")
    return [*words, "--"] if command_word.startswith("-") else words


def command_index(run_args: list[str]) -> int | None:
    """Where the server command starts in `run …` arguments (wrapped config entries), None if it has none."""
    if run_args[:1] != ["run"]:
        return None
    _, index = split_run_args(run_args[1:])
    return index + 1 if index + 1 < len(run_args) else None
