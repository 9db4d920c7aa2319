"""The README's numbers table, made from bench/results/*.json, so the README quotes what was measured.

    .venv/bin/python bench/readme_numbers.py          # rewrite README.md's table (run_all.sh does, when full)
    .venv/bin/python bench/readme_numbers.py --check  # exit 1 when README.md and the result files disagree

tests/test_bench_numbers.py runs the check. Each row names the result files and fields it comes from;
the committed results are those of the last full run (`run_all.sh --quick` writes to results/quick/).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
README = BENCH.parent / "README.md"
START = "<!-- numbers: made by bench/readme_numbers.py from bench/results/*.json; edit those, not this table -->"
END = "<!-- /numbers -->"

Row = tuple[str, str, str]


def span(values: Iterable[float], digits: int = 0) -> str:
    """The range `low` to `high` (joined by an en dash), or one number when they are equal at this precision."""
    shown = sorted({round(value, digits) for value in values})
    low, high = f"{shown[0]:.{digits}f}", f"{shown[-1]:.{digits}f}"
    return low if low == high else f"{low}–{high}"


def sessions_rows(results: dict[str, Any]) -> list[Row]:
    table = results["sessions"]["table"]

    def at(kind: str, sessions: int) -> dict[str, Any]:
        return next(row for row in table[kind] if row["sessions"] == sessions)

    rows = [row for kind in table.values() for row in kind]
    marginal = [row for row in rows if "direct_marginal_mib" in row]
    return [
        ("10 sessions of server-everything, total PSS", f"{at('everything', 10)['direct_mib']:.0f} MiB",
         f"{at('everything', 10)['shared_mib']:.0f} MiB"),
        ("50 sessions via `npx`", f"{at('npx', 50)['direct_mib']:.0f} MiB", f"{at('npx', 50)['shared_mib']:.0f} MiB"),
        ("one more session on a warm backend", f"{span(row['direct_marginal_mib'] for row in marginal)} MiB",
         f"{span((row['shared_marginal_mib'] for row in marginal), 2)} MiB (a `sh` waiter)"),
    ]


def broker_rows(results: dict[str, Any]) -> list[Row]:
    steps = results["onebroker"]["keys"]["steps"]
    few, many = min(steps, key=int), max(steps, key=int)
    return [
        (f"the broker (one per user, every server inside), {few} / {many} server keys", "–",
         f"{steps[few]['broker_pss_mib']:.1f} / {steps[many]['broker_pss_mib']:.1f} MiB PSS, "
         f"{steps[many]['processes_of_ours']} processes of ours in all"),
    ]


def start_rows(results: dict[str, Any]) -> list[Row]:
    wrapped = results["install"]["added_over_bare_ms_p50"]["wrapped"]
    cold = results["discovery"]["cold"]
    lazy = results["discovery"]["lazy"]
    storm = results["scale"]["storm"]["everything"]
    one_each = storm["brokers_started_max"] == storm["backends_started_max"] == 1

    def first(kind: str, variant: str) -> str:
        return f"{cold[kind][variant]['initialize_ms']['p50']:.0f} ms"

    return [
        ("warm attach (spawn → InitializeResult), the entry `wrap` writes", "–",
         f"bare `python -c pass` {wrapped:+.0f} ms"),
        ("first session on a cold key, server seen before (cached discovery)",
         f"{first('everything', 'direct')} (`npx -y`: {first('npx', 'direct')})",
         f"{first('everything', 'cache')} (`npx -y`: {first('npx', 'cache')})"),
        (f"a session with {lazy['servers']} servers that calls one tool (`--lazy`)",
         f"{lazy['direct']['pss_mib']['p50']:.0f} MiB", f"{lazy['cache_lazy']['pss_mib']['p50']:.0f} MiB"),
        (f"{results['scale']['storm']['sessions']} sessions starting at once on a cold key",
         f"{storm['direct_all_ms_median'] / 1000:.1f} s",
         f"{storm['shared_all_ms_median'] / 1000:.1f} s" + (", one broker, one backend" if one_each else "")),
    ]


def message_rows(results: dict[str, Any]) -> list[Row]:
    roundtrip = results["latency"]["roundtrip"]["everything"]["tools_call"]
    small = results["big"]["small_everything"]
    echo = results["big"]["echo"]
    kill9 = results["reattach"]["kill9_3_sessions"]["last_ms"]["p50"]
    return [
        ("`tools/call` round trip (server-everything)",
         f"{span([roundtrip['direct_us']['p50'], small['direct']['us']['p50']])} µs",
         f"{span([roundtrip['ratio_p50'], small['fast_path']['ratio_p50']], 1)}× direct"),
        ("`tools/call` echo of 1 MB / 10 MB",
         f"{echo['1M']['direct']['us']['p50'] / 1000:.1f} / {echo['10M']['direct']['us']['p50'] / 1000:.0f} ms",
         f"{echo['1M']['fast_path']['ratio_p50']:.2f}× / {echo['10M']['fast_path']['ratio_p50']:.2f}× direct "
         "(ids spliced, bodies never decoded)"),
        ("broker killed with `kill -9`, 3 sessions attached", "every session ends",
         f"every session goes on: next request answered after {kill9 / 1000:.1f} s (p50)"),
    ]


def isolated_rows(results: dict[str, Any]) -> list[Row]:
    isolated = results["sessions_isolated"]["table"]["everything"][0]
    return [
        (f"{isolated['sessions']} sessions of a per-client server (isolated: no saving, still orphan-proof)",
         f"{isolated['direct_mib']:.0f} MiB", f"{isolated['isolated_mib']:.0f} MiB"),
    ]


def day_rows(results: dict[str, Any]) -> list[Row]:
    day = results["day"]["day"]
    return [
        ("a typical day: 12 servers configured, 4 sessions in 4 directories calling 3 each, total PSS",
         f"{day['direct_total_mib']:.0f} MiB",
         f"{day['shared_total_mib']:.0f} MiB ({day['ratio']:.2f}× direct), of it ours beyond the backends "
         f"{day['ours_mib']:.0f} MiB"),
    ]


SECTIONS: tuple[Callable[[dict[str, Any]], list[Row]], ...] = (
    sessions_rows, broker_rows, day_rows, start_rows, message_rows, isolated_rows
)
FILES = ("sessions", "sessions_isolated", "install", "discovery", "scale", "latency", "big", "reattach", "onebroker",
         "day")


def table(results_dir: Path = RESULTS) -> str:
    """The Markdown table, between its markers."""
    results = {name: json.loads((results_dir / f"{name}.json").read_text()) for name in FILES}
    rows = [row for section in SECTIONS for row in section(results)]
    lines = ["| | direct | through mcpsingleton |", "|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in rows)]
    return "\n".join([START, *lines, END])


def in_readme(text: str) -> str:
    """The generated block as the README holds it (empty when the markers are missing)."""
    start, end = text.find(START), text.find(END)
    return text[start : end + len(END)] if 0 <= start < end else ""


def main() -> int:
    text, made = README.read_text(encoding="utf-8"), table()
    current = in_readme(text)
    if "--check" in sys.argv[1:]:
        if current != made:
            sys.stderr.write("bench: README.md's numbers differ from bench/results; run bench/readme_numbers.py\n")
            return 1
        return 0
    if not current:
        sys.stderr.write(f"bench: README.md has no {START!r} … {END!r} block to fill\n")
        return 1
    README.write_text(text.replace(current, made), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
