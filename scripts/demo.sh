#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs the lab's main job on the shipped defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/distill demo "$@"
