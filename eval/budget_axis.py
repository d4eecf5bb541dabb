"""The amortised table's budget axis: which method reaches which quality for how much
distillation compute.

The quality at each budget comes from the budget curves (``scripts/budget_curves.py``:
``docs/methods/budget_curves.json``, val objects, every method trained at 0.5x..3x its equal
budget); the latency from the sweep's own cells (a student's network costs the same whatever its
budget), so the per-asset cost of a budget is its measured distillation time spread over the
assets plus the sweep's image -> Gaussians time of that method at that step count. The curves
apply only to the sweep's teacher (same weights) and world; otherwise the axis is reported
missing, with the reason.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

# the figures of a budget point the table shows, with their intervals where the curves have one
POINT_KEYS = (
    "fraction",
    "updates",
    "wall_s",
    "fid",
    "fid_ci95",
    "seen_psnr_vs_teacher50",
    "seen_psnr_vs_teacher50_ci95",
    "unseen_dist",
    "unseen_dist_ci95",
    "sharpness",
    "sharpness_ci95",
)
VOLUMES = (10**3, 10**5)  # assets the table prices each budget at


def load_budget_axis(path: str, teacher_key: str, world_version: int) -> dict:
    """The budget curves at each method's fewest measured step count, for a sweep of the
    teacher whose folder key is ``teacher_key`` on ``world_version``; ``{"path", "missing"}``
    when there are none or they belong to another teacher or world."""
    if not path:
        return {"path": "", "missing": "no budget curves named (budget_curves='')"}
    p = Path(path)
    if not p.exists():
        return {"path": path, "missing": f"{path} not found (scripts/budget_curves.py writes it)"}
    doc = json.loads(p.read_text())
    if doc.get("teacher_key") != teacher_key:
        return {
            "path": path,
            "missing": f"its teacher's weights ({doc.get('teacher_key')}) are not this sweep's"
            f" ({teacher_key})",
        }
    if doc.get("world_version") != world_version:
        return {
            "path": path,
            "missing": f"measured on world version {doc.get('world_version')}, this sweep runs"
            f" on version {world_version}",
        }
    methods = {}
    for method, by_steps in sorted(doc.get("curves", {}).items()):
        if not by_steps:
            continue
        steps = min(by_steps, key=int)
        points = [{k: pt[k] for k in POINT_KEYS if k in pt} for pt in by_steps[steps]]
        methods[method] = {
            "steps": int(steps),
            "points": sorted(points, key=lambda q: q["fraction"]),
        }
    return {
        "path": path,
        "objects": doc.get("objects"),
        "split": "val",
        "teacher50": doc.get("teacher50", {}),
        "methods": methods,
    }


def _ci(pt: dict, key: str, fmt: str) -> str:
    if key not in pt:
        return "-"
    ci = pt.get(f"{key}_ci95")
    return format(pt[key], fmt) + (f" ± {format(ci, fmt.lstrip('+'))}" if ci is not None else "")


def budget_axis_lines(rows: list[dict], axis: dict | None, reference_steps: int = 50) -> list[str]:
    """The budget-axis table under the amortised table: per method and budget, the distillation
    minutes, the curves' quality (val) and the cost per asset with this sweep's latency."""
    if not axis:
        return []
    head = ["", "### The budget axis", ""]
    if "missing" in axis:
        return head + [f"Missing: {axis['missing']}."]
    teacher = [r for r in rows if r["method"] == "teacher" and r["steps"] == reference_steps]
    t_ms = min(r["total_ms"] for r in teacher) if teacher else None
    lines = head + [
        f"Quality from `{axis['path']}` ({axis['objects']} {axis['split']} objects, each"
        f" figure against teacher@{reference_steps} on those objects: teacher FID"
        f" {axis['teacher50'].get('fid', float('nan')):.2f}); each budget is its own measured"
        " distillation time (0.5x-3x the equal budget); the latency is this sweep's for the"
        " method at that step count (the network costs the same at every budget). Quality and"
        " latency come from different object sets, so read the quality columns against each"
        " other, not against the tables above.",
        "",
        "| student | budget | distillation min | FID (val) | seen PSNR Δ (val) | unseen dist (val)"
        " | sharpness (val) | "
        + " | ".join(f"ms/asset at {v:.0e}" for v in VOLUMES)
        + " | breaks even after |",
        "|---|---|---|---|---|---|---|" + "---|" * len(VOLUMES) + "---|",
    ]
    for method, m in axis["methods"].items():
        cells = [r for r in rows if r["method"] == method and r["steps"] == m["steps"]]
        s_ms = min(r["total_ms"] for r in cells) if cells else None
        for pt in m["points"]:
            wall = pt["wall_s"]
            if s_ms is None:
                per_asset = ["(not in this sweep)"] * len(VOLUMES)
            else:
                per_asset = [f"{(wall / v) * 1000 + s_ms:.1f}" for v in VOLUMES]
            if s_ms is None or t_ms is None:
                even = "-"
            elif s_ms >= t_ms:
                even = "never (not faster than the teacher)"
            else:
                even = f"{math.ceil(wall / ((t_ms - s_ms) / 1000)):,} assets"
            lines.append(
                f"| {method}@{m['steps']} | {pt['fraction']:g}x | {wall / 60:.1f} |"
                f" {_ci(pt, 'fid', '.2f')} | {_ci(pt, 'seen_psnr_vs_teacher50', '+.2f')} |"
                f" {_ci(pt, 'unseen_dist', '.3f')} | {_ci(pt, 'sharpness', '.2f')} | "
                + " | ".join(per_asset)
                + f" | {even} |"
            )
    return lines
