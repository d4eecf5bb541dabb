"""The sweep's tables and report: every figure with its 95% interval over objects, every row
with its paired difference to the 50-step teacher, and a "best student" only where the paired
interval against the runner-up excludes zero."""

from __future__ import annotations

import math

from eval.seen import SEEN_SHARE_FLOOR
from eval.stats import excludes_zero
from eval.timing_report import timing_lines
from eval.verdicts import VERDICT_METRICS

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
    mark = "*" if excludes_zero(d, h) else ""
    return f"{d:{fmt}} ± {h:.2f}{mark}"


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


def verdict_lines(verdicts: list[dict]) -> list[str]:
    """Text of the best-student verdicts computed by the sweep (eval/verdicts.py)."""
    lines = []
    for v in verdicts:
        head = f"- {v['steps']} step{'s' if v['steps'] > 1 else ''}, {v['metric']}: "
        if v.get("skipped"):
            lines.append(head + v["skipped"])
        elif v["best_resolved"]:
            lines.append(
                head + f"**{v['best']}** best ({v['diff']:+.3g} ± {v['ci95']:.2g} vs the"
                f" runner-up {v['runner_up']}, paired)"
            )
        else:
            lines.append(
                head + "tie between " + ", ".join(v["tied"]) + f" (best point estimate"
                f" {v['best']}; the paired interval against each of the others includes zero)"
            )
    return lines


def match_lines(rows: list[dict], metrics: list[str], ref_label: str) -> list[str]:
    """Which students match the reference (paired interval includes zero) at 1, 2 and 4 steps.
    Sharpness has no better side: it reads as grainier (higher) or smoother (lower)."""
    lines = []
    for steps in (1, 2, 4):
        cand = [r for r in rows if r["steps"] == steps and r["method"] != "teacher"]
        if not cand:
            continue
        for m in metrics:
            same, up, down = [], [], []  # up: the side VERDICT_METRICS calls better (or higher)
            for r in sorted(cand, key=lambda r: r["model"]):
                d, h = r.get(f"vs_ref_{m}_diff"), r.get(f"vs_ref_{m}_diff_ci95")
                if d is None:
                    continue
                if not excludes_zero(d, h):
                    same.append(r["model"])
                else:
                    (up if (d > 0) == VERDICT_METRICS.get(m, True) else down).append(r["model"])
            up_name, down_name = (
                ("grainier", "smoother") if m == "sharpness" else ("better", "worse")
            )
            lines.append(
                f"- {steps} step{'s' if steps > 1 else ''}, {m}: match {ref_label}: "
                f"{', '.join(same) or 'none'}; {down_name}: {', '.join(down) or 'none'}; "
                f"{up_name}: {', '.join(up) or 'none'}"
            )
    return lines


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
        f" is the paired difference to {ref} on the same objects and noise (* = its interval"
        " excludes zero). `total ms` is what a user waits for: image -> views -> Gaussians;"
        " rendering the evaluation views is `render ms`, on its own.",
        "",
        f"World: version {meta['world_version']}"
        f" ({meta.get('world_source', 'the data folder world')}). {meta['world_note']}",
        "",
        "Seen side: `seen PSNR` and `seen SSIM` pool the target views whose seen share reaches"
        f" {SEEN_SHARE_FLOOR:g} of their object pixels: views"
        f" {', '.join(map(str, meta.get('seen_views', []))) or 'none'}; `view-0 seen PSNR` is"
        " view 0's alone.",
        "",
        f"Metrics that decide verdicts (they pass `docs/metrics/calibration.md`): "
        f"{', '.join(usable) or 'none'}."
        + (f" Not used for verdicts: {'; '.join(unusable)}." if unusable else ""),
        "",
        "![pareto](pareto.png)",
        "",
        "## Results",
        "",
        results_table(rows),
        "",
        "## Best student per step count",
        "",
        "Among the distillation students (not the `finetune` control), per verdict metric. A"
        " student is named best only when the paired interval against the runner-up excludes"
        " zero; otherwise the students that tie with the best point estimate are listed.",
        "",
        *verdict_lines(meta["verdicts"]),
        "",
        f"## Which students match {ref}",
        "",
        "Per calibrated metric, on the same objects and noise (finetune is the control, the"
        " teacher's own weights trained briefly on the data).",
        "",
        *match_lines(rows, usable + (["sharpness"] if meta.get("sharpness_usable") else []), ref),
        "",
        "## Amortised cost per asset",
        "",
        "Per asset: distillation training time / number of assets + image -> Gaussians time"
        " (batch 1). The teacher's own training is common to all and not counted.",
        "",
        amort,
        "",
        *[f"- {n}" for n in notes],
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
    """Rewrite ``report.md`` from ``results.json`` (no cell is recomputed)."""
    import json
    from pathlib import Path

    res = json.loads((Path(folder) / "results.json").read_text())
    (Path(folder) / "report.md").write_text(report(res["rows"], res["meta"]))
