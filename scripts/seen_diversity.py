"""Is a student's seen-side PSNR above teacher@50 from averaging? A probe on val objects.

For each model (``teacher@STEPS`` or ``<student folder>@STEPS``) it samples every object with
``--seeds`` noise seeds and reports, on view 0's object pixels (not the white background; view 0
faces the condition camera): the PSNR of each sample to the truth (mean over samples), the PSNR
of the per-object mean over seeds, and the per-pixel standard deviation across seeds (sample
diversity, in [0, 1] units). A model that wins PSNR by averaging has lower diversity; one whose
seed mean is also closer to the truth is closer to the truth, not only smoother.

    .venv/bin/python scripts/seen_diversity.py \
        --models teacher@50,teacher@4,shipped/students/consistency@4 --objects 32 --seeds 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from eval.stats import mean_ci
from eval.views import models_objects
from scenes.data import DATA_ROOT
from students.folder import LoadedStudent
from students.sampling import sample_views
from teachers.io import load_teacher


def _psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-item PSNR of images in [-1, 1] on ``mask``'s pixels (peak 1 in [0, 1] units)."""
    se = ((a - b) / 2) ** 2 * mask
    mse = se.flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


def probe(views: torch.Tensor, truth: torch.Tensor) -> dict:
    """views [N, K, 3, H, W] (K seeds of view 0), truth [N, 3, H, W], both in [-1, 1]."""
    n, k = views.shape[:2]
    obj = (truth < 0.96).any(1, keepdim=True).expand_as(truth).float()  # not the background
    per_sample = (
        _psnr(views.flatten(0, 1), truth.repeat_interleave(k, 0), obj.repeat_interleave(k, 0))
        .reshape(n, k)
        .mean(1)
    )  # per object, over its seeds
    of_mean = _psnr(views.mean(1), truth, obj)
    std = (views.std(1) / 2 * obj).flatten(1).sum(1) / obj.flatten(1).sum(1).clamp_min(1)
    out = {}
    for key, per_object in (
        ("psnr_per_sample", per_sample),
        ("psnr_of_seed_mean", of_mean),
        ("seed_std", std),
    ):
        out[key], out[f"{key}_ci95"] = mean_ci(per_object)  # 95% interval over objects
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="teacher@50,teacher@4")
    ap.add_argument("--teacher", default="shipped/teacher")
    ap.add_argument("--objects", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--data-root", default=DATA_ROOT)
    ap.add_argument("--out", default="docs/methods/seen_diversity.json")
    a = ap.parse_args()
    teacher = load_teacher(a.teacher)
    truth, seeds, ew = models_objects(a.data_root, "val", a.objects, {"teacher": teacher})
    cond = truth.cond.repeat_interleave(a.seeds, 0)
    noise = [s * a.seeds + k for s in seeds for k in range(a.seeds)]
    results = {}
    for spec in a.models.split(","):
        name, steps = spec.rsplit("@", 1)
        model = (
            teacher if name == "teacher" else LoadedStudent.from_pretrained(name, teacher=teacher)
        )
        views, _ = sample_views(model, cond, int(steps), noise)
        v0 = views[:, 0].reshape(a.objects, a.seeds, *views.shape[2:])
        results[f"{Path(name).name}@{steps}"] = probe(v0, truth.targets[:, 0])
        print(
            spec, {k: round(x, 4) for k, x in results[spec.replace(name, Path(name).name)].items()}
        )
    doc = {
        "split": "val",
        "objects": a.objects,
        "seeds": a.seeds,
        "world": ew.describe(),
        "view": 0,
        "models": results,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
