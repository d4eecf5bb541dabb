#!/usr/bin/env bash
# The lab on a CUDA machine: every method for a few updates on the shipped teacher, a 4-object
# sweep of the shipped students and a serving smoke test, with their figures (scripts/gpu_check.py;
# arguments go to it, e.g. --parts methods). Elsewhere it exits 2 with "no CUDA device".
#   ./scripts/gpu_check.sh                 # with .venv/bin/python when there is one
#   PYTHON=python3 ./scripts/gpu_check.sh  # another interpreter that has the lab's packages
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-}
if [[ -z "$py" ]]; then
    if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False with $py); nothing was checked" >&2
    exit 2
fi
"$py" -c 'import torch; print("gpu_check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
exec "$py" scripts/gpu_check.py "$@"
