#!/usr/bin/env bash
# Install mcpsingleton and the test servers into ./.venv and ./.cache (idempotent, no root needed).
set -euo pipefail
cd "$(dirname "$0")/.."
EVERYTHING_VERSION=2026.8.31
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# compat mode: a plain path in a .pth file, so the per-session shim imports no editable-finder machinery
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
if [ ! -f ".cache/npm/node_modules/@modelcontextprotocol/server-everything/package.json" ]; then
    mkdir -p .cache/npm
    (cd .cache/npm && npm install --silent --no-audit --no-fund --no-save \
        "@modelcontextprotocol/server-everything@${EVERYTHING_VERSION}")
fi
.venv/bin/python -m compileall -q mcpsingleton  # every session start imports these: never recompile
echo "installed: $(.venv/bin/mcpsingleton --version)"
