#!/usr/bin/env bash
# The whole test suite: install (idempotent), lint, then every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash shell/install.sh
.venv/bin/ruff check mcpsingleton tests bench
.venv/bin/python -m pytest -p no:cacheprovider "$@"  # pyproject adds -q: one summary line
