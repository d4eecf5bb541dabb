"""View-level quality of a sampleable model across step counts, on the same objects and noise."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from eval.metrics import mean_ci, psnr, ssim
from scenes.preview import contact_sheet
from students.sampling import sample_views


def view_metrics(gen: Tensor, gt: Tensor) -> dict[str, Tensor]:
    """Per-object PSNR/SSIM of view 0 (the side the condition shows) and of the unseen views."""
    p, s = psnr(gen, gt), ssim(gen, gt)  # [B, V]
    return {
        "psnr_v0": p[:, 0],
        "ssim_v0": s[:, 0],
        "psnr_unseen": p[:, 1:].mean(1),
        "ssim_unseen": s[:, 1:].mean(1),
        "psnr_all": p.mean(1),
    }


def step_quality(
    model,
    cond: Tensor,
    gt: Tensor,
    seeds: list[int],
    steps_list: list[int],
    sampler: str,
    cfg_scale: float = 1.0,
    batch: int = 32,
) -> tuple[list[dict], dict[int, Tensor]]:
    """Rows of mean metrics (with 95% CI) per step count, and the generated views per count."""
    rows, views = [], {}
    for steps in tqdm(steps_list, desc="step counts"):
        v, nfe = sample_views(
            model, cond, seeds=seeds, steps=steps, sampler=sampler, cfg_scale=cfg_scale, batch=batch
        )
        views[steps] = v
        m = view_metrics(v, gt)
        row = {
            "steps": steps,
            "nfe": nfe,
            "sampler": sampler,
            "cfg_scale": cfg_scale,
            "objects": len(seeds),
        }
        for k, val in m.items():
            row[k], row[k + "_ci95"] = mean_ci(val)
        rows.append(row)
    return rows, views


def quality_table(rows: list[dict]) -> str:
    head = "| steps | NFE | PSNR view 0 | SSIM view 0 | PSNR unseen | SSIM unseen |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['steps']} | {r['nfe']} | {r['psnr_v0']:.2f} ± {r['psnr_v0_ci95']:.2f} | "
            f"{r['ssim_v0']:.3f} | {r['psnr_unseen']:.2f} ± {r['psnr_unseen_ci95']:.2f} | "
            f"{r['ssim_unseen']:.3f} |"
        )
    return "\n".join(lines)


def steps_grid(
    cond: Tensor,
    gt: Tensor,
    views: dict[int, Tensor],
    out: str | Path,
    objects: int = 3,
    title: str | None = None,
) -> Path:
    """PNG: per object, the ground truth then each step count (same noise), views in columns."""
    rows = []
    for o in range(min(objects, cond.shape[0])):
        rows.append((f"obj {o}: truth", torch.cat([cond[o : o + 1], gt[o]]), None))
        for steps, v in views.items():
            rows.append(
                (
                    f"{steps} step{'s' if steps > 1 else ''}",
                    torch.cat([cond[o : o + 1], v[o]]),
                    None,
                )
            )
    return contact_sheet(rows, out, title=title, cell=1.0)


def write_json(obj, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))
    return path
