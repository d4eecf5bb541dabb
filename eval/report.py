"""The sweep's tables and report: every figure with its 95% interval over objects, every row
with its paired difference to the 50-step teacher, and every comparison line a three-way verdict
(equivalent / different / inconclusive) against the margins the sweep read (eval/verdicts.py),
or an interval only where there is no margin."""

from __future__ import annotations

import math

from eval.budget_axis import budget_axis_lines
from eval.seen import SEEN_SHARE_FLOOR
from eval.stats import DIFFERENT, EQUIVALENT, holm_step_down, mean_above_zero_p
from eval.timing_report import timing_lines
from eval.verdicts import REFERENCE_STEPS, reference_verdicts

PAIRED_COLUMNS = ("seen_psnr", "sharpness", "fid", "unseen_dist")


def _ci(r: dict, k: str, fmt: str = ".2f") -> str:
    v = r.get(k)
    if v is None:
        return "n/a"
    h = r.get(k + "_ci95")
    return f"{v:{fmt}}" + (f" ± {h:{fmt}}" if h is not None and h == h else "")


def _vs(r: dict, k: str, fmt: str = "+.2f") -> str:
    d = r.get(f"vs_ref_{k}_diff")
    if d is None:
        return "n/a"
    h = r.get(f"vs_ref_{k}_diff_ci95", float("nan"))
    return f"{d:{fmt}} ± {h:.2f}"


def results_table(rows: list[dict]) -> str:
    head = (
        "| model | method | sampler | steps | NFE | seen PSNR | seen PSNR view 0 | sharpness |"
        " unseen dist | unreadable | FID | KID | consistency PSNR | silhouette IoU | Chamfer |"
        " e2e PSNR | LPIPS | Δ seen PSNR vs ref | Δ sharpness vs ref | Δ FID vs ref |"
        " diffusion ms | recon ms | total ms | render ms | throughput/s | peak MB |"
    )
    lines = [head, "|" + "---|" * 26]
    for r in sorted(
        rows, key=lambda r: (r["method"] != "teacher", r["model"], r["sampler"], r["steps"])
    ):
        lines.append(
            f"| {r['model']} | {r['method']} | {r['sampler']} | {r['steps']} | {r['nfe']} | "
            f"{_ci(r, 'seen_psnr')} | {_ci(r, 'seen_psnr_view0')} | {_ci(r, 'sharpness')} | "
            f"{_ci(r, 'unseen_dist', '.3f')} | {_ci(r, 'averaged_rate')} | {_ci(r, 'fid')} | "
            f"{_ci(r, 'kid', '.4f')} | {_ci(r, 'consistency_psnr')} | "
            f"{_ci(r, 'silhouette_iou', '.3f')} | {_ci(r, 'chamfer', '.4f')} | "
            f"{_ci(r, 'e2e_psnr')} | {_ci(r, 'lpips', '.3f')} | {_vs(r, 'seen_psnr')} | "
            f"{_vs(r, 'sharpness')} | "
            f"{_vs(r, 'fid')} | {r['diffusion_ms']:.1f} | {r['recon_ms']:.1f} | "
            f"{r['total_ms']:.1f} | {r['render_ms']:.1f} | {r['throughput_per_s']:.2f} | "
            f"{r['peak_mem_mb']:.0f} |"
        )
    return "\n".join(lines)


