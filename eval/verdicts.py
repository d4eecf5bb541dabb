"""Which metrics may decide a verdict, the comparisons the report makes (each student against the
reference cell; the best student per step count against the others) and their three-way
verdicts: *equivalent*, *different* or *inconclusive* by eval.stats.verdict against the margin
per metric from margins.json (eval/margins.py), with Holm's correction within each family. A
metric without a margin (or a sweep without a margins file) gets intervals only, no verdict."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from eval.stats import DIFFERENT, excludes_zero, holm, verdict

# metrics that may decide a verdict (if the calibration passes them), higher is better?
VERDICT_METRICS = {
    "seen_psnr": True,
    "fid": False,
    "unseen_dist": False,
    "consistency_psnr": True,
}
# the better side of every metric a comparison may use (sharpness has none: 1.0 is the truth's)
HIGHER_BETTER = {
    **VERDICT_METRICS,
    "seen_psnr_view0": True,
    "sharpness": None,
    "sharpness_log_error": False,
    "hf_correlation": True,
}
# the step counts whose students the report compares with the reference, one line each
REFERENCE_STEPS = (1, 2, 4)
# Holm families: every comparison to the reference is one family, the best-student
# comparisons another (the claims a reader takes from one section of the report together)
FAMILIES = ("reference", "best")

Paired = Callable[[tuple, tuple], dict]  # two cells' keys -> their paired differences


def calibration_world_mismatch(doc: dict, path: Path, world) -> str | None:
    """Why a calibration (calibration.json's contents) does not apply to an evaluation on
    ``world`` (a WorldConfig): it was measured on another world; None when it applies or
    records no world."""
    from scenes.world import other_recorded_world, world_name

    theirs = (
        None if world is None else other_recorded_world(doc.get("meta", {}).get("world"), world)
    )
    if theirs is None:
        return None
    return (
        f"calibrated on {world_name(theirs)} at {path}, this evaluation runs on"
        f" {world_name(world)}: recalibrate there (distill metrics calibrate)"
    )


def usable_metrics(
    calibration: str, has_backs: bool, world_version: int, world=None
) -> tuple[list[str], list[str], dict]:
    """Verdict metrics that pass the calibration and apply to this world: (usable, unusable
    with the reason, missing with the reason). A calibration measured on another world than
    ``world`` (a WorldConfig, when given) makes every metric unusable, saying so."""
    path = Path(calibration)
    doc = json.loads(path.read_text()) if path.exists() else {}
    ver = doc.get("verdicts", {})
    other_world = calibration_world_mismatch(doc, path, world)
    usable, unusable, missing = [], [], {}
    for m in VERDICT_METRICS:
        if m == "unseen_dist" and not has_backs:
            missing[m] = (
                f"world version {world_version} has no discrete back classes (the"
                " models were trained on it); unseen_dist needs world version 2 or 3"
            )
        elif other_world is not None:
            unusable.append(f"{m} ({other_world})")
        elif m not in ver:
            unusable.append(f"{m} (no calibration at {path})")
        elif not ver[m]["passes"]:
            unusable.append(f"{m} (fails its calibration)")
        else:
            usable.append(m)
    return usable, unusable, missing


def sharpness_calibrated(path: str, world=None) -> bool:
    """Whether the calibration at ``path`` passes the sharpness metric (blur and grain), on
    ``world`` where given (a calibration of another world does not count)."""
    p = Path(path)
    if not p.exists():
        return False
    doc = json.loads(p.read_text())
    if calibration_world_mismatch(doc, p, world) is not None:
        return False
    return bool(doc["verdicts"].get("sharpness", {}).get("passes", False))


def side(metric: str, diff: float) -> str:
    """Which way a difference goes, in words: better / worse, or grainier / smoother."""
    higher = HIGHER_BETTER.get(metric, True)
    if higher is None:
        return "grainier" if diff > 0 else "smoother"
    return "better" if (diff > 0) == higher else "worse"


def decide_family(entries: list[dict], objects: int) -> list[dict]:
    """Fill in the verdict of every comparison (``diff``, ``ci95``, ``margin``) of one family:
    two one-sided tests against the margin, Holm's correction over the comparisons that have a
    margin; those without one keep ``verdict`` None (interval only). Returns ``entries``."""
    decided = [e for e in entries if e.get("margin") is not None]
    raw = [verdict(e["diff"], e["ci95"], e["margin"], objects) for e in decided]
    for e, r, v in zip(decided, raw, holm(raw, [objects] * len(raw))):
        e.update(
            verdict=v.verdict,
            objects_to_decide=v.objects_to_decide,
            p_equivalent=v.p_equivalent,
            p_different=v.p_different,
            uncorrected=r.verdict,
        )
    for e in entries:
        e.setdefault("verdict", None)
        e.setdefault("objects_to_decide", None)
    return entries


def reference_verdicts(
    rows: list[dict], metrics: list[str], margins: dict | None, objects: int
) -> list[dict]:
    """Each student row at REFERENCE_STEPS against the reference cell (its ``vs_ref_`` paired
    differences), per metric, decided as one Holm family."""
    out = []
    cand = [r for r in rows if r["method"] != "teacher" and r["steps"] in REFERENCE_STEPS]
    for r in sorted(cand, key=lambda r: (r["steps"], r["model"])):
        for m in metrics:
            d = r.get(f"vs_ref_{m}_diff")
            if d is None:
                continue
            out.append(
                {
                    "model": r["model"],
                    "sampler": r["sampler"],
                    "steps": r["steps"],
                    "metric": m,
                    "diff": d,
                    "ci95": r.get(f"vs_ref_{m}_diff_ci95", float("nan")),
                    "margin": (margins or {}).get(m),
                    "side": side(m, d),
                }
            )
    return decide_family(out, objects)


def _line(cand: list[dict], steps: int, m: str, paired: Paired, margins: dict | None) -> dict:
    """The best of ``cand`` on metric ``m`` by point estimate and its comparison with each of the
    others (verdicts filled in later, over the whole family)."""
    ranked = sorted(cand, key=lambda r: r[m], reverse=VERDICT_METRICS[m])
    best = ranked[0]
    kb = (best["model"], best["sampler"], steps)
    others = []
    for r in ranked[1:]:
        p = paired(kb, (r["model"], r["sampler"], steps))
        others.append(
            {
                "model": r["model"],
                "diff": p[m + "_diff"],
                "ci95": p[m + "_diff_ci95"],
                "margin": (margins or {}).get(m),
            }
        )
    return {"steps": steps, "metric": m, "best": best["model"], "others": others}


def _finish(line: dict) -> dict:
    """The line's summary fields from its comparisons: the runner-up, whether the best is
    resolved (different from the runner-up; without a margin: its interval excludes zero), and
    the students not told apart from the best."""
    o = line["others"]

    def apart(c: dict) -> bool:
        if c["margin"] is None:
            return excludes_zero(c["diff"], c["ci95"])
        return c["verdict"] == DIFFERENT

    runner = o[0]
    line.update(
        runner_up=runner["model"],
        diff=runner["diff"],
        ci95=runner["ci95"],
        margin=runner["margin"],
        verdict=runner["verdict"],
        objects_to_decide=runner["objects_to_decide"],
        best_resolved=apart(runner),
        tied=[line["best"]] + [c["model"] for c in o if not apart(c)],
    )
    return line


def verdicts(
    rows: list[dict],
    pers: dict,
    metrics: list[str],
    paired_fn,
    margins: dict | None = None,
    objects: int = 0,
) -> list[dict]:
    """Per step count and metric, the best distillation student (not the teacher, not the
    finetune control) against each of the others, paired on the same objects and noise;
    with ``margins`` (metric -> margin) each comparison gets a verdict, Holm-corrected over all
    of them (one family). ``paired_fn(per_a, per_b)`` gives every metric's paired difference."""
    groups = []
    for steps in sorted({r["steps"] for r in rows}):
        cand = [
            r for r in rows if r["steps"] == steps and r["method"] not in ("teacher", "finetune")
        ]
        if len(cand) >= 2:
            groups.append((steps, cand))
    # every pair the lines compare (the best per metric against each other student), computed
    # once each with a progress bar: on 512 objects a pair's FID/KID intervals take a minute
    need = {}
    for steps, cand in groups:
        for m in metrics:
            best, *rest = sorted(cand, key=lambda r: r[m], reverse=VERDICT_METRICS[m])
            for r in rest:
                need[
                    ((best["model"], best["sampler"], steps), (r["model"], r["sampler"], steps))
                ] = 1
    pairs = {
        (a, b): paired_fn(pers[a], pers[b])
        for a, b in tqdm(list(need), desc="paired intervals, best students", unit="pair")
    }
    lines = [
        _line(cand, steps, m, lambda a, b: pairs[(a, b)], margins)
        for steps, cand in groups
        for m in metrics
    ]
    return _decide_lines(lines, objects)


def _decide_lines(lines: list[dict], objects: int) -> list[dict]:
    """The best-student lines' comparisons decided as one Holm family, and their summaries."""
    decide_family([c for ln in lines for c in ln["others"]], objects)
    return [_finish(ln) for ln in lines]


def redecide(meta: dict) -> dict:
    """Decide the sweep's stored comparisons again from their stored differences, intervals and
    margins (what a change to the verdict rule needs; no cell or interval is recomputed).
    Returns ``meta``, updated in place."""
    n = meta["objects"]
    if "reference_verdicts" in meta:
        decide_family(meta["reference_verdicts"], n)
    if meta.get("verdicts"):
        meta["verdicts"] = _decide_lines(meta["verdicts"], n)
    return meta
