"""What the sweep's timings let a reader conclude: whether the same network at the same step count
times alike across models (else the machine's noise is larger than the differences being
ranked), and latency and amortised-cost rankings that order two cells only where their
interquartile ranges do not overlap (a tie otherwise). Figures come from eval/timing.py."""

from __future__ import annotations

AGREE_WITHIN = 0.05  # the same network at the same step count: medians within 5%
VOLUMES = [10**k for k in range(2, 8)]  # assets, as in the amortised table


def _label(r: dict, samplers: int) -> str:
    return f"{r['model']}@{r['steps']}" + (f" ({r['sampler']})" if samplers > 1 else "")


def same_network_checks(rows: list[dict], within: float = AGREE_WITHIN) -> list[dict]:
    """Each group of cells of different models that run the same network (``row["network"]``,
    eval/timing.py network_key) at the same step count and NFE: their diffusion medians, the
    disagreement (largest / smallest - 1) and whether it is within ``within``. Then the
    reconstructor, the same computation in every cell (its recon medians)."""
    samplers = len({r.get("sampler") for r in rows})
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("network") and "diffusion_ms" in r:
            groups.setdefault((r["network"], r["steps"], r["nfe"]), []).append(r)
    out = []
    for (net, steps, _), rs in groups.items():
        if len({r["model"] for r in rs}) < 2:
            continue
        ms = [float(r["diffusion_ms"]) for r in rs]
        dis = max(ms) / min(ms) - 1
        cells = [_label(r, samplers) for r in rs]
        out.append(
            {
                "what": f"network {net}, {steps} steps",
                "cells": cells,
                "ms": ms,
                "stage": "diffusion",
            }
            | {"disagreement": dis, "agrees": dis <= within}
        )
    rec = [r for r in rows if "recon_ms" in r]
    if len(rec) >= 2:
        ms = [float(r["recon_ms"]) for r in rec]
        dis = max(ms) / min(ms) - 1
        out.append(
            {"what": "the reconstructor (every cell)", "cells": [_label(r, samplers) for r in rec]}
            | {"ms": ms, "stage": "recon", "disagreement": dis, "agrees": dis <= within}
        )
    return out


def same_network_lines(checks: list[dict], within: float = AGREE_WITHIN) -> list[str]:
    """One line per check: agrees within ``within``, or by how much it disagrees."""
    if not checks:
        return ["- No two models run the same network at the same step count: nothing to check."]
    lines = []
    for c in checks:
        if len(c["cells"]) <= 4:
            figs = ", ".join(f"{n} {m:.1f} ms" for n, m in zip(c["cells"], c["ms"]))
        else:
            figs = f"{len(c['cells'])} cells, {min(c['ms']):.1f} to {max(c['ms']):.1f} ms"
        pct = 100 * c["disagreement"]
        verdict = (
            f"agree within {100 * within:g}% ({pct:.1f}%)"
            if c["agrees"]
            else f"DISAGREE by {pct:.1f}% (more than {100 * within:g}%): differences of that"
            " size between these timings are machine noise, not the models"
        )
        lines.append(f"- Same {c['stage']} computation, {c['what']}: {figs}: {verdict}.")
    return lines


def rank_tiers(items: list[tuple[str, float, float, float]]) -> list[list[str]]:
    """``items``: (label, value, low, high), lower is better; sorted by value, a cell joins the
    tier before it when its [low, high] overlaps any of that tier's (a tie), else opens the next
    tier: one cell ranks ahead of another only where the difference exceeds the spread."""
    tiers: list[list[str]] = []
    top = float("-inf")  # the highest ``high`` in the current tier
    for label, _, lo, hi in sorted(items, key=lambda x: x[1]):
        if tiers and lo <= top:
            tiers[-1].append(label)
            top = max(top, hi)
        else:
            tiers.append([label])
            top = hi
    return tiers


def ranking_text(tiers: list[list[str]]) -> str:
    """``a ≈ b < c``: ≈ a tie (spreads overlap), < ahead beyond the spread."""
    return " < ".join(" ≈ ".join(t) for t in tiers)


def _span(r: dict, extra: float = 0.0) -> tuple[float, float, float]:
    v = float(r["total_ms"])
    return v + extra, float(r.get("total_ms_q1", v)) + extra, float(r.get("total_ms_q3", v)) + extra


def latency_ranking(rows: list[dict]) -> str:
    samplers = len({r.get("sampler") for r in rows})
    items = [(_label(r, samplers), *_span(r)) for r in rows if "total_ms" in r]
    return ranking_text(rank_tiers(items))


def amortised_rankings(rows: list[dict], reference_steps: int) -> list[str]:
    """Per volume of assets: the per-asset cost (training time / assets + total ms) of the
    teacher at the reference step count and each student at its fewest steps, ranked."""
    teacher = [r for r in rows if r["method"] == "teacher" and r["steps"] == reference_steps]
    cols = (
        [(f"teacher@{reference_steps}", min(teacher, key=lambda r: r["total_ms"]))]
        if teacher
        else []
    )
    for name in sorted({r["model"] for r in rows if r["method"] != "teacher"}):
        r = min((x for x in rows if x["model"] == name), key=lambda x: x["steps"])
        cols.append((f"{name}@{r['steps']}", r))
    if len(cols) < 2:
        return []
    out = []
    for a in VOLUMES:
        items = [(c, *_span(r, r.get("train_seconds", 0.0) * 1000 / a)) for c, r in cols]
        out.append(f"- {a:.0e} assets: {ranking_text(rank_tiers(items))}")
    return out


def timing_lines(rows: list[dict], meta: dict) -> list[str]:
    """The report's section on timings: how they were taken, the same-network check, and the
    rankings that hold beyond the spread."""
    t = meta.get("timing")
    if not t or not any("total_ms_q1" in r for r in rows):
        return ["", "Timings of this sweep have no spread recorded: no ranking is stated."]
    lines = [
        "",
        "## Timings you can rank on",
        "",
        f"Latency at batch 1: {t['repeats']} timed rounds after {t['warmup_rounds']} warm-up"
        f" round(s), {t['order']}; torch threads pinned to {t['threads']}. results.json holds"
        " each stage's median with its interquartile range (`*_iqr`, ends `*_q1`, `*_q3`). A"
        " ranking puts one cell ahead of another only where their interquartile ranges do not"
        " overlap (≈: a tie).",
        "",
        *same_network_lines(same_network_checks(rows)),
        "",
        f"Latency (total ms, image -> Gaussians): {latency_ranking(rows)}.",
    ]
    amort = amortised_rankings(rows, meta["config"]["reference_steps"])
    if amort:
        lines += ["", "Amortised cost per asset, ranked:", "", *amort]
    return lines
