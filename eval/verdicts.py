"""Which metrics may decide a verdict, and the best student per step count: named only where the
paired interval against the runner-up excludes zero, otherwise the students that tie."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from eval.stats import excludes_zero

# metrics that may decide a verdict (if the calibration passes them), higher is better?
VERDICT_METRICS = {
    "seen_psnr": True,
    "fid": False,
    "unseen_dist": False,
    "consistency_psnr": True,
}

Paired = Callable[[tuple, tuple], dict]  # two cells' keys -> their paired differences


def usable_metrics(
    calibration: str, has_backs: bool, world_version: int
) -> tuple[list[str], list[str], dict]:
    """Verdict metrics that pass the calibration and apply to this world: (usable, unusable
    with the reason, missing with the reason)."""
    path = Path(calibration)
    ver = json.loads(path.read_text())["verdicts"] if path.exists() else {}
    usable, unusable, missing = [], [], {}
    for m in VERDICT_METRICS:
        if m == "unseen_dist" and not has_backs:
            missing[m] = (
                f"world version {world_version} has no discrete back classes (the"
                " models were trained on it); unseen_dist needs world version 2"
            )
        elif m not in ver:
            unusable.append(f"{m} (no calibration at {path})")
        elif not ver[m]["passes"]:
            unusable.append(f"{m} (fails its calibration)")
        else:
            usable.append(m)
    return usable, unusable, missing


def sharpness_calibrated(path: str) -> bool:
    """Whether the calibration at ``path`` passes the sharpness metric (blur and grain)."""
    p = Path(path)
    if not p.exists():
        return False
    return bool(json.loads(p.read_text())["verdicts"].get("sharpness", {}).get("passes", False))


def _verdict(cand: list[dict], steps: int, m: str, paired: Paired) -> dict:
    """The best of ``cand`` on metric ``m``, its runner-up and the students that tie with it."""
    ranked = sorted(cand, key=lambda r: r[m], reverse=VERDICT_METRICS[m])
    best = ranked[0]
    kb = (best["model"], best["sampler"], steps)
    diffs = []
    for r in ranked[1:]:
        p = paired(kb, (r["model"], r["sampler"], steps))
        diffs.append((r["model"], p[m + "_diff"], p[m + "_diff_ci95"]))
    tied = [best["model"]] + [n for n, d, h in diffs if not excludes_zero(d, h)]
    return {
        "steps": steps,
        "metric": m,
        "best": best["model"],
        "runner_up": diffs[0][0],
        "diff": diffs[0][1],
        "ci95": diffs[0][2],
        "best_resolved": excludes_zero(diffs[0][1], diffs[0][2]),
        "tied": tied,
    }


def verdicts(rows: list[dict], pers: dict, metrics: list[str], paired_fn) -> list[dict]:
    """Per step count and metric, the best distillation student (not the teacher, not the
    finetune control) against the others, paired on the same objects and noise.
    ``paired_fn(per_a, per_b)`` gives every metric's paired difference of two cells."""
    out, pairs = [], {}

    def paired(a: tuple, b: tuple) -> dict:  # every metric of one pair, computed once
        if (a, b) not in pairs:
            pairs[(a, b)] = paired_fn(pers[a], pers[b])
        return pairs[(a, b)]

    for steps in sorted({r["steps"] for r in rows}):
        cand = [
            r for r in rows if r["steps"] == steps and r["method"] not in ("teacher", "finetune")
        ]
        if len(cand) < 2:
            continue
        out += [_verdict(cand, steps, m, paired) for m in metrics]
    return out
