"""The measured training cost of a set of students, side by side (issue: equal budgets).

Reads each student folder's student.json (``train_cost``: wall seconds including preparation,
teacher network evaluations, student passes, machine) and writes a JSON and a Markdown table
with each student's wall time relative to the median of all, and whether all lie within
``--tolerance`` of it.

    .venv/bin/python scripts/budget_table.py runs/students/*/student --out docs/methods/budgets
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("students", nargs="+", help="student folders")
    ap.add_argument("--out", default="docs/methods/budgets", help="writes <out>.json and .md")
    ap.add_argument("--tolerance", type=float, default=0.10, help="allowed relative spread")
    args = ap.parse_args()
    rows = []
    for folder in args.students:
        card = json.loads((Path(folder) / "student.json").read_text())
        cost = card.get("train_cost") or {}
        if "wall_s" not in cost:
            raise SystemExit(f"{folder}/student.json has no measured train_cost (an older card)")
        rows.append(
            {
                "student": folder,
                "method": card["method"],
                "steps": card["steps"],
                **cost,
                "method_info": card.get("method_info", {}),
            }
        )
    mid = statistics.median(r["wall_s"] for r in rows)
    for r in rows:
        r["vs_median"] = r["wall_s"] / mid
    matched = all(abs(r["vs_median"] - 1) <= args.tolerance for r in rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"median_wall_s": mid, "tolerance": args.tolerance, "matched": matched, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [
        "| method | wall s | of which preparation s | vs median | updates | teacher NFE "
        "| student passes | steps served |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['wall_s']:.0f} | {r['prepare_s']:.0f} | {r['vs_median']:.2f} "
            f"| {r['updates']} | {r['teacher_nfe']:,} | {r['student_passes']:,} "
            f"| {', '.join(map(str, r['steps']))} |"
        )
    verdict = "within" if matched else "NOT within"
    lines += [
        "",
        f"Median {mid:.0f} s; every method {verdict} ±{args.tolerance:.0%} of it. "
        f"Measured on: {rows[0]['machine']}.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if matched else 1


if __name__ == "__main__":
    raise SystemExit(main())
