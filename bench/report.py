"""Render bench/results/*.json as Markdown tables (bench/results/summary.md), goals beside the numbers.

    .venv/bin/python bench/report.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from common import RESULTS, machine_line

GOALS = {
    "waiter": "≤ 1 MiB PSS (peers' Go shims: 2.2–2.5 MiB)",
    "broker": "≤ 12 MiB PSS (peers' daemons: 2.8–4.3 MiB)",
    "attach": "within 5 ms of bare `python -c pass` (peers: 8–16 ms warm attach)",
    "roundtrip": "≤ 50 µs added (peers: +0.3–0.8 ms, 1.8–2.7× direct)",
    "marginal": "one more session on a warm backend ≤ 1 MiB PSS",
    "cold": "first session ≤ direct start + 50 ms",
    "servers": "brokers + keepers + waiters ≤ 100 MiB PSS for 8 servers × 7 sessions",
    "storm": "exactly 1 broker and 1 backend for a storm of sessions on a cold key",
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
    out += [f"Goals: waiter {GOALS['waiter']}; broker {GOALS['broker']}; {GOALS['marginal']}.", ""]
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
        floor = cold.get("floor")
        if floor:
            ms = floor["ms"]
            out += [f"Floor of the addition: `python -c pass` {ms['python_pass']['p50']:.1f} ms (the shim's "
                    f"interpreter) + `python -c 'import mcpsingleton.broker.process'` "
                    f"{ms['python_import_broker']['p50']:.1f} ms (the broker's interpreter and imports) = "
                    f"**{floor['floor_ms_p50']:.0f} ms** (two bare interpreters alone: "
                    f"{floor['two_interpreters_ms_p50']:.0f} ms). Goal: {GOALS['cold']}.", ""]
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


def scale_section(data: dict[str, Any]) -> list[str]:
    out = [f"### Scale (`{data['command']}`)", "", f"Machine: {machine_line(data['machine'])}", ""]
    servers = data.get("servers")
    if servers:
        shared, direct = servers["shared"], servers["direct"]
        roles = shared["by_role_mib"]
        out += [f"**{shared['servers']} servers × {servers['sessions_per_server']} sessions** "
                f"({', '.join(servers['mix'])}; one cwd each)", "",
                "| mode | total PSS MiB | processes | backends MiB | brokers MiB | keepers MiB | waiters MiB "
                "| ours (brokers + keepers + waiters) MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|",
                f"| direct | {direct['total_mib']:.1f} | {direct['processes']} | {direct['total_mib']:.1f} | – | – | – "
                "| – |",
                f"| shared | {shared['total_mib']:.1f} | {shared['processes']} | {roles.get('backend', 0):.1f} "
                f"| {roles.get('broker', 0):.1f} | {roles.get('keeper', 0):.1f} | {roles.get('waiter', 0):.1f} "
                f"| **{shared['ours_mib']:.1f}** |", "",
                "Direct per server kind (MiB): " + ", ".join(f"{k} {v}" for k, v in direct["per_kind_mib"].items())
                + f"; direct ÷ shared {servers['saving_ratio']:.2f}×; broker PSS median "
                f"{shared['broker_pss_mib_median']:.2f} MiB (anon {shared['broker_pss_anon_mib_median']:.2f}). "
                f"Goal: {GOALS['servers']}.", ""]
    storm = data.get("storm")
    if storm:
        out += [f"**Cold-start storm**: {storm['sessions']} sessions released at once on a cold key, "
                f"{storm['rounds']} round(s) per mode, interleaved", "",
                "| server | direct: all initialized, median ms | shared: all initialized, median ms | speed-up "
                "| per-session median ms direct / shared | CPU s direct / shared | brokers started (max) "
                "| backends started (max) | brokers alive (max) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for kind in ("everything", "fast"):
            if kind in storm:
                r = storm[kind]
                out.append(f"| {kind} | {r['direct_all_ms_median']:.0f} | {r['shared_all_ms_median']:.0f} "
                           f"| {r['speedup']:.1f}× | {r['direct_session_ms_median']:.0f} / "
                           f"{r['shared_session_ms_median']:.0f} | {r['direct_cpu_s_median']:.1f} / "
                           f"{r['shared_cpu_s_median']:.1f} | {r['brokers_started_max']} "
                           f"| {r['backends_started_max']} | {r['brokers_alive_max']} |")
        shim = "; ".join(f"{k} {storm[k]['shim_cpu_ms_median']:.0f} ms" for k in ("everything", "fast") if k in storm)
        out += ["", f"CPU: user + system of every counted process (shared: waiters incl. their time as shims, broker, "
                f"keeper, backend; direct: the server trees). CPU per shim, median: {shim}. Goal: {GOALS['storm']}.",
                ""]
    many = data.get("many")
    if many:
        out += ["**One broker, many sessions** (server-everything)", "",
                "| sessions | broker PSS MiB (anon) | broker fds | waiter PSS MiB | warm attach p50 ms "
                "| bare python p50 ms | added ms | load |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in many["steps"]:
            label = f"{r['sessions']} (after {many['max_sessions']})" if r.get("after_max") else str(r["sessions"])
            out.append(f"| {label} | {r['broker_pss_mib']:.2f} ({r['broker_pss_anon_mib']:.2f}) | {r['broker_fds']} "
                       f"| {r['waiter_pss_mib_median']:.2f} | {r['attach_ms']['p50']:.1f} | {r['bare_ms']['p50']:.1f} "
                       f"| {r['added_ms_p50']:+.1f} | {r['loadavg']} |")
        warm = statistics.median(r["shim_cpu_ms_median"] for r in many["steps"] if "shim_cpu_ms_median" in r) \
            if any("shim_cpu_ms_median" in r for r in many["steps"]) else float("nan")
        out += ["", f"Per session: {many['broker_fds_per_session']} broker fds, "
                f"{many['broker_anon_kib_per_session']} KiB of broker anonymous memory "
                f"({many['broker_pss_kib_per_session']} KiB PSS). CPU of a shim that attached warm (user + system, "
                f"median): {warm:.0f} ms.", ""]
    brokers = data.get("brokers")
    if brokers:
        out += [f"**{brokers['brokers']} brokers at once** (one session each, fast_server): brokers "
                f"{brokers['broker_pss_mib_total']:.1f} MiB PSS in all, {brokers['broker_pss_mib_per_broker']:.2f} "
                f"MiB each (anon {brokers['broker_pss_anon_mib_per_broker']:.2f} + file "
                f"{brokers['broker_pss_file_mib_per_broker']:.2f}; USS {brokers['broker_uss_mib_per_broker']:.2f}, "
                f"RSS {brokers['broker_rss_mib_per_broker']:.2f}); with keepers and waiters "
                f"{brokers['ours_mib_total']:.1f} MiB.", ""]
    return out


def profile_section(data: dict[str, Any]) -> list[str]:
    startup = data["shim_startup"]
    importtime = data["shim_importtime"]
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
           ""]
    out += inprocess_section(data["broker_inprocess"]) + live_section(data.get("broker_live"))
    memory = data["broker_import_memory"]
    out += ["", f"Import memory (Pss_Anon KiB over a bare interpreter's {memory['bare_interpreter_pss_anon_kib']}): "
            + ", ".join(f"{k} {v}" for k, v in memory["added_pss_anon_kib"].items())
            + f". On top of the broker's other stdlib imports ({memory['broker_stdlib_without_dataclasses_typing_kib']}"
            f" KiB): dataclasses +{memory['dataclasses_on_top_kib']}, typing +{memory['typing_on_top_kib']}, both "
            f"+{memory['dataclasses_and_typing_on_top_kib']} KiB.", ""]
    return out


def inprocess_section(inproc: dict[str, Any]) -> list[str]:
    """The broker's in-process cost per message: bench_profile's one message path, or the variants (and the
    read and session-ending costs) that older result files compared."""
    path = inproc["message_path"]
    variants = path if all(isinstance(value, dict) for value in path.values()) else {"message path": path}
    out = ["**Broker per message, in-process** (µs): " + "; ".join(
        f"{k}: ping {v['ping_us']}, tools/call round trip {v['tools_call_round_trip_us']}" for k, v in variants.items())
        + ".", ""]
    for key, title in (("read", "Reads (µs per 100-byte message)"),
                       ("finish_ending_sessions_us", "`_finish_ending_sessions` per message (µs)")):
        if key in inproc:
            out += [f"{title}: " + ", ".join(f"{k} {v}" for k, v in inproc[key].items()) + ".", ""]
    return out


def live_section(live: dict[str, Any] | None) -> list[str]:
    """The broker live A/B, which bench_profile no longer runs: shown from older result files that have it."""
    if live is None:
        return []
    out = [f"**Broker live A/B** ({live['calls']} echo calls each, fast_server, interleaved):", "",
           "| path | p50 µs | p99 µs | added p50 µs | middle process CPU µs/req |", "|---|---:|---:|---:|---:|"]
    for name, stats in live["us"].items():
        added = live["added_us_p50"].get(name)
        cpu = live["middle_process_cpu_us_per_request"].get(name)
        out.append(f"| {name} | {stats['p50']:.0f} | {stats['p99']:.0f} | {'–' if added is None else f'{added:+.0f}'} "
                   f"| {'–' if cpu is None else f'{cpu:.0f}'} |")
    return out


def discovery_section(data: dict[str, Any]) -> list[str]:
    out = ["### Cached discovery and --lazy", "", f"Machine: {machine_line(data['machine'])}", ""]
    if "cold" in data:
        out += ["| server | variant | spawn → InitializeResult p50 ms | spawn → first tools/call p50 ms |",
                "|---|---|---:|---:|"]
        for kind in ("everything", "npx"):
            for variant in ("direct", "no_cache", "cache"):
                row = data["cold"].get(kind, {}).get(variant)
                if row is not None:
                    initialize, call = row["initialize_ms"]["p50"], row["first_call_ms"]["p50"]
                    out.append(f"| {kind} | {variant} | {initialize} | {call} |")
        out += ["", f"Goal: ≤ {data['cold']['goal_ms']} ms to the InitializeResult with a cache entry.", ""]
    if "lazy" in data:
        out += ["| 10 servers, one tool called | PSS p50 MiB (brokers+keepers+backends) | backends | "
                "all 10 initialized p50 ms |", "|---|---:|---:|---:|"]
        for variant in ("direct", "no_cache", "cache", "cache_lazy"):
            row = data["lazy"].get(variant)
            if row is None:
                continue
            out.append(f"| {variant} | {row['pss_mib']['p50']} | {row['backends']['p50']:.0f} "
                       f"| {row['all_initialized_ms']['p50']} |")
        out.append("")
    return out


def day_section(data: dict[str, Any]) -> list[str]:
    out = ["### A typical day", "", f"Machine: {machine_line(data['machine'])}", ""]
    if "day" in data:
        day = data["day"]
        out += ["| mode | total PSS MiB (per round) | ours beyond the backends MiB | processes |",
                "|---|---|---:|---:|"]
        for mode in ("direct", "shared"):
            rounds = day[mode]
            totals = ", ".join(f"{r['total_mib']:.1f}" for r in rounds)
            ours = ", ".join(f"{r['ours_mib']:.1f}" for r in rounds) if mode == "shared" else "–"
            out.append(f"| {mode} | {totals} | {ours} | {rounds[0]['processes']} |")
        out += ["", f"Median: {day['shared_total_mib']} vs {day['direct_total_mib']} MiB ({day['ratio']}×, goal "
                f"≤ {day['goal_ratio']}×); ours {day['ours_mib']} MiB (goal ≤ {day['goal_ours_mib']} MiB).", ""]
    if "keys" in data:
        keys = data["keys"]
        out += [f"{keys['keys']} keys × {keys['sessions_per_key']} sessions: {keys['brokers']} brokers, "
                f"{keys['broker_pss_mib_total']} MiB; ours {keys['ours_mib']} MiB; warm attach p50 "
                f"{keys['attach_ms']['p50']} ms (bare python {keys['bare_python_ms']['p50']} ms).", ""]
    return out


def main() -> None:
    out = ["# Benchmark summary (generated by bench/report.py)", ""]
    for name, render in (("sessions", sessions_section), ("latency", latency_section),
                         ("throughput", throughput_section), ("scale", scale_section), ("profile", profile_section),
                         ("discovery", discovery_section), ("day", day_section)):
        data = load(name)
        if data is not None:
            out += render(data)
    text = "\n".join(out) + "\n"
    Path(RESULTS / "summary.md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
