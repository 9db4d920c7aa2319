#!/usr/bin/env bash
# The whole test suite: install (idempotent), lint, type check, then every test; then the tests that run real
# processes again with MCPSINGLETON_PORTABLE=1, i.e. with the macOS/BSD implementations of
# mcpsingleton/platform.py (no pipe2, prctl or /proc; poll selector; the keeper as the only orphan
# guard). Arguments go to both pytest runs; given any, the second run uses them instead of the list.
set -euo pipefail
cd "$(dirname "$0")/.."
bash shell/install.sh
.venv/bin/ruff check mcpsingleton tests bench
for target in linux darwin; do  # configured in pyproject.toml: mcpsingleton/; each OS's stubs differ
    .venv/bin/mypy --platform "$target"
done
.venv/bin/python -m pytest -p no:cacheprovider "$@"  # pyproject adds -q: one summary line
real_processes=(
    tests/test_lifecycle.py tests/test_faults.py tests/test_sharing.py tests/test_fidelity.py tests/test_eras.py
    tests/test_operator.py tests/test_reaper.py tests/test_proctree.py tests/test_wrap_e2e.py tests/test_hardening.py
)
[ $# -gt 0 ] || set -- "${real_processes[@]}"
echo "again in portable mode (the macOS/BSD code paths):"
MCPSINGLETON_PORTABLE=1 .venv/bin/python -m pytest -p no:cacheprovider "$@"
