"""View-level quality of a sampleable model across step counts, on the same objects and noise."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from eval.metrics import psnr, ssim
from eval.sharpness import sharpness
from eval.stats import mean_ci
from scenes.preview import contact_sheet
from students.sampling import sample_views


def view_metrics(gen: Tensor, gt: Tensor) -> dict[str, Tensor]:
    """Per-object PSNR/SSIM of view 0 (the side the condition shows) and of the unseen views."""
    p, s = psnr(gen, gt), ssim(gen, gt)  # [B, V]
    sharp = sharpness(gen) / sharpness(gt).clamp_min(1e-6)
    return {
        "sharpness": sharp.mean(1),
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
    guidance: float = 1.0,
    batch: int = 32,
    encoder=None,
) -> tuple[list[dict], dict[int, Tensor]]:
    """Rows of mean metrics (with 95% CI) per step count, and the generated views per count.
    With a feature ``encoder``, also FID/KID of all generated views against the true ones."""
    rows, views = [], {}
    for steps in tqdm(steps_list, desc="step counts"):
        v, nfe = sample_views(
            model, cond, seeds=seeds, steps=steps, sampler=sampler, guidance=guidance, batch=batch
        )
        views[steps] = v
        m = view_metrics(v, gt)
        row = {
            "steps": steps,
            "nfe": nfe,
            "sampler": sampler,
            "guidance": guidance,
            "objects": len(seeds),
        }
        for k, val in m.items():
            row[k], row[k + "_ci95"] = mean_ci(val)
        if encoder is not None:
            from eval.encoder import distribution_distances

            row.update(distribution_distances(encoder, gt.flatten(0, 1), v.flatten(0, 1)))
        rows.append(row)
    return rows, views


def quality_table(rows: list[dict]) -> str:
    fid = "fid" in rows[0]
    head = "| steps | NFE | PSNR view 0 | SSIM view 0 | PSNR unseen | SSIM unseen | sharpness |" + (
        " FID | KID |" if fid else ""
    )
    lines = [head, "|---|---|---|---|---|---|---|" + ("---|---|" if fid else "")]
    for r in rows:
        lines.append(
            f"| {r['steps']} | {r['nfe']} | {r['psnr_v0']:.2f} ± {r['psnr_v0_ci95']:.2f} | "
            f"{r['ssim_v0']:.3f} | {r['psnr_unseen']:.2f} ± {r['psnr_unseen_ci95']:.2f} | "
            f"{r['ssim_unseen']:.3f} | {r['sharpness']:.2f} |"
            + (f" {r['fid']:.2f} | {r['kid']:.4f} |" if fid else "")
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


def test_objects(data_root: str, count: int, image_size: int, world=None):
    """The first ``count`` test-split objects for a model of ``image_size`` pixels (made with
    ``world`` if missing): conditions, true target views and their noise seeds (each object's
    world seed)."""
    from scenes.data import open_eval_split

    ds = open_eval_split(data_root, "test", count, image_size, world)
    b = ds.batch(list(range(count)))
    return b["cond"], b["targets"], [int(s) for s in b["seeds"]]


def generated_sheet(
    cond: Tensor, gt: Tensor, views: Tensor, label: str, out: str | Path, title: str
) -> Path:
    """PNG: per object, the condition with the generated views, then with the true views."""
    rows = []
    for o in range(cond.shape[0]):
        rows.append((f"obj {o} {label}", torch.cat([cond[o : o + 1], views[o]]), None))
        rows.append(("truth", torch.cat([cond[o : o + 1], gt[o]]), None))
    path = contact_sheet(rows, out, title=title)
    print(f"wrote {path}")
    return path
