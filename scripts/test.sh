#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the test suite: ruff lint + format check, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pytest "$@"
