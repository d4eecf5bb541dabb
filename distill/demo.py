"""`distill demo`: the lab's main job on the shipped defaults, a few minutes on a laptop CPU.

With the shipped teacher, students and reconstructor: turn a few test images into views and 3D
Gaussians with the 50-step teacher and every 1-step student, write PLYs and a contact sheet,
then run a small step sweep of the teacher and the distilled students (the finetune control left
out) at 1, 4 and 50 steps (table + Pareto plot). Without them (a fresh lab before training),
it makes a small dataset and a preview sheet of the world.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from distill import data_cmd
from scenes.data import DATA_ROOT

SHIPPED = Path("shipped")


def demo(out: str, args: list[str]) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    students = sorted(p for p in (SHIPPED / "students").glob("*") if (p / "student.json").exists())
    ready = all((SHIPPED / x).exists() for x in ("teacher", "recon", "encoder")) and students
    if not ready:
        print("shipped models not found: making a small dataset and a preview sheet instead")
        data_cmd.make("val", 50, [f"root={out_dir / 'data'}", *args])
        data_cmd.show(10_000_000, str(out_dir / "sheet.png"), args)
        return
    # the reconstructor: the sweep's recon=FOLDER (the lab's or an LGM folder), else shipped
    recon = next((a.split("=", 1)[1] for a in args if a.startswith("recon=")), None)
    _pipeline_demo(out_dir, students, Path(recon) if recon else SHIPPED / "recon")
    from distill.config import load_config
    from eval.sweep import Sweep, SweepConfig

    # the distilled students: the finetune control's 50 steps would cost a second teacher@50
    distilled = [
        s for s in students if json.loads((s / "student.json").read_text())["method"] != "finetune"
    ]

    cfg = load_config(
        SweepConfig,
        [
            f"out={out_dir / 'sweep'}",
            "objects=16",
            "steps=[1,4,50]",
            "latency_repeats=3",
            "throughput_batch=8",
            "models=[teacher," + ",".join(str(s) for s in distilled) + "]",
            "skip_unsupported=true",
            "set_resamples=200",  # a quick look; a reported sweep keeps the default 1000
            *args,
        ],
    )
    Sweep(cfg).run()
    print(f"demo outputs under {out_dir}: sheet.png, *.ply, sweep/report.md, sweep/pareto.png")


def _pipeline_demo(out_dir: Path, students: list[Path], recon: Path) -> None:
    from recon.gaussians import save_ply
    from scenes.data import open_split
    from scenes.preview import contact_sheet
    from scenes.world import model_world
    from serve.pipeline import Pipeline
    from teachers.io import load_teacher

    teacher = load_teacher(SHIPPED / "teacher")
    ds = open_split(DATA_ROOT, "test", 4, model_world(teacher.record, teacher.info.image_size))
    b = ds.batch(list(range(4)))
    rows = [("condition | truth", torch.cat([b["cond"][:1], b["targets"][0]]), None)]
    runs = [(SHIPPED / "teacher", 50)] + [(s, 1) for s in students]
    for folder, steps in runs:
        pipe = Pipeline.from_pretrained(
            folder, recon, teacher=teacher if folder.name != "teacher" else None
        )
        views, g, tm = pipe(b["cond"], steps=steps, seed=[int(s) for s in b["seeds"]])
        save_ply(g.map(lambda t: t[0]), out_dir / f"{pipe.name}_{steps}step.ply")
        label = f"{pipe.name} @{steps} ({tm.total_ms / len(views):.0f} ms/obj)"
        rows.append((label, torch.cat([b["cond"][:1], views[0]]), None))
        print(
            f"{label}: diffusion {tm.diffusion_ms:.0f} ms, reconstruction {tm.recon_ms:.0f} ms"
            f" for {len(views)} objects"
        )
    contact_sheet(rows, out_dir / "sheet.png", title="one test object: teacher vs 1-step students")
