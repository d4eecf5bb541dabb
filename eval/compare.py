"""Students against the teacher at the same step count and against the 50-step teacher, on the
same objects and noise: view PSNR to the truth and to the teacher's reference output."""

from __future__ import annotations

import torch
from torch import Tensor

from eval.metrics import psnr
from eval.stats import mean_ci
from eval.views import view_metrics
from students.sampling import sample_views


def compare_rows(
    models: dict[str, object],
    cond: Tensor,
    gt: Tensor,
    seeds: list[int],
    steps_list: list[int],
    reference: Tensor,
    teacher_sampler: str = "euler",
    teacher_guidance: float = 1.0,
    skip_unsupported: bool = True,
) -> list[dict]:
    """One row per (model, steps): PSNR to the truth (all views, view 0, unseen views) and to
    ``reference`` (the 50-step teacher's views from the same noise)."""
    rows = []
    for name, model in models.items():
        method = model.method
        for steps in steps_list:
            if model.supported_steps is not None and steps not in model.supported_steps:
                if skip_unsupported:
                    continue
            views, nfe = sample_views(model, cond, steps, seeds, teacher_sampler, teacher_guidance)
            m = view_metrics(views, gt)
            row = {"model": name, "method": method, "steps": steps, "nfe": nfe}
            for k in ("psnr_all", "psnr_v0", "psnr_unseen", "ssim_v0", "ssim_unseen"):
                row[k], row[k + "_ci95"] = mean_ci(m[k])
            row["psnr_teacher50"], row["psnr_teacher50_ci95"] = mean_ci(
                psnr(views, reference).mean(1)
            )
            rows.append(row)
    return rows


def compare_table(rows: list[dict]) -> str:
    lines = [
        "| model | method | steps | NFE | PSNR vs truth | view 0 | unseen | PSNR vs teacher@50 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["steps"], r["method"] != "teacher", r["model"])):
        lines.append(
            f"| {r['model']} | {r['method']} | {r['steps']} | {r['nfe']} | "
            f"{r['psnr_all']:.2f} ± {r['psnr_all_ci95']:.2f} | {r['psnr_v0']:.2f} | "
            f"{r['psnr_unseen']:.2f} | {r['psnr_teacher50']:.2f} ± {r['psnr_teacher50_ci95']:.2f} |"
        )
    return "\n".join(lines)


@torch.no_grad()
def teacher_reference(
    teacher,
    cond: Tensor,
    seeds: list[int],
    steps: int = 50,
    sampler: str = "euler",
    guidance: float = 1.0,
) -> Tensor:
    views, _ = sample_views(teacher, cond, steps, seeds, sampler, guidance)
    return views
