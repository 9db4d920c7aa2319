"""Warm attach as users install it: the console script of a real (non-editable) install, and what it costs.

    .venv/bin/python bench/bench_install.py [--quick] [--runs 40]

Side by side, interleaved, medians (ms from spawn to exit, or to the InitializeResult for an attach to
an already running broker of bench/fast_server.py):

bare             python -c pass                       (the installed venv's interpreter)
isolated         python -I -S -c pass                 (no site, no .pth files, no user site)
editable         .venv/bin/mcpsingleton run -- …      (this repo's editable install)
installed        <venv>/bin/mcpsingleton run -- …     (`python -m venv` + `pip install <repo>`: what
                                                       pipx and a user venv give; pip writes the wrapper)
launcher         mcpsingleton.shim.launcher for that install: `#!<venv python> -IS` with the install's
                 sys.path entries written into it
wrapped          the command and args `<venv>/bin/mcpsingleton wrap` wrote into a config naming the
                 server: what a client runs after "Install for everyday use" (the launcher, in
                 MCPSINGLETON_HOME/bin here)

Then `-X importtime` of the installed console script's path (site, .pth hooks, the wrapper's `re`).
The install is made once into /tmp/msb-install-<uid> (reused; --reinstall to redo it).
Writes bench/results/install.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from bench_latency import time_attach, time_bare
from common import ROOT, Home, RawClient, entry_interpreter, fast_cmd, log, machine, role, summary, write_result

from mcpsingleton.shim.launcher import write_launcher

INSTALL_DIR = os.path.join(tempfile.gettempdir(), f"msb-install-{os.getuid()}")


def real_install(reinstall: bool) -> str:
    """A venv with the repo pip-installed (not editable); returns its bin directory."""
    bin_dir = os.path.join(INSTALL_DIR, "bin")
    if reinstall or not os.path.exists(os.path.join(bin_dir, "mcpsingleton")):
        shutil.rmtree(INSTALL_DIR, ignore_errors=True)
        base = subprocess.run([entry_interpreter(), "-c", "import sys; print(sys._base_executable)"],
                              capture_output=True, text=True, check=True).stdout.strip()
        log(f"installing {ROOT} into {INSTALL_DIR}")
        subprocess.run([base, "-m", "venv", INSTALL_DIR], check=True)
        subprocess.run([os.path.join(bin_dir, "pip"), "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
                       check=True)
    return bin_dir


def import_profile(argv: list[str], env: dict[str, str]) -> list[tuple[str, int]]:
    """Top-level imports by cumulative µs (`-X importtime`), largest first."""
    process = subprocess.run(argv, input=b"", capture_output=True, env=env, timeout=30)
    rows = []
    for line in process.stderr.decode().splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if match and not match.group(3):
            rows.append((match.group(4), int(match.group(2))))
    return sorted(rows, key=lambda row: -row[1])


def wrapped_entry(bin_dir: str, server: list[str], env: dict[str, str], directory: str) -> list[str]:
    """argv of the entry `mcpsingleton wrap` writes for `server`, run by the installed console script."""
    config = os.path.join(directory, "mcp.json")
    with open(config, "w") as handle:
        json.dump({"mcpServers": {"fast": {"command": server[0], "args": server[1:]}}}, handle)
    path_env = {**env, "PATH": bin_dir + os.pathsep + env.get("PATH", "")}
    subprocess.run([os.path.join(bin_dir, "mcpsingleton"), "wrap", "--config", config], env=path_env, check=True,
                   capture_output=True, timeout=60)
    with open(config) as handle:
        entry = json.load(handle)["mcpServers"]["fast"]
    return [entry["command"], *entry["args"]]


def interleaved(variants: dict[str, tuple[str, list[str]]], env: dict[str, str], runs: int,
                warmup: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for iteration in range(warmup + runs):
        shift = iteration % len(names)
        for name in names[shift:] + names[:shift]:
            kind, argv = variants[name]
            value = time_bare(argv, env) if kind == "bare" else time_attach(argv, env)[0]
            if iteration >= warmup:
                samples[name].append(value)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--reinstall", action="store_true")
    parser.add_argument("--out", default="install")
    args = parser.parse_args()
    runs = 10 if args.quick else args.runs
    info = machine()
    bin_dir = real_install(args.reinstall)
    python = os.path.join(bin_dir, "python")
    server = fast_cmd()
    with Home() as home, tempfile.TemporaryDirectory(prefix="msb-launcher-") as scratch:
        launcher = write_launcher(scratch, os.path.join(bin_dir, "mcpsingleton"), python)
        wrapped = wrapped_entry(bin_dir, server, home.env, scratch)
        holder = RawClient(wrapped, home.env)
        holder.initialize(timeout=60)  # starts the broker every variant then attaches to
        run_options = wrapped[1 : wrapped.index(server[0])]  # run and the options wrap chose: the same key
        variants = {
            "bare": ("bare", [python, "-c", "pass"]),
            "isolated": ("bare", [python, "-I", "-S", "-c", "pass"]),
            "editable": ("attach", [str(ROOT / ".venv/bin/mcpsingleton"), *run_options, *server]),
            "installed": ("attach", [os.path.join(bin_dir, "mcpsingleton"), *run_options, *server]),
            "launcher": ("attach", [launcher, *run_options, *server]),
            "wrapped": ("attach", wrapped),
        }
        samples = interleaved(variants, home.env, runs, warmup=2)
        profiles = {
            "installed": import_profile([python, "-X", "importtime", os.path.join(bin_dir, "mcpsingleton"),
                                         *run_options, *server], home.env),
            "launcher": import_profile([python, "-X", "importtime", "-I", "-S", launcher, *run_options, *server],
                                       home.env),
            "bare": import_profile([python, "-X", "importtime", "-c", "pass"], home.env),
        }
        brokers = [p.pid for p in home.processes() if role(p) == "broker"]
        with open(launcher) as handle:
            launcher_text = handle.read()
        with open(os.path.join(bin_dir, "mcpsingleton")) as handle:
            wrapper_text = handle.read()
        holder.close()
    stats = {name: summary(values) for name, values in samples.items()}
    bare = stats["bare"]["p50"]
    added = {name: round(stats[name]["p50"] - bare, 2) for name in stats}
    paired = {name: summary([v - b for v, b in zip(samples[name], samples["bare"], strict=True)])["p50"]
              for name in stats}  # per iteration, against the bare run next to it: steadier on a busy machine
    result: dict[str, Any] = {
        "wrapped_entry": wrapped,
        "machine": info, "runs": runs, "brokers": len(brokers), "ms": stats, "added_over_bare_ms_p50": added,
        "added_over_bare_paired_ms_p50": paired,
        "import_profile_us": {name: rows[:12] for name, rows in profiles.items()}, "launcher": launcher_text,
        "wrapper": wrapper_text,
        "samples_ms": samples,
    }
    write_result(args.out, result)
    print("| variant | p50 ms | min ms | p50 over bare `python -c pass` | paired p50 over bare | min over bare |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in variants:
        over_min = stats[name]["min"] - stats["bare"]["min"]
        print(f"| {name} | {stats[name]['p50']:.1f} | {stats[name]['min']:.1f} | {added[name]:+.1f} "
              f"| {paired[name]:+.1f} | {over_min:+.1f} |")
    print("\nimports (cumulative µs, top level):")
    for name, rows in profiles.items():
        print(f"  {name}: " + ", ".join(f"{module} {us}" for module, us in rows[:8]))
    if len(brokers) != 1:
        sys.exit(f"bench: every variant should attach to one broker; found {len(brokers)}")


if __name__ == "__main__":
    main()
