"""View-level quality of a sampleable model across step counts, on the same objects and noise."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from eval.metrics import psnr, ssim
from eval.sharpness import sharpness
from eval.stats import mean_ci, paired_ci
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
    truth,
    seeds: list[int],
    steps_list: list[int],
    sampler: str,
    guidance: float = 1.0,
    batch: int = 32,
    encoder=None,
    recon=None,
) -> tuple[list[dict], dict[int, Tensor]]:
    """Rows of the quality axis (eval/quality.py) per step count, each figure with its 95%
    interval over objects, and the generated views per count. ``truth`` is an
    ``eval.quality.Truth``; FID/KID with an ``encoder``, 3D figures with a ``recon``."""
    from eval.quality import QualityAxis, copy_baseline

    axis = QualityAxis(truth, recon, encoder, batch)
    copy_per = copy_baseline(truth, axis.seen_mask)
    copy = mean_ci(copy_per)
    rows, views = [], {}
    for steps in tqdm(steps_list, desc="step counts"):
        v, nfe = sample_views(
            model,
            truth.cond,
            seeds=seeds,
            steps=steps,
            sampler=sampler,
            guidance=guidance,
            batch=batch,
        )
        views[steps] = v
        row = {"steps": steps, "nfe": nfe, "sampler": sampler, "guidance": guidance}
        per = axis.evaluate(v)
        row.update(axis.summary(per))
        row["copy_psnr_view0"], row["copy_psnr_view0_ci95"] = copy
        if "seen_psnr_view0" in per:  # paired with copying the condition, the same objects
            row["vs_copy_psnr_view0"], row["vs_copy_psnr_view0_ci95"] = paired_ci(
                per["seen_psnr_view0"], copy_per
            )
        rows.append(row)
    return rows, views


def _cell(r: dict, k: str, fmt: str = ".2f") -> str:
    if r.get(k) is None:
        return "n/a"
    h = r.get(k + "_ci95")
    return f"{r[k]:{fmt}}" + (f" ± {h:{fmt}}" if h is not None and h == h else "")


def quality_table(rows: list[dict]) -> str:
    """Markdown: the quality axis per step count (seen side, sharpness, unseen side, FID/KID),
    with the copy-the-condition baseline's seen-side view-0 PSNR."""
    cols = [
        ("seen PSNR view 0", "seen_psnr_view0", ".2f"),
        ("seen PSNR", "seen_psnr", ".2f"),
        ("seen SSIM", "seen_ssim", ".3f"),
        ("sharpness", "sharpness", ".2f"),
        ("unseen dist", "unseen_dist", ".3f"),
        ("unreadable", "averaged_rate", ".2f"),
        ("FID", "fid", ".2f"),
        ("KID", "kid", ".4f"),
    ]
    cols = [c for c in cols if any(c[1] in r for r in rows)]
    lines = [
        "| steps | NFE | " + " | ".join(c[0] for c in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for r in rows:
        cells = [_cell(r, k, f) for _, k, f in cols]
        lines.append(f"| {r['steps']} | {r['nfe']} | " + " | ".join(cells) + " |")
    if rows:
        lines += [
            "",
            f"Copying the condition image into view 0 scores {_cell(rows[0], 'copy_psnr_view0')}"
            f" dB on the same seen pixels ({rows[0]['objects']} objects).",
        ]
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
    truth, seeds = eval_objects(data_root, "test", count, image_size, world)
    return truth.cond, truth.targets, seeds


def eval_objects(data_root: str, split: str, count: int, image_size: int, world=None):
    """The first ``count`` objects of ``split`` as an ``eval.quality.Truth`` and their noise
    seeds (each object's world seed). ``val`` is for choosing; ``test`` for the final report."""
    from eval.quality import Truth
    from scenes.data import open_eval_split

    ds = open_eval_split(data_root, split, count, image_size, world)
    b = ds.batch(list(range(count)))
    return Truth.from_batch(b, ds.rig, ds.world.version), [int(s) for s in b["seeds"]]


def models_objects(data_root: str, split: str, count: int, models: dict):
    """The first ``count`` objects of ``split`` in the world the models (name -> teacher or
    student) were trained on (scenes/model_views.py models_world): made there if missing, data
    of another world refused. Returns the ``eval.quality.Truth``, the noise seeds and the
    ``EvalWorld``."""
    from eval.quality import Truth
    from scenes.model_views import models_world

    ew = models_world(models)
    ds = ew.open(data_root, split, count)
    b = ds.batch(list(range(count)))
    return Truth.from_batch(b, ds.rig, ds.world.version), [int(s) for s in b["seeds"]], ew


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