def amortised(rows: list[dict], reference_steps: int = 50) -> tuple[str, list[str]]:
    """Per-asset cost (distillation time / assets + inference time) for 1e2..1e7 assets, the
    teacher at the reference step count vs each student at its fewest steps."""
    teacher = [r for r in rows if r["method"] == "teacher" and r["steps"] == reference_steps]
    if not teacher:
        return "(no teacher cell at the reference step count)", []
    t = min(teacher, key=lambda r: r["total_ms"])
    cols = [(f"teacher@{t['steps']}", t)]
    for name in sorted({r["model"] for r in rows if r["method"] != "teacher"}):
        rs = [r for r in rows if r["model"] == name]
        r = min(rs, key=lambda r: r["steps"])
        cols.append((f"{name}@{r['steps']}", r))
    volumes = [10**k for k in range(2, 8)]
    lines = ["| assets | " + " | ".join(c for c, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for a in volumes:
        cells = [
            f"{(r['train_seconds'] / a + r['total_ms'] / 1000) * 1000:.1f} ms" for _, r in cols
        ]
        lines.append(f"| {a:.0e} | " + " | ".join(cells) + " |")
    notes = []
    for c, r in cols[1:]:
        saving = t["total_ms"] / 1000 - r["total_ms"] / 1000
        if saving <= 0:
            notes.append(f"{c}: never breaks even (not faster than the teacher)")
        else:
            notes.append(
                f"{c}: breaks even after {math.ceil(r['train_seconds'] / saving):,} assets "
                f"({r['train_seconds'] / 60:.1f} min of distillation, "
                f"{saving * 1000:.0f} ms saved per asset)"
            )
    return "\n".join(lines), notes


def unseen_lines(rows: list[dict], meta: dict) -> list[str]:
    """The unseen side per cell: outcome counts (read / unreadable / disagree), the distance to
    the known back-class distribution, the goodness-of-fit p-value and the leak (per-object
    accuracy minus chance, 95% interval); on world 2 which cells' backs leak."""
    cells = [r for r in rows if "unseen_objects" in r]
    if not cells:
        return []
    shares = ", ".join(f"view {v} {s:.0%}" for v, s in enumerate(meta.get("back_views", [])))
    lines = [
        "",
        "## Unseen side",
        "",
        "Each object's back class is read in every target view that shows it (inside the true"
        " silhouette, where the condition camera does not see the surface, and where the true"
        " view reads its own back there"
        + (f": {shares} of the objects" if shares else "")
        + "); the views must agree. Outcomes: read (a class), unreadable (a view that shows the"
        " back cannot be read), disagree (views read different classes). `fit p`: goodness of"
        " fit of the outcomes to the known back-class distribution (unreadable and disagree"
        " count against it). `leak`: per-object accuracy minus the chance of a generator blind"
        " to the input, with its 95% interval; `leak p`: one-sided p-value of a leak above 0;"
        f" the back *leaks* when that test rejects after Holm's correction over the {len(cells)}"
        " cells of this table (one test per cell, so an uncorrected 5% test would flag about"
        f" {0.05 * len(cells):.1f} cells of a blind table by chance).",
        "",
        "| model | sampler | steps | objects | read | unreadable | disagree | unseen dist |"
        " fit p | leak | leak p | leaks |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cells.sort(key=lambda r: (r["method"] != "teacher", r["model"], r["sampler"], r["steps"]))
    pvals, flags = leak_tests(cells)
    for r, pv, flag in zip(cells, pvals, flags):
        lines.append(
            f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['unseen_objects']} |"
            f" {r['unseen_read']} | {r['unseen_unreadable']} | {r['unseen_disagree']} |"
            f" {_ci(r, 'unseen_dist', '.3f')} | {r['unseen_fit_p']:.3g} |"
            f" {_ci(r, 'unseen_leak', '+.3f')} | {pv:.3g} | {'yes' if flag else 'no'} |"
        )
    leaking = [f"{r['model']}@{r['steps']}" for r, flag in zip(cells, flags) if flag]
    uncorrected = [f"{r['model']}@{r['steps']}" for r in cells if r.get("unseen_leaks")]
    dropped = [c for c in uncorrected if c not in leaking]
    if meta.get("world_version") == 2:
        lines += [
            "",
            "World 2 paints the back by half-space, so it shows in the condition image: "
            + (
                f"the back leaks in {', '.join(leaking)} (their read class follows the object's"
                " own beyond chance)."
                if leaking
                else "no cell reads it beyond chance."
            ),
        ]
    elif leaking:
        lines += ["", f"Beyond chance on a world that hides the back: {', '.join(leaking)}."]
    if dropped:
        lines += [
            "",
            f"Uncorrected, the leak's 95% lower bound clears zero in {', '.join(dropped)} as well;"
            " those do not survive Holm's correction over the table.",
        ]
    return lines


def leak_tests(cells: list[dict]) -> tuple[list[float], list[bool]]:
    """Each cell's one-sided leak p-value (from its per-object mean and 95% interval) and whether
    it rejects after Holm's step-down over all the cells (one family: is any cell's back read
    from its input?)."""
    pvals = [
        mean_above_zero_p(r["unseen_leak"], r.get("unseen_leak_ci95", float("nan"))) for r in cells
    ]
    return pvals, holm_step_down(pvals)[0]


def _decides(n: int | None) -> str:
    if n is None or n < 0:
        return "no number of objects decides it at this variance (the estimate sits on the margin)"
    return f"about {n:,} objects would decide it at the measured variance"


def _plural(steps: int) -> str:
    return f"{steps} step{'s' if steps > 1 else ''}"


def verdict_lines(verdicts: list[dict]) -> list[str]:
    """Text of the best-student comparisons computed by the sweep (eval/verdicts.py): the best
    point estimate against the runner-up, with its verdict, or its interval where no margin."""
    lines = []
    for v in verdicts:
        head = f"- {_plural(v['steps'])}, {v['metric']}: "
        if v.get("skipped"):
            lines.append(head + v["skipped"])
            continue
        vs = f"{v['diff']:+.3g} ± {v['ci95']:.2g} vs the runner-up {v['runner_up']}"
        if v.get("verdict") is None:
            lines.append(
                head + f"{v['best']} has the best point estimate; {vs} (paired; no margin:"
                " interval only)"
            )
        elif v["verdict"] == DIFFERENT:
            lines.append(
                head + f"different: **{v['best']}** best ({vs}, margin {v['margin']:.3g}, paired)"
            )
        elif v["verdict"] == EQUIVALENT:
            lines.append(
                head + f"equivalent: {v['best']} and the runner-up {v['runner_up']} within the"
                f" margin {v['margin']:.3g} ({v['diff']:+.3g} ± {v['ci95']:.2g}, paired); no"
                " best student"
            )
        else:
            lines.append(
                head + f"inconclusive: {v['best']} has the best point estimate ({vs}, margin"
                f" {v['margin']:.3g}, paired); {_decides(v['objects_to_decide'])}"
            )
    return lines


def reference_lines(entries: list[dict], ref_label: str) -> list[str]:
    """One line per student, step count and metric against the reference: its verdict, or its
    interval where the metric has no margin."""
    lines = []
    for e in entries:
        head = f"- {_plural(e['steps'])}, {e['metric']}, {e['model']}: "
        d = f"Δ {e['diff']:+.3g} ± {e['ci95']:.2g} vs {ref_label}"
        if e.get("verdict") is None:
            lines.append(head + d + " (no margin: interval only)")
        elif e["verdict"] == DIFFERENT:
            lines.append(head + f"different, {e['side']} ({d}, margin {e['margin']:.3g})")
        elif e["verdict"] == EQUIVALENT:
            lines.append(head + f"equivalent ({d}, margin {e['margin']:.3g})")
        else:
            lines.append(
                head + f"inconclusive ({d}, margin {e['margin']:.3g});"
                f" {_decides(e['objects_to_decide'])}"
            )
    return lines


def basis_lines(meta: dict) -> list[str]:
    """What the verdicts rest on: the margins file, its key and values, or that there is none."""
    mg = meta.get("margins") or {}
    ref = meta["reference"]
    if not mg.get("values"):
        where = mg.get("path", "(none given)")
        return [
            f"No margins at `{where}`{': ' + mg['missing'] if mg.get('missing') else ''}. Every"
            " comparison below is an interval only, with no verdict; make the margins with"
            " `distill metrics calibrate` before the sweep."
        ]
    values = ", ".join(f"{m} {v:.3g}" for m, v in mg["values"].items())
    out = [
        "Verdicts: each comparison is *equivalent* (two one-sided tests at 5%: the difference"
        " lies within ± the metric's margin), *different* (its 95% interval excludes zero and"
        " the estimate lies beyond the margin) or *inconclusive* (with the number of objects"
        " that would decide it at the measured variance and the level the test faces within its"
        " family); Holm's correction within each family"
        f" (the comparisons to {ref}; the best-student comparisons). Margins from"
        f" `{mg['path']}` (key `{mg['key']}`; derived on {mg['reference']}'s outputs, fixed"
        f" before this sweep): {values}."
    ]
    if mg.get("excluded"):
        out[0] += (
            " No margin, intervals only: "
            + "; ".join(f"{m} ({why})" for m, why in mg["excluded"].items())
            + "."
        )
    return out


def compared_metrics(meta: dict) -> list[str]:
    """The metrics the report compares: the calibrated verdict metrics, and sharpness when its
    calibration passes."""
    return meta["verdict_metrics"] + (["sharpness"] if meta.get("sharpness_usable") else [])


def _reference_entries(rows: list[dict], meta: dict) -> list[dict]:
    """The sweep's decided comparisons to the reference; for results written before they were
    recorded, the same comparisons with intervals only."""
    if "reference_verdicts" in meta:
        return meta["reference_verdicts"]
    return reference_verdicts(rows, compared_metrics(meta), None, meta["objects"])


def report(rows: list[dict], meta: dict) -> str:
    ref = meta["reference"]
    amort, notes = amortised(rows, meta["config"]["reference_steps"])
    usable, unusable = meta["verdict_metrics"], meta["unusable_metrics"]
    lines = [
        "# Step sweep: image -> views -> Gaussians",
        "",
        f"Commit `{meta['commit']}`, {meta['created']}, device: {meta['device']}.",
        f"Evaluation set: {meta['eval_set']} ({meta['objects']} objects), the same per-object"
        " noise seeds in every cell. ± is the 95% bootstrap half-width over objects; `Δ vs ref`"
        f" is the paired difference to {ref} on the same objects and noise (its verdict is in"
        f" the section on {ref}). `total ms` is what a user waits for: image -> views ->"
        " Gaussians; rendering the evaluation views is `render ms`, on its own.",
        "",
        f"World: version {meta['world_version']}"
        f" ({meta.get('world_source', 'the data folder world')}). {meta['world_note']}",
        "",
        "Seen side: `seen PSNR` and `seen SSIM` pool the target views whose seen share reaches"
        f" {SEEN_SHARE_FLOOR:g} of their object pixels: views"
        f" {', '.join(map(str, meta.get('seen_views', []))) or 'none'}; `view-0 seen PSNR` is"
        " view 0's alone.",
        "",
        f"Metrics compared (they pass `docs/metrics/calibration.md`): "
        f"{', '.join(usable) or 'none'}."
        + (f" Not compared: {'; '.join(unusable)}." if unusable else ""),
        "",
        *basis_lines(meta),
        "",
        "![pareto](pareto.png)",
        "",
        "## Results",
        "",
        results_table(rows),
        "",
        "## Best student per step count",
        "",
        "Among the distillation students (not the `finetune` control), per compared metric: the"
        " best point estimate against the runner-up, paired on the same objects and noise. A"
        " student is named best only when it is different from the runner-up beyond the margin.",
        "",
        *verdict_lines(meta["verdicts"]),
        "",
        f"## Students against {ref}",
        "",
        f"Each student at {', '.join(map(str, REFERENCE_STEPS))} steps, per compared metric, on"
        " the same objects and noise (finetune is the control, the teacher's own weights trained"
        " briefly on the data); sharpness has no better side: grainier (higher) or smoother.",
        "",
        *reference_lines(_reference_entries(rows, meta), ref),
        "",
        "## Amortised cost per asset",
        "",
        "Per asset: distillation training time / number of assets + image -> Gaussians time"
        " (batch 1). The teacher's own training is common to all and not counted.",
        "",
        amort,
        "",
        *[f"- {n}" for n in notes],
        *budget_axis_lines(rows, meta.get("budget_axis"), meta["config"]["reference_steps"]),
        *unseen_lines(rows, meta),
        *timing_lines(rows, meta),
    ]
    if meta["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in meta["skipped"]]
    if meta.get("missing"):
        lines += ["", "## Missing metrics", ""] + [
            f"- {k}: {v}" for k, v in meta["missing"].items()
        ]
    lines += [
        "",
        "Regenerate with the command in `README.md` (docs/sweep); never edit by hand.",
        "",
    ]
    return "\n".join(lines)


def rewrite_report(folder: str) -> None:
    """Rewrite ``report.md`` from ``results.json`` (no cell is recomputed); the verdicts are
    decided again from the stored intervals and margins, and ``results.json`` keeps them."""
    import json
    from pathlib import Path

    from eval.verdicts import redecide

    path = Path(folder) / "results.json"
    res = json.loads(path.read_text())
    redecide(res["meta"])
    path.write_text(json.dumps(res, indent=2))
    (Path(folder) / "report.md").write_text(report(res["rows"], res["meta"]))
