#!/usr/bin/env bash
# Trains the default students from the shipped teacher, one after another (each resumes if
# killed): one run per recipe configs/methods/<method>.yaml, into the recipe's `out`
# (shipped/students/<method>). Extra arguments go to every run, e.g.
#   ./scripts/make_students.sh out=            # keep shipped/ as it is: runs/students/<m>/student
set -euo pipefail
cd "$(dirname "$0")/.."
for recipe in configs/methods/*.yaml; do
    m=$(basename "$recipe" .yaml)
    .venv/bin/distill train --method "$m" "$recipe" "$@"
done
