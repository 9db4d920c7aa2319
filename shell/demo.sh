#!/usr/bin/env bash
# Install, then show the main job: several sessions of one server share a single backend.
set -euo pipefail
cd "$(dirname "$0")/.."
bash shell/install.sh
.venv/bin/python shell/demo.py "$@"
