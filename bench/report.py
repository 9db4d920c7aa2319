"""Render bench/results/*.json as Markdown tables (bench/results/summary.md), goals beside the numbers.

    .venv/bin/python bench/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from common import RESULTS, machine_line

GOALS = {
    "waiter": "≤ 1 MiB PSS (peers' Go shims: 2.2–2.5 MiB)",
    "broker": "≤ 12 MiB PSS (peers' daemons: 2.8–4.3 MiB)",
    "attach": "within 5 ms of bare `python -c pass` (peers: 8–16 ms warm attach)",
    "roundtrip": "≤ 50 µs added (peers: +0.3–0.8 ms, 1.8–2.7× direct)",
}


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def sessions_section(data: dict[str, Any]) -> list[str]:
    out = [f"### Memory vs sessions (`{data['command']}`)", "", f"Machine: {machine_line(data['machine'])}", ""]
    for kind, rows in data["table"].items():
        out += [f"**{kind}** — total PSS of every process involved (clients excluded)", "",
                "| sessions | direct MiB | shared MiB | direct ÷ shared | direct procs | shared procs "
                "| marginal direct MiB/session | marginal shared MiB/session | broker PSS MiB (anon + file) "
                "| waiter PSS MiB (RSS) |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            out.append(
                f"| {r['sessions']} | {r['direct_mib']:.1f} | {r['shared_mib']:.1f} | {r['saving_ratio']:.2f}× "
                f"| {r['direct_processes']} | {r['shared_processes']} | {r.get('direct_marginal_mib', '–')} "
                f"| {r.get('shared_marginal_mib', '–')} | {r['broker_pss_mib']:.2f} ({r['broker_pss_anon_mib']:.2f} + "
                f"{r['broker_pss_file_mib']:.2f}) | {r['waiter_pss_mib']:.2f} ({r['waiter_rss_mib']:.2f}) |")
        out.append("")
    out += [f"Goals: waiter {GOALS['waiter']}; broker {GOALS['broker']}.", ""]
    return out


def latency_section(data: dict[str, Any]) -> list[str]:
    out = [f"### Latency (`{data['command']}`)", "", f"Machine: {machine_line(data['machine'])}", ""]
    attach = data.get("attach")
    if attach:
        ms = attach["ms"]
        out += [f"**Warm attach** ({attach['runs']} interleaved runs; spawn → InitializeResult; bare = spawn → exit)",
                "", "| variant | p50 ms | p95 ms |", "|---|---:|---:|"]
        for name, stats in ms.items():
            out.append(f"| {name} | {stats['p50']:.1f} | {stats['p95']:.1f} |")
        out += ["", f"- added over bare python, p50: **{attach['added_ms_p50']:+.1f} ms** (paired "
                    f"{attach['added_ms_paired_p50']:+.1f} ms); regular install (no editable finder): "
                    f"{attach['plain_added_ms_p50']:+.1f} ms. Goal: {GOALS['attach']}.",
                f"- the entry point venv's .pth hooks ({', '.join(attach['site_hooks'])}) cost "
                f"{attach['site_hooks_ms_p50']:.1f} ms on every interpreter start (bare python, this venv vs a plain "
                f"venv)."]
        if "no_bytecode_cost_ms_p50" in attach:
            out.append(f"- without bytecode caches (PYTHONDONTWRITEBYTECODE, no __pycache__): shim "
                       f"+{attach['no_bytecode_cost_ms_p50']:.1f} ms.")
        out += [f"- detach (stdin closed → shim exited): p50 {attach['detach_ms']['p50']:.2f} ms.", ""]
    cold = data.get("cold")
    if cold:
        out += [f"**Cold start** ({cold['runs']} interleaved runs; spawn → InitializeResult)", "",
                "| server | direct p50 ms | first session via mcpsingleton p50 ms | added ms |", "|---|---:|---:|---:|"]
        for kind in ("everything", "fast"):
            if kind in cold:
                c = cold[kind]
                out.append(f"| {kind} | {c['direct_ms']['p50']:.0f} | {c['first_session_ms']['p50']:.0f} "
                           f"| {c['added_ms_p50']:+.0f} |")
        out.append("")
    trip = data.get("roundtrip")
    if trip:
        out += [f"**Round trips** ({trip['calls_per_mode']} tools/call per mode, ping half that, interleaved blocks "
                f"of {trip['block']}; {trip['note']})", "",
                "| server | request | direct p50 / p99 µs | shared p50 / p99 µs | added p50 µs | ratio p50 "
                "| broker CPU µs/req |", "|---|---|---:|---:|---:|---:|---:|"]
        for kind in ("fast", "everything"):
            for label, r in trip.get(kind, {}).items():
                out.append(f"| {kind} | {label} | {r['direct_us']['p50']:.0f} / {r['direct_us']['p99']:.0f} "
                           f"| {r['shared_us']['p50']:.0f} / {r['shared_us']['p99']:.0f} | {r['added_us_p50']:+.0f} "
                           f"| {r['ratio_p50']:.2f}× | {r['broker_cpu_us_per_request']:.0f} |")
        out += ["", f"Goal: {GOALS['roundtrip']}.", ""]
    return out


def throughput_section(data: dict[str, Any]) -> list[str]:
    out = [f"### Throughput (`{data['command']}`)", "", f"Machine: {machine_line(data['machine'])}", "",
           "| mode | sessions | in flight/session | req/s | per-session min..max | fairness min/max "
           "| broker CPU µs/req |", "|---|---:|---:|---:|---:|---:|---:|"]
    for c in data["cases"]:
        broker = c.get("broker_cpu_us_per_request")
        out.append(f"| {c['mode']} | {c['sessions']} | {c['window']} | {c['requests_per_second']} "
                   f"| {c['per_session_min']}..{c['per_session_max']} | {c['fairness_min_over_max']:.2f} "
                   f"| {'–' if broker is None else f'{broker:.0f}'} |")
    return [*out, ""]


def profile_section(data: dict[str, Any]) -> list[str]:
    startup = data["shim_startup"]
    importtime = data["shim_importtime"]
    inproc = data["broker_inprocess"]
    live = data["broker_live"]
    out = [f"### Profile (`{data['command']}`)", "", f"Machine: {machine_line(data['machine'])}", "",
           "**Shim start-up** (p50 ms): " + ", ".join(f"`{k}` {v['p50']:.1f}" for k, v in startup["ms"].items())
           + f"; site alone {startup['site_ms_p50']:.1f} ms, "
           f"the shim's imports {startup['shim_imports_ms_p50']:.1f} ms; the broker's imports "
           f"{startup['broker_imports_ms_p50']:.1f} ms (`-X importtime` cumulative µs: "
           + ", ".join(f"{k} {v}" for k, v in startup["broker_importtime_us"].items()) + ").",
           "", "`-X importtime` of a warm attach, cumulative µs: " + ", ".join(
               f"{k} {v}" for k, v in importtime["top_level_us"].items()) + "; mcpsingleton modules: " + ", ".join(
               f"{k} {v}" for k, v in importtime["mcpsingleton_us"].items()) + ".", "",
           "Shim pure steps (µs, in-process): " + ", ".join(f"{k} {v}" for k, v in data["shim_steps_us"].items()) + ".",
           "", "**Broker per message, in-process** (µs): " + "; ".join(
               f"{k}: ping {v['ping_us']}, tools/call round trip {v['tools_call_round_trip_us']}"
               for k, v in inproc["message_path"].items()) + ".", "",
           "Reads (µs per 100-byte message): " + ", ".join(f"{k} {v}" for k, v in inproc["read"].items()) + ".", "",
           "`_finish_ending_sessions` per message (µs): " + ", ".join(
               f"{k} {v}" for k, v in inproc["finish_ending_sessions_us"].items()) + ".", "",
           f"**Broker live A/B** ({live['calls']} echo calls each, fast_server, interleaved):", "",
           "| path | p50 µs | p99 µs | added p50 µs | middle process CPU µs/req |", "|---|---:|---:|---:|---:|"]
    for name, stats in live["us"].items():
        added = live["added_us_p50"].get(name)
        cpu = live["middle_process_cpu_us_per_request"].get(name)
        out.append(f"| {name} | {stats['p50']:.0f} | {stats['p99']:.0f} | {'–' if added is None else f'{added:+.0f}'} "
                   f"| {'–' if cpu is None else f'{cpu:.0f}'} |")
    memory = data["broker_import_memory"]
    out += ["", f"Import memory (Pss_Anon KiB over a bare interpreter's {memory['bare_interpreter_pss_anon_kib']}): "
            + ", ".join(f"{k} {v}" for k, v in memory["added_pss_anon_kib"].items())
            + f". On top of the broker's other stdlib imports ({memory['broker_stdlib_without_dataclasses_typing_kib']}"
            f" KiB): dataclasses +{memory['dataclasses_on_top_kib']}, typing +{memory['typing_on_top_kib']}, both "
            f"+{memory['dataclasses_and_typing_on_top_kib']} KiB.", ""]
    return out


def main() -> None:
    out = ["# Benchmark summary (generated by bench/report.py)", ""]
    for name, render in (("sessions", sessions_section), ("latency", latency_section),
                         ("throughput", throughput_section), ("profile", profile_section)):
        data = load(name)
        if data is not None:
            out += render(data)
    text = "\n".join(out) + "\n"
    Path(RESULTS / "summary.md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
