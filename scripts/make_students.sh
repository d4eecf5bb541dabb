#!/usr/bin/env bash
# Trains the default students from the shipped teacher, one after another (each resumes if
# killed): one run per recipe configs/methods/<method>.yaml, into the recipe's `out`
# (shipped/students/<method>). Extra arguments go to every run, e.g.
#   ./scripts/make_students.sh out=            # keep shipped/ as it is: runs/students/<m>/student
# RUN_ROOT=<folder> puts each method's run in <folder>/<method> (another teacher's students must
# not resume from the runs of this one's; a run folder refuses another teacher's run), e.g.
#   RUN_ROOT=runs/next/students ./scripts/make_students.sh teacher=<new teacher> out=
set -euo pipefail
cd "$(dirname "$0")/.."
for recipe in configs/methods/*.yaml; do
    m=$(basename "$recipe" .yaml)
    extra=()
    if [[ -n "${RUN_ROOT:-}" ]]; then extra=("run_dir=$RUN_ROOT/$m"); fi
    .venv/bin/distill train --method "$m" "$recipe" "${extra[@]}" "$@"
done
