#!/usr/bin/env bash
# The whole benchmark suite, one command:  bash bench/run_all.sh [--quick]
# Needs the repo's install (bash shell/install.sh: .venv, server-everything, mcp-server-time);
# installs bench/requirements.txt (matplotlib) and, for bench_json's comparison only, orjson and msgspec
# into .venv if missing (neither is a dependency of mcpsingleton).
# Writes bench/results/{sessions,latency,throughput,scale,profile,json,install,discovery,day}.json, memory_vs_sessions.png,
# scale.png, summary.md and README.md's numbers table. Full: about 14 minutes on 2 cores; --quick: about 4
# minutes, writing to bench/results/quick/ only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "bench: no .venv here; run: bash shell/install.sh" >&2
    exit 1
fi
quick=""
sessions="--sessions 1,5,10,25,50"
if [ "${1:-}" = "--quick" ]; then
    quick="--quick"
    sessions=""
    export BENCH_RESULTS=bench/results/quick  # a smoke run: the committed results (README's numbers) stay
fi
"$PY" -c "import matplotlib" 2>/dev/null \
    || "$PY" -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
"$PY" -c "import orjson, msgspec" 2>/dev/null \
    || "$PY" -m pip install --quiet --disable-pip-version-check orjson msgspec \
    || echo "bench: orjson/msgspec not installable; bench_json compares stdlib and envelope only" >&2
started=$(date +%s)
# shellcheck disable=SC2086  # empty options must vanish
"$PY" bench/bench_sessions.py $sessions --servers everything,time,npx $quick
"$PY" bench/bench_latency.py $quick
"$PY" bench/bench_throughput.py $quick
"$PY" bench/bench_scale.py $quick
"$PY" bench/bench_profile.py $quick > /dev/null
"$PY" bench/bench_json.py $quick > /dev/null
"$PY" bench/bench_install.py $quick > /dev/null
"$PY" bench/bench_big.py $quick > /dev/null
"$PY" bench/bench_discovery.py $quick
"$PY" bench/bench_reattach.py $quick > /dev/null
"$PY" bench/bench_onebroker.py $quick
"$PY" bench/bench_day.py $quick
"$PY" -c "import starlette, uvicorn" 2>/dev/null && "$PY" bench/bench_serve.py $quick  # the serve extra
"$PY" -c "import starlette, uvicorn" 2>/dev/null && "$PY" bench/bench_http.py $quick > /dev/null
"$PY" bench/report.py > /dev/null
[ -n "$quick" ] || "$PY" bench/readme_numbers.py  # README's numbers table, from the results just written
echo "bench: done in $(( $(date +%s) - started ))s; see ${BENCH_RESULTS:-bench/results}/summary.md" >&2
