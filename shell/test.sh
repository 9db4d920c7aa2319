#!/usr/bin/env bash
# The whole test suite: install (idempotent), lint, type check, then every test; then the tests that run real
# processes again with MCPSINGLETON_PORTABLE=1, i.e. with the macOS/BSD implementations of
# mcpsingleton/common/platform.py (no pipe2, prctl or /proc; poll selector; the keeper as the only orphan
# guard), on Linux only (elsewhere the first run is that already). Arguments go to both pytest runs; given any,
# the second run uses them instead of `-m real_process`. Runs under macOS's bash 3.2 too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash shell/install.sh
.venv/bin/ruff check mcpsingleton tests bench
for target in linux darwin; do  # configured in pyproject.toml: mcpsingleton/; each OS's stubs differ
    .venv/bin/mypy --platform "$target"
done
.venv/bin/python -m pytest -p no:cacheprovider ${1+"$@"}  # pyproject adds -q: one summary line
[ "$(uname)" = Linux ] || exit 0  # elsewhere the first run took the macOS/BSD implementations already
[ $# -gt 0 ] || set -- -m real_process  # tests.conftest marks them: they use a fixture that starts processes
echo "again in portable mode (the macOS/BSD code paths):"
MCPSINGLETON_PORTABLE=1 .venv/bin/python -m pytest -p no:cacheprovider "$@"
