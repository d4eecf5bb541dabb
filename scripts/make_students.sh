#!/usr/bin/env bash
# Trains the five default students from the shipped teacher, one after another (each resumes
# if killed), into shipped/students/<method>. Extra arguments go to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
for m in progressive consistency reflow shortcut finetune; do
    .venv/bin/distill train --method "$m" "configs/methods/$m.yaml" "$@"
done
