#!/usr/bin/env bash
# The whole test suite: install (idempotent), lint, type check, then every test; then the tests that run real
# processes again with MCPSINGLETON_PORTABLE=1, i.e. with the macOS/BSD implementations of
# mcpsingleton/common/platform.py (no pipe2, prctl or /proc; poll selector; the keeper as the only orphan
# guard), on Linux only (elsewhere the first run is that already); tests marked `slow` that exercise no
# platform code (thousands of HTTP sessions, the real clients, the browser) run in the first pass only.
# Arguments go to both pytest runs; given any, the second run uses them instead of the markers.
# Runs under macOS's bash 3.2 too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash shell/install.sh
.venv/bin/ruff check mcpsingleton tests bench
for target in linux darwin; do  # configured in pyproject.toml: mcpsingleton/; each OS's stubs differ
    .venv/bin/mypy --platform "$target"
done
# Tests mostly wait on processes they started: run them in parallel, two workers per core (pytest-xdist;
# set PYTEST_XDIST_AUTO_NUM_WORKERS to choose, or pass -n 0). Each worker imports every test module: let
# pytest keep the modules it rewrote instead of rewriting them in every worker of every run.
cores=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)  # nproc: the CPUs this job may use
export PYTEST_XDIST_AUTO_NUM_WORKERS="${PYTEST_XDIST_AUTO_NUM_WORKERS:-$((2 * cores))}"
unset PYTHONDONTWRITEBYTECODE
pytest=(.venv/bin/python -m pytest -p no:cacheprovider -n auto --dist worksteal)
"${pytest[@]}" ${1+"$@"}  # pyproject adds -q: one summary line
[ "$(uname)" = Linux ] || exit 0  # elsewhere the first run took the macOS/BSD implementations already
[ $# -gt 0 ] || set -- -m "real_process and not slow"  # tests/conftest.py marks real_process: a fixture starts processes
echo "again in portable mode (the macOS/BSD code paths):"
MCPSINGLETON_PORTABLE=1 "${pytest[@]}" "$@"
