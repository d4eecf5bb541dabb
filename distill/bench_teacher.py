"""`distill bench teacher`: the cost of one denoising step of each teacher family.

For each teacher folder (the lab's, a Zero123++ or MVDream/ImageDream folder, downloaded or a
fixture): the median seconds of one network call ``teacher(x_t, t, cond)`` at batch 1 after a
warm-up (CUDA synchronised on a GPU), its FLOPs by torch's flop counter, and the parameter
count. A Zero123++ folder is also measured with its reference pass switched off, so the cost of
reference attention (the condition latent through the same UNet at every step) is a ratio
measured in the same run. A step under classifier-free guidance costs twice the call."""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path

import torch

from eval.timing import call_flops, interleaved_times


def teacher_inputs(teacher, batch: int, device: torch.device):
    """Fixed (noise, time 0.5, condition) for timing ``batch`` teacher calls."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *teacher.noise_shape(), generator=g)
    s = teacher.info.image_size
    cond = torch.rand(batch, 3, s, s, generator=g) * 2 - 1
    t = torch.full((batch,), 0.5)
    return x.to(device), t.to(device), cond.to(device)


def _measure(teacher, device, repeats: int, batch: int) -> dict:
    x, t, cond = teacher_inputs(teacher, batch, device)

    def call():
        return teacher(x, t, cond)

    times = [ms / 1000 for ms in interleaved_times({"call": call}, repeats, device)["call"]]
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "gflops": call_flops(call) / 1e9,
    }


def bench_one(folder: str, device: torch.device, repeats: int, batch: int = 1) -> dict:
    """One teacher folder's step cost (and, for Zero123++, without its reference pass)."""
    from teachers.families import classify
    from teachers.io import load_teacher

    family = classify(folder).name
    teacher = load_teacher(folder).to(device).eval().requires_grad_(False)  # frozen, as used
    i = teacher.info
    row = {
        "teacher": str(folder),
        "family": family,
        "prediction": i.prediction,
        "views": i.views,
        "grid": list(i.grid),
        "image_size": i.image_size,
        "model_size": i.size,
        "parameters": sum(p.numel() for p in teacher.parameters()),
        "batch": batch,
        **_measure(teacher, device, repeats, batch),
    }
    if hasattr(teacher, "reference"):  # Zero123++: the same call with the reference pass off
        teacher.reference = False
        try:
            plain = _measure(teacher, device, repeats, batch)
        finally:
            teacher.reference = True
        row["without_reference"] = plain
        row["reference_cost_ratio"] = row["median_s"] / plain["median_s"]
        row["reference_flops_ratio"] = row["gflops"] / plain["gflops"]
    if device.type == "cuda":
        row["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def bench_teacher(
    folders: list[str], out: str, repeats: int = 3, device: str = "auto", threads: int = 0
) -> dict:
    """``threads`` > 0 pins torch's CPU threads (a busy core makes 2 spinning threads ~20x
    slower than 1 on this machine); 0 keeps torch's default."""
    if threads > 0:
        torch.set_num_threads(threads)
    dev = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    rows = [bench_one(f, dev, repeats) for f in folders]
    res = {
        "what": "one teacher network call at batch 1 (a guided step costs two)",
        "device": str(dev),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "repeats": repeats,
        "rows": rows,
    }
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"{'teacher':40s} {'family':12s} {'views':>5s} {'ms':>9s} {'GFLOP':>9s}  reference")
    for r in rows:
        ref = ""
        if "reference_cost_ratio" in r:
            ref = (
                f"x{r['reference_cost_ratio']:.2f} time, x{r['reference_flops_ratio']:.2f} FLOPs"
                " against the call without it"
            )
        print(
            f"{r['teacher'][-40:]:40s} {r['family']:12s} {r['views']:5d} "
            f"{r['median_s'] * 1e3:9.1f} {r['gflops']:9.3f}  {ref}"
        )
    print(f"wrote {path}")
    return res
