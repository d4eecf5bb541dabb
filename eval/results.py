"""The sweep's output files: results.json (meta + rows), results.csv, pareto.png and report.md,
and the results table printed at the end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from eval.plot import pareto_plot
from eval.report import report, results_table


def write_results(out: Path, rows: list[dict], meta: dict) -> None:
    """Write every output file of a sweep into ``out`` and print the results table."""
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    pareto_plot(rows, out / "pareto.png")
    (out / "report.md").write_text(report(rows, meta))
    print(results_table(rows))
    print(f"wrote {out / 'results.json'}, results.csv, pareto.png, report.md")
