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
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,serve]' --config-settings editable_mode=compat
# test servers, pinned; installed together because `npm install --no-save` prunes what it was not given.
# desktop-commander depends on puppeteer, whose install script would download a browser: not needed here
NPM_SERVERS=(
    "@modelcontextprotocol/server-everything@${EVERYTHING_VERSION}"
    "@modelcontextprotocol/server-memory@2026.8.31"
    "@modelcontextprotocol/server-sequential-thinking@2026.8.31"
    "@wonderwhy-er/desktop-commander@0.2.52"
    "@modelcontextprotocol/server-filesystem@2026.8.31"
)
for spec in "${NPM_SERVERS[@]}"; do
    if [ ! -f ".cache/npm/node_modules/${spec%@*}/package.json" ]; then
        mkdir -p .cache/npm
        (cd .cache/npm && PUPPETEER_SKIP_DOWNLOAD=1 npm install --silent --no-audit --no-fund --no-save "${NPM_SERVERS[@]}")
        break
    fi
done
# the browser tests of `serve` drive the system Chromium (Playwright cannot download its own here)
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
        || echo "install: chromium could not be installed; the browser tests of serve will be skipped"
fi
# real MCP clients, pinned, for tests/e2e/test_clients.py (their offline `mcp` commands start servers); in a
# prefix of their own so that installing them never prunes the servers above; optional: the tests skip
CLIENTS=("@anthropic-ai/claude-code@2.1.197" "@google/gemini-cli@0.61.0" "@openai/codex@0.171.0")
for spec in "${CLIENTS[@]}"; do
    if ! grep -qs "\"version\": \"${spec##*@}\"" ".cache/clients/node_modules/${spec%@*}/package.json"; then
        mkdir -p .cache/clients
        (cd .cache/clients && npm install --silent --no-audit --no-fund --no-save "${CLIENTS[@]}") \
            || echo "install.sh: the MCP clients did not install; tests/e2e/test_clients.py will skip" >&2
        break
    fi
done
# HTTP clients of `serve`'s /mcp/NAME, pinned, for tests/e2e/test_mcp_http_clients.py (the TypeScript SDK client and
# MCP Inspector's CLI); a prefix of their own, like the clients above; optional: the tests skip
HTTP_CLIENTS=("@modelcontextprotocol/sdk@1.32.2" "@modelcontextprotocol/inspector@2.12.0")
for spec in "${HTTP_CLIENTS[@]}"; do
    if ! grep -qs "\"version\": \"${spec##*@}\"" ".cache/http-clients/node_modules/${spec%@*}/package.json"; then
        mkdir -p .cache/http-clients
        (cd .cache/http-clients && npm install --silent --no-audit --no-fund --no-save "${HTTP_CLIENTS[@]}") \
            || echo "install.sh: the HTTP clients did not install; tests/e2e/test_mcp_http_clients.py will skip" >&2
        break
    fi
done
.venv/bin/python -m compileall -q mcpsingleton  # every session start imports these: never recompile
echo "installed: $(.venv/bin/mcpsingleton --version)"
