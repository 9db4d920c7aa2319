#!/usr/bin/env bash
# Regenerate the shell completions from the click app (run after changing commands or options).
set -euo pipefail
cd "$(dirname "$0")/.."
for shell in bash zsh fish; do
    _MCPSINGLETON_COMPLETE="${shell}_source" .venv/bin/mcpsingleton > "shell/completions/mcpsingleton.${shell}"
done
