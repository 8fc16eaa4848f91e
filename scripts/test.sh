#!/usr/bin/env bash
# Installs what the suite needs (apt + pip), lints, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_XET=1 HF_ENDPOINT=http://127.0.0.1:9
python3 -m ruff check modelcar_builder tests scripts
python3 -m ruff format --check modelcar_builder tests scripts
python3 -m pytest -q "$@"
