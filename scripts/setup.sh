#!/usr/bin/env bash
# Creates .venv if missing and installs the lab (torch pinned to the release on this disk first).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
fi
if ! .venv/bin/python -c "import distill, gsplat, diffusers, pytest, ruff" >/dev/null 2>&1 \
    || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/pip install -q -e '.[dev]'
    touch .venv/.installed
fi
